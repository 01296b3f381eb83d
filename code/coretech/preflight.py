"""Pre-flight validation: every problem in every resolved stage, found before anything is launched.

A CPT run on a 4-GPU node takes days, and LLaMA-Factory only parses a recipe after torchrun has
started every rank and tokenisation may already have run for an hour. So the runner validates all
resolved stage configs up front, with the same parsers the training processes will use:

* each stage YAML by LLaMA-Factory's own ``HfArgumentParser`` over its argument dataclasses (unknown
  keys), plus a type check against those dataclasses' annotations (LLaMA-Factory's ``parse_dict``
  assigns ``lora_rank: abc`` without complaint, and the run dies hours later);
* the DeepSpeed config by DeepSpeed's own ZeRO config model (e.g. an invalid ZeRO stage);
* datasets: named in ``dataset_info.json`` (or about to be produced by the prepare step) with
  their files present;
* the model path exists (or is the embedded model the prepare step creates), output folders are
  writable, and no launch path contains whitespace.

Problems are collected, not raised one at a time: the user fixes them all in one go.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_type_hints

from coretech.config import ConfigError, check_value, split_coretech_keys
from coretech.data.dataset_info import dataset_file_inside
from coretech.errors import CoreTechError
from coretech.ground import RAG_SUFFIX
from coretech.launch import whitespace_problem

# LLaMA-Factory resolves these as local paths when they exist, otherwise as hub ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Problem:
    """One finding: where (file and key) and what is wrong."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class PreflightFailed(CoreTechError):
    """Raised with every problem found, one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"pre-flight found {len(problems)} problem(s); nothing was launched:\n  {lines}")


def key_location(recipe: Path | None, key: str) -> str:
    """``recipe:line (key)`` for a top-level key, so the message points at the line to edit."""
    if recipe is None:
        return key
    try:
        for number, line in enumerate(recipe.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(rf"^{re.escape(key)}\s*:", line):
                return f"{recipe}:{number} ({key})"
    except OSError:
        pass
    return f"{recipe} ({key})"


def llamafactory_fields(kind: Literal["train", "export", "infer"]) -> dict[str, Any]:
    """Field name → annotation over the argument dataclasses LLaMA-Factory 0.9.5 parses for ``kind``.

    The one list of LLaMA-Factory's keys: ``train`` adds ``TrainingArguments`` to the inference set
    (``export``, ``chat`` and ``api`` parse ``_INFER_ARGS``: model, data, finetuning, generating).
    """
    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    classes: list[type] = [ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments]
    if kind == "train":
        classes.insert(2, TrainingArguments)
    result: dict[str, Any] = {}
    for cls in classes:
        try:
            hints = get_type_hints(cls)
        except Exception:  # some annotations reference optional packages; fall back to raw ones
            hints = {f.name: f.type for f in fields(cls)}
        for f in fields(cls):
            if f.init:
                result.setdefault(f.name, hints.get(f.name, Any))
    return result


def _type_problem(value: Any, annotation: Any) -> str | None:
    """Why ``value`` cannot be given for a field annotated ``annotation`` (None when it can)."""
    try:
        check_value(value, annotation, "", text_takes_scalars=True)
    except ConfigError as exc:
        return str(exc).removeprefix(": ")
    return None


def check_llamafactory_config(
    config: dict[str, Any],
    recipe: Path | None,
    kind: Literal["train", "export"] = "train",
    *,
    this_machine: bool = True,
) -> list[Problem]:
    """Unknown keys and mistyped values, judged by LLaMA-Factory's own argument dataclasses.

    With ``this_machine`` (the pre-flight) the parser also judges the recipe against this machine,
    e.g. bf16 without a GPU fails here as it would at launch. Without it (checking a 7B recipe on a
    CPU-only CI machine) half precision is switched off for the parser's pass only.
    """
    from llamafactory.hparams.parser import _parse_infer_args, _parse_train_args

    problems: list[Problem] = []
    if config.get("do_predict"):
        # A predict recipe may carry CoreTech's own keys (constrain_codes, ...): not LLaMA-Factory's to judge.
        try:
            config = split_coretech_keys(config, str(recipe) if recipe else "config")[0]
        except CoreTechError as exc:
            return [Problem(str(recipe) if recipe else "config", str(exc))]
    known = llamafactory_fields(kind)
    for key, value in config.items():
        if key not in known:
            problems.append(Problem(key_location(recipe, key), "unknown key (not an argument of LLaMA-Factory 0.9.5)"))
            continue
        reason = _type_problem(value, known[key])
        if reason:
            problems.append(Problem(key_location(recipe, key), reason))
    template = config.get("template")
    if template:
        from llamafactory.data.template import TEMPLATES

        if template not in TEMPLATES:
            problems.append(Problem(key_location(recipe, "template"), f"no LLaMA-Factory template named {template!r}"))
    if problems:
        return problems
    # The real parser last: dataclass __post_init__ checks (e.g. incompatible options) run here.
    from transformers.utils import logging as transformers_logging

    previous = os.environ.pop("ALLOW_EXTRA_ARGS", None)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # deprecation notes belong in the stage's log, not the pre-flight
    parsed = dict(config)
    if not this_machine:
        parsed.update({k: False for k in ("bf16", "fp16", "pure_bf16") if parsed.get(k)})
    try:
        (_parse_train_args if kind == "train" else _parse_infer_args)(parsed)
    except Exception as exc:  # LLaMA-Factory raises ValueError/TypeError/AssertionError with a message
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problems.append(Problem(str(recipe) if recipe else "config", f"LLaMA-Factory rejects it: {message}"))
    finally:
        transformers_logging.set_verbosity(verbosity)
        if previous is not None:
            os.environ["ALLOW_EXTRA_ARGS"] = previous
    return problems


def check_deepspeed_config(path: Path, where: str) -> list[Problem]:
    """Parse the DeepSpeed JSON and validate its ZeRO section with DeepSpeed's own config model."""
    if not path.is_file():
        return [Problem(where, f"DeepSpeed config {path} not found")]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [Problem(f"{path}:{exc.lineno}", f"not valid JSON ({exc.msg})")]
    if not isinstance(data, dict):
        return [Problem(str(path), "expected a JSON object")]
    zero = data.get("zero_optimization", {})
    if not isinstance(zero, dict):
        return [Problem(f"{path} (zero_optimization)", "expected an object")]
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    try:
        DeepSpeedZeroConfig(**zero)
    except Exception as exc:  # pydantic ValidationError: keep its first specific line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 2 else (lines[0] if lines else type(exc).__name__)
        return [Problem(f"{path} (zero_optimization)", f"DeepSpeed rejects it: {detail}")]
    return []


def check_datasets(names: list[str], dataset_dir: Path, where: str, planned: set[str] | None = None) -> list[Problem]:
    """Each dataset is registered with its file(s) present, or will be produced by the prepare step."""
    planned = planned or set()
    info_path = dataset_dir / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            return [Problem(f"{info_path}:{exc.lineno}", f"not valid JSON ({exc.msg})")]
    problems = []
    for name in names:
        if name in planned:
            continue
        entry = info.get(name)
        if entry is None:
            known = ", ".join(sorted(set(info) | planned)) or "none"
            hint = f"; data.rag in the pipeline writes the {RAG_SUFFIX} variants" if name.endswith(RAG_SUFFIX) else ""
            problems.append(Problem(where, f"dataset {name!r} is not in {info_path} (known: {known}){hint}"))
            continue
        file_name = entry.get("file_name")
        if not file_name:
            continue
        try:  # LLaMA-Factory reads the file itself at training time: it must stay inside the dataset folder
            path = dataset_file_inside(dataset_dir, file_name, where=name)
        except CoreTechError as exc:
            problems.append(Problem(f"{info_path} ({name})", str(exc).removeprefix(f"{name}: ")))
            continue
        if not path.exists():
            problems.append(Problem(f"{info_path} ({name})", f"file {path} not found"))
    return problems


def check_model_path(model: str, where: str, will_exist: set[str] | None = None) -> list[Problem]:
    if will_exist and model in will_exist:
        return []
    if Path(model).exists():
        return []
    if _HUB_ID.match(model) and not model.startswith(("/", ".", "runs/", "saves/", "models/")):
        return []  # a hub id, e.g. Qwen/Qwen2.5-7B; downloaded (or found in the HF cache) at launch
    return [Problem(where, f"model path {model} does not exist")]


def check_writable(folder: Path, where: str) -> list[Problem]:
    """The nearest existing ancestor of ``folder`` must be writable, or the stage dies after loading."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        return [Problem(where, f"output folder {folder} is not writable ({probe} is read-only)")]
    return []


def check_launch_paths(paths: dict[str, str], where: str) -> list[Problem]:
    """Every launch path with whitespace, as problems (the same rule as ``launch.check_launch_path``)."""
    return [Problem(where, reason) for what, value in paths.items() if (reason := whitespace_problem(value, what))]
