"""Stages and chaining: each stage's recipe resolved (overrides, stage k+1 from stage k's result), and the
pre-flight over all of them before anything is launched."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from coretech.config import ConfigError, load_yaml, repo_root_of, resolve_path
from coretech.errors import CoreTechError
from coretech.pipeline.spec import LoadedPipeline, PipelineSpec, StageSpec
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
    def name(self) -> str:
        return self.spec.name

    @property
    def datasets(self) -> list[str]:
        names: list[str] = []
        for key in ("dataset", "eval_dataset"):
            value = self.config.get(key)
            if value:
                names.extend(n.strip() for n in str(value).split(",") if n.strip())
        return names


def recipe_paths_resolved(config: dict[str, Any], recipe: Path) -> dict[str, Any]:
    """A recipe's own file paths (DeepSpeed config) against the repository that holds the recipe."""
    if config.get("deepspeed") and isinstance(config["deepspeed"], str):
        config["deepspeed"] = str(resolve_path(config["deepspeed"], repo_root_of(recipe)))
    return config


def resolve_stages(
    loaded: LoadedPipeline, run_dir: Path, step_counts: dict[str, int] | None = None
) -> list[ResolvedStage]:
    """Each stage's recipe with overrides applied and chaining filled in (stage k+1 from stage k).

    ``step_counts`` gives finished stages' optimizer steps, for ``match_steps`` stages whose sources
    are epoch-based; for step-based sources the recipes' ``max_steps`` are summed.
    """
    spec, overrides, step_counts = loaded.spec, loaded.stage_overrides, step_counts or {}
    resolved: dict[str, ResolvedStage] = {}
    data_dir = (run_dir / "data").resolve()
    for stage in spec.stages:
        config = recipe_paths_resolved(load_yaml(stage.recipe), stage.recipe)
        config.update(stage.overrides)
        config.update(overrides.get("train", {}))
        config.update(overrides.get(stage.name, {}))
        if stage.start_from == "base":
            config["model_name_or_path"] = spec.base_model
            config.pop("adapter_name_or_path", None)
        else:
            upstream = resolved[stage.start_from]
            config["model_name_or_path"] = upstream.result_model
            if upstream.result_adapter:
                config["adapter_name_or_path"] = upstream.result_adapter
            else:
                config.pop("adapter_name_or_path", None)
        if stage.match_steps:
            counts = []
            for source in stage.match_steps:
                steps = resolved[source].config.get("max_steps")
                counts.append(steps if isinstance(steps, int) and steps > 0 else step_counts.get(source))
            if all(counts):
                config["max_steps"] = sum(counts)
        stage_dir = (run_dir / stage.name).resolve()
        output_dir = stage_dir / "output"
        config["dataset_dir"] = str(data_dir)
        config["output_dir"] = str(output_dir)
        config["overwrite_output_dir"] = False  # keep checkpoints so an interrupted stage resumes
        merged_dir = export_config = None
        result_model, result_adapter = config["model_name_or_path"], str(output_dir)
        if config.get("finetuning_type", "lora") != "lora":
            result_model, result_adapter = str(output_dir), None
        if stage.merge:
            merged_dir = stage_dir / "merged"
            export_config = load_yaml(stage.merge)
            export_config["model_name_or_path"] = config["model_name_or_path"]
            export_config["adapter_name_or_path"] = str(output_dir)
            export_config["export_dir"] = str(merged_dir)
            export_config.setdefault("template", config.get("template"))
            result_model, result_adapter = str(merged_dir), None
        resolved[stage.name] = ResolvedStage(
            stage, config, stage_dir, output_dir, merged_dir, export_config, result_model, result_adapter
        )
    return list(resolved.values())


def dump_config(config: dict[str, Any], header: str) -> str:
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def load_prepare_settings(spec: PipelineSpec) -> dict[str, Any]:
    """The prepare step's settings through the loaders ``prepare`` itself uses (unknown keys, YAML tags
    and bad values fail here, in the pre-flight, exactly as they would later).

    The builders read repository-relative inputs, so they load with the repository as the current
    directory."""
    settings: dict[str, Any] = {}
    if spec.data.cpt:
        from coretech.data.cpt import load_cpt_config

        with contextlib.chdir(repo_root_of(spec.data.cpt)):
            settings["cpt"] = load_cpt_config(spec.data.cpt)
    if spec.data.sft:
        from coretech.data.sft import load_sft_config

        with contextlib.chdir(repo_root_of(spec.data.sft)):
            settings["sft"] = load_sft_config(spec.data.sft)
    return settings


def planned_datasets(spec: PipelineSpec, settings: dict[str, Any]) -> set[str]:
    """Dataset names the prepare step will register, so pre-flight can check recipes before it runs."""
    names: set[str] = set()
    if "cpt" in settings:
        names |= {"coretech_cpt", "coretech_cpt_ipc", "coretech_cpt_patents", "coretech_cpt_general"}
    if "sft" in settings:
        from coretech.data.sft import planned_dataset_names

        names |= set(planned_dataset_names(settings["sft"]))
        if spec.data.rag is not None:  # the prepare.rag step adds a _rag variant of each SFT dataset
            from coretech.ground import has_rag_variant, rag_variant

            names |= {rag_variant(name) for name in names if has_rag_variant(name)}
    return names


def preflight(loaded: LoadedPipeline, stages: list[ResolvedStage], run_dir: Path, *, after_prepare: bool) -> None:
    """Validate everything before a launch; raise PreflightFailed listing every problem."""
    spec = loaded.spec
    problems: list[Problem] = []
    settings: dict[str, Any] = {}
    for key, path in (("cpt", spec.data.cpt), ("sft", spec.data.sft)):
        try:
            settings.update({k: v for k, v in load_prepare_settings(_only(spec, key)).items()})
        except (ConfigError, CoreTechError) as exc:
            problems.append(Problem(f"data.{key}", str(exc)))
        except yaml.YAMLError as exc:  # pragma: no cover - loaders convert these; kept as a safety net
            problems.append(Problem(f"{path}", f"invalid YAML ({exc})"))
    planned = set() if after_prepare else planned_datasets(spec, settings)
    will_exist = {spec.base_model} if spec.embedded_model else set()
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
        predict_recipe.update(model_name_or_path=spec.base_model, dataset_dir=str(run_dir / "data"))
        predict_recipe.pop("adapter_name_or_path", None)
        problems += check_llamafactory_config(predict_recipe, spec.predict.recipe, "train")
        asked = list(dict.fromkeys(row.asks(d) for d in spec.predict.datasets for row in spec.predict.entries))
        problems += check_datasets(asked, (run_dir / "data").resolve(), f"{spec.predict.recipe} (dataset)", planned)
        problems += _prediction_option_problems(spec)
        problems += _vllm_problems(spec, will_exist)
    if spec.evaluate:
        for scheme in spec.evaluate.scheme:
            if not Path(scheme).is_file():
                problems.append(Problem("evaluate.scheme", f"IPC scheme file {scheme} not found"))
    if problems:
        raise PreflightFailed(problems)


def _prediction_option_problems(spec: PipelineSpec) -> list[Problem]:
    """``predict.models[].options`` are keyword arguments of ``run_prediction``: unknown ones fail here."""
    import inspect

    from coretech.infer.predict import run_prediction

    accepted = set(inspect.signature(run_prediction).parameters)
    runner_set = {"model", "adapter", "dataset_dir", "dataset", "out_file", "recipe", "backend"}
    problems = []
    for index, row in enumerate(spec.predict.entries if spec.predict else []):
        for key in sorted(set(row.options) - (accepted - runner_set)):
            reason = "is set by the runner" if key in runner_set else "is not an argument of run_prediction"
            problems.append(Problem(f"predict.models[{index}].options.{key}", reason))
    return problems


def _only(spec: PipelineSpec, key: str) -> PipelineSpec:
    """``spec`` with only one prepare section, so each section's problem is reported on its own."""
    from dataclasses import replace

    from coretech.pipeline.spec import DataSpec

    data = DataSpec(cpt=spec.data.cpt if key == "cpt" else None, sft=spec.data.sft if key == "sft" else None)
    return replace(spec, data=data)


def _vllm_problems(spec: PipelineSpec, will_exist: set[str]) -> list[Problem]:
    """A prediction on vLLM that cannot start is found before days of training, not after them: vLLM imports,
    its version is the supported one, and it builds the tokenizer of the model it will serve (the base
    model's; training keeps the tokenizer)."""
    from coretech.infer.predict import choose_backend

    assert spec.predict is not None
    backends = {row.backend or spec.predict.backend for row in spec.predict.entries}
    if "vllm" not in {choose_backend(b)[0] if b == "auto" else b for b in backends}:
        return []
    if spec.base_model in will_exist and not Path(spec.base_model).exists():
        return []  # the embedded model is converted by the prepare step; the check runs again after it
    from coretech.infer.vllm import check_vllm_environment

    return [Problem("predict.backend (vllm)", problem) for problem in check_vllm_environment(spec.base_model)]
