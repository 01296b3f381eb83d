"""The IPC scheme: titles per language, parents and children, loaded from WIPO or national files.

Two real formats are read:

* WIPO's IPC master-file XML (``ipc_scheme_*.xml`` from the IPC download area): nested
  ``ipcEntry`` elements with a ``kind`` (s = section, c = class, u = subclass, m = main group,
  1-9 = subgroup dot level, other kinds are headings and notes) and a 14-character ``symbol``.
  Read with ``iterparse`` so the 100 MB+ files stream instead of building a DOM.
* A plain table (CSV, JSON Lines or a JSON array) with ``code``, ``title`` and optionally
  ``language``, e.g. the Chinese titles CNIPA publishes.

The scheme is also how we tell an existing code from a well-formed but invented one (the
invalid-code rate of a model's answers).
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET

from coretech.ipc.codes import LEVELS, InvalidIpcCode, IpcCode, Level, parse_ipc

_WIPO_KINDS_KEPT = set("scum123456789")


class SchemeError(ValueError):
    """A scheme file that cannot be read; the message names the file and the line or record."""


@dataclass
class IpcEntry:
    """One code of the scheme with its titles and, for subgroups, the dot level (indentation)."""

    code: IpcCode
    titles: dict[str, str] = field(default_factory=dict)  # language -> title
    dots: int = 0  # 0 for main groups and above; 1..n for subgroups (WIPO's "kind" digit)
    parent: str | None = None
    children: list[str] = field(default_factory=list)


class IpcScheme:
    """Codes with titles and hierarchy; merges several files (e.g. WIPO English + CNIPA Chinese)."""

    def __init__(self) -> None:
        self.entries: dict[str, IpcEntry] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, code: object) -> bool:
        return str(code) in self.entries

    def get(self, code: str | IpcCode) -> IpcEntry | None:
        return self.entries.get(str(code))

    def add(self, code: IpcCode, title: str | None = None, language: str = "en", parent: str | None = None) -> IpcEntry:
        key = str(code)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = IpcEntry(code)
        if title:
            entry.titles[language] = title
        if parent and entry.parent is None:
            entry.parent = parent
        return entry

    def title(self, code: str | IpcCode, language: str = "en") -> str | None:
        """Title in ``language``, falling back to any language that has one."""
        entry = self.get(code)
        if entry is None or not entry.titles:
            return None
        return entry.titles.get(language) or next(iter(entry.titles.values()))

    def languages(self) -> list[str]:
        return sorted({lang for entry in self.entries.values() for lang in entry.titles})

    def exists(self, code: IpcCode) -> bool:
        """True when the code, or for a main group written without ``/00`` its group, is in the scheme."""
        return str(code) in self.entries

    def finalise(self) -> IpcScheme:
        """Fill parents from the code structure where a file did not give them, then children lists.

        Subgroup parents come from the XML nesting (dot levels); tables only give codes, so a
        subgroup from a table hangs under its main group.
        """
        for entry in self.entries.values():
            if entry.parent is None:
                for ancestor in reversed(entry.code.ancestors()):
                    if str(ancestor) in self.entries:
                        entry.parent = str(ancestor)
                        break
            entry.children = []
        for key, entry in self.entries.items():
            if entry.parent and entry.parent in self.entries:
                self.entries[entry.parent].children.append(key)
        for entry in self.entries.values():
            entry.children.sort(key=lambda k: self.entries[k].code)
        return self

    def at_level(self, level: Level) -> Iterator[IpcEntry]:
        for entry in self.entries.values():
            if entry.code.level == level:
                yield entry

    @classmethod
    def load(cls, paths: Iterable[str | Path], default_language: str = "en") -> IpcScheme:
        """Read and merge scheme files; the format is chosen by extension (.xml, .csv, .jsonl, .json)."""
        scheme = cls()
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise SchemeError(f"{path}: IPC scheme file not found")
            suffix = path.suffix.lower()
            if suffix == ".xml":
                _read_wipo_xml(scheme, path)
            elif suffix in {".csv", ".tsv", ".jsonl", ".json"}:
                _read_table(scheme, path, default_language)
            else:
                raise SchemeError(f"{path}: unknown IPC scheme format {suffix!r} (use .xml, .csv, .jsonl or .json)")
        return scheme.finalise()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _entry_title(element: ET.Element) -> str:
    """Join the titlePart texts of one ipcEntry, leaving out references to other places."""
    parts = []
    for child in element:
        if _local(child.tag) != "textBody":
            continue
        for title in child.iter():
            if _local(title.tag) != "titlePart":
                continue
            texts = ["".join(t.itertext()).strip() for t in title if _local(t.tag) == "text"]
            text = " ".join(t for t in texts if t)
            if text:
                parts.append(text)
    return "; ".join(parts)


def _read_wipo_xml(scheme: IpcScheme, path: Path) -> None:
    language = "en"
    stack: list[str | None] = []  # canonical code of each open ipcEntry (None for headings/notes)
    try:
        for event, element in SafeET.iterparse(path, events=("start", "end")):
            name = _local(element.tag)
            if event == "start":
                if name == "IPCScheme":
                    language = (element.get("lang") or "en").lower()
                if name == "ipcEntry":
                    kind = element.get("kind", "")
                    symbol = element.get("symbol", "")
                    code: str | None = None
                    if kind in _WIPO_KINDS_KEPT and symbol:
                        try:
                            code = str(parse_ipc(symbol))
                        except InvalidIpcCode as exc:
                            raise SchemeError(f"{path}: ipcEntry kind={kind!r}: {exc}") from None
                    stack.append(code)
                continue
            if name != "ipcEntry":
                continue
            code = stack.pop()
            if code is not None:
                parent = next((c for c in reversed(stack) if c is not None), None)
                entry = scheme.add(parse_ipc(code), _entry_title(element), language, parent)
                kind = element.get("kind", "")
                if kind.isdigit():
                    entry.dots = int(kind)
            element.clear()  # keep memory flat on the full scheme
    except ET.ParseError as exc:
        line, column = exc.position
        raise SchemeError(f"{path}:{line}:{column}: not well-formed XML ({exc.msg})") from None


def _table_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(location, row) pairs from CSV/TSV, JSON Lines or a JSON array, location naming file and line."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if suffix in {".csv", ".tsv"}:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                yield f"{path}:{reader.line_num}", row
        elif suffix == ".jsonl":
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SchemeError(f"{path}:{number}: not JSON ({exc.msg})") from None
        else:
            try:
                rows = json.load(handle)
            except json.JSONDecodeError as exc:
                raise SchemeError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
            if not isinstance(rows, list):
                raise SchemeError(f"{path}: expected a JSON array of {{code, title}} objects")
            for index, row in enumerate(rows):
                yield f"{path}: record {index}", row


def _read_table(scheme: IpcScheme, path: Path, default_language: str) -> None:
    seen_levels: dict[str, int] = defaultdict(int)
    for location, row in _table_rows(path):
        if not isinstance(row, dict) or "code" not in row or "title" not in row:
            raise SchemeError(f"{location}: needs the keys 'code' and 'title'")
        try:
            code = parse_ipc(str(row["code"]))
        except InvalidIpcCode as exc:
            raise SchemeError(f"{location}: {exc}") from None
        language = (row.get("language") or row.get("lang") or default_language).strip().lower()
        scheme.add(code, str(row["title"]).strip(), language)
        seen_levels[code.level] += 1
    if not seen_levels:
        raise SchemeError(f"{path}: no IPC entries")


def level_counts(scheme: IpcScheme) -> dict[str, int]:
    """Entries per hierarchy level, for reports."""
    counts = dict.fromkeys(LEVELS, 0)
    for entry in scheme.entries.values():
        counts[entry.code.level] += 1
    return counts
