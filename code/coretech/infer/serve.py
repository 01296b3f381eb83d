"""``coretech chat`` and ``coretech api``: LLaMA-Factory's own chat CLI and OpenAI-compatible server
with a run's model filled in.

We do not reimplement serving: the recipe (``configs/<model>/chat.yaml`` or ``api.yaml``) plus the
run's model, adapter and template and any ``key=value`` overrides are written to one resolved YAML.
``llamafactory-cli chat <yaml>`` runs on it; the API runs LLaMA-Factory's own app from that YAML behind
a guard that enforces the recipe's ``max_new_tokens`` and answers bad generation settings with a 400
(``api_server``). Both are argv lists, never shell strings, started in a session of their own: SIGTERM
or SIGINT to coretech stops the child's whole process group. The resolved YAML is kept in the run
folder so the exact settings of a session can be reused with plain ``llamafactory-cli``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coretech.config import load_yaml
from coretech.errors import CoreTechError
from coretech.infer.recipe import check_recipe_keys, find_recipe, infer_recipe_keys, parse_overrides, resolve_model
from coretech.infer.vllm import MISSING_VLLM, vllm_available
from coretech.launch import check_launch_path, child_environment, llamafactory_cli
from coretech.log import get_logger

log = get_logger(__name__)

# LLaMA-Factory's server listens on 0.0.0.0 unless told otherwise; we default to loopback so an
# unauthenticated model server is never exposed by accident (set API_HOST=0.0.0.0 and API_KEY).
DEFAULT_API_HOST = "127.0.0.1"
DEFAULT_API_PORT = "8000"  # LLaMA-Factory's default
# After SIGTERM/SIGINT the server gets this long to shut down before its process group is killed.
STOP_GRACE_S = 15.0


@dataclass
class ServeCommand:
    """The argv, environment additions and resolved recipe of one ``llamafactory-cli`` session."""

    argv: list[str]
    env: dict[str, str]
    recipe: Path
    values: dict[str, Any]


def _require_local_paths(values: dict[str, Any], recipe: Path) -> None:
    """A model or adapter folder missing here is one line at once, never a hub lookup with retries."""
    from coretech.models import check_model_reference

    if isinstance(values.get("model_name_or_path"), str):
        check_model_reference(values["model_name_or_path"], f"{recipe}: model_name_or_path")
    for adapter_path in str(values.get("adapter_name_or_path") or "").split(","):
        if adapter_path.strip():
            check_model_reference(adapter_path.strip(), f"{recipe}: adapter_name_or_path")


def resolve_serve_recipe(
    kind: str,
    *,
    run: Path | None,
    recipe: Path | None,
    stage: str | None,
    overrides: list[str] | None,
) -> tuple[dict[str, Any], str]:
    """The recipe's values with the run's model and the overrides applied, and where they came from."""
    if run is None and recipe is None:
        raise CoreTechError(f"coretech {kind} needs --run RUN or --recipe configs/<model>/{kind}.yaml")
    model, adapter, template = resolve_model(run, stage, None, None)
    if recipe is None:
        recipe = find_recipe(kind, template)
    values = load_yaml(recipe)
    if run is not None:
        values["model_name_or_path"] = model
        if template is not None:
            values["template"] = template
        if adapter is None:
            values.pop("adapter_name_or_path", None)
        else:
            values["adapter_name_or_path"] = adapter
    values.update(parse_overrides(overrides))
    if values.get("infer_backend") == "vllm" and not vllm_available():
        raise CoreTechError(f"{recipe}: {MISSING_VLLM} (or add infer_backend=huggingface)")
    _require_local_paths(values, recipe)  # before LLaMA-Factory is imported: that alone takes seconds
    check_recipe_keys(values, infer_recipe_keys(), str(recipe))
    for key in ("model_name_or_path", "adapter_name_or_path"):
        # The resolved recipe may live elsewhere (run folder, temp dir): local paths become absolute.
        if isinstance(values.get(key), str) and Path(values[key]).exists():
            values[key] = str(Path(values[key]).resolve())
    if "model_name_or_path" not in values:
        raise CoreTechError(f"{recipe}: no model_name_or_path (give --run or model_name_or_path=...)")
    return values, str(recipe)


def build_serve_command(
    kind: str,
    *,
    run: Path | None = None,
    recipe: Path | None = None,
    stage: str | None = None,
    overrides: list[str] | None = None,
    workdir: Path | None = None,
) -> ServeCommand:
    """Write the resolved recipe (into ``run/serve/`` or ``workdir``) and the command that serves it."""
    if kind not in ("chat", "api"):
        raise ValueError(f"kind must be chat or api, not {kind!r}")
    values, source = resolve_serve_recipe(kind, run=run, recipe=recipe, stage=stage, overrides=overrides)
    folder = Path(run) / "serve" if run is not None else workdir
    if folder is None:
        raise ValueError("workdir is required without a run")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.yaml"
    header = f"# Resolved by `coretech {kind}` from {source}; the same with: llamafactory-cli {kind} {path}\n"
    path.write_text(header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")
    check_launch_path(path, f"{kind} recipe")
    env: dict[str, str] = {}
    if values.get("infer_backend") == "vllm":
        # LLaMA-Factory 0.9.5 checks vllm<=0.11.0, which cannot start with transformers 5.6; the GPU set's
        # vLLM 0.23 works with it (docs/inference.md), so only that one version check is lifted.
        from coretech.infer.vllm import LLAMAFACTORY_VLLM_ENV

        env.update(LLAMAFACTORY_VLLM_ENV)
    argv = [llamafactory_cli(), kind, str(path)]
    if kind == "api":
        env["API_HOST"] = os.environ.get("API_HOST", DEFAULT_API_HOST)
        env["API_PORT"] = os.environ.get("API_PORT", DEFAULT_API_PORT)
        # LLaMA-Factory's app behind a guard that enforces the recipe's max_new_tokens (api_server.py).
        argv = [sys.executable, "-m", "coretech.infer.api_server", str(path)]
    return ServeCommand(argv, env, path, values)


def _kill_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def run_until_signalled(argv: list[str], env: dict[str, str], what: str) -> int:
    """Run ``argv`` in its own session; SIGTERM or SIGINT to us stops its whole process group.

    Without this a service manager's or Slurm's SIGTERM ended coretech and left the server serving on
    its port. The child gets the signal first (a clean shutdown), then SIGKILL after STOP_GRACE_S,
    and whatever of its group is left once it exits. A session of its own keeps the terminal's Ctrl-C
    for us (we forward it) while chat still reads the terminal through its inherited stdin.
    """
    received: list[tuple[int, float]] = []
    children: list[subprocess.Popen] = []

    def forward(signum: int, _frame: object) -> None:
        received.append((signum, time.monotonic()))
        for child in children:
            _kill_group(child.pid, signum)

    # Installed before the start, so a signal in between is not lost (the child would be orphaned).
    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        process = subprocess.Popen(argv, env=env, start_new_session=True)
        children.append(process)
        if received:
            _kill_group(process.pid, received[0][0])
        while process.poll() is None:
            if received and time.monotonic() - received[0][1] > STOP_GRACE_S:
                _kill_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for child in children:
            _kill_group(child.pid, signal.SIGKILL)  # helpers of the server (engine workers) outliving it
    if received:
        signum = received[0][0]
        shown = " ".join([Path(argv[0]).name, *argv[1:-1]])
        log.info(
            "%s: %s received; stopped %s (pid %d) and its process group",
            what,
            signal.Signals(signum).name,
            shown,
            process.pid,
        )
        return 128 + signum
    return process.returncode


def _run(kind: str, run: Path | None, recipe: Path | None, stage: str | None, overrides: list[str]) -> int:
    workdir = None if run is not None else Path(tempfile.mkdtemp(prefix=f"coretech-{kind}-"))
    try:
        command = build_serve_command(kind, run=run, recipe=recipe, stage=stage, overrides=overrides, workdir=workdir)
        model = command.values["model_name_or_path"]
        adapter = command.values.get("adapter_name_or_path")
        print(f"{kind}: {model}" + (f" + {adapter}" if adapter else "") + f" ({command.recipe})", file=sys.stderr)
        if kind == "api":
            host, port = command.env["API_HOST"], command.env["API_PORT"]
            shown = "localhost" if host in ("0.0.0.0", "127.0.0.1") else host  # noqa: S104
            print(f"OpenAI-compatible API at http://{shown}:{port}/v1 (Ctrl-C stops it)", file=sys.stderr)
        # Interactive: the child reads our terminal (chat); our signals stop its whole process group.
        return run_until_signalled(command.argv, child_environment(command.env), f"coretech {kind}")
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def run_chat(*, run: Path | None, recipe: Path | None, stage: str | None, overrides: list[str]) -> int:
    """Chat in the terminal with a run's final model (or ``--stage``'s) through ``llamafactory-cli chat``."""
    return _run("chat", run, recipe, stage, overrides)


def run_api(*, run: Path | None, recipe: Path | None, stage: str | None, overrides: list[str]) -> int:
    """Serve a run's model as an OpenAI-compatible API through ``llamafactory-cli api``; host and port
    come from API_HOST / API_PORT as LLaMA-Factory reads them, the key from API_KEY."""
    return _run("api", run, recipe, stage, overrides)
