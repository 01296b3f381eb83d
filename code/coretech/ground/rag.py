"""Retrieval-augmented datasets: the prepared SFT datasets with retrieved candidate codes in the question.

``coretech prepare rag --dataset-dir DIR --k 10`` reads the ``coretech_sft_*`` datasets registered
in ``DIR/dataset_info.json`` and writes, for each, ``DIR/sft/rag/<name>.jsonl`` registered as
``<name>_rag``: IPC_TASK questions get a block listing the top-``k`` BM25 candidates
(:class:`~coretech.ground.index.CodeIndex`, built from the scheme and ``coretech_sft_train`` only)
with their titles in the question's language; TECH_TASK records are copied unchanged. A training
question's candidates never come from its own subject (leave-one-subject-out), so training sees
the same kind of candidates as a test question about an unseen subject.

It also measures the candidates' recall@k against each record's gold codes (full codes and
subclasses), per dataset, into ``DIR/sft/rag/rag.md`` and ``rag.json``: a low F1 of a RAG model
with a high recall is the model's failure, with a low recall the retriever's.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coretech.data.dataset_info import alpaca_entry, read_dataset_info, register_datasets
from coretech.data.records import SkipLog, iter_records
from coretech.errors import CoreTechError
from coretech.files import write_json_atomic, write_text_atomic
from coretech.ground import RAG_DIR, RAG_SUFFIX, SFT_PREFIX, has_rag_variant, rag_variant
from coretech.ground.answer import TRAIN_DATASET
from coretech.ground.index import CodeIndex
from coretech.ipc import IpcScheme, extract_ipc_codes
from coretech.log import get_logger
from coretech.tables import markdown_table

log = get_logger(__name__)
_CJK = re.compile(r"[\u4e00-\u9fff]")
_BLOCK_HEADER = {
    "zh": "检索到的候选IPC分类号（供参考，可能不全）：",
    "en": "Retrieved candidate IPC codes (may be incomplete):",
}


@dataclass
class RecallStats:
    """Candidates' recall of the gold codes over one dataset's IPC_TASK records (micro-averaged)."""

    records: int = 0
    ipc_records: int = 0
    gold_codes: int = 0
    hits: int = 0
    gold_subclasses: int = 0
    subclass_hits: int = 0
    records_without_candidates: int = 0

    @property
    def recall(self) -> float | None:
        return self.hits / self.gold_codes if self.gold_codes else None

    @property
    def subclass_recall(self) -> float | None:
        return self.subclass_hits / self.gold_subclasses if self.gold_subclasses else None


@dataclass
class RagReport:
    k: int
    datasets: dict[str, RecallStats] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> why it got no _rag variant
    codes_not_in_scheme: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "datasets": {
                name: {**asdict(stats), "recall": stats.recall, "subclass_recall": stats.subclass_recall}
                for name, stats in self.datasets.items()
            },
            "skipped": self.skipped,
            "codes_not_in_scheme": self.codes_not_in_scheme,
        }

    def markdown(self) -> str:
        def number(value: float | None) -> str:
            return "–" if value is None else f"{value:.3f}"

        rows = [
            [
                rag_variant(name),
                s.records,
                s.ipc_records,
                s.gold_codes,
                number(s.recall),
                number(s.subclass_recall),
                s.records_without_candidates,
            ]
            for name, s in self.datasets.items()
        ]
        headers = ["dataset", "records", "IPC_TASK", "gold codes", f"recall@{self.k}", "subclass recall", "no cand."]
        lines = [f"# Retrieval-augmented datasets (k = {self.k})", "", markdown_table(headers, rows), ""]
        lines.append(
            "Recall: share of the gold codes (and gold subclasses) among the candidates put into the question. "
            "Training questions' candidates leave their own subject out."
        )
        for name, reason in self.skipped.items():
            lines.append(f"- {name}: no {RAG_SUFFIX} variant ({reason})")
        if self.codes_not_in_scheme:
            lines.append(
                f"- {len(self.codes_not_in_scheme)} training codes are not in the IPC scheme: never candidates"
            )
        return "\n".join(lines) + "\n"


def question_language(record: dict[str, Any]) -> str:
    return "zh" if _CJK.search(f"{record.get('instruction', '')}{record.get('input', '')}") else "en"


def candidate_block(codes: list[str], language: str, scheme: IpcScheme) -> str:
    """The lines added to a question: a header, then ``code：title`` (title in the question's language)."""
    colon = "：" if language == "zh" else ": "
    lines = [_BLOCK_HEADER[language]]
    for code in codes:
        title = scheme.title(code, language)
        lines.append(f"{code}{colon}{title}" if title else code)
    return "\n".join(lines)


def augment(record: dict[str, Any], codes: list[str], scheme: IpcScheme) -> dict[str, Any]:
    """The record with the candidate block appended to its input (LLaMA-Factory joins instruction and input)."""
    block = candidate_block(codes, question_language(record), scheme)
    query = str(record.get("input") or "")
    return {**record, "input": f"{query}\n\n{block}" if query else block}


def _recall(stats: RecallStats, gold: list[str], candidates: list[str]) -> None:
    stats.gold_codes += len(gold)
    stats.hits += len(set(gold) & set(candidates))
    gold_sub = {code[:4] for code in gold}
    stats.gold_subclasses += len(gold_sub)
    stats.subclass_hits += len(gold_sub & {code[:4] for code in candidates})


def build_rag_datasets(dataset_dir: Path, k: int, scheme: IpcScheme) -> RagReport:
    """Write and register the ``_rag`` variants of every prepared ``coretech_sft_*`` dataset."""
    if k < 1:
        raise CoreTechError(f"k must be at least 1, got {k}")
    dataset_dir = Path(dataset_dir)
    info = read_dataset_info(dataset_dir)
    if TRAIN_DATASET not in info:
        raise CoreTechError(
            f"{dataset_dir / 'dataset_info.json'}: no {TRAIN_DATASET} (run `coretech prepare sft` first)"
        )
    skips = SkipLog()

    def records_of(name: str) -> list[dict[str, Any]]:
        return [r.data for r in iter_records(dataset_dir / info[name]["file_name"], skips)]

    train = records_of(TRAIN_DATASET)
    index = CodeIndex.build(scheme, train)
    report = RagReport(k=k, codes_not_in_scheme=index.codes_not_in_scheme)
    out_dir = dataset_dir / RAG_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, entry in sorted(info.items()):
        if not has_rag_variant(name):
            continue
        if entry.get("formatting", "alpaca") != "alpaca" or "file_name" not in entry:
            report.skipped[name] = "not a local alpaca dataset"
            continue
        stats = report.datasets.setdefault(name, RecallStats())
        # Leave-one-subject-out on the training side (train, stages, shuffled); test sets ask as users do.
        training_side = "test" not in name
        lines = []
        for record in records_of(name):
            stats.records += 1
            if record.get("task") == "ipc":
                stats.ipc_records += 1
                subject = str(record.get("subject") or record.get("domain") or "")
                exclude = subject if training_side else None
                question = f"{record.get('instruction', '')}\n{record.get('input', '')}"
                candidates = [code for code, _ in index.search(question, k, exclude_subject=exclude)]
                stats.records_without_candidates += not candidates
                _recall(stats, [str(c) for c in extract_ipc_codes(str(record.get("output", "")))], candidates)
                record = augment(record, candidates, scheme)
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        file_name = f"{RAG_DIR}/{name}.jsonl"
        write_text_atomic(dataset_dir / file_name, "".join(lines))
        entries[rag_variant(name)] = alpaca_entry(file_name)
    if not entries:
        raise CoreTechError(f"{dataset_dir / 'dataset_info.json'}: no {SFT_PREFIX}* dataset to augment")
    register_datasets(dataset_dir, entries)
    if skips.counts:
        report.skipped.update({f"records: {reason}": str(n) for reason, n in skips.counts.items()})
    write_json_atomic(out_dir / "rag.json", report.as_dict())
    write_text_atomic(out_dir / "rag.md", report.markdown())
    log.info("rag: %d datasets written to %s (registered as *%s)", len(entries), out_dir, RAG_SUFFIX)
    return report
