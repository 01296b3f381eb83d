"""Reading the SFT sources: key-technology tables and existing alpaca / sharegpt files.

Owns the three real input formats of the SFT builder:

* the national-office key-technology table (CSV ``question,answer``; the answer is a numbered
  hierarchy of level-1 areas and level-2 technologies with ``技术方向：`` and ``分类号：`` lines);
* the literature table (XLSX or CSV with ``领域``, ``关键核心技术``, ``IPC分类号及其描述``);
* alpaca JSON/JSONL and sharegpt files, imported as they are.

A table row becomes a :class:`KeyTechEntry` (domain, technologies, IPC codes, and the ``file:row``
it came from); QA rendering happens elsewhere. Every problem is reported with its location: rows
that cannot be read go to the ``SkipLog``, symbols that are not IPC codes to ``TableLog.invalid``.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coretech.data.records import Record, RecordError, SkipLog, iter_records
from coretech.ipc import InvalidIpcCode, IpcCode, extract_ipc_codes, parse_ipc

Task = Literal["ipc", "tech"]
TableFormat = Literal["office", "papers", "alpaca", "sharegpt"]

OFFICE_COLUMNS = ("question", "answer")
PAPER_DOMAIN, PAPER_TECH, PAPER_IPC = "领域", "关键核心技术", "IPC分类号及其描述"
PAPER_COLUMNS = (PAPER_DOMAIN, PAPER_TECH, PAPER_IPC)

_OPEN = "（(【[《"
_CLOSE = "）)】]》"


@dataclass(frozen=True)
class TableCode:
    """An IPC code as a table gives it, with the table's own description (used when the scheme has no title)."""

    code: IpcCode
    description: str = ""
    group: str = ""  # the label of a grouped line, e.g. 航行控制类


@dataclass
class Technology:
    """A key technology; ``area`` is its level-1 area in an office table, ``details`` its directions."""

    name: str
    details: list[str] = field(default_factory=list)
    area: str = ""
    codes: list[TableCode] = field(default_factory=list)


@dataclass
class KeyTechEntry:
    """One domain of one source table: what the QA renderer turns into IPC_TASK and TECH_TASK records."""

    domain: str
    source: str
    location: str
    technologies: list[Technology] = field(default_factory=list)
    codes: list[TableCode] = field(default_factory=list)  # codes not tied to one technology

    def all_codes(self) -> list[TableCode]:
        """Every code of the entry once (first description wins), technology codes included."""
        seen: dict[str, TableCode] = {}
        for item in [*self.codes, *(c for t in self.technologies for c in t.codes)]:
            seen.setdefault(str(item.code), item)
        return list(seen.values())

    def areas(self) -> list[str]:
        return list(dict.fromkeys(t.area for t in self.technologies if t.area))


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
    domain_guessed: bool = False


@dataclass
class TableLog:
    """What reading the sources found: skipped rows, invalid IPC symbols, and other counted notes.

    ``invalid`` holds ``<file>:<row>: '<symbol>'`` lines; in strict mode the first one raises.
    ``notes`` counts things that are not errors but change the data (merged rows, filled-down
    domains), so the report can say so.
    """

    skips: SkipLog = field(default_factory=SkipLog)
    invalid: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)

    @property
    def strict(self) -> bool:
        return self.skips.strict

    def invalid_symbol(self, location: str, symbol: str) -> None:
        message = f"{location}: {symbol!r} is not an IPC symbol"
        if self.strict:
            raise RecordError(message)
        self.invalid.append(message)


# --- cell parsing ----------------------------------------------------------------------------


def split_top_level(text: str, separators: str) -> list[str]:
    """Split at separators outside brackets, so ``手术导航（光学、电磁）；力反馈`` keeps its details."""
    parts, depth, current = [], 0, []
    for char in text:
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(0, depth - 1)
        if char in separators and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_NUMBERING = re.compile(
    r"^\s*(?:\d+(?:[.．]\d+)*[.．、)）]?|[（(]\d+[)）]|[①-⑳]|[一二三四五六七八九十]+[、.．]|[-•·*])\s*"
)


def _strip_numbering(text: str) -> str:
    stripped = _NUMBERING.sub("", text, count=1).strip()
    return stripped or text.strip()


def _name_and_details(item: str) -> tuple[str, list[str]]:
    """``手术导航（光学定位、电磁定位）`` → (``手术导航``, [``光学定位``, ``电磁定位``])."""
    item = item.strip()
    for open_index, char in enumerate(item):
        if char in _OPEN:
            name = item[:open_index].strip()
            inner = item[open_index + 1 :]
            inner = inner[:-1] if inner and inner[-1] in _CLOSE else inner
            details = split_top_level(inner, "、,，;；/")
            return (name or item), details
    return item, []


def parse_technologies(cell: str) -> list[Technology]:
    """Technologies of a literature cell: separated by ；/;/newlines, each with optional bracketed details."""
    technologies = []
    for part in split_top_level(cell, "；;\n"):
        name, details = _name_and_details(_strip_numbering(part))
        if name:
            technologies.append(Technology(name=name, details=details))
    return technologies


# A symbol at the head of an item, followed by nothing, a bracketed description or a separator
# and words. ``G06N3-08`` does not match as ``G06N3`` + ``-08``: the rest must not start with a
# digit, dash or slash, so a malformed symbol is reported instead of silently shortened.
_CODE_HEAD = re.compile(
    r"^(?P<symbol>[A-Za-z]\s*\d{2}\s*[A-Za-z](?:\s*\d{1,4}(?:\s*/\s*\d{1,6})?)?)"
    r"(?P<rest>(?:\s*[（(【\[].*|\s*[:：]\s*.*|\s+\D.*)?)$",
    re.DOTALL,
)
_BRACKETED = re.compile(r"^\s*[（(【\[](?P<inner>.*?)[）)】\]]?\s*$", re.DOTALL)


def _parse_code_item(item: str) -> tuple[str, str]:
    """(symbol, description) of one item such as ``A61B34（手术导航）`` or ``G06N 3/08 学习方法``."""
    normalised = unicodedata.normalize("NFKC", item).strip()
    match = _CODE_HEAD.match(normalised)
    if not match:
        symbol, details = _name_and_details(normalised)
        return symbol, "、".join(details)
    rest = match["rest"].strip()
    inner = _BRACKETED.match(rest)
    description = inner["inner"] if inner else rest.lstrip(":：").strip()
    return match["symbol"], description.strip()


def parse_code_cell(cell: str, location: str, log: TableLog) -> list[TableCode]:
    """IPC codes of a cell: ``A61B34（手术导航）；B25J（机械手装置）`` or grouped lines ``类别：G05D1（…）、B63H（…）``.

    Symbols that do not parse are reported (``log.invalid``) with the location and left out.
    """
    codes: list[TableCode] = []
    for line in cell.splitlines() or [cell]:
        line = line.strip()
        if not line:
            continue
        group = ""
        label = re.match(r"^(?P<label>[^：:（(]{1,30}?)\s*[：:](?P<rest>.*)$", line, re.DOTALL)
        if label and not _looks_like_code(label["label"]):
            group, line = label["label"].strip(), label["rest"]
        for item in split_top_level(line, "；;、，,"):
            symbol, description = _parse_code_item(item)
            try:
                code = parse_ipc(symbol)
            except InvalidIpcCode:
                log.invalid_symbol(location, symbol.strip() or item.strip())
                continue
            if code.level in ("section", "class"):
                # A class (``G06``) is too broad to be an answer; it is written as a symbol anyway.
                log.notes["codes above subclass level"] += 1
            codes.append(TableCode(code, description, group))
    return codes


def _looks_like_code(text: str) -> bool:
    try:
        parse_ipc(text)
    except InvalidIpcCode:
        return False
    return True


# --- office table ----------------------------------------------------------------------------

_DOMAIN_END = re.compile(
    r"(?:领域|行业|产业|方向)?(?:的|中的|中|里|方面)?"
    r"(?:关键核心技术|关键技术|核心技术|重点技术|有哪些|包括哪些|包含哪些|涉及哪些|主要有|相关|对应|方面的|[？?]).*$",
    re.DOTALL,
)
_DOMAIN_START = re.compile(r"^(?:请问|请列出|请列举|请给出|列出|列举|给出|请说明|说明)")
_DOMAIN_SUFFIX = re.compile(r"(?:技术)?(?:领域|行业|产业)$")


def domain_from_question(question: str) -> str:
    """The domain a Chinese or English key-technology question is about ('' when none is found).

    Tables phrase the question as ``人工智能领域的关键核心技术有哪些？``; imported alpaca data also
    uses English (``… in the field of artificial intelligence``).
    """
    text = unicodedata.normalize("NFKC", question).strip()
    end = r"(?=\s+(?:involves?|contains?|includes?|covers?|depends?|usually|with)\b|[?,.;:\n]|$)"
    for pattern in (
        r"(?:field|domain|sector|area) of (?:the )?(.+?)" + end,
        r"technical field:\s*(.+?)" + end,
        r"(?:relevant to|patents on|technologies of|technologies behind|codes for) (?:the )?(.+?)" + end,
        r"(?:does|do|in|for|of) the (.+?) (?:field|domain|sector|industry)\b",
    ):
        match = re.search(pattern, text, re.IGNORECASE)
        if match:
            return match[1].strip().strip("\"'").strip()
    if re.search(r"[\u4e00-\u9fff]", text):
        text = _DOMAIN_END.sub("", text).strip(" ：:，,。")
        text = re.split(r"[，,：:。]", text)[-1].strip()  # 从专利布局的角度看，智慧医疗… → 智慧医疗
        text = _DOMAIN_START.sub("", text)
        text = _DOMAIN_SUFFIX.sub("", text).strip()
        return text if 0 < len(text) <= 30 else ""
    return ""


_DETAIL_LINE = re.compile(r"^\s*(?P<kind>技术方向|研究方向|方向|分类号|IPC分类号|IPC分类|IPC)\s*[：:]\s*(?P<rest>.*)$")
_NUMBERED_LINE = re.compile(
    r"^\s*(?:(?P<num>\d+)(?:(?P<sub>(?:[.．]\d+)+)[.．、]?|[.．、])|[（(](?P<paren>\d+)[)）]"
    r"|(?P<cn>[一二三四五六七八九十]+)[、.．])\s*(?P<text>\S.*)$"
)


def parse_office_answer(answer: str, location: str, log: TableLog) -> tuple[list[Technology], list[TableCode]]:
    """Level-2 technologies (with their level-1 area, directions and codes) of one office answer.

    Both levels are numbered ``1.``; a numbered line is a level-1 area when the next line is a
    numbered ``1.`` (its first technology), or when it uses ``一、`` numbering; ``1.1`` style
    numbering marks level 2 explicitly. Detail lines before any technology belong to the domain.
    """
    items: list[dict[str, Any]] = []
    for offset, raw in enumerate(answer.splitlines()):
        line = unicodedata.normalize("NFKC", raw).strip() if raw.strip() else ""
        if not line:
            continue
        detail = _DETAIL_LINE.match(line)
        if detail:
            kind = "codes" if detail["kind"] in ("分类号", "IPC分类号", "IPC分类", "IPC") else "directions"
            items.append({"kind": kind, "text": detail["rest"], "offset": offset})
            continue
        numbered = _NUMBERED_LINE.match(line)
        if numbered:
            number = numbered["num"] or numbered["paren"]
            items.append(
                {
                    "kind": "numbered",
                    "number": int(number) if number else 0,
                    "explicit": 2 if numbered["sub"] else (1 if numbered["cn"] else 0),
                    "text": numbered["text"].strip(),
                    "offset": offset,
                }
            )
            continue
        log.skips.skip("unreadable line in answer", f"{location} (answer line {offset + 1})", raw.strip()[:60])
    technologies: list[Technology] = []
    domain_codes: list[TableCode] = []
    area, current = "", None
    for index, item in enumerate(items):
        if item["kind"] == "numbered":
            following = items[index + 1] if index + 1 < len(items) else None
            level = item["explicit"] or (
                1
                if following is not None
                and following["kind"] == "numbered"
                and (following["number"] == 1 or following["explicit"] == 2)
                else 2
            )
            if level == 1:
                area, current = item["text"], None
            else:
                name, details = _name_and_details(item["text"])
                current = Technology(name=name, details=details, area=area)
                technologies.append(current)
            continue
        if item["kind"] == "directions":
            directions = split_top_level(item["text"], "、，,；;")
            if current is None:
                log.notes["directions outside a technology (ignored)"] += 1
            else:
                current.details.extend(d for d in directions if d not in current.details)
            continue
        codes = parse_code_cell(item["text"], f"{location} (answer line {item['offset'] + 1})", log)
        (current.codes if current is not None else domain_codes).extend(codes)
    return technologies, domain_codes


def read_office_table(path: Path, source: str, log: TableLog) -> list[KeyTechEntry]:
    """Domains of a national-office table (CSV ``question,answer``), one entry per row."""
    entries = []
    for record in _rows(path, OFFICE_COLUMNS, log):
        question = str(record.data.get("question") or "").strip()
        answer = str(record.data.get("answer") or "").strip()
        if not question or not answer:
            log.skips.skip("empty question or answer", record.location)
            continue
        domain = domain_from_question(question)
        if not domain:
            log.skips.skip("no domain found in the question", record.location, question[:60])
            continue
        technologies, codes = parse_office_answer(answer, record.location, log)
        if not technologies and not codes:
            log.skips.skip("no technologies or IPC codes in the answer", record.location)
            continue
        entries.append(KeyTechEntry(domain, source, record.location, technologies, codes))
    return _merge_same_domain(entries, log)


def read_paper_table(path: Path, source: str, log: TableLog) -> list[KeyTechEntry]:
    """Domains of a literature table (XLSX/CSV with 领域, 关键核心技术, IPC分类号及其描述).

    Spreadsheets often merge the 领域 cell over several rows; those rows arrive with an empty 领域
    and continue the domain above (counted in the notes).
    """
    entries = []
    previous: KeyTechEntry | None = None
    for record in _rows(path, PAPER_COLUMNS, log):
        domain = str(record.data.get(PAPER_DOMAIN) or "").strip()
        tech_cell = str(record.data.get(PAPER_TECH) or "").strip()
        code_cell = str(record.data.get(PAPER_IPC) or "").strip()
        if not tech_cell and not code_cell:
            log.skips.skip("no technologies and no IPC codes", record.location)
            continue
        technologies = parse_technologies(tech_cell)
        codes = parse_code_cell(code_cell, record.location, log)
        if not domain:
            if previous is None:
                log.skips.skip(f"empty {PAPER_DOMAIN}", record.location)
                continue
            log.notes[f"rows continuing the {PAPER_DOMAIN} above (merged cell)"] += 1
            _extend(previous, technologies, codes)
            continue
        domain = _DOMAIN_SUFFIX.sub("", unicodedata.normalize("NFKC", domain)).strip() or domain
        previous = KeyTechEntry(domain, source, record.location, technologies, codes)
        entries.append(previous)
    return _merge_same_domain(entries, log)


def _extend(entry: KeyTechEntry, technologies: list[Technology], codes: list[TableCode]) -> None:
    names = {t.name for t in entry.technologies}
    entry.technologies.extend(t for t in technologies if t.name not in names)
    known = {str(c.code) for c in entry.all_codes()}
    entry.codes.extend(c for c in codes if str(c.code) not in known)


def merge_across_sources(entries: list[KeyTechEntry], key: Callable[[str], str], log: TableLog) -> list[KeyTechEntry]:
    """One entry per domain over all tables, so one question never gets two different answers.

    ``key`` is the split's domain normalisation, so ``智能网联汽车领域`` in one table and ``智能网联汽车``
    in another merge. The merged entry names every source (``office+papers``) and every row.
    """
    merged: dict[str, KeyTechEntry] = {}
    for entry in entries:
        name = key(entry.domain)
        first = merged.get(name)
        if first is None:
            merged[name] = KeyTechEntry(
                entry.domain, entry.source, entry.location, list(entry.technologies), list(entry.codes)
            )
            continue
        log.notes["domains merged across sources (one answer per domain)"] += 1
        if entry.source not in first.source.split("+"):
            first.source += "+" + entry.source
        first.location += "; " + entry.location
        _extend(first, entry.technologies, entry.all_codes())
    return list(merged.values())


def _merge_same_domain(entries: list[KeyTechEntry], log: TableLog) -> list[KeyTechEntry]:
    """One entry per domain and file: a table listing a domain twice means one longer answer."""
    merged: dict[str, KeyTechEntry] = {}
    for entry in entries:
        first = merged.get(entry.domain)
        if first is None:
            merged[entry.domain] = entry
            continue
        log.notes["rows merged into an earlier row of the same domain"] += 1
        _extend(first, entry.technologies, entry.all_codes())
    return list(merged.values())


def _rows(path: Path, required: tuple[str, ...], log: TableLog) -> Iterator[Record]:
    """Records of a table; a CSV the csv module cannot parse is an error naming the line."""
    iterator = iter_records(path, log.skips, required=required)
    last_line = 1
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except csv.Error as exc:
            raise RecordError(f"{path}:{last_line + 1}: unreadable CSV row ({exc})") from None
        last_line = record.line or last_line
        yield record


# --- alpaca and sharegpt ---------------------------------------------------------------------

_TASK_TYPES = {"ipc": "ipc", "ipc_task": "ipc", "tech": "tech", "tech_task": "tech", "key_tech": "tech"}


def _task_of(data: dict[str, Any], output: str) -> Task | None:
    """The task from ``task_type`` (``IPC_TASK``/``TECH_TASK``), else ipc when the answer names IPC codes."""
    task_type = data.get("task_type") or data.get("task")
    if task_type:
        return _TASK_TYPES.get(str(task_type).strip().lower())  # type: ignore[return-value]
    return "ipc" if extract_ipc_codes(output) else "tech"


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
    task = _task_of(record.data, output)
    if task is None:
        log.skips.skip("unknown task_type", record.location, str(record.data.get("task_type")))
        return None
    domain = str(record.data.get("domain") or "").strip()
    guessed = False
    if not domain:
        # A short input is the subject (``Which IPC codes does this field involve?`` + ``智慧农业``).
        domain = query.strip() if 0 < len(query.strip()) <= 40 else domain_from_question(instruction)
    if not domain:
        # Without a domain the split cannot keep paraphrases together; the question itself is the
        # group, which is safe for a one-off sample and counted so the user can add a domain field.
        domain, guessed = instruction.strip()[:60], True
        log.notes["imported records without a recognisable domain (question used as split group)"] += 1
    return ImportedRecord(instruction, query, output, system, task, domain, source, record.location, guessed)


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
