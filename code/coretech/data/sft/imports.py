"""Importing existing SFT files (alpaca JSON/JSONL, sharegpt) as they are, and telling the format of an input.

An imported record keeps its question and answer; what we add is its task and subject, read from
explicit fields when present, else from the text (``subjects``), so the split can keep its
paraphrases together.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from coretech.data.records import Record, RecordError, SkipLog, iter_records
from coretech.data.sft.subjects import Task, domain_from_question, task_from_text
from coretech.data.sft.tables import OFFICE_COLUMNS, PAPER_COLUMNS, PAPER_DOMAIN, TableLog
from coretech.ipc import extract_ipc_codes

TableFormat = Literal["office", "papers", "alpaca", "sharegpt"]


@dataclass
class ImportedRecord:
    """An alpaca or sharegpt sample kept as it is, with the task and domain we could tell."""

    instruction: str
    input: str
    output: str
    system: str
    task: Task
    domain: str
    source: str
    location: str


_TASK_TYPES = {"ipc": "ipc", "ipc_task": "ipc", "tech": "tech", "tech_task": "tech", "key_tech": "tech"}


def _task_of(data: dict[str, Any], question: str, output: str) -> Task | None:
    """The task from ``task_type`` (``IPC_TASK``/``TECH_TASK``), else inferred from the question and
    answer (``task_from_text``): the reference's released files carry no task field."""
    task_type = data.get("task_type") or data.get("task")
    if task_type:
        return _TASK_TYPES.get(str(task_type).strip().lower())  # type: ignore[return-value]
    return task_from_text(question, output, bool(extract_ipc_codes(output)))


def _imported(
    record: Record,
    instruction: str,
    query: str,
    output: str,
    system: str,
    source: str,
    log: TableLog,
) -> ImportedRecord | None:
    if not instruction.strip() or not output.strip():
        log.skips.skip("empty instruction or output", record.location)
        return None
    task = _task_of(record.data, f"{instruction}\n{query}", output)
    if task is None:
        log.skips.skip("unknown task_type", record.location, str(record.data.get("task_type")))
        return None
    domain = str(record.data.get("domain") or "").strip()
    if not domain:
        # A short input is the subject (``Which IPC codes does this field involve?`` + ``智慧农业``).
        domain = query.strip() if 0 < len(query.strip()) <= 40 else domain_from_question(instruction)
    if not domain:
        # Without a domain the split cannot keep paraphrases together; the question itself is the
        # group, which is safe for a one-off sample and counted so the user can add a domain field.
        domain = instruction.strip()[:60]
        log.notes["imported records without a recognisable domain (question used as split group)"] += 1
    return ImportedRecord(instruction, query, output, system, task, domain, source, record.location)


def read_alpaca(path: Path, source: str, log: TableLog) -> list[ImportedRecord]:
    """Alpaca records (instruction, input, output, optional system, task_type, domain) kept as they are."""
    records = []
    for record in iter_records(path, log.skips):
        data = record.data
        if data.get("history"):
            log.skips.skip("multi-turn history (only single-turn samples are imported)", record.location)
            continue
        values = [data.get(k) for k in ("instruction", "input", "output", "system")]
        if any(v is not None and not isinstance(v, str) for v in values):
            log.skips.skip("instruction/input/output/system not text", record.location)
            continue
        instruction, query, output, system = (v or "" for v in values)
        imported = _imported(record, instruction, query, output, system, source, log)
        if imported:
            records.append(imported)
    return records


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def read_sharegpt(path: Path, source: str, log: TableLog) -> list[ImportedRecord]:
    """Single-turn sharegpt conversations (``conversations`` with from/value or ``messages`` with role/content)."""
    records = []
    for record in iter_records(path, log.skips):
        turns = record.data.get("conversations", record.data.get("messages"))
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            log.skips.skip("no conversations list", record.location)
            continue
        system = str(record.data.get("system") or "")
        messages = []
        for turn in turns:
            role = str(turn.get("from", turn.get("role", ""))).lower()
            content = turn.get("value", turn.get("content", ""))
            if role == "system":
                system = str(content or "")
                continue
            messages.append((_SHAREGPT_ROLES.get(role, role), str(content or "")))
        if [role for role, _ in messages] != ["user", "assistant"]:
            log.skips.skip("not a single user/assistant turn", record.location)
            continue
        imported = _imported(record, messages[0][1], "", messages[1][1], system, source, log)
        if imported:
            records.append(imported)
    return records


def detect_format(path: Path) -> TableFormat:
    """Tell the format from the extension and the header / first record."""
    suffix = path.suffix.lower()
    if suffix in {".xlsx", ".xlsm"}:
        return "papers"
    if suffix in {".csv", ".tsv"}:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = {h.strip() for h in next(csv.reader(handle, delimiter="\t" if suffix == ".tsv" else ","), [])}
        if set(OFFICE_COLUMNS) <= header:
            return "office"
        if PAPER_DOMAIN in header:
            return "papers"
        raise RecordError(
            f"{path}:1: neither an office table (question,answer) nor a literature table "
            f"({', '.join(PAPER_COLUMNS)}); found: {', '.join(sorted(header)) or 'no header'}"
        )
    if suffix in {".json", ".jsonl"}:
        first = next(iter_records(path, SkipLog()), None)
        if first is not None and ("conversations" in first.data or "messages" in first.data):
            return "sharegpt"
        return "alpaca"
    raise RecordError(f"{path}: unsupported SFT input {suffix!r} (use .csv, .xlsx, .json or .jsonl)")
