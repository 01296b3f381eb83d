"""Prediction prompts, built by LLaMA-Factory's own data pipeline so inference sees what training saw.

A model fine-tuned with one chat template and queried with a slightly different one (another
system prompt, a missing newline) loses accuracy silently. So nothing here formats prompts by
hand: the dataset entry is read with LLaMA-Factory's ``dataset_info.json`` parser, records are
aligned by its format converters (alpaca, sharegpt, openai), and encoded by the processor its
``do_predict`` uses (``UnsupervisedDatasetProcessor``: ``template.encode_oneturn`` plus its
``cutoff_len`` truncation), the same path LLaMA-Factory's ``scripts/vllm_infer.py`` takes. Prompt
and label strings are decoded the way its trainer writes ``generated_predictions.jsonl``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coretech.data.dataset_info import DATASET_INFO, dataset_file_inside, read_dataset_info
from coretech.data.records import Record, SkipLog, iter_records
from coretech.errors import CoreTechError

if TYPE_CHECKING:
    from llamafactory.data.parser import DatasetAttr
    from llamafactory.data.template import Template
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import PreTrainedTokenizer

# Record fields copied to each prediction line so the evaluator can score per task and domain.
TRACE_FIELDS = ("task", "domain", "source")
# The file types LLaMA-Factory loads for local datasets that our record reader also reads.
_READABLE_SUFFIXES = {".json", ".jsonl", ".csv"}


@dataclass(frozen=True)
class EncodedPrompt:
    """One record ready for generation; ``prompt`` and ``label`` are the output line's strings."""

    location: str
    prompt_ids: list[int]
    prompt: str
    label: str
    trace: dict[str, Any]


def load_tokenizer_and_template(
    model_args: ModelArguments, data_args: DataArguments
) -> tuple[PreTrainedTokenizer, Template]:
    """LLaMA-Factory's tokenizer loading and template fix-up (pad token, stop words as special
    tokens), exactly as its trainer and chat engines do before encoding anything."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.model import load_tokenizer

    from coretech.models import check_model_reference

    check_model_reference(model_args.model_name_or_path)  # a missing local folder: one line, no hub retries
    try:
        tokenizer = load_tokenizer(model_args)["tokenizer"]
    except OSError as exc:
        raise CoreTechError(f"{model_args.model_name_or_path}: cannot load a tokenizer ({exc})") from None
    try:
        template = get_template_and_fix_tokenizer(tokenizer, data_args)
    except ValueError as exc:
        raise CoreTechError(f"template {data_args.template!r}: {exc}") from None
    return tokenizer, template


def dataset_files(dataset_dir: Path, name: str) -> tuple[DatasetAttr, list[Path]]:
    """The dataset's attributes as LLaMA-Factory parses them and the local files it would load."""
    from llamafactory.data.parser import get_dataset_list

    info_path = dataset_dir / DATASET_INFO
    if not info_path.is_file():
        raise CoreTechError(f"{info_path}: file not found (is --dataset-dir the prepared data folder?)")
    info = read_dataset_info(dataset_dir)
    if name not in info:
        known = ", ".join(sorted(info)) or "none"
        raise CoreTechError(f"{info_path}: no dataset named {name!r} (registered: {known})")
    (attr,) = get_dataset_list([name], info)
    where = f"{info_path}: dataset {name!r}"
    if attr.load_from != "file":
        raise CoreTechError(f"{where} is loaded from {attr.load_from}; predict reads local files only")
    if attr.num_samples is not None:
        raise CoreTechError(f"{where} sets num_samples (random sampling); use max_samples for prediction")
    local = dataset_dir / attr.dataset_name
    if local.is_dir():
        # LLaMA-Factory loads every file of a dataset folder; sorted here so reruns resume in order.
        files = sorted(p for p in local.iterdir() if p.is_file())
    elif local.is_file():
        files = [local]
    else:
        raise CoreTechError(f"{where} names {attr.dataset_name!r}, which does not exist in {dataset_dir}")
    for path in files:
        # A dataset folder's files too: a symlink inside it may point anywhere.
        dataset_file_inside(dataset_dir, str(path.relative_to(dataset_dir)), where)
        if path.suffix.lower() not in _READABLE_SUFFIXES:
            raise CoreTechError(f"{path}: unsupported file type for prediction (use .json, .jsonl or .csv)")
    return attr, files


def read_records(files: list[Path], skips: SkipLog, max_samples: int | None = None) -> list[Record]:
    """The dataset's records in file order; ``max_samples`` cuts the raw records as LLaMA-Factory does."""
    records: list[Record] = []
    for path in files:
        for record in iter_records(path, skips):
            if max_samples is not None and len(records) >= max_samples:
                return records
            records.append(record)
    return records


def encode_records(
    records: list[Record],
    attr: DatasetAttr,
    tokenizer: PreTrainedTokenizer,
    template: Template,
    data_args: DataArguments,
    skips: SkipLog,
    skip_special_tokens: bool = True,
) -> list[EncodedPrompt]:
    """Align and encode records; those LLaMA-Factory would drop (a malformed conversation, an empty
    question) are counted in ``skips`` by reason instead of vanishing."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.processor import UnsupervisedDatasetProcessor

    converter = get_dataset_converter(attr.formatting, attr, data_args)
    processor = UnsupervisedDatasetProcessor(
        template=template, tokenizer=tokenizer, processor=None, data_args=data_args
    )
    encoded: list[EncodedPrompt] = []
    for record in records:
        # datasets fills a column missing from one record with None; a plain dict would KeyError.
        example = defaultdict(lambda: None, record.data)
        try:
            aligned = converter(example)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            skips.skip(f"malformed {attr.formatting} record", record.location, repr(exc))
            continue
        prompt = aligned["_prompt"]
        if len(prompt) % 2 != 1:
            skips.skip("invalid conversation (LLaMA-Factory drops it)", record.location)
            continue
        if not str(prompt[-1]["content"]).strip():
            skips.skip("empty question", record.location)
            continue
        if aligned["_images"] or aligned["_videos"] or aligned["_audios"]:
            skips.skip("multimodal record (text models only)", record.location)
            continue
        columns = {key: [value] for key, value in aligned.items()}
        model_inputs = processor.preprocess_dataset(columns)
        input_ids, labels = model_inputs["input_ids"][0], model_inputs["labels"][0]
        encoded.append(
            EncodedPrompt(
                location=record.location,
                prompt_ids=list(input_ids),
                prompt=tokenizer.decode(input_ids, skip_special_tokens=False),
                label=tokenizer.decode(labels, skip_special_tokens=skip_special_tokens),
                trace={k: record.data[k] for k in TRACE_FIELDS if record.data.get(k) is not None},
            )
        )
    return encoded
