"""The pipeline file (``configs/pipelines/*.yaml``): its settings as dataclasses, overrides applied.

Relative paths in a pipeline file name files of the repository that holds it (the nearest folder
above it with a ``configs/`` folder), so ``coretech run`` works from any directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.config import ConfigError, build_dataclass, load_yaml, parse_overrides, repo_root_of, resolve_path
from coretech.launch import LaunchSettings

# Keys the runner owns in a resolved stage config: chaining and the run folder decide them.
RUNNER_KEYS = ("model_name_or_path", "adapter_name_or_path", "dataset_dir", "output_dir")
BACKENDS = ("hf", "vllm", "auto", "retrieval")


@dataclass
class StageSpec:
    """One training stage: a LLaMA-Factory recipe and where its starting weights come from."""

    name: str
    recipe: Path
    start_from: str = "base"  # "base" or an earlier stage's name
    merge: Path | None = None  # an export recipe: merge this stage's LoRA into a full model
    match_steps: list[str] = field(default_factory=list)  # an ablation: as many steps as these stages together
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
class RagSpec:
    """Retrieval-augmented datasets: a ``<name>_rag`` variant of every prepared SFT dataset, the top-``k``
    candidate codes with their titles in each IPC question (``coretech.ground.rag``)."""

    k: int = 10

    def check(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")


@dataclass
class DataSpec:
    cpt: Path | None = None  # settings for `coretech prepare cpt`
    sft: Path | None = None  # settings for `coretech prepare sft`
    rag: RagSpec | None = None  # also write the SFT datasets' retrieval-augmented variants

    def check(self) -> None:
        if self.rag is not None and self.sft is None:
            raise ValueError("rag: needs sft (the retrieval-augmented datasets are variants of the SFT datasets)")


@dataclass
class PredictModel:
    """One row of the metrics table: a model (a stage or ``base``) predicted with a backend and options."""

    name: str  # the row's name in the metrics table
    model: str = ""  # a stage name or "base"; empty: the same as ``name``
    backend: str | None = None  # None: the predict section's backend
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of run_prediction
    rag: bool = False  # ask the test set's ``_rag`` variant: retrieved candidate codes in each IPC question

    def check(self) -> None:
        self.model = self.model or self.name

    def asks(self, dataset: str) -> str:
        """The dataset this row is asked: a RAG row asks the variant with candidates in the questions."""
        from coretech.ground import rag_variant

        return rag_variant(dataset) if self.rag else dataset
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {list(BACKENDS)}")


@dataclass
class PredictSpec:
    recipe: Path
    dataset: str | None = None  # one test set (kept for older pipeline files); see ``datasets``
    datasets: list[str] = field(default_factory=list)  # test sets, each predicted and scored on its own
    models: list[str | PredictModel] = field(default_factory=lambda: ["base"])
    backend: str = "auto"
    max_samples: int | None = None
    batch_size: int | None = None

    def check(self) -> None:
        if self.dataset and self.datasets:
            raise ValueError("give either dataset or datasets, not both")
        self.datasets = list(self.datasets or [self.dataset or "coretech_sft_test"])
        self.dataset = None
        self.models = [m if isinstance(m, PredictModel) else PredictModel(name=m, model=m) for m in self.models]
        names = [m.name for m in self.entries]
        duplicate = sorted({n for n in names if names.count(n) > 1})
        if duplicate:
            raise ValueError(f"models: the name {duplicate[0]!r} appears twice")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} is not one of {list(BACKENDS)}")

    @property
    def entries(self) -> list[PredictModel]:
        return [m for m in self.models if isinstance(m, PredictModel)]


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
            unknown = [m.model for m in self.predict.entries if m.model != "base" and m.model not in seen]
            if unknown:
                raise ValueError(f"predict.models names {unknown[0]!r}, which is not a stage")
            rag_rows = [m.name for m in self.predict.entries if m.rag]
            if rag_rows and self.data.rag is None:
                raise ValueError(f"predict.models {rag_rows[0]!r} asks with rag: true, but data.rag is not set")
        self.launch.check()

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    @property
    def final_stage(self) -> str | None:
        """The product of the run: the last stage of the main chain, never an ablation.

        An ablation is a stage with ``match_steps``. From the last non-ablation stage that no other
        non-ablation stage starts from, the chain ends there (the curriculum's final stage).
        """
        main = [s for s in self.stages if not s.match_steps]
        started_from = {s.start_from for s in main}
        leaves = [s.name for s in main if s.name not in started_from]
        return leaves[-1] if leaves else None


@dataclass
class LoadedPipeline:
    """A pipeline file with its overrides: the spec, per-stage recipe overrides, and the repository."""

    spec: PipelineSpec
    path: Path
    repo: Path
    stage_overrides: dict[str, dict[str, Any]]


def _resolve_paths(spec: PipelineSpec, repo: Path) -> None:
    for stage in spec.stages:
        stage.recipe = resolve_path(stage.recipe, repo)
        stage.merge = resolve_path(stage.merge, repo) if stage.merge else None
    spec.data.cpt = resolve_path(spec.data.cpt, repo) if spec.data.cpt else None
    spec.data.sft = resolve_path(spec.data.sft, repo) if spec.data.sft else None
    if spec.predict:
        spec.predict.recipe = resolve_path(spec.predict.recipe, repo)
    if spec.evaluate:
        spec.evaluate.scheme = [resolve_path(p, repo) for p in spec.evaluate.scheme]
    local = resolve_path(spec.base_model, repo)
    if spec.embedded_model or local.exists() or spec.base_model.startswith((".", "/", "~")):
        spec.base_model = str(local)  # otherwise a hub id such as Qwen/Qwen2.5-7B


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> LoadedPipeline:
    """Load a pipeline file; ``launch.*``/``predict.*``/``evaluate.*`` overrides apply here, the rest per stage."""
    path = Path(path)
    data = load_yaml(path)
    parsed = parse_overrides(overrides)
    for key, value in parsed.items():
        if not isinstance(value, dict):
            raise ConfigError(f"override {key}={value!r}: expected scope.key=value, e.g. train.max_steps=2")
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
    repo = repo_root_of(path)
    _resolve_paths(spec, repo)
    return LoadedPipeline(spec, path.resolve(), repo, parsed)
