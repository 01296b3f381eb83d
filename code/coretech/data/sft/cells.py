"""Parsing one table cell: the technologies of a cell (with bracketed details) and its IPC codes.

Shared by both table formats; every symbol that is not an IPC code is reported with its location
(``TableLog.invalid``), never silently dropped. Codes written inside words, zero-padded or in
WIPO's 14-character form are read by the shared ``extract_ipc_codes``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from coretech.data.records import RecordError, SkipLog
from coretech.ipc import InvalidIpcCode, IpcCode, extract_ipc_codes, parse_ipc

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


def name_and_details(item: str) -> tuple[str, list[str]]:
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
        name, details = name_and_details(_strip_numbering(part))
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
        symbol, details = name_and_details(normalised)
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
                # Codes inside words (``包括G06N``), zero-padded or 14-character forms: whatever the
                # shared extractor reads as codes; only an item it finds none in is invalid.
                embedded = extract_ipc_codes(item)
                if not embedded or _malformed_head(item):
                    log.invalid_symbol(location, symbol.strip() or item.strip())
                    continue
                codes.extend(TableCode(c, description if len(embedded) == 1 else "", group) for c in embedded)
                log.notes["codes read from inside a cell's text"] += len(embedded)
                continue
            if code.level in ("section", "class"):
                # A class (``G06``) is too broad to be an answer; it is written as a symbol anyway.
                log.notes["codes above subclass level"] += 1
            codes.append(TableCode(code, description, group))
    return codes


_MALFORMED_HEAD = re.compile(r"^\s*[A-Za-z]\s*[0-9Oo]{2}\s*[A-Za-z]\s*\d+\s*[-_.]\s*\d")


def _malformed_head(item: str) -> bool:
    """``G10L15-00``: a symbol with a wrong separator is reported, not shortened to ``G10L``."""
    return bool(_MALFORMED_HEAD.match(unicodedata.normalize("NFKC", item)))


def _looks_like_code(text: str) -> bool:
    try:
        parse_ipc(text)
    except InvalidIpcCode:
        return False
    return True
