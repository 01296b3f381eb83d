"""Patent records (Google Patents public-data shape or the flat form) rendered as one document each:
title, abstract, IPC codes with their titles, description cut to a configured length. The reference
release's pre-rendered ``{patent_id, text}`` records are taken as they are, their listed codes validated."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from coretech.data.cpt.ipc_docs import _entry_title
from coretech.data.cpt.sources import RenderedDocument, Unusable
from coretech.ipc import InvalidIpcCode, IpcCode, IpcScheme, extract_ipc_codes, parse_ipc

_CODE_SEPARATORS = re.compile(r"[;,|\n；，、]+")
_CODE_LISTING = re.compile(r"IPC\s*分类号[^\n]*?[:：]|IPC (?:classification|codes?)[^\n]*?:", re.IGNORECASE)
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
        if "patent_id" in data:
            return self.render_prerendered(data)
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

    def render_prerendered(self, data: dict[str, Any]) -> RenderedDocument:
        """The reference release's ``{patent_id, text}``: the text is the document as it is; the IPC codes
        it lists (after "IPC分类号", else anywhere) are read and checked against the scheme, each counted."""
        name, text = data.get("patent_id"), data.get("text")
        if name is None or (isinstance(name, str) and not name.strip()):
            raise Unusable("missing patent_id")
        if not isinstance(text, str):
            raise Unusable("missing text" if text is None else "malformed field 'text'", "expected a string")
        document = RenderedDocument(str(name).strip(), None, text.strip())
        listing = _CODE_LISTING.search(text)
        codes = extract_ipc_codes(text[listing.end() :] if listing else text)
        if not codes:
            document.notes.append("no IPC code")
        for code in codes:
            if self.scheme is None:
                document.notes.append("IPC code in text not validated (no scheme)")
            elif code in self.scheme:
                document.notes.append("IPC code in text found in the scheme")
            else:
                document.notes.append("IPC code in text not in the scheme")
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
