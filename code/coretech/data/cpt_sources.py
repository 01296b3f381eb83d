"""The three CPT sources as documents: IPC definitions, patents, and a general corpus (WuDao).

* IPC definitions are rendered from an ``IpcScheme``: for each section, class, subclass and main
  group (the levels are configurable), what the code covers, where it sits and which children it
  has, once per language that has titles (WIPO English, CNIPA Chinese, ...).
* Patents come shaped like Google Patents public data (``publication_number``; ``title``,
  ``abstract``, ``description`` as lists of ``{text, language}`` or plain strings, also under
  BigQuery's ``*_localized`` names; ``ipc``/``cpc`` entries with ``code``) or in a flat form
  (``id``, ``title``, ``abstract``, ``description``, ``classifications``). One document per
  patent: title, abstract, IPC codes with their titles, description cut to a configured length.
* The general corpus is WuDao's JSON (``id``, ``title``, ``content``, ``dataType``), filtered by
  ``dataType``.

Rendering raises ``Unusable`` with a reason; the builder counts it, so nothing is dropped silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
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
from coretech.ipc import InvalidIpcCode, IpcCode, IpcEntry, IpcScheme, parse_ipc

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


def _entry_title(entry: IpcEntry, language: str) -> str | None:
    return entry.titles.get(language) or entry.titles.get("en") or next(iter(entry.titles.values()), None)


# --- IPC definitions -------------------------------------------------------------------------

_LEVEL_WORDS = {
    "en": {
        "section": ("section", "sections"),
        "class": ("class", "classes"),
        "subclass": ("subclass", "subclasses"),
        "main_group": ("main group", "main groups"),
        "subgroup": ("subgroup", "subgroups"),
    },
    "zh": {
        "section": ("部", "部"),
        "class": ("大类", "大类"),
        "subclass": ("小类", "小类"),
        "main_group": ("大组", "大组"),
        "subgroup": ("小组", "小组"),
    },
}


def ipc_definition_documents(
    scheme: IpcScheme, levels: Iterable[str], languages: Iterable[str] | None
) -> Iterator[RenderedDocument]:
    """One definition per code at the chosen levels and per language with a title, in scheme order."""
    wanted = set(levels)
    for entry in sorted(scheme.entries.values(), key=lambda e: e.code.sort_key):
        if entry.code.level not in wanted:
            continue
        entry_languages = sorted(entry.titles) if languages is None else [x for x in languages if x in entry.titles]
        for language in entry_languages:
            yield RenderedDocument(
                f"ipc:{entry.code}:{language}", language, render_ipc_definition(scheme, entry, language)
            )


def render_ipc_definition(scheme: IpcScheme, entry: IpcEntry, language: str) -> str:
    """What the code covers, where it sits in the hierarchy and which codes it contains.

    Main groups (and subgroups) list all their subgroups, indented by WIPO's dot level; higher
    levels list their direct children, which keeps a subclass document readable.
    """
    zh = language == "zh"
    words = _LEVEL_WORDS["zh" if zh else "en"]
    code, title = str(entry.code), entry.titles[language]
    path = []
    parent = scheme.get(entry.parent) if entry.parent else None
    while parent is not None:
        path.append(parent)
        parent = scheme.get(parent.parent) if parent.parent else None
    path.reverse()

    def named(e: IpcEntry) -> str:
        t = e.titles.get(language)
        level = words[e.code.level][0]
        if zh:
            return f"{e.code}{level}（{t}）" if t else f"{e.code}{level}"
        return f"{level} {e.code} ({t})" if t else f"{level} {e.code}"

    level = words[entry.code.level][0]
    if zh:
        lines = [f"IPC分类号 {code}：{title}"]
        where = f"，属于{'、'.join(named(p) for p in path)}" if path else ""
        lines.append(f"{code} 是国际专利分类（IPC）中的{level}{where}。")
        lines.append(f"含义：{title}。")
    else:
        lines = [f"IPC {code}: {title}"]
        where = f", in {', '.join(named(p) for p in path)}" if path else ""
        lines.append(f"{code} is a {level} of the International Patent Classification (IPC){where}.")
        lines.append(f"It covers: {title.rstrip('.')}.")

    deep = entry.code.level in ("main_group", "subgroup")
    listed: list[tuple[int, IpcEntry]] = []

    def collect(e: IpcEntry, depth: int) -> None:
        for key in e.children:
            child = scheme.get(key)
            if child is None:
                continue
            listed.append((depth, child))
            if deep:
                collect(child, depth + 1)

    collect(entry, 0)
    if listed:
        child_level = words[listed[0][1].code.level][1]
        lines.append(f"下设{len(listed)}个{child_level}：" if zh else f"It contains {len(listed)} {child_level}:")
        for depth, child in listed:
            child_title = child.titles.get(language)
            separator = "：" if zh else ": "
            text = f"{child.code}{separator}{child_title}" if child_title else str(child.code)
            lines.append(f"{'  ' * depth}- {text}")
    else:
        lines.append("无下位分类。" if zh else "It has no subdivisions.")
    return "\n".join(lines)


# --- patents ---------------------------------------------------------------------------------

_CODE_SEPARATORS = re.compile(r"[;,|\n；，、]+")
_SENTENCE_END = re.compile(r"[。！？.!?](?=\s|$)|[。！？]|\n")


def truncate_text(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut after the last sentence end in the final 40% if there is one."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] >= max_chars * 0.6:
        return head[: ends[-1]].rstrip()
    return head.rstrip()


class PatentRenderer:
    """Turns one patent record (either form) into its document in one language."""

    def __init__(
        self,
        scheme: IpcScheme | None,
        languages: list[str],
        description_max_chars: int,
        detect_language: Callable[[str], str] | None = None,
    ) -> None:
        self.scheme = scheme
        self.languages = languages
        self.description_max_chars = description_max_chars
        # Untagged text (plain strings, flat records without `language`) needs its language before
        # rendering: it decides the labels (摘要 / Abstract) as well as the language filter.
        self.detect_language = detect_language

    def render(self, data: dict[str, Any]) -> RenderedDocument:
        google = "publication_number" in data or any(k.endswith("_localized") for k in data)
        key = "publication_number" if google else "id"
        name = data.get(key)
        if name is None or (isinstance(name, str) and not name.strip()):
            raise Unusable("missing publication_number or id")
        name = str(name).strip()
        record_language = data.get("language") or data.get("lang")
        record_language = record_language.lower() if isinstance(record_language, str) else None

        titles = self._texts(data, "title", record_language)
        abstracts = self._texts(data, "abstract", record_language)
        descriptions = self._texts(data, "description", record_language)
        body_languages = list(dict.fromkeys(lang for _, lang in abstracts + descriptions))
        if not body_languages:
            raise Unusable("no abstract or description", kind="filtered")
        preferred = [x for x in self.languages if x in body_languages]
        if preferred:
            language: str | None = preferred[0]
        elif None in body_languages and self.detect_language is None:
            language = None  # untagged text: the caller's cleaner decides after rendering
        elif None in body_languages:
            untagged = next(text for text, lang in abstracts + descriptions if lang is None)
            language = self.detect_language(untagged)
            if language not in self.languages:
                raise Unusable(f"language not kept: {language}", kind="filtered")
            # from here on the untagged texts are in `language`
            titles, abstracts, descriptions = (
                [(t, language if lang is None else lang) for t, lang in texts]
                for texts in (titles, abstracts, descriptions)
            )
        else:
            raise Unusable(f"language not kept: {body_languages[0]}", kind="filtered")

        def pick(texts: list[tuple[str, str | None]]) -> str | None:
            for wanted in (language, None):
                for text, lang in texts:
                    if lang == wanted:
                        return text.strip()
            return None

        document = RenderedDocument(name, language, "")
        codes = self._codes(data, google, document)
        zh = language == "zh"
        lines = []
        title = pick(titles)
        if title:
            lines.append(title)
        abstract = pick(abstracts)
        if abstract:
            lines.append(f"摘要：{abstract}" if zh else f"Abstract: {abstract}")
        if codes:
            lines.append("IPC分类号：" if zh else "IPC classification:")
            lines.extend(f"- {self._describe(code, language or 'en', document)}" for code in codes)
        description = pick(descriptions)
        if description:
            description = truncate_text(description, self.description_max_chars)
            lines.append(f"说明书：\n{description}" if zh else f"Description:\n{description}")
        document.text = "\n".join(lines)
        return document

    @staticmethod
    def _texts(data: dict[str, Any], field_name: str, default_language: str | None) -> list[tuple[str, str | None]]:
        for key in (f"{field_name}_localized", field_name):
            value = data.get(key)
            if value not in (None, "", []):
                break
        else:
            return []
        if isinstance(value, str):
            return [(value, default_language)] if value.strip() else []
        if not isinstance(value, list):
            raise Unusable(f"malformed field {key!r}", f"expected a string or a list, got {type(value).__name__}")
        texts = []
        for item in value:
            if isinstance(item, str):
                text, lang = item, default_language
            elif isinstance(item, dict) and isinstance(item.get("text"), str):
                text, lang = item["text"], item.get("language")
                lang = lang.lower() if isinstance(lang, str) and lang else default_language
            else:
                raise Unusable(f"malformed field {key!r}", "expected strings or {text, language} objects")
            if text.strip():
                texts.append((text, lang))
        return texts

    def _codes(self, data: dict[str, Any], google: bool, document: RenderedDocument) -> list[IpcCode]:
        """Canonical IPC codes in input order; CPC stands in when a Google record has no IPC entries."""
        if google:
            field_name = "ipc" if data.get("ipc") else "cpc"
        else:
            field_name = "classifications" if data.get("classifications") else "ipc"
        value = data.get(field_name)
        if value in (None, "", []):
            document.notes.append("no IPC code")
            return []
        raw: list[str] = []
        if isinstance(value, str):
            raw = [part for part in _CODE_SEPARATORS.split(value) if part.strip()]
        elif isinstance(value, list):
            for item in value:
                code = item.get("code") if isinstance(item, dict) else item
                if not isinstance(code, str):
                    raise Unusable(f"malformed field {field_name!r}", "expected codes or {code: ...} objects")
                raw.append(code)
        else:
            raise Unusable(f"malformed field {field_name!r}", f"expected a list, got {type(value).__name__}")
        codes: dict[str, IpcCode] = {}
        for text in raw:
            try:
                code = parse_ipc(text)
            except InvalidIpcCode:
                if field_name == "cpc":
                    document.notes.append("CPC code outside the IPC skipped")  # e.g. Y02E10/50
                else:
                    document.repairs.append(("invalid IPC code removed", repr(text)))
                continue
            codes.setdefault(str(code), code)
        return list(codes.values())

    def _describe(self, code: IpcCode, language: str, document: RenderedDocument) -> str:
        """``code: title``; a code the scheme lacks borrows its nearest ancestor's title, said as such."""
        zh = language == "zh"
        if self.scheme is None:
            return str(code)
        entry = self.scheme.get(code)
        if entry is not None:
            title = _entry_title(entry, language)
            if title:
                return f"{code}：{title}" if zh else f"{code}: {title}"
        # A subgroup newer than the scheme (G06N3/0464) usually sits under the subgroup whose digits
        # it extends (G06N3/04); then come the main group, subclass, class and section.
        digits = code.subgroup or ""
        extended = [
            IpcCode(code.section, code.cls, code.subclass, code.main_group, digits[:k])
            for k in range(len(digits) - 1, 1, -1)
        ]
        for ancestor in [*extended, *reversed(code.ancestors())]:
            entry = self.scheme.get(ancestor)
            title = _entry_title(entry, language) if entry is not None else None
            if title:
                document.notes.append("IPC code titled by its ancestor")
                return f"{code}（属于{ancestor}：{title}）" if zh else f"{code} (under {ancestor}: {title})"
        document.notes.append("IPC code not in the scheme")
        return str(code)


# --- general corpus (WuDao) ------------------------------------------------------------------


def render_general(data: dict[str, Any], keep_types: list[str], drop_types: list[str]) -> RenderedDocument:
    """Title and content of a WuDao entry, after the dataType filter."""
    data_type = data.get("dataType")
    if data_type in drop_types:
        raise Unusable(f"dataType dropped: {data_type}", kind="filtered")
    if keep_types and data_type not in keep_types:
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
    return RenderedDocument("" if name is None else str(name), None, text)
