"""Inference recipes: LLaMA-Factory YAML files read into LLaMA-Factory's own argument dataclasses.

A predict recipe is also a valid ``llamafactory-cli train`` recipe (``stage: sft``, ``do_predict``),
so the template, ``cutoff_len`` and decoding settings live in one YAML that both our batch
predictor and LLaMA-Factory's trainer read. This module checks that every key is a field of
LLaMA-Factory's argument dataclasses (a typo fails here, naming the file and key, instead of being
ignored by us and rejected later by LLaMA-Factory), builds ``ModelArguments`` / ``DataArguments`` /
``GeneratingArguments`` from it, and parses ``key=value`` command-line overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coretech.config import ConfigError, load_yaml, repo_root_of, split_coretech_keys
from coretech.config import parse_overrides as config_overrides
from coretech.errors import CoreTechError
from coretech.log import get_logger
from coretech.preflight import llamafactory_fields
from coretech.runs import MANIFEST, read_manifest, resolve_run_model

log = get_logger(__name__)

if TYPE_CHECKING:
    from llamafactory.hparams import DataArguments, GeneratingArguments, ModelArguments

# LLaMA-Factory's default for per_device_eval_batch_size (transformers' TrainingArguments default).
_DEFAULT_EVAL_BATCH_SIZE = 8


def _init_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def train_recipe_keys() -> set[str]:
    """Every key ``llamafactory-cli train`` accepts (its ``_TRAIN_ARGS`` dataclasses)."""
    return set(llamafactory_fields("train"))


def infer_recipe_keys() -> set[str]:
    """Every key ``llamafactory-cli chat`` / ``api`` accept (its ``_INFER_ARGS``: no trainer keys)."""
    return set(llamafactory_fields("infer"))


def check_recipe_keys(values: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}: not an argument of LLaMA-Factory 0.9.5")


def parse_overrides(overrides: list[str] | None, where: str = "command line") -> dict[str, Any]:
    """``key=value`` recipe overrides, typed by the one override parser (``config.parse_overrides``)."""
    return config_overrides(overrides, where)


@dataclass
class PredictRecipe:
    """A predict recipe's values with the model and adapter still open: the run or the command line
    supplies them, the recipe supplies the rest."""

    path: Path
    values: dict[str, Any]
    coretech: dict[str, Any] = dataclasses.field(default_factory=dict)  # CORETECH_PREDICT_KEYS set in it

    @property
    def batch_size(self) -> int:
        return int(self.values.get("per_device_eval_batch_size", _DEFAULT_EVAL_BATCH_SIZE))

    @property
    def max_samples(self) -> int | None:
        value = self.values.get("max_samples")
        return None if value is None else int(value)

    @property
    def template(self) -> str | None:
        return self.values.get("template")

    def _build(self, cls: type, extra: dict[str, Any]) -> Any:
        names = _init_fields(cls)
        kwargs = {k: v for k, v in self.values.items() if k in names}
        kwargs.update(extra)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.path}: {cls.__name__}: {exc}") from None

    def model_args(self, model: str, adapter: str | None) -> ModelArguments:
        from llamafactory.hparams import ModelArguments

        return self._build(ModelArguments, {"model_name_or_path": model, "adapter_name_or_path": adapter})

    def data_args(self, template: str | None = None) -> DataArguments:
        from llamafactory.hparams import DataArguments

        # The dataset keys name training data for `llamafactory-cli train`; we read one dataset ourselves.
        extra: dict[str, Any] = {"dataset": None, "eval_dataset": None, "val_size": 0.0}
        if template is not None:
            extra["template"] = template
        return self._build(DataArguments, extra)

    def generating_args(self) -> GeneratingArguments:
        from llamafactory.hparams import GeneratingArguments

        return self._build(GeneratingArguments, {})


def load_predict_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> PredictRecipe:
    """Read a predict recipe and refuse keys LLaMA-Factory's trainer would refuse."""
    path = Path(path)
    values = load_yaml(path)
    values.update(overrides or {})
    values, ours = split_coretech_keys(values, str(path))
    check_recipe_keys(values, train_recipe_keys(), str(path))
    batch_size = values.get("per_device_eval_batch_size", 1)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f"{path}: per_device_eval_batch_size must be a positive integer, got {batch_size!r}")
    return PredictRecipe(path, values, ours)


def find_recipe(kind: str, template: str | None, repo: Path | None = None) -> Path:
    """The one ``configs/*/<kind>.yaml`` of ``repo`` whose template is the run's, so ``--run`` needs no ``--recipe``.

    ``repo`` defaults to the repository of this package (``recipe_repo(run)`` gives the run's), never the
    current directory."""
    repo = repo or recipe_repo(None)
    candidates = sorted((repo / "configs").glob(f"*/{kind}.yaml"))
    matching = [path for path in candidates if template and load_yaml(path).get("template") == template]
    if len(matching) == 1:
        return matching[0]
    found = "several" if matching else "no"
    raise CoreTechError(
        f"--recipe is required: {found} {repo / 'configs'}/*/{kind}.yaml with template {template!r}; "
        f"pass e.g. --recipe configs/smollm2-135m/{kind}.yaml"
    )


def recipe_repo(run: Path | None) -> Path:
    """Where ``find_recipe`` looks: the repository of the run's pipeline file, else of this package."""
    if run is not None:
        pipeline = read_manifest(Path(run) / MANIFEST).get("pipeline") if (Path(run) / MANIFEST).exists() else None
        if isinstance(pipeline, str) and Path(pipeline).exists():
            return repo_root_of(pipeline)
    return repo_root_of(Path(__file__))


def resolve_model(
    run: Path | None, stage: str | None, model: str | None, adapter: str | None
) -> tuple[str | None, str | None, str | None]:
    """(model, adapter, template) from a run folder's manifest (the pipeline's record of what each
    stage produced) or from the command line; logs which model will be served."""
    if run is None:
        if stage is not None:
            raise CoreTechError("--stage needs --run")
        if model is not None:
            log.info("model: %s%s", model, f" with adapter {adapter}" if adapter else "")
        return model, adapter, None
    if adapter is not None:
        raise CoreTechError("--adapter goes with --model; a run's manifest names its own adapter")
    run_model = resolve_run_model(Path(run), stage)
    log.info(
        "model: stage %s of run %s (%s%s)",
        run_model.stage,
        run,
        run_model.model,
        f" with adapter {run_model.adapter}" if run_model.adapter else "",
    )
    return run_model.model, run_model.adapter, run_model.template
