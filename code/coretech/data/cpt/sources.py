"""The three CPT sources as documents: IPC definitions, patents, and a general corpus (WuDao).

* IPC definitions are rendered from an ``IpcScheme``: for each section, class, subclass and main
  group (the levels are configurable), what the code covers, where it sits and which children it
  has, once per language that has titles (WIPO English, CNIPA Chinese, ...).
* Patents come shaped like Google Patents public data (``publication_number``; ``title``,
  ``abstract``, ``description`` as lists of ``{text, language}`` or plain strings, also under
  BigQuery's ``*_localized`` names; ``ipc``/``cpc`` entries with ``code``) or in a flat form
  (``id``, ``title``, ``abstract``, ``description``, ``classifications``). One document per
  patent: title, abstract, IPC codes with their titles, description cut to a configured length.
  The reference release's pre-rendered ``{patent_id, text}`` is read as it is (see ``patents``).
* The general corpus is WuDao's JSON (``id``, ``title``, ``content``, ``dataType``), filtered by
  ``dataType``; records without the key (the reference release's ``{id, content}`` JSON Lines) are
  kept unfiltered, and counted.
* IPC descriptions from the reference release, ``{"ipc": "A01B", "des": "…"}``, are documents as they are.

Rendering raises ``Unusable`` with a reason; the builder counts it, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coretech.data.records import (
    CORRUPT_COMPRESSION,
    Record,
    SkipLog,
    check_input_file,
    input_suffix,
    iter_jsonl,
    iter_records,
    open_input,
)
from coretech.ipc import InvalidIpcCode, IpcScheme, parse_ipc

DropKind = Literal["malformed", "filtered"]


class Unusable(Exception):
    """A record that yields no document; ``kind`` says whether the input is broken or only filtered out.

    Only ``malformed`` records stop a ``--strict`` build; filtered ones (wrong dataType, no
    abstract, language not kept) are expected in real data and are only counted.
    """

    def __init__(self, reason: str, detail: str = "", kind: DropKind = "malformed") -> None:
        super().__init__(reason)
        self.reason, self.detail, self.kind = reason, detail, kind


@dataclass
class RenderedDocument:
    """A document before cleaning; ``language`` is None when the input does not say."""

    name: str
    language: str | None
    text: str
    repairs: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail): fatal under --strict
    notes: list[str] = field(default_factory=list)  # informational counts, never fatal


# --- reading ---------------------------------------------------------------------------------


def iter_corpus_records(path: Path, skips: SkipLog) -> Iterator[Record]:
    """Records of one input file, streamed whatever its size.

    ``.json`` is either a JSON array (WuDao), streamed element by element with ijson instead of
    parsed whole, or newline-delimited JSON (BigQuery names its JSON Lines exports ``.json``, and
    ``.json.gz`` when compressed). Both may be gzip-compressed; other extensions go to the shared reader.
    """
    if input_suffix(path) != ".json":
        return iter_records(path, skips)
    check_input_file(path)
    with open_input(path) as handle:
        head = handle.read(1024)
    start = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    if head[start:].lstrip()[:1] == b"[":
        return _iter_json_array(path, skips, start)
    return iter_jsonl(path, skips)


def _iter_json_array(path: Path, skips: SkipLog, start: int) -> Iterator[Record]:
    import ijson

    index = -1
    with open_input(path) as handle:
        handle.read(start)  # the byte-order mark
        try:
            for index, item in enumerate(ijson.items(handle, "item", use_float=True)):
                if not isinstance(item, dict):
                    skips.skip("not a JSON object", f"{path}: record {index}")
                    continue
                yield Record(item, path, index=index)
        except ijson.JSONError as exc:
            # A syntax error ends an array stream: what follows cannot be split into records.
            skips.skip("not valid JSON (rest of the file unreadable)", f"{path}: record {index + 1}", str(exc)[:120])
        except CORRUPT_COMPRESSION as exc:
            skips.skip(
                "compressed stream truncated or corrupt (rest of the file unreadable)",
                f"{path}: record {index + 1}",
                str(exc)[:120],
            )


# --- general corpus (WuDao) ------------------------------------------------------------------


def render_general(data: dict[str, Any], keep_types: list[str], drop_types: list[str]) -> RenderedDocument:
    """Title and content of a WuDao entry, after the dataType filter."""
    notes = []
    data_type = data.get("dataType")
    if "dataType" not in data:
        notes.append("no dataType: type filter not applied")
    elif data_type in drop_types:
        raise Unusable(f"dataType dropped: {data_type}", kind="filtered")
    elif keep_types and data_type not in keep_types:
        raise Unusable(f"dataType not kept: {data_type if data_type is not None else '(none)'}", kind="filtered")
    content = data.get("content")
    if not isinstance(content, str):
        if content is None:
            raise Unusable("missing content")
        raise Unusable("malformed field 'content'", f"expected a string, got {type(content).__name__}")
    title = data.get("title")
    title = title.strip() if isinstance(title, str) else ""
    content = content.strip()
    text = content if not title or content.startswith(title) else f"{title}\n{content}"
    name = data.get("id", data.get("uniqueKey"))
    return RenderedDocument("" if name is None else str(name), None, text, notes=notes)


# --- IPC descriptions (the reference release) ------------------------------------------------


def render_ipc_description(data: dict[str, Any], scheme: IpcScheme | None) -> RenderedDocument:
    """An ``{"ipc", "des"}`` record as its document; the code must parse, and is checked against the scheme."""
    code, text = data.get("ipc"), data.get("des")
    if not isinstance(code, str) or not code.strip():
        raise Unusable("missing ipc" if code is None else "malformed field 'ipc'", "expected an IPC code")
    if not isinstance(text, str):
        raise Unusable("missing des" if text is None else "malformed field 'des'", "expected a string")
    try:
        parsed = parse_ipc(code)
    except InvalidIpcCode:
        raise Unusable("invalid IPC code in 'ipc'", repr(code)) from None
    notes = []
    if scheme is not None and parsed not in scheme:
        notes.append("IPC code not in the scheme")
    return RenderedDocument(f"ipc:{parsed}:des", None, text, notes=notes)
