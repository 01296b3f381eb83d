"""The one runner: for every step, fingerprint → plan (skip / run / resume / move aside and rerun) →
record → run → record, with timing, the dry-run and multi-node following done here once.

Finished work is never deleted implicitly: when a step's fingerprint changes, its old output is
moved to ``previous-<UTC time>/`` beside it with a log line naming what moved and why. Only
``--fresh`` deletes, and it says what. ``--dry-run`` prints the plan a real run would follow.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coretech.errors import CoreTechError, StageFailed
from coretech.launch import LaunchSettings
from coretech.log import get_logger
from coretech.pipeline.context import RunContext, Step
from coretech.pipeline.report import print_summary, write_report
from coretech.pipeline.spec import LoadedPipeline, load_pipeline
from coretech.pipeline.stages import preflight, resolve_stages
from coretech.pipeline.steps import build_steps
from coretech.runs import MANIFEST, Manifest, changed_parts, fingerprint_parts, run_lock, stored_path

log = get_logger(__name__)


@dataclass
class Plan:
    """What the runner will do with one step, and why."""

    action: str  # skip, run, resume, rerun
    reason: str
    move_aside: list[Path] = field(default_factory=list)

    def describe(self, run_dir: Path) -> str:
        moved = ", ".join(stored_path(run_dir, p) or str(p) for p in self.move_aside)
        aside = f"; moves {moved} to previous-<UTC time>/ first" if moved else ""
        return f"{self.action} ({self.reason}){aside}"


def plan_step(ctx: RunContext, step: Step, fp: str, parts: dict[str, Any]) -> Plan:
    entry = ctx.manifest.entry(step.section, step.name)
    if entry.get("fingerprint") == fp:
        if entry.get("status") == "done" and step.complete(ctx):
            return Plan("skip", "unchanged since the last run")
        if step.resumable(ctx):
            return Plan(
                "resume", f"same inputs, {entry.get('status', 'unfinished')} earlier: continues its partial output"
            )
        return Plan("run", "same inputs, not finished earlier")
    existing = [] if ctx.fresh else [p for p in step.outputs() if p.exists()]  # --fresh deleted them
    if entry:
        reason = f"changed: {', '.join(changed_parts(entry.get('parts'), parts)) or 'fingerprint scheme'}"
    else:
        reason = "no record in the manifest" if existing else "not run yet"
    return Plan("rerun" if existing else "run", reason, existing)


def move_aside(paths: list[Path], reason: str) -> None:
    """Keep finished work: ``<folder>/<name>`` → ``<folder>/previous-<UTC time>/<name>``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in paths:
        target = path.parent / f"previous-{stamp}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(target))
        log.info("moved %s to %s (%s)", path, target, reason)


def _wait_for(ctx: RunContext, step: Step, fp: str, wanted: set[str], timeout: float = 7 * 24 * 3600) -> str:
    """Worker nodes follow node 0 through the shared run folder: wait until its manifest shows this
    step, with the same fingerprint, in one of the ``wanted`` states. Returns that state.

    A node-0-only step (prepare, merge) may create its own inputs (the embedded model), so its
    fingerprint is taken again while waiting."""
    started = time.monotonic()
    while True:
        if not step.all_nodes:
            fp = ctx.fingerprints[step.key] = fingerprint_parts(step.fingerprint_parts(ctx))
        entry = Manifest(ctx.manifest.path).entry(step.section, step.name)
        if entry.get("fingerprint") == fp and entry.get("status") in wanted:
            return entry["status"]
        if entry.get("fingerprint") == fp and entry.get("status") == "failed":
            raise StageFailed(f"{step.label}: node 0 reports a failure ({entry.get('error', 'see its log')})")
        if time.monotonic() - started > timeout:
            raise CoreTechError(
                f"timed out waiting for {step.label}; is node 0 running this pipeline on a shared run folder?"
            )
        time.sleep(2)


def run_step(ctx: RunContext, step: Step) -> None:
    parts = step.fingerprint_parts(ctx)
    fp = fingerprint_parts(parts)
    ctx.fingerprints[step.key] = fp
    if not ctx.is_main_node and not ctx.dry_run:
        if not step.all_nodes:
            _wait_for(ctx, step, fp, {"done"})
            return
        if _wait_for(ctx, step, fp, {"running", "done"}) == "done":
            log.info("%s: finished on node 0, skipping", step.label)
            return
        step.run(ctx, fp)
        return
    plan = plan_step(ctx, step, fp, parts)
    if ctx.dry_run:
        print(f"plan: {step.label}: {plan.describe(ctx.run_dir)}", flush=True)
        if plan.action != "skip":
            step.describe(ctx)
        return
    if plan.action == "skip":
        log.info("%s: unchanged since the last run, skipping", step.label)
        step.after(ctx, ctx.manifest.entry(step.section, step.name))
        return
    if plan.move_aside:
        records = [p for p in step.records() if p.exists()]
        move_aside([*plan.move_aside, *records], f"{step.label}: {plan.reason}")
    log.info(
        "%s: %s (%s)",
        step.label,
        {"resume": "resuming", "rerun": "running again"}.get(plan.action, "running"),
        plan.reason,
    )
    ctx.manifest.record(step.section, step.name, {"status": "running", "fingerprint": fp, "parts": parts})
    started = time.monotonic()
    try:
        result = step.run(ctx, fp)
    except CoreTechError as exc:
        ctx.manifest.record(
            step.section, step.name, {"status": "failed", "fingerprint": fp, "parts": parts, "error": str(exc)}
        )
        raise
    entry = {"status": "done", "fingerprint": fp, "parts": parts, **result}
    entry.setdefault("seconds", round(time.monotonic() - started, 1))
    ctx.manifest.record(step.section, step.name, entry)
    log.info("%s: %s", step.label, step.summary(entry))
    step.after(ctx, entry)


def fresh_start(run_dir: Path) -> None:
    """``--fresh``: delete the manifest and every step's output, saying what goes."""
    doomed = [run_dir / MANIFEST, run_dir / "data", run_dir / "predict", run_dir / "eval"]
    doomed += [p for p in run_dir.iterdir() if p.is_dir() and (p / "config.yaml").exists()]
    doomed = [p for p in doomed if p.exists()]
    if doomed:
        log.info("--fresh: deleting %s", ", ".join(str(p) for p in doomed))
    for path in doomed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def run_pipeline(
    pipeline: str | Path,
    overrides: list[str] | None = None,
    *,
    run_dir: Path | None = None,
    dry_run: bool = False,
    fresh: bool = False,
) -> int:
    """Run (or resume) a whole pipeline; returns 0, raises CoreTechError / StageFailed on failure."""
    started = time.monotonic()
    loaded = load_pipeline(pipeline, overrides)
    run_dir = Path(run_dir or Path("runs") / loaded.spec.name).resolve()
    launch = loaded.spec.launch.with_environment()
    if dry_run or launch.node_rank > 0:  # worker nodes share node 0's run folder: no lock of their own
        return _run(loaded, run_dir, launch, dry_run, fresh, started)
    with run_lock(run_dir):
        return _run(loaded, run_dir, launch, dry_run, fresh, started)


def _run(
    loaded: LoadedPipeline, run_dir: Path, launch: LaunchSettings, dry_run: bool, fresh: bool, started: float
) -> int:
    spec = loaded.spec
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir / MANIFEST, read=not fresh)  # --fresh plans from nothing
    ctx = RunContext(loaded, run_dir, manifest, launch, dry_run=dry_run, fresh=fresh)
    step_counts = {n: e.get("global_step") for n, e in manifest.data["stages"].items() if e.get("global_step")}
    stages = resolve_stages(loaded, run_dir, step_counts)
    log.info("pipeline %s: %d stage(s), run folder %s", spec.name, len(stages), run_dir)
    preflight(loaded, stages, run_dir, after_prepare=False)
    if fresh and dry_run:
        print("plan: --fresh: deletes the manifest, data/, predict/, eval/ and every stage folder first", flush=True)
    elif fresh and launch.node_rank == 0:  # only after the pre-flight passed: a typo never costs a run
        fresh_start(run_dir)
    if ctx.is_main_node and not dry_run:
        manifest.data["base"] = {
            "model": spec.base_model,
            "template": stages[0].config.get("template") if stages else None,
        }
        manifest.data["pipeline"] = str(loaded.path)
        manifest.data["final_stage"] = spec.final_stage
        manifest.save()
    steps = build_steps(ctx, stages)
    for index, step in enumerate(steps):
        if not ctx.is_main_node and step.kind in ("predict", "evaluate"):
            break
        run_step(ctx, step)
        following = steps[index + 1].kind if index + 1 < len(steps) else None
        if step.kind == "prepare" and following != "prepare" and not dry_run:  # all data written: check them
            preflight(loaded, stages, run_dir, after_prepare=True)
    if not ctx.is_main_node:
        log.info("worker node: training stages done; node 0 predicts and evaluates")
        return 0
    if dry_run:
        return 0
    report = write_report(ctx, time.monotonic() - started)
    print_summary(ctx, report)
    return 0


def validate_pipeline(pipeline: str | Path, overrides: list[str] | None = None, *, run_dir: Path | None = None) -> int:
    """Pre-flight only: parse every resolved stage and the prepare settings, report all problems; launches nothing."""
    loaded = load_pipeline(Path(pipeline), overrides)
    run_dir = Path(run_dir or Path("runs") / loaded.spec.name).resolve()
    stages = resolve_stages(loaded, run_dir)
    preflight(loaded, stages, run_dir, after_prepare=False)
    log.info("pipeline %s: %d stage(s) passed pre-flight", loaded.spec.name, len(stages))
    return 0
