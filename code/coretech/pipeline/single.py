"""``coretech train RECIPE key=value …``: one LLaMA-Factory recipe through the pipeline's launcher and
pre-flight, without chaining or a manifest."""

from __future__ import annotations

from pathlib import Path

from coretech.config import load_yaml, parse_overrides, repo_root_of, resolve_path
from coretech.errors import StageFailed
from coretech.files import write_text_atomic
from coretech.launch import (
    LaunchSettings,
    check_launch_path,
    child_environment,
    describe_command,
    llamafactory_cli,
    run_logged,
)
from coretech.log import get_logger
from coretech.models import EMBEDDED_MODEL_DIR, ensure_embedded_model
from coretech.pipeline.stages import dump_config, recipe_paths_resolved
from coretech.preflight import (
    PreflightFailed,
    check_datasets,
    check_deepspeed_config,
    check_llamafactory_config,
    check_model_path,
)

log = get_logger(__name__)


def resolve_recipe(recipe: Path, overrides: list[str] | None = None) -> dict:
    """The recipe with overrides (one typing rule: ``learning_rate=1e-4`` is a float) and its
    repository-relative paths (DeepSpeed config, local model, dataset folder) made absolute."""
    config = load_yaml(recipe)
    config.update(parse_overrides(overrides, str(recipe)))
    recipe_paths_resolved(config, recipe)
    repo = repo_root_of(recipe)
    for key in ("model_name_or_path", "dataset_dir", "output_dir"):
        value = config.get(key)
        if isinstance(value, str) and value and (key != "model_name_or_path" or resolve_path(value, repo).exists()):
            config[key] = str(resolve_path(value, repo))
    return config


def train_recipe(
    recipe: Path,
    overrides: list[str] | None = None,
    *,
    nproc_per_node: int | None = None,
    log_dir: Path | None = None,
    dry_run: bool = False,
) -> int:
    """One recipe through the same launcher as the pipeline (no chaining, no manifest)."""
    config = resolve_recipe(recipe, overrides)
    problems = check_llamafactory_config(config, recipe, "train")
    if config.get("deepspeed"):
        problems += check_deepspeed_config(Path(config["deepspeed"]), f"{recipe} (deepspeed)")
    if config.get("dataset"):
        names = [n.strip() for n in str(config["dataset"]).split(",")]
        dataset_dir = Path(config.get("dataset_dir") or resolve_path("data", repo_root_of(recipe)))
        problems += check_datasets(names, dataset_dir, f"{recipe} (dataset)")
    model = str(config.get("model_name_or_path", ""))
    embedded = str(resolve_path(EMBEDDED_MODEL_DIR, repo_root_of(recipe)))
    if model == embedded and not dry_run:
        ensure_embedded_model(model)
    elif model and model != embedded:
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
    log.info("done: %s", config.get("output_dir"))
    return 0
