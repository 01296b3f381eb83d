"""The GPU set (``requirements-gpu.txt``) checked on a machine without a GPU: ``make check-gpu-env``.

Two checks, each the cheapest that catches a broken GPU install before anyone reaches a GPU node:

- the set resolves: pip's resolver, run with ``--dry-run --report`` on metadata only, must pick exactly
  the pinned versions (no conflict, nothing missing, nothing extra);
- vLLM starts its tokenizer: the pinned vLLM wheel, installed with ``--no-deps`` into a small probe
  environment layered over this one (whose transformers is the GPU set's), builds its tokenizer for a
  model through ``coretech.infer.vllm.check_vllm_environment``, the call that failed with vLLM 0.11 and
  transformers 5.6. vLLM's import needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

from coretech.errors import CoreTechError
from coretech.log import get_logger

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
GPU_REQUIREMENTS = REPO_ROOT / "requirements-gpu.txt"
PROBE_ENV = REPO_ROOT / ".cache" / "vllm-probe"
# What vLLM imports on the way to its tokenizer that the CPU set lacks (found by importing it).
PROBE_PACKAGES = ("vllm", "cbor2", "pyzmq", "openai-harmony")


class PyPIUnreachable(CoreTechError):
    """pip could not reach the package index: the check cannot run here, which is not a failure of the set."""


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file by canonical name; anything else is a one-line error."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise CoreTechError(f"{path}:{number}: not an exact pin (name==version): {raw.strip()!r}")
        key = canonicalize_name(name.strip())
        if key in pins:
            raise CoreTechError(f"{path}:{number}: {name.strip()} is pinned twice")
        pins[key] = version.strip()
    return pins


def resolve_requirements(path: Path, python: str = sys.executable) -> dict[str, str]:
    """What pip would install for ``path`` into an empty environment (metadata only: no wheel is unpacked)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        argv += ["--report", str(report), "-r", str(path)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            message = done.stderr.strip()
            if any(s in message for s in ("Name or service not known", "NewConnectionError", "Temporary failure")):
                raise PyPIUnreachable(f"{path}: the package index is unreachable, the set cannot be resolved here")
            last = [line for line in message.splitlines() if line.strip() and not line.startswith("WARNING")]
            raise CoreTechError(f"{path}: pip cannot resolve the set: {' | '.join(last[-12:])}")
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def resolution_problems(pins: dict[str, str], resolved: dict[str, str]) -> list[str]:
    """Where the resolver's choice differs from the pins: a complete set resolves to itself."""
    problems = [
        f"{name}: pinned {pins[name]}, resolved {resolved[name]}"
        for name in pins
        if name in resolved and resolved[name] != pins[name]
    ]
    problems += [f"{name}: resolved {resolved[name]} but not pinned" for name in sorted(set(resolved) - set(pins))]
    problems += [f"{name}: pinned {pins[name]} but not installed" for name in sorted(set(pins) - set(resolved))]
    return problems


def build_probe_env(venv: Path = PROBE_ENV, requirements: Path = GPU_REQUIREMENTS) -> Path:
    """A venv that sees this environment's packages and adds the pinned vLLM (``--no-deps``); its python.

    Refuses when this environment's transformers is not the GPU set's: the probe must test the pair the
    GPU node gets. Reused while the pins are the same.
    """
    pins = read_pins(requirements)
    from importlib.metadata import version

    if version("transformers") != pins.get("transformers"):
        raise CoreTechError(
            f"{requirements}: pins transformers {pins.get('transformers')} but this environment has "
            f"{version('transformers')}; the probe must test the GPU set's transformers"
        )
    wanted = [f"{name}=={pins[canonicalize_name(name)]}" for name in PROBE_PACKAGES]
    python = venv / "bin" / "python"
    stamp = venv / "coretech-probe.txt"
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8").split() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The .pth puts this environment's packages after the probe's own: vLLM comes from the probe, the rest from here.
    Path(site, "coretech-base.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    log.info("installing %s into %s (--no-deps)", " ".join(wanted), venv)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", *wanted], check=True)
    stamp.write_text("\n".join(wanted) + "\n", encoding="utf-8")
    return python


def probe_vllm_tokenizer(python: Path, model: Path) -> list[str]:
    """``check_vllm_environment(model)`` run by ``python`` (the probe env), with this checkout's code first."""
    code = (
        "import json, sys; from coretech.infer.vllm import check_vllm_environment as check; "
        "print(json.dumps(check(sys.argv[1])))"
    )
    env = {"PYTHONPATH": str(REPO_ROOT / "code"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [str(python), "-c", code, str(model)], capture_output=True, text=True, check=False, env={**os.environ, **env}
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return [f"{model}: the vLLM probe exited with status {done.returncode}: {tail[0]}"]
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coretech.infer.gpu_env", description=__doc__.splitlines()[0])
    parser.add_argument("--requirements", type=Path, default=GPU_REQUIREMENTS)
    parser.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "smollm2-135m-instruct")
    parser.add_argument("--skip-resolve", action="store_true", help="only the vLLM tokenizer probe")
    args = parser.parse_args(argv)
    problems: list[str] = []
    if not args.skip_resolve:
        pins = read_pins(args.requirements)
        resolved = resolve_requirements(args.requirements)
        found = resolution_problems(pins, resolved)
        log.info(
            "%s: %d pins, pip resolves %d packages, %d differences",
            args.requirements,
            len(pins),
            len(resolved),
            len(found),
        )
        problems += found
    if not args.model.is_dir():
        raise CoreTechError(f"{args.model}: no model folder; create it with `coretech prepare model`")
    found = probe_vllm_tokenizer(build_probe_env(requirements=args.requirements), args.model)
    log.info("vLLM tokenizer for %s: %s", args.model, "builds" if not found else "FAILS")
    problems += found
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
