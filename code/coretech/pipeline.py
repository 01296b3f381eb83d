"""The pipeline runner: stages, run folder, manifest, chaining stage k to stage k+1, resume, report.

A pipeline file (``configs/pipelines/*.yaml``) names the data preparation, the training stages and
their recipes, the models to predict with and the scoring. ``coretech run`` executes it:

    prepare (in-process)  → stage 1 … stage n (``llamafactory-cli train`` under torchrun, each
    from the previous stage's result; ``llamafactory-cli export`` where a full model is needed)
    → predict (every listed model on the held-out test set) → evaluate → report

Run folder ``runs/<name>/``: ``manifest.json`` (what finished, with fingerprints of its inputs and
resolved config), ``data/`` (prepared datasets), one folder per stage (``config.yaml`` resolved,
``command.txt``, ``train.log``, ``output/`` and ``merged/``), ``predict/``, ``eval/``, and
``report.md`` / ``metrics.json`` at the top.

Resume: a stage whose fingerprint (resolved config + upstream fingerprint + its datasets' content)
matches a finished entry in the manifest is skipped; a changed config or input reruns that stage
and every stage after it (their fingerprints include the upstream one). A stage killed mid-training
resumes from its last checkpoint, because its output folder is kept and LLaMA-Factory continues
from ``checkpoint-*`` when ``overwrite_output_dir`` is false.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coretech.config import ConfigError, build_dataclass, load_yaml
from coretech.errors import CoreTechError, StageFailed
from coretech.files import fingerprint, write_json_atomic, write_text_atomic
from coretech.launch import (
    LaunchSettings,
    check_launch_path,
    child_environment,
    describe_command,
    llamafactory_cli,
    run_logged,
)
from coretech.models import EMBEDDED_MODEL_DIR, ensure_embedded_model
from coretech.preflight import (
    PreflightFailed,
    Problem,
    check_datasets,
    check_deepspeed_config,
    check_launch_paths,
    check_llamafactory_config,
    check_model_path,
    check_writable,
)

# Keys the runner owns in a resolved stage config: chaining and the run folder decide them.
RUNNER_KEYS = ("model_name_or_path", "adapter_name_or_path", "dataset_dir", "output_dir")
MANIFEST = "manifest.json"


# --- pipeline spec ---------------------------------------------------------------------------


@dataclass
class StageSpec:
    """One training stage: a LLaMA-Factory recipe and where its starting weights come from."""

    name: str
    recipe: Path
    start_from: str = "base"  # "base" or an earlier stage's name
    merge: Path | None = None  # an export recipe: merge this stage's LoRA into a full model
    match_steps: list[str] = field(default_factory=list)  # train as many steps as these stages together
    overrides: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"stage name {self.name!r} must be letters, digits, '_' or '-'")
        if self.name == "base":
            raise ValueError("'base' is reserved for the base model")
        bad = sorted(set(self.overrides) & set(RUNNER_KEYS))
        if bad:
            raise ValueError(f"stage {self.name}: {bad[0]!r} is set by the runner (chaining), not by overrides")


@dataclass
class DataSpec:
    cpt: Path | None = None  # settings for `coretech prepare cpt`
    sft: Path | None = None  # settings for `coretech prepare sft`


@dataclass
class PredictSpec:
    recipe: Path
    dataset: str = "coretech_sft_test"
    models: list[str] = field(default_factory=lambda: ["base"])
    backend: str = "auto"
    max_samples: int | None = None
    batch_size: int | None = None


@dataclass
class EvaluateSpec:
    scheme: list[Path] = field(default_factory=list)
    task: str = "auto"
    fuzzy_threshold: float | None = None


@dataclass
class PipelineSpec:
    name: str
    base_model: str
    stages: list[StageSpec]
    embedded_model: bool = False  # base_model is the embedded SmolLM2 folder, created on demand
    launch: LaunchSettings = field(default_factory=LaunchSettings)
    data: DataSpec = field(default_factory=DataSpec)
    predict: PredictSpec | None = None
    evaluate: EvaluateSpec | None = None

    def check(self) -> None:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage {stage.name!r} appears twice")
            if stage.start_from != "base" and stage.start_from not in seen:
                raise ValueError(f"stage {stage.name}: start_from {stage.start_from!r} is not an earlier stage")
            missing = [s for s in stage.match_steps if s not in seen]
            if missing:
                raise ValueError(f"stage {stage.name}: match_steps names {missing[0]!r}, not an earlier stage")
            seen.add(stage.name)
        if self.predict:
            unknown = [m for m in self.predict.models if m != "base" and m not in seen]
            if unknown:
                raise ValueError(f"predict.models names {unknown[0]!r}, which is not a stage")
        self.launch.check()

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


def parse_scalar(raw: str) -> Any:
    """A command-line value as YAML would read it, plus ``1e-4`` as a float (YAML 1.1 reads it as text)."""
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str):
        try:
            return float(raw)
        except ValueError:
            return value
    return value


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``train.max_steps=2 sft_stage1.learning_rate=1e-4 predict.max_samples=4`` → {scope: {key: value}}.

    Values are parsed as YAML scalars (``2`` is an int, ``true`` a bool, ``1e-4`` a float).
    """
    result: dict[str, dict[str, Any]] = {}
    for item in items:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigError(f"override {item!r}: expected scope.key=value, e.g. train.max_steps=2")
        target, raw = item.split("=", 1)
        scope, key = target.split(".", 1)
        value = parse_scalar(raw)
        result.setdefault(scope, {})[key] = value
    return result


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineSpec, dict]:
    """Load a pipeline file; ``launch.*``/``predict.*`` overrides apply here, the rest per stage later."""
    path = Path(path)
    data = load_yaml(path)
    parsed = parse_overrides(overrides or [])
    for scope in ("launch", "predict", "evaluate"):
        if scope in parsed:
            section = data.setdefault(scope, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{path} ({scope}): expected a mapping")
            section.update(parsed.pop(scope))
    spec = build_dataclass(PipelineSpec, data, str(path))
    stage_names = {s.name for s in spec.stages}
    for scope in parsed:
        if scope != "train" and scope not in stage_names:
            raise ConfigError(
                f"override scope {scope!r} is not 'train', 'launch', 'predict', 'evaluate' or a stage "
                f"({', '.join(sorted(stage_names))})"
            )
        bad = sorted(set(parsed[scope]) & set(RUNNER_KEYS))
        if bad:
            raise ConfigError(f"override {scope}.{bad[0]}: set by the runner (chaining), not by overrides")
    return spec, parsed


# --- run folder, manifest, fingerprints ------------------------------------------------------


def _paths_named_in(value: Any) -> list[Path]:
    """Every existing file or folder a settings mapping mentions: the inputs of a prepare step."""
    found: list[Path] = []
    if isinstance(value, dict):
        for item in value.values():
            found.extend(_paths_named_in(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_paths_named_in(item))
    elif isinstance(value, str) and len(value) < 4096 and ("/" in value or "." in value):
        candidate = Path(value)
        try:
            if candidate.exists():
                found.append(candidate)
        except OSError:
            pass
    return found


class Manifest:
    """``manifest.json``: finished steps with fingerprints; rewritten atomically after every step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"stages": {}, "order": [], "steps": {}}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                # A manifest is only ever replaced atomically, so this is a user edit gone wrong:
                # start over rather than trust half of it.
                print(f"warning: {path} is not valid JSON; every stage will run again", file=sys.stderr)
            self.data.setdefault("stages", {})
            self.data.setdefault("steps", {})

    def done(self, section: str, name: str, fp: str) -> dict | None:
        entry = self.data[section].get(name)
        if entry and entry.get("status") == "done" and entry.get("fingerprint") == fp:
            return entry
        return None

    def record(self, section: str, name: str, entry: dict) -> None:
        self.data[section][name] = entry
        write_json_atomic(self.path, self.data)

    def invalidate(self, section: str, name: str) -> None:
        if name in self.data[section]:
            self.data[section][name]["status"] = "stale"
            write_json_atomic(self.path, self.data)


@dataclass
class RunModel:
    """What to load for one stage of a finished run: a full model folder plus an optional adapter."""

    model: str
    adapter: str | None
    template: str | None
    stage: str


def resolve_run_model(run_dir: str | Path, stage: str | None = None) -> RunModel:
    """The model of ``stage`` (default: the run's last stage) in a run folder, from its manifest."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        raise CoreTechError(f"{run_dir}: no {MANIFEST}; is this a run folder made by `coretech run`?")
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    stages = data.get("stages", {})
    name = stage or data.get("final_stage")
    if name == "base" and "base" in data:
        base = data["base"]
        return RunModel(base["model"], None, base.get("template"), "base")
    if not name or name not in stages:
        known = ", ".join(data.get("order", [])) or "none"
        raise CoreTechError(f"{manifest_path}: stage {name!r} not found (finished stages: {known})")
    entry = stages[name]
    if entry.get("status") != "done":
        raise CoreTechError(f"{manifest_path}: stage {name!r} has not finished (status {entry.get('status')})")
    return RunModel(entry["model"], entry.get("adapter"), entry.get("template"), name)


# --- resolving stage configs -----------------------------------------------------------------


@dataclass
class ResolvedStage:
    spec: StageSpec
    config: dict[str, Any]
    stage_dir: Path
    output_dir: Path
    merged_dir: Path | None
    export_config: dict[str, Any] | None
    # What a later stage or predict loads: full model + adapter (adapter None after a merge).
    result_model: str
    result_adapter: str | None

    @property
    def datasets(self) -> list[str]:
        names: list[str] = []
        for key in ("dataset", "eval_dataset"):
            value = self.config.get(key)
            if value:
                names.extend(n.strip() for n in str(value).split(",") if n.strip())
        return names


def _absolute(value: str) -> str:
    path = Path(value)
    return str(path.resolve()) if path.exists() or value.startswith(("configs/", "data/", "models/")) else value


def resolve_stages(
    spec: PipelineSpec, stage_overrides: dict[str, dict[str, Any]], run_dir: Path, step_counts: dict[str, int]
) -> list[ResolvedStage]:
    """Each stage's recipe with overrides applied and chaining filled in (stage k+1 from stage k).

    ``step_counts`` gives finished stages' optimizer steps, for ``match_steps`` stages whose sources
    are epoch-based; for step-based sources the recipes' ``max_steps`` are summed.
    """
    resolved: dict[str, ResolvedStage] = {}
    base_model = _absolute(spec.base_model)
    data_dir = (run_dir / "data").resolve()
    result = []
    for stage in spec.stages:
        config = load_yaml(stage.recipe)
        config.update(stage.overrides)
        config.update(stage_overrides.get("train", {}))
        config.update(stage_overrides.get(stage.name, {}))
        if stage.start_from == "base":
            config["model_name_or_path"] = base_model
            config.pop("adapter_name_or_path", None)
        else:
            upstream = resolved[stage.start_from]
            config["model_name_or_path"] = upstream.result_model
            if upstream.result_adapter:
                config["adapter_name_or_path"] = upstream.result_adapter
            else:
                config.pop("adapter_name_or_path", None)
        if stage.match_steps:
            total = 0
            for source in stage.match_steps:
                steps = resolved[source].config.get("max_steps")
                if isinstance(steps, int) and steps > 0:
                    total += steps
                elif source in step_counts:
                    total += step_counts[source]
                else:
                    total = -1
                    break
            if total > 0:
                config["max_steps"] = total
        stage_dir = (run_dir / stage.name).resolve()
        output_dir = stage_dir / "output"
        config["dataset_dir"] = str(data_dir)
        config["output_dir"] = str(output_dir)
        config["overwrite_output_dir"] = False  # keep checkpoints so an interrupted stage resumes
        if config.get("deepspeed"):
            config["deepspeed"] = _absolute(str(config["deepspeed"]))
        merged_dir = export_config = None
        result_model, result_adapter = config["model_name_or_path"], str(output_dir)
        if config.get("finetuning_type", "lora") != "lora":
            result_adapter = None
            result_model = str(output_dir)
        if stage.merge:
            merged_dir = stage_dir / "merged"
            export_config = load_yaml(stage.merge)
            export_config["model_name_or_path"] = config["model_name_or_path"]
            export_config["adapter_name_or_path"] = str(output_dir)
            export_config["export_dir"] = str(merged_dir)
            export_config.setdefault("template", config.get("template"))
            result_model, result_adapter = str(merged_dir), None
        item = ResolvedStage(
            stage, config, stage_dir, output_dir, merged_dir, export_config, result_model, result_adapter
        )
        resolved[stage.name] = item
        result.append(item)
    return result


def dump_config(config: dict[str, Any], header: str) -> str:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


# --- planned datasets ------------------------------------------------------------------------


def planned_datasets(spec: PipelineSpec) -> set[str]:
    """Dataset names the prepare step will register, so pre-flight can check recipes before it runs."""
    names: set[str] = set()
    if spec.data.cpt:
        names |= {"coretech_cpt", "coretech_cpt_ipc", "coretech_cpt_patents", "coretech_cpt_general"}
    if spec.data.sft:
        from coretech.data.sft import load_sft_config, planned_dataset_names

        names |= set(planned_dataset_names(load_sft_config(spec.data.sft)))
    return names


# --- pre-flight ------------------------------------------------------------------------------


def preflight(spec: PipelineSpec, stages: list[ResolvedStage], run_dir: Path, *, after_prepare: bool) -> None:
    """Validate everything before a launch; raise PreflightFailed listing every problem."""
    problems: list[Problem] = []
    planned = set() if after_prepare else planned_datasets(spec)
    will_exist = {_absolute(spec.base_model)} if spec.embedded_model else set()
    problems += check_writable(run_dir, f"run folder {run_dir}")
    problems += check_launch_paths({"run folder": str(run_dir.resolve())}, "run folder")
    for stage in stages:
        recipe = stage.spec.recipe
        problems += check_llamafactory_config(stage.config, recipe, "train")
        if stage.config.get("deepspeed"):
            problems += check_deepspeed_config(Path(stage.config["deepspeed"]), f"{recipe} (deepspeed)")
        if stage.spec.start_from == "base":
            problems += check_model_path(
                stage.config["model_name_or_path"], f"{recipe} (model_name_or_path)", will_exist
            )
        problems += check_datasets(stage.datasets, Path(stage.config["dataset_dir"]), f"{recipe} (dataset)", planned)
        problems += check_launch_paths(
            {k: str(stage.config[k]) for k in ("model_name_or_path", "output_dir", "deepspeed") if stage.config.get(k)},
            str(recipe),
        )
        if stage.export_config is not None:
            problems += check_llamafactory_config(stage.export_config, stage.spec.merge, "export")
    if spec.predict:
        predict_recipe = load_yaml(spec.predict.recipe)
        predict_recipe.update(model_name_or_path=_absolute(spec.base_model), dataset_dir=str(run_dir / "data"))
        predict_recipe.pop("adapter_name_or_path", None)
        problems += check_llamafactory_config(predict_recipe, spec.predict.recipe, "train")
        problems += check_datasets(
            [spec.predict.dataset], (run_dir / "data").resolve(), f"{spec.predict.recipe} (dataset)", planned
        )
    if spec.evaluate:
        for scheme in spec.evaluate.scheme:
            if not Path(scheme).is_file():
                problems.append(Problem("evaluate.scheme", f"IPC scheme file {scheme} not found"))
    if problems:
        raise PreflightFailed(problems)


# --- running ---------------------------------------------------------------------------------


@dataclass
class RunContext:
    spec: PipelineSpec
    pipeline_path: Path
    run_dir: Path
    manifest: Manifest
    launch: LaunchSettings
    dry_run: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def is_main_node(self) -> bool:
        return self.launch.node_rank == 0


def _say(message: str) -> None:
    print(f"[coretech] {message}", flush=True)


def prepare_fingerprint(spec: PipelineSpec) -> str:
    """Fingerprint of the prepare step: its settings files and every input file they name."""
    inputs = [p for p in (spec.data.cpt, spec.data.sft) if p]
    named: list[Path] = []
    for section in inputs:
        named += _paths_named_in(load_yaml(section))
    return fingerprint("prepare", [str(p) for p in inputs], paths=[*inputs, *sorted(set(named))])


def _prepare(ctx: RunContext) -> str:
    """Build the embedded model and the datasets, unless their inputs are unchanged since last time."""
    spec = ctx.spec
    data_dir = ctx.run_dir / "data"
    fp = prepare_fingerprint(spec)
    if ctx.dry_run:
        _say(f"prepare: in-process: coretech prepare cpt/sft → {data_dir}")
        return fp
    if spec.embedded_model:
        started = time.monotonic()
        ensure_embedded_model(spec.base_model)
        ctx.timings["model"] = time.monotonic() - started
    if ctx.manifest.done("steps", "prepare", fp) and (data_dir / "dataset_info.json").is_file():
        _say("prepare: inputs unchanged, reusing prepared datasets")
        return fp
    started = time.monotonic()
    report: dict[str, Any] = {}
    if spec.data.cpt:
        from coretech.data.cpt import build_cpt_corpus, load_cpt_config

        _say(f"prepare cpt: {spec.data.cpt}")
        cpt = build_cpt_corpus(load_cpt_config(spec.data.cpt), data_dir)
        report["cpt"] = cpt.markdown()
    if spec.data.sft:
        from coretech.data.sft import build_sft_datasets, load_sft_config

        _say(f"prepare sft: {spec.data.sft}")
        sft = build_sft_datasets(load_sft_config(spec.data.sft), data_dir)
        report["sft"] = sft.markdown()
    seconds = time.monotonic() - started
    ctx.timings["prepare"] = seconds
    ctx.manifest.record("steps", "prepare", {"status": "done", "fingerprint": fp, "seconds": seconds, **report})
    return fp


def _dataset_fingerprint(stage: ResolvedStage) -> str:
    data_dir = Path(stage.config["dataset_dir"])
    info_path = data_dir / "dataset_info.json"
    if not info_path.is_file():
        return "no-data"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    entries = {name: info.get(name) for name in stage.datasets}
    files = [data_dir / e["file_name"] for e in entries.values() if e and e.get("file_name")]
    return fingerprint(entries, paths=files)


def _trainer_summary(output_dir: Path) -> dict[str, Any]:
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


def _has_weights(folder: Path) -> bool:
    return any(folder.glob("adapter_model.*")) or any(folder.glob("model*.safetensors"))


def _launch(ctx: RunContext, name: str, argv: list[str], env_extra: dict[str, str], folder: Path, log: str) -> None:
    env = child_environment(env_extra)
    command = describe_command(argv, env)
    # Nodes share the run folder: node k > 0 writes train.node<k>.log beside node 0's train.log.
    node = "" if ctx.launch.node_rank == 0 else f".node{ctx.launch.node_rank}"
    stem = "command" if log == "train" else f"{log}_command"
    write_text_atomic(folder / f"{stem}{node}.txt", command)
    if ctx.dry_run:
        print(f"--- {name} ({log})\n{command}", end="", flush=True)
        return
    log_path = folder / f"{log}{node}.log"
    started = time.monotonic()
    status = run_logged(argv, env, log_path, description=f"{name} {log}")
    ctx.timings[f"{name}.{log}"] = time.monotonic() - started
    if status != 0:
        raise StageFailed(f"stage {name} ({log}) failed with exit status {status}; log: {log_path}")


def _wait_for_manifest(
    ctx: RunContext, section: str, name: str, fp: str, what: str, timeout: float = 7 * 24 * 3600
) -> str:
    """Worker nodes follow node 0 through the shared run folder: they wait until node 0's manifest
    shows this step, with the same fingerprint, running or done. Returns that status."""
    started = time.monotonic()
    while True:
        entry = Manifest(ctx.manifest.path).data[section].get(name, {})
        if entry.get("fingerprint") == fp and entry.get("status") in {"running", "done"}:
            return entry["status"]
        if entry.get("fingerprint") == fp and entry.get("status") == "failed":
            raise StageFailed(f"{what}: node 0 reports a failure ({entry.get('error', 'see its log')})")
        if time.monotonic() - started > timeout:
            raise CoreTechError(
                f"timed out waiting for {what}; is node 0 running this pipeline on a shared run folder?"
            )
        time.sleep(2)


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


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One runner per run folder: a second `coretech run` on the same folder fails at once."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ".coretech.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CoreTechError(
                f"{run_dir} is in use by another `coretech run`; wait for it or pick --run-dir"
            ) from None
        yield


def _run_stage(ctx: RunContext, stage: ResolvedStage, upstream_fp: str) -> str:
    name = stage.spec.name
    fp = fingerprint(stage.config, stage.export_config, upstream_fp, _dataset_fingerprint(stage))
    worker = not ctx.is_main_node and not ctx.dry_run
    if worker and _wait_for_manifest(ctx, "stages", name, fp, f"stage {name}") == "done":
        _say(f"{name}: finished on node 0, skipping")
        return fp
    finished = ctx.manifest.done("stages", name, fp)
    if finished and _has_weights(Path(finished["model"] if not finished.get("adapter") else finished["adapter"])):
        _say(f"{name}: unchanged since the last run, skipping (output {finished['output_dir']})")
        return fp
    stage.stage_dir.mkdir(parents=True, exist_ok=True)
    previous = ctx.manifest.data["stages"].get(name, {})
    if previous.get("fingerprint") != fp and stage.output_dir.exists() and not ctx.dry_run and ctx.is_main_node:
        # Checkpoints of a different config must not be resumed: start this stage clean.
        shutil.rmtree(stage.output_dir)
        if stage.merged_dir and stage.merged_dir.exists():
            shutil.rmtree(stage.merged_dir)
    config_path = stage.stage_dir / "config.yaml"
    header = (
        f"Resolved by `coretech run {ctx.pipeline_path}` for stage {name!r}.\n"
        f"Recipe: {stage.spec.recipe}; chaining, run folder and overrides applied. Fingerprint {fp}."
    )
    if ctx.is_main_node:
        if not ctx.dry_run:
            ctx.manifest.record(
                "stages", name, {"status": "running", "fingerprint": fp, "output_dir": str(stage.output_dir)}
            )
        write_text_atomic(config_path, dump_config(stage.config, header))
    check_launch_path(config_path, "stage config")
    if not ctx.dry_run:
        refuse_if_still_running(config_path, name, ctx.launch.node_rank)
    resuming = any(stage.output_dir.glob("checkpoint-*"))
    _say(f"{name}: training{' (resuming from checkpoint)' if resuming else ''} → {stage.stage_dir}/train.log")
    argv = [llamafactory_cli(), "train", str(config_path)]
    try:
        _launch(ctx, name, argv, ctx.launch.environment(), stage.stage_dir, "train")
    except StageFailed as exc:
        if ctx.is_main_node:
            ctx.manifest.record(
                "stages",
                name,
                {"status": "failed", "fingerprint": fp, "output_dir": str(stage.output_dir), "error": str(exc)},
            )
        raise
    if not ctx.is_main_node:
        return fp
    if ctx.dry_run:
        if stage.export_config is not None:
            export_path = stage.stage_dir / "export.yaml"
            write_text_atomic(export_path, dump_config(stage.export_config, f"Merge of stage {name!r}."))
            _launch(ctx, name, [llamafactory_cli(), "export", str(export_path)], {}, stage.stage_dir, "export")
        return fp
    if not _has_weights(stage.output_dir):
        raise StageFailed(
            f"stage {name} exited 0 but wrote no weights to {stage.output_dir}; log: {stage.stage_dir / 'train.log'}"
        )
    if stage.export_config is not None:
        export_path = stage.stage_dir / "export.yaml"
        write_text_atomic(
            export_path, dump_config(stage.export_config, f"Merge of stage {name!r}; from {stage.spec.merge}.")
        )
        _say(f"{name}: merging the adapter into a full model → {stage.merged_dir}")
        _launch(ctx, name, [llamafactory_cli(), "export", str(export_path)], {}, stage.stage_dir, "export")
        assert stage.merged_dir is not None
        if not _has_weights(stage.merged_dir):
            raise StageFailed(
                f"stage {name}: export wrote no model to {stage.merged_dir}; log: {stage.stage_dir / 'export.log'}"
            )
    entry = {
        "status": "done",
        "fingerprint": fp,
        "recipe": str(stage.spec.recipe),
        "output_dir": str(stage.output_dir),
        "model": stage.result_model,
        "adapter": stage.result_adapter,
        "template": stage.config.get("template") or (stage.export_config or {}).get("template"),
        "seconds": round(ctx.timings.get(f"{name}.train", 0) + ctx.timings.get(f"{name}.export", 0), 1),
        **_trainer_summary(stage.output_dir),
    }
    ctx.manifest.record("stages", name, entry)
    loss = f", loss {entry['first_loss']:.3f} → {entry['last_loss']:.3f}" if "last_loss" in entry else ""
    _say(f"{name}: done in {_format_seconds(entry['seconds'])}, {entry.get('global_step', '?')} steps{loss}")
    order = ctx.manifest.data.setdefault("order", [])
    if name not in order:
        order.append(name)
    ctx.manifest.data["final_stage"] = name
    write_json_atomic(ctx.manifest.path, ctx.manifest.data)
    return fp


def _model_for(ctx: RunContext, stages: dict[str, ResolvedStage], name: str) -> tuple[str, str | None]:
    if name == "base":
        return _absolute(ctx.spec.base_model), None
    stage = stages[name]
    return stage.result_model, stage.result_adapter


def _predict(ctx: RunContext, stages: dict[str, ResolvedStage], stage_fps: dict[str, str]) -> dict[str, Path]:
    spec = ctx.spec.predict
    assert spec is not None
    outputs: dict[str, Path] = {}
    for name in spec.models:
        model, adapter = _model_for(ctx, stages, name)
        out_file = ctx.run_dir / "predict" / name / "generated_predictions.jsonl"
        fp = fingerprint("predict", name, stage_fps.get(name, model), asdict(spec), load_yaml(spec.recipe))
        outputs[name] = out_file
        if ctx.dry_run:
            _say(f"predict {name}: in-process {spec.backend} backend, model {model}, adapter {adapter} → {out_file}")
            continue
        if ctx.manifest.done("steps", f"predict.{name}", fp) and out_file.is_file():
            _say(f"predict {name}: unchanged, reusing {out_file}")
            continue
        if ctx.manifest.data["steps"].get(f"predict.{name}", {}).get("fingerprint") != fp:
            out_file.unlink(missing_ok=True)  # a different model or recipe: do not resume old lines
        from coretech.infer.predict import run_prediction

        _say(f"predict {name}: {spec.dataset} → {out_file}")
        result = run_prediction(
            model=model,
            adapter=adapter,
            dataset_dir=(ctx.run_dir / "data").resolve(),
            dataset=spec.dataset,
            out_file=out_file,
            recipe=spec.recipe,
            backend=spec.backend,
            max_samples=spec.max_samples,
            batch_size=spec.batch_size,
        )
        ctx.timings[f"predict.{name}"] = result.seconds
        ctx.manifest.record(
            "steps",
            f"predict.{name}",
            {
                "status": "done",
                "fingerprint": fp,
                "file": str(out_file),
                "backend": result.backend,
                "written": result.written,
                "total": result.total,
                "seconds": round(result.seconds, 1),
            },
        )
    return outputs


def _evaluate(ctx: RunContext, predictions: dict[str, Path]) -> dict[str, dict]:
    from coretech.eval.report import evaluate_runs
    from coretech.ipc import IpcScheme

    spec = ctx.spec.evaluate or EvaluateSpec()
    scheme = IpcScheme.load(spec.scheme) if spec.scheme else None
    started = time.monotonic()
    metrics = evaluate_runs(
        predictions, ctx.run_dir / "eval", task=spec.task, scheme=scheme, fuzzy_threshold=spec.fuzzy_threshold
    )
    ctx.timings["evaluate"] = time.monotonic() - started
    write_json_atomic(ctx.run_dir / "metrics.json", metrics)
    return metrics


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def write_report(ctx: RunContext, metrics: dict[str, dict] | None, wall_seconds: float) -> Path:
    """``report.md``: stages with times and losses, data summaries, the metrics table and chart."""
    lines = [
        f"# CoreTech run `{ctx.spec.name}`",
        "",
        f"Pipeline `{ctx.pipeline_path}` · base model `{ctx.spec.base_model}` · "
        f"{ctx.launch.nnodes} node(s) × {ctx.launch.nproc_per_node or 'all'} process(es), DeepSpeed per recipe · "
        f"wall time {_format_seconds(wall_seconds)}",
        "",
        "## Stages",
        "",
        "| # | stage | starts from | steps | first → last loss | time (this run) | output |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, stage in enumerate(ctx.spec.stages, 1):
        entry = ctx.manifest.data["stages"].get(stage.name, {})
        loss = (
            f"{entry['first_loss']:.3f} → {entry['last_loss']:.3f}"
            if "first_loss" in entry and "last_loss" in entry
            else "–"
        )
        took = ctx.timings.get(f"{stage.name}.train")
        took_text = (
            _format_seconds(took + ctx.timings.get(f"{stage.name}.export", 0)) if took else "skipped (unchanged)"
        )
        output = Path(entry.get("model") if not entry.get("adapter") else entry["adapter"]) if entry else None
        shown = (
            output.relative_to(ctx.run_dir.resolve())
            if output and output.is_relative_to(ctx.run_dir.resolve())
            else output
        )
        lines.append(
            f"| {index} | {stage.name} | {stage.start_from} | {entry.get('global_step', '–')} | {loss} | "
            f"{took_text} | `{shown}` |"
        )
    prepare = ctx.manifest.data["steps"].get("prepare", {})
    for key, title in (("cpt", "CPT corpus"), ("sft", "SFT datasets")):
        if prepare.get(key):
            lines += ["", f"## {title}", "", demote_headings(prepare[key].strip(), to_level=3)]
    if metrics:
        from coretech.eval.report import metrics_table_markdown

        lines += ["", "## Metrics", "", metrics_table_markdown(metrics).strip(), ""]
        chart = ctx.run_dir / "eval" / "f1_by_level.png"
        if chart.is_file():
            lines += ["![F1 by IPC level](eval/f1_by_level.png)", ""]
        lines += _curriculum_comparison(metrics)
    timing_rows = [(k, v) for k, v in ctx.timings.items()]
    if timing_rows:
        lines += ["", "## Wall time of this invocation", "", "| step | time |", "|---|---|"]
        lines += [f"| {k} | {_format_seconds(v)} |" for k, v in timing_rows]
    path = ctx.run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def demote_headings(markdown: str, to_level: int) -> str:
    """Shift a builder's own Markdown report so its top heading sits at ``to_level`` in ours."""
    levels = [len(line) - len(line.lstrip("#")) for line in markdown.splitlines() if line.startswith("#")]
    if not levels:
        return markdown
    shift = to_level - min(levels)
    return "\n".join("#" * shift + line if line.startswith("#") else line for line in markdown.splitlines())


def _curriculum_comparison(metrics: dict[str, dict]) -> list[str]:
    """One sentence per key metric: curriculum's last stage against the shuffled one-stage ablation."""
    curriculum = [n for n in metrics if n.startswith("sft_stage")]
    shuffled = [n for n in metrics if "shuffled" in n]
    if not curriculum or not shuffled:
        return []
    last, ablation = curriculum[-1], shuffled[0]
    lines = ["## Curriculum against shuffled (same steps)", ""]

    def shown(name: str, key: str) -> str:
        value = metrics[name][key]
        low, high = metrics[name].get(f"{key}_ci_low"), metrics[name].get(f"{key}_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if isinstance(low, int | float) and isinstance(high, int | float) else ""
        return f"{value:.3f}{interval}"

    for key in ("ipc.subclass.f1", "ipc.class.f1", "tech.f1", "rouge_l"):
        a, b = metrics[last].get(key), metrics[ablation].get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            lines.append(
                f"- `{key}`: curriculum `{last}` {shown(last, key)} vs shuffled `{ablation}` {shown(ablation, key)} "
                f"(difference {a - b:+.3f})"
            )
    n = metrics[last].get("n")
    lines.append(
        f"\nBrackets: 95% bootstrap intervals over the {n} test answers; overlapping intervals mean no clear winner."
    )
    return [*lines, ""]


def _print_summary(ctx: RunContext, metrics: dict[str, dict] | None, report: Path) -> None:
    if metrics:
        from coretech.eval.report import print_metrics_table

        print_metrics_table(metrics)
    _say(f"report: {report}")
    _say(f"metrics: {ctx.run_dir / 'metrics.json'}")


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
    pipeline = Path(pipeline)
    spec, stage_overrides = load_pipeline(pipeline, overrides)
    run_dir = Path(run_dir or Path("runs") / spec.name)
    launch = spec.launch.with_environment()
    if dry_run or launch.node_rank > 0:  # worker nodes share node 0's run folder: no lock of their own
        return _run_pipeline(spec, stage_overrides, pipeline, run_dir, launch, dry_run, fresh, started)
    with run_lock(run_dir):
        return _run_pipeline(spec, stage_overrides, pipeline, run_dir, launch, dry_run, fresh, started)


def _run_pipeline(
    spec: PipelineSpec,
    stage_overrides: dict[str, dict[str, Any]],
    pipeline: Path,
    run_dir: Path,
    launch: LaunchSettings,
    dry_run: bool,
    fresh: bool,
    started: float,
) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    if fresh and (run_dir / MANIFEST).exists() and not dry_run:
        (run_dir / MANIFEST).unlink()
    manifest = Manifest(run_dir / MANIFEST)
    ctx = RunContext(spec, pipeline, run_dir, manifest, launch, dry_run=dry_run)
    step_counts = {n: e.get("global_step") for n, e in manifest.data["stages"].items() if e.get("global_step")}
    stages = resolve_stages(spec, stage_overrides, run_dir, step_counts)
    _say(f"pipeline {spec.name}: {len(stages)} stage(s), run folder {run_dir}")
    preflight(spec, stages, run_dir, after_prepare=False)
    if ctx.is_main_node:
        prepare_fp = _prepare(ctx)
    else:
        prepare_fp = prepare_fingerprint(spec)
        _wait_for_manifest(ctx, "steps", "prepare", prepare_fp, "the prepared datasets")
    if not dry_run:
        preflight(spec, stages, run_dir, after_prepare=True)
    if ctx.is_main_node:
        manifest.data["base"] = {
            "model": _absolute(spec.base_model),
            "template": stages[0].config.get("template") if stages else None,
        }
        manifest.data["pipeline"] = str(pipeline)
        if not dry_run:
            write_json_atomic(manifest.path, manifest.data)
    fps: dict[str, str] = {}
    for stage in stages:
        upstream = prepare_fp if stage.spec.start_from == "base" else fps[stage.spec.start_from]
        if stage.spec.match_steps and "max_steps" not in stage.config:
            counts = {n: manifest.data["stages"].get(n, {}).get("global_step") for n in stage.spec.match_steps}
            if all(counts.values()):
                stage.config["max_steps"] = sum(counts.values())
        fps[stage.spec.name] = _run_stage(ctx, stage, upstream)
    if not ctx.is_main_node:
        _say("worker node: training stages done; node 0 predicts and evaluates")
        return 0
    metrics = None
    if spec.predict:
        predictions = _predict(ctx, {s.spec.name: s for s in stages}, fps)
        if not dry_run:
            metrics = _evaluate(ctx, predictions)
    if dry_run:
        return 0
    report = write_report(ctx, metrics, time.monotonic() - started)
    _print_summary(ctx, metrics, report)
    return 0


def validate_pipeline(pipeline: str | Path, overrides: list[str] | None = None, *, run_dir: Path | None = None) -> int:
    """Pre-flight only: parse every resolved stage and report all problems; launches nothing."""
    spec, stage_overrides = load_pipeline(Path(pipeline), overrides)
    run_dir = Path(run_dir or Path("runs") / spec.name)
    stages = resolve_stages(spec, stage_overrides, run_dir, {})
    preflight(spec, stages, run_dir, after_prepare=False)
    _say(f"pipeline {spec.name}: {len(stages)} stage(s) passed pre-flight")
    return 0


def train_recipe(
    recipe: Path,
    overrides: list[str] | None = None,
    *,
    nproc_per_node: int | None = None,
    log_dir: Path | None = None,
    dry_run: bool = False,
) -> int:
    """One recipe through the same launcher as the pipeline (no chaining, no manifest)."""
    config = load_yaml(recipe)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        config[key] = yaml.safe_load(raw)
    if config.get("deepspeed"):
        config["deepspeed"] = _absolute(str(config["deepspeed"]))
    problems = check_llamafactory_config(config, recipe, "train")
    if config.get("deepspeed"):
        problems += check_deepspeed_config(Path(config["deepspeed"]), f"{recipe} (deepspeed)")
    if config.get("dataset"):
        names = [n.strip() for n in str(config["dataset"]).split(",")]
        problems += check_datasets(names, Path(config.get("dataset_dir", "data")), f"{recipe} (dataset)")
    model = str(config.get("model_name_or_path", ""))
    if model == str(EMBEDDED_MODEL_DIR) and not dry_run:
        ensure_embedded_model(model)
    elif model:
        problems += check_model_path(model, f"{recipe} (model_name_or_path)")
    if problems:
        raise PreflightFailed(problems)
    folder = Path(log_dir or config.get("output_dir", "saves/run"))
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yaml"
    write_text_atomic(config_path, dump_config(config, f"Resolved from {recipe} by `coretech train`."))
    check_launch_path(config_path.resolve(), "config")
    launch = LaunchSettings(nproc_per_node=nproc_per_node).with_environment()
    argv = [llamafactory_cli(), "train", str(config_path.resolve())]
    env = child_environment(launch.environment())
    write_text_atomic(folder / "command.txt", describe_command(argv, env))
    if dry_run:
        print(describe_command(argv, env), end="")
        return 0
    status = run_logged(argv, env, folder / "train.log", description=str(recipe))
    if status != 0:
        raise StageFailed(f"{recipe} failed with exit status {status}; log: {folder / 'train.log'}")
    _say(f"done: {config.get('output_dir')}")
    return 0
