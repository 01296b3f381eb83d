"""Building and running ``llamafactory-cli`` commands: argv lists, launch environment, logs.

LLaMA-Factory 0.9.x starts torchrun itself for ``train`` when FORCE_TORCHRUN=1 (or several
devices are visible), reading NNODES, NODE_RANK, NPROC_PER_NODE, MASTER_ADDR and MASTER_PORT from
the environment. So we never wrap it in a torchrun of our own (every rank would launch torchrun
again): we set those variables and run ``llamafactory-cli train <yaml>`` once per node.

Two consequences of its launcher shape this module: it re-splits its arguments on spaces, so a
path with whitespace breaks (``check_launch_path`` refuses it before launch), and it calls a bare
``torchrun``, so the environment's ``bin`` directory must be on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coretech.errors import CoreTechError

# Variables the runner sets or passes through; only these (plus PATH) go into command.txt.
LAUNCH_VARIABLES = (
    "FORCE_TORCHRUN",
    "NNODES",
    "NODE_RANK",
    "NPROC_PER_NODE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "HF_HUB_OFFLINE",
    "DISABLE_VERSION_CHECK",
)
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# The trainer's own tqdm line, e.g. " 50%|█████     | 6/12 [00:43<00:40,  6.7s/it]" (data-loading bars
# count "examples/s" and are left out).
_TRAINER_PROGRESS = re.compile(r"\d+%\|[^|\r\n]*\| (\d+)/(\d+) \[[^\]\r\n]*(?:it/s|s/it)\]")


@dataclass
class LaunchSettings:
    """How many processes and nodes; multi-node values come from the environment when present."""

    nproc_per_node: int | None = None  # None: LLaMA-Factory uses the visible device count
    force_torchrun: bool = True
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: LLaMA-Factory picks a free port (single node only)

    def check(self) -> None:
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise ValueError("nproc_per_node must be at least 1")
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not within nnodes {self.nnodes}")

    def with_environment(self, environ: dict[str, str] | None = None) -> LaunchSettings:
        """Settings overridden by NNODES / NODE_RANK / NPROC_PER_NODE / MASTER_* from the environment,
        which is how Slurm scripts and cluster schedulers hand them to every node."""
        environ = os.environ if environ is None else environ
        result = LaunchSettings(**self.__dict__)
        if "NNODES" in environ:
            result.nnodes = int(environ["NNODES"])
        if "NODE_RANK" in environ:
            result.node_rank = int(environ["NODE_RANK"])
        if "NPROC_PER_NODE" in environ:
            result.nproc_per_node = int(environ["NPROC_PER_NODE"])
        if "MASTER_ADDR" in environ:
            result.master_addr = environ["MASTER_ADDR"]
        if "MASTER_PORT" in environ:
            result.master_port = int(environ["MASTER_PORT"])
        result.check()
        return result

    def environment(self) -> dict[str, str]:
        env = {}
        if self.force_torchrun:
            env["FORCE_TORCHRUN"] = "1"
        if self.nproc_per_node is not None:
            env["NPROC_PER_NODE"] = str(self.nproc_per_node)
        env["NNODES"] = str(self.nnodes)
        env["NODE_RANK"] = str(self.node_rank)
        env["MASTER_ADDR"] = self.master_addr
        if self.master_port is not None:
            env["MASTER_PORT"] = str(self.master_port)
        elif self.nnodes > 1:
            env["MASTER_PORT"] = "29500"
        return env


def bin_dir() -> Path:
    """The ``bin`` directory of the running Python environment (where llamafactory-cli and torchrun live)."""
    return Path(sys.executable).parent


def llamafactory_cli() -> str:
    candidate = bin_dir() / "llamafactory-cli"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("llamafactory-cli")
    if not found:
        raise CoreTechError("llamafactory-cli not found: run `make install` (pip install -r requirements.txt)")
    return found


def whitespace_problem(path: str | Path, what: str) -> str | None:
    """Why LLaMA-Factory's launcher would break ``path`` (it joins argv with spaces and splits again)."""
    text = str(path)
    if any(ch.isspace() for ch in text):
        return (
            f"{what} {text!r} contains whitespace; llamafactory-cli's torchrun launcher splits its "
            "arguments on spaces, so move or rename it to a path without spaces"
        )
    return None


def check_launch_path(path: str | Path, what: str) -> None:
    """Refuse a path LLaMA-Factory's launcher would break, before anything is launched."""
    reason = whitespace_problem(path, what)
    if reason:
        raise CoreTechError(reason)


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """The process environment plus ``extra``, with this environment's bin first on PATH for torchrun."""
    env = dict(os.environ)
    env.update(extra)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    # Python output from ranks would otherwise arrive in 4 KiB blocks and the log would lag.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def describe_command(argv: Sequence[str], env: dict[str, str]) -> str:
    """``command.txt``: the launch variables and the argv, shell-quoted for copy-paste, secrets redacted."""
    import shlex

    lines = []
    for name in sorted(env):
        if name in LAUNCH_VARIABLES or name.startswith("CORETECH_"):
            value = "<redacted>" if _SECRET_NAME.search(name) else env[name]
            lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(shlex.join(argv))
    return "\n".join(lines) + "\n"


def run_logged(
    argv: Sequence[str],
    env: dict[str, str],
    log_path: Path,
    description: str = "",
    cwd: Path | None = None,
    show_progress: bool = True,
) -> int:
    """Run argv, writing all output to ``log_path`` and showing a progress bar from the trainer's own
    ``n/N [`` lines. Returns the exit status; never raises on a non-zero one."""
    from tqdm import tqdm

    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar = None
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0
        )
        assert process.stdout is not None
        pending = b""
        try:
            while True:
                chunk = process.stdout.read(8192)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if not show_progress or not sys.stderr.isatty():
                    continue  # in CI logs a redrawn bar is noise; the stage summary line says enough
                pending = (pending + chunk)[-4096:]
                matches = _TRAINER_PROGRESS.findall(pending.decode("utf-8", "replace"))
                if matches:
                    done, total = (int(x) for x in matches[-1])
                    if bar is None or bar.total != total:
                        if bar is not None:
                            bar.close()
                        bar = tqdm(total=total, desc=description, unit="step", leave=False, dynamic_ncols=True)
                    if done != bar.n:
                        bar.n = done
                        bar.refresh()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        finally:
            if bar is not None:
                bar.close()
        status = process.wait()
    return status
