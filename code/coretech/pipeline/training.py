"""Training steps: ``llamafactory-cli train`` for a stage (on every node) and ``llamafactory-cli export``
to merge its LoRA into a full model (node 0). The runner decides whether they run at all."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from coretech.errors import CoreTechError, StageFailed
from coretech.files import write_text_atomic
from coretech.launch import check_launch_path, child_environment, describe_command, llamafactory_cli, run_logged
from coretech.log import get_logger
from coretech.pipeline.context import RunContext, Step, format_seconds
from coretech.pipeline.stages import ResolvedStage, dump_config
from coretech.runs import content_digest, stored_path

log = get_logger(__name__)


def has_weights(folder: Path) -> bool:
    return any(folder.glob("adapter_model.*")) or any(folder.glob("model*.safetensors"))


def trainer_summary(output_dir: Path) -> dict[str, Any]:
    """Steps and final loss from the trainer's own files (for the report and match_steps)."""
    summary: dict[str, Any] = {}
    state = output_dir / "trainer_state.json"
    if state.is_file():
        data = json.loads(state.read_text(encoding="utf-8"))
        summary["global_step"] = data.get("global_step")
        losses = [e["loss"] for e in data.get("log_history", []) if "loss" in e]
        if losses:
            summary["first_loss"], summary["last_loss"] = losses[0], losses[-1]
    results = output_dir / "all_results.json"
    if results.is_file():
        data = json.loads(results.read_text(encoding="utf-8"))
        summary["train_loss"] = data.get("train_loss")
        summary["train_runtime"] = data.get("train_runtime")
    return summary


def dataset_digest(data_dir: Path, names: list[str]) -> dict[str, Any]:
    """The registered entries and file contents of the datasets a step reads."""
    info_path = data_dir / "dataset_info.json"
    if not info_path.is_file():
        return {"dataset_info": "missing"}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CoreTechError(f"{info_path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    result: dict[str, Any] = {}
    for name in names:
        entry = info.get(name)
        files = entry.get("file_name") if isinstance(entry, dict) else None
        result[name] = {"entry": entry, "content": content_digest(data_dir / files) if files else None}
    return result


def launch(ctx: RunContext, name: str, argv: list[str], env_extra: dict[str, str], folder: Path, log_name: str) -> None:
    """Write ``command.txt`` and run ``argv`` into ``<log_name>.log``; the dry-run prints the command instead."""
    env = child_environment(env_extra)
    command = describe_command(argv, env)
    # Nodes share the run folder: node k > 0 writes train.node<k>.log beside node 0's train.log.
    node = "" if ctx.launch.node_rank == 0 else f".node{ctx.launch.node_rank}"
    stem = "command" if log_name == "train" else f"{log_name}_command"
    if not (ctx.dry_run and (folder / f"{stem}{node}.txt").exists()):  # a dry-run keeps a finished stage's record
        write_text_atomic(folder / f"{stem}{node}.txt", command)
    if ctx.dry_run:
        print(f"--- {name} ({log_name})\n{command}", end="", flush=True)
        return
    log_path = folder / f"{log_name}{node}.log"
    status = run_logged(argv, env, log_path, description=f"{name} {log_name}")
    if status != 0:
        raise StageFailed(f"stage {name} ({log_name}) failed with exit status {status}; log: {log_path}")


def refuse_if_still_running(config_path: Path, name: str, node_rank: int = 0) -> None:
    """Training ranks of an earlier, killed run may outlive it (torchrun starts each rank in its own
    session, so killing the runner's process group leaves them). Two generations of ranks writing
    one output folder would corrupt its checkpoints: refuse, and say which processes to stop.
    Only this node's processes count (several "nodes" may share one machine in tests)."""
    import psutil

    needle = str(config_path)
    alive = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if needle not in (process.info["cmdline"] or []):
                continue
            if process.environ().get("NODE_RANK", "0") == str(node_rank):
                alive.append(process.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if alive:
        pids = " ".join(str(p) for p in sorted(alive))
        raise CoreTechError(
            f"stage {name}: processes of an earlier run are still training on {config_path} (pids {pids}); "
            f"stop them (kill {pids}) before rerunning"
        )


class TrainStep(Step):
    """One stage: ``llamafactory-cli train`` under LLaMA-Factory's torchrun, on every node."""

    section = "stages"
    kind = "train"
    all_nodes = True

    def __init__(self, stage: ResolvedStage, upstream: str) -> None:
        self.stage = stage
        self.name = stage.name
        self.upstream = upstream  # the step key whose result this stage starts from ("" for the base model)

    @property
    def config_path(self) -> Path:
        return self.stage.stage_dir / "config.yaml"

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        config = self.stage.config
        if self.stage.spec.match_steps and "max_steps" not in config:
            counts = [ctx.manifest.entry("stages", n).get("global_step") for n in self.stage.spec.match_steps]
            if all(counts):
                config["max_steps"] = sum(counts)
        deepspeed = config.get("deepspeed")
        return {
            "config": ctx.portable(config),
            "starts from": ctx.fingerprints.get(self.upstream) if self.upstream else ctx.base_model_digest(),
            "datasets": dataset_digest(Path(config["dataset_dir"]), self.stage.datasets),
            "deepspeed": content_digest(Path(deepspeed)) if isinstance(deepspeed, str) else None,
        }

    def outputs(self) -> list[Path]:
        return [self.stage.output_dir]

    def records(self) -> list[Path]:
        return [self.config_path, *self.stage.stage_dir.glob("command*.txt"), *self.stage.stage_dir.glob("train*.log")]

    def complete(self, ctx: RunContext) -> bool:
        return has_weights(self.stage.output_dir)

    def resumable(self, ctx: RunContext) -> bool:
        return any(self.stage.output_dir.glob("checkpoint-*"))

    def _write_config(self, ctx: RunContext, fp: str) -> None:
        header = (
            f"Resolved by `coretech run {ctx.loaded.path}` for stage {self.name!r}.\n"
            f"Recipe: {self.stage.spec.recipe}; chaining, run folder and overrides applied. Fingerprint {fp}."
        )
        target = self.config_path
        if ctx.dry_run and target.exists():  # the finished stage's record stays; the plan goes beside it
            target = self.stage.stage_dir / "config.planned.yaml"
        if ctx.is_main_node:
            write_text_atomic(target, dump_config(self.stage.config, header))
        check_launch_path(self.config_path, "stage config")

    def describe(self, ctx: RunContext) -> None:
        self._write_config(ctx, ctx.fingerprints.get(self.key, "?"))
        launch(
            ctx,
            self.name,
            [llamafactory_cli(), "train", str(self.config_path)],
            ctx.launch.environment(),
            self.stage.stage_dir,
            "train",
        )

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        self.stage.stage_dir.mkdir(parents=True, exist_ok=True)
        self._write_config(ctx, fp)
        refuse_if_still_running(self.config_path, self.name, ctx.launch.node_rank)
        started = time.monotonic()
        argv = [llamafactory_cli(), "train", str(self.config_path)]
        launch(ctx, self.name, argv, ctx.launch.environment(), self.stage.stage_dir, "train")
        ctx.timings[f"{self.name}.train"] = time.monotonic() - started
        if not ctx.is_main_node:
            return {}
        if not has_weights(self.stage.output_dir):
            raise StageFailed(
                f"stage {self.name} exited 0 but wrote no weights to {self.stage.output_dir}; "
                f"log: {self.stage.stage_dir / 'train.log'}"
            )
        model, adapter = self.stage.config["model_name_or_path"], str(self.stage.output_dir)
        if self.stage.config.get("finetuning_type", "lora") != "lora":
            model, adapter = str(self.stage.output_dir), None
        return {
            "recipe": str(self.stage.spec.recipe),
            "output_dir": stored_path(ctx.run_dir, self.stage.output_dir),
            "model": stored_path(ctx.run_dir, model),
            "adapter": stored_path(ctx.run_dir, adapter),
            "template": self.stage.config.get("template") or (self.stage.export_config or {}).get("template"),
            "seconds": round(ctx.timings[f"{self.name}.train"], 1),
            **trainer_summary(self.stage.output_dir),
        }

    def summary(self, entry: dict[str, Any]) -> str:
        loss = f", loss {entry['first_loss']:.3f} → {entry['last_loss']:.3f}" if "last_loss" in entry else ""
        return f"done in {format_seconds(entry.get('seconds'))}, {entry.get('global_step', '?')} steps{loss}"

    def after(self, ctx: RunContext, entry: dict[str, Any]) -> None:
        order = ctx.manifest.data.setdefault("order", [])
        if self.name not in order and not ctx.dry_run:
            order.append(self.name)
            ctx.manifest.save()


class MergeStep(Step):
    """``llamafactory-cli export``: a stage's LoRA merged into a full model (what the next stage loads)."""

    kind = "merge"

    def __init__(self, stage: ResolvedStage, train_key: str) -> None:
        assert stage.export_config is not None and stage.merged_dir is not None
        self.stage = stage
        self.name = f"{stage.name}.merge"
        self.train_key = train_key

    @property
    def label(self) -> str:
        return f"{self.stage.name} (merge)"

    @property
    def export_path(self) -> Path:
        return self.stage.stage_dir / "export.yaml"

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        return {"export config": ctx.portable(self.stage.export_config), "adapter": ctx.fingerprints[self.train_key]}

    def outputs(self) -> list[Path]:
        return [self.stage.merged_dir] if self.stage.merged_dir else []

    def complete(self, ctx: RunContext) -> bool:
        return self.stage.merged_dir is not None and has_weights(self.stage.merged_dir)

    def records(self) -> list[Path]:
        return [
            self.export_path,
            *self.stage.stage_dir.glob("export_command*.txt"),
            *self.stage.stage_dir.glob("export*.log"),
        ]

    def _argv(self, ctx: RunContext) -> list[str]:
        header = f"Merge of stage {self.stage.name!r}; from {self.stage.spec.merge}."
        target = self.export_path
        if ctx.dry_run and target.exists():  # the finished merge's record stays; the plan goes beside it
            target = self.stage.stage_dir / "export.planned.yaml"
        write_text_atomic(target, dump_config(self.stage.export_config or {}, header))
        return [llamafactory_cli(), "export", str(self.export_path)]

    def describe(self, ctx: RunContext) -> None:
        launch(ctx, self.stage.name, self._argv(ctx), {}, self.stage.stage_dir, "export")

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        log.info("%s: merging the adapter into a full model → %s", self.stage.name, self.stage.merged_dir)
        started = time.monotonic()
        launch(ctx, self.stage.name, self._argv(ctx), {}, self.stage.stage_dir, "export")
        ctx.timings[f"{self.stage.name}.export"] = time.monotonic() - started
        if not self.complete(ctx):
            raise StageFailed(
                f"stage {self.stage.name}: export wrote no model to {self.stage.merged_dir}; "
                f"log: {self.stage.stage_dir / 'export.log'}"
            )
        return {
            "merged": stored_path(ctx.run_dir, self.stage.merged_dir),
            "seconds": round(time.monotonic() - started, 1),
        }

    def after(self, ctx: RunContext, entry: dict[str, Any]) -> None:
        """After the merge the stage's product is the full model: later stages and ``--run`` load it."""
        stage_entry = ctx.manifest.entry("stages", self.stage.name)
        merged = stored_path(ctx.run_dir, self.stage.merged_dir)
        if (
            ctx.dry_run
            or not stage_entry
            or (stage_entry.get("model") == merged and stage_entry.get("adapter") is None)
        ):
            return
        stage_entry.update(model=merged, adapter=None)
        ctx.manifest.save()
