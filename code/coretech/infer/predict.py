"""Batch prediction over a registered dataset into LLaMA-Factory's ``generated_predictions.jsonl``.

This module owns the run: backend choice, resuming, writing, progress and the result summary.
Prompts come from ``prompts`` (LLaMA-Factory's own encoding), tokens from ``hf`` or ``vllm``.

Resuming is by position: the output holds one complete line per usable record, in dataset order,
so a rerun counts the complete lines, checks that they belong to the same prompts, and generates
only the rest. Each line is written whole and flushed, and a trailing partial line (a kill in the
middle of a write) is cut off on resume, so an interrupted run never leaves a half-written line
behind for the evaluator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.config import load_yaml
from coretech.data.records import SkipLog
from coretech.errors import CoreTechError
from coretech.infer.recipe import PredictRecipe, find_recipe, load_predict_recipe, resolve_model
from coretech.infer.vllm import MISSING_VLLM, vllm_available

BACKENDS = ("auto", "hf", "vllm", "retrieval")  # retrieval: BM25 top-k codes, no model (coretech.ground)
# vLLM batches continuously on its own; a chunk only bounds the work a kill can lose.
VLLM_CHUNK = 512
# tqdm's default turns a rate under 1/s into s/item; the issue asks for items per second throughout.
_BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"


@dataclass
class PredictionResult:
    """What a prediction run did; ``items_per_second`` counts generated lines over generation time."""

    out_file: Path
    backend: str
    total: int
    written: int
    skipped_existing: int
    seconds: float
    load_seconds: float = 0.0
    skipped_records: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        skipped = self.skipped_records.get("total", 0)
        parts = [
            f"{self.out_file}: {self.written} written, {self.skipped_existing} already there, "
            f"{self.total} in total ({self.backend}",
        ]
        if self.written:
            parts.append(f", {self.items_per_second:.2f} items/s")
        parts.append(")")
        if skipped:
            reasons = ", ".join(f"{n} {r}" for r, n in self.skipped_records["by_reason"].items())
            parts.append(f"; {skipped} records skipped: {reasons}")
        return "".join(parts)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def choose_backend(requested: str) -> tuple[str, str]:
    """The backend to use and why: ``auto`` takes vLLM only when both a CUDA GPU and vLLM are there."""
    if requested not in BACKENDS:
        raise CoreTechError(f"unknown backend {requested!r} (choose from {', '.join(BACKENDS)})")
    if requested in ("hf", "retrieval"):
        return requested, "requested"
    import torch

    if requested == "vllm":
        if not vllm_available():
            raise CoreTechError(MISSING_VLLM)
        if not torch.cuda.is_available():
            raise CoreTechError("the vllm backend needs a CUDA GPU and none is visible; use --backend hf")
        return "vllm", "requested"

    has_gpu = torch.cuda.is_available()
    has_vllm = vllm_available()
    if has_gpu and has_vllm:
        return "vllm", "auto: a CUDA GPU and vLLM are present"
    if not has_gpu:
        return "hf", "auto: no CUDA GPU"
    return "hf", "auto: vLLM is not installed (pip install -r requirements-gpu.txt)"


def read_complete_lines(out_file: Path) -> list[dict[str, Any]]:
    """The finished prediction lines; a trailing line without its newline is cut from the file."""
    if not out_file.exists():
        return []
    data = out_file.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with out_file.open("r+b") as handle:
            handle.truncate(end)
        _say(f"{out_file}: removed an unfinished last line ({len(data) - end} bytes) from an interrupted run")
    lines = []
    for number, raw in enumerate(data[:end].splitlines(), 1):
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            line = None
        if not isinstance(line, dict) or "predict" not in line:
            raise CoreTechError(f"{out_file}:{number}: not a prediction line; delete the file or choose another --out")
        lines.append(line)
    return lines


def _check_same_prompts(out_file: Path, lines: list[dict[str, Any]], encoded: list) -> None:
    """Refuse to append to predictions of another dataset, template or cutoff: positions would lie."""
    if len(lines) > len(encoded):
        raise CoreTechError(
            f"{out_file}: has {len(lines)} predictions but the dataset has only {len(encoded)} usable "
            "records; it belongs to another dataset: delete it or choose another --out"
        )
    for number, (line, item) in enumerate(zip(lines, encoded, strict=False), 1):
        if line.get("prompt") != item.prompt or line.get("label") != item.label:
            raise CoreTechError(
                f"{out_file}:{number}: was written for another prompt than {item.location} (dataset, "
                "template or recipe changed); delete the file or choose another --out"
            )


def _require_local_paths(model: str, adapter: str | None) -> None:
    """A model or adapter path that is missing here is one line at once, never minutes of hub retries."""
    from coretech.models import check_model_reference

    check_model_reference(model, "model path")
    for one in (adapter or "").split(","):
        if one.strip():
            check_model_reference(one.strip(), "adapter path")


def _claim_output(
    out_file: Path,
    model: str,
    adapter: str | None,
    generating_args: Any,
    dataset: str,
    template: str | None,
    replace: bool,
    answering: dict[str, Any],
) -> None:
    """Answers of two models never share a file: see ``coretech.infer.identity``. ``answering`` (the
    retrieval backend, constrained decoding) belongs to the identity: a constrained run never resumes
    an unconstrained file."""
    from coretech.infer.identity import claim_output, prediction_identity

    generation = json.loads(json.dumps(generating_args.to_dict(), default=str))
    identity = prediction_identity(
        model=model, adapter=adapter, generation=generation, dataset=dataset, template=template, answering=answering
    )
    claim_output(out_file, identity, replace=replace)


def run_prediction(
    *,
    model: str,
    adapter: str | None,
    dataset_dir: Path,
    dataset: str,
    out_file: Path,
    recipe: Path,
    backend: str = "auto",
    max_samples: int | None = None,
    batch_size: int | None = None,
    template: str | None = None,
    constrain_codes: bool = False,
    scheme_files: list[Path] | None = None,
    retrieval_k: int | None = None,
    replace: bool = False,
) -> PredictionResult:
    """Generate an answer for every usable record of ``dataset`` not yet in ``out_file``.

    ``template`` (a run's training template) overrides the recipe's; ``max_samples`` and
    ``batch_size`` override the recipe's ``max_samples`` and ``per_device_eval_batch_size``.
    ``constrain_codes`` (or the recipe's ``constrain_codes: true``) holds every IPC code the model
    writes to ``scheme_files`` (default: the built-in full scheme). Backend ``retrieval`` answers with the
    BM25 top ``retrieval_k`` codes (default: the recipe's ``retrieval_k``, else 5) from the scheme and
    the dataset folder's ``coretech_sft_train``; the model only supplies the prompt encoding.
    An ``out_file`` written by another model or config is refused, or moved aside with ``replace``.
    """
    from tqdm import tqdm

    from coretech.infer.prompts import dataset_files, encode_records, load_tokenizer_and_template, read_records

    _require_local_paths(model, adapter)  # before LLaMA-Factory is imported: that alone takes seconds
    settings: PredictRecipe = load_predict_recipe(recipe)
    if batch_size is not None and batch_size < 1:
        raise CoreTechError(f"batch size must be at least 1, got {batch_size}")
    chosen, reason = choose_backend(backend)
    _say(f"backend: {chosen} ({reason})")

    started = time.monotonic()
    model_args = settings.model_args(model, adapter)
    data_args = settings.data_args(template)
    generating_args = settings.generating_args()
    tokenizer, chat_template = load_tokenizer_and_template(model_args, data_args)

    skips = SkipLog()
    attr, files = dataset_files(Path(dataset_dir), dataset)
    limit = max_samples if max_samples is not None else settings.max_samples
    records = read_records(files, skips, limit)
    encoded = encode_records(
        records, attr, tokenizer, chat_template, data_args, skips, generating_args.skip_special_tokens
    )
    if not encoded:
        reasons = ", ".join(f"{n} {r}" for r, n in skips.counts.items()) or "the file has no records"
        raise CoreTechError(f"{files[0]}: dataset {dataset!r} has no usable records ({reasons})")
    out_file = Path(out_file)
    constrain = chosen != "retrieval" and bool(constrain_codes or settings.coretech.get("constrain_codes", False))
    k = retrieval_k or settings.coretech.get("retrieval_k", 5)
    answering = {"retrieval_k": k} if chosen == "retrieval" else {"constrain_codes": constrain}
    _claim_output(out_file, model, adapter, generating_args, dataset, data_args.template, replace, answering)
    existing = read_complete_lines(out_file)
    _check_same_prompts(out_file, existing, encoded)
    pending = encoded[len(existing) :]
    result = PredictionResult(
        out_file=out_file,
        backend=chosen,
        total=len(encoded),
        written=0,
        skipped_existing=len(existing),
        seconds=0.0,
        skipped_records=skips.as_dict(),
    )
    if not pending:
        return result

    codes = None
    if constrain:
        from coretech.infer.constrain import CodeAutomaton, load_scheme

        codes = CodeAutomaton.from_scheme(load_scheme(scheme_files))
        _say(f"constrained decoding: IPC codes limited to {len(codes.codes)} codes of the scheme")
    if chosen == "retrieval":
        from coretech.ground.answer import RetrievalGenerator

        generator: Any = RetrievalGenerator.for_dataset(Path(dataset_dir), records, attr, encoded, scheme_files, k)
        step = batch_size or settings.batch_size
    elif chosen == "vllm":
        if codes is not None:
            from coretech.infer.constrain_vllm import ConstrainedVllmGenerator

            generator = ConstrainedVllmGenerator(model_args, tokenizer, chat_template, generating_args, codes)
        else:
            from coretech.infer.vllm import VllmGenerator

            generator = VllmGenerator(model_args, tokenizer, chat_template, generating_args)
        step = batch_size or VLLM_CHUNK
    else:
        from coretech.infer.hf import HfGenerator

        generator = HfGenerator(model_args, tokenizer, chat_template, generating_args, codes=codes)
        step = batch_size or settings.batch_size
    result.load_seconds = time.monotonic() - started

    out_file.parent.mkdir(parents=True, exist_ok=True)
    generation_started = time.monotonic()
    with (
        out_file.open("a", encoding="utf-8") as handle,
        tqdm(
            total=len(encoded),
            initial=len(existing),
            unit="item",
            desc=f"predict ({chosen})",
            dynamic_ncols=True,
            bar_format=_BAR_FORMAT,
        ) as bar,
    ):
        for start in range(0, len(pending), step):
            batch = pending[start : start + step]
            answers = generator.generate([item.prompt_ids for item in batch])
            for item, answer in zip(batch, answers, strict=True):
                line = {"prompt": item.prompt, "predict": answer, "label": item.label, **item.trace}
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
                handle.flush()
                result.written += 1
            os.fsync(handle.fileno())
            bar.update(len(batch))
    result.seconds = time.monotonic() - generation_started
    if hasattr(generator, "close"):  # the vLLM engine gives its GPU memory back before the next model
        generator.close()
    return result


def predict_from_cli(args: argparse.Namespace) -> int:
    model, adapter, template = resolve_model(args.run, args.stage, args.model, args.adapter)
    recipe = args.recipe
    if recipe is None:
        recipe = find_recipe("predict", template)
        _say(f"recipe: {recipe}")
    dataset_dir = args.dataset_dir
    if dataset_dir is None and args.run is not None and (Path(args.run) / "data" / "dataset_info.json").is_file():
        dataset_dir = Path(args.run) / "data"  # the data the run trained on, where `coretech run` prepared it
    if dataset_dir is None:
        dataset_dir = load_yaml(recipe).get("dataset_dir")
        if dataset_dir is None:
            raise CoreTechError(f"{recipe}: no dataset_dir; pass --dataset-dir")
    _say(f"dataset: {args.dataset} in {dataset_dir}")
    result = run_prediction(
        model=model,
        adapter=adapter,
        dataset_dir=Path(dataset_dir),
        dataset=args.dataset,
        out_file=args.out,
        recipe=recipe,
        backend=args.backend,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        template=template,
        constrain_codes=args.constrain_codes,
        scheme_files=args.scheme,
        retrieval_k=args.k,
        replace=args.replace,
    )
    print(result.summary())
    return 0
