"""IPC symbols: parsing, canonical form, hierarchy levels and extraction from free text.

Everything in CoreTech that touches an IPC code goes through this module, so that a code written
as ``G06F 16/00`` in a patent, ``G06F0016000000`` in Google Patents data and ``Ｇ０６Ｆ１６／００`` in a
model's answer is one and the same object everywhere (scoring, corpus building, QA rendering).

Canonical form: ``G06F16/00`` (no spaces, main group without leading zeros, subgroup with at least
two digits), a subclass alone as ``G06F``, a class as ``G06`` and a section as ``G``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Level = Literal["section", "class", "subclass", "main_group", "subgroup"]
LEVELS: tuple[Level, ...] = ("section", "class", "subclass", "main_group", "subgroup")


_STRICT = re.compile(
    r"""^(?P<section>[A-H])
        (?:(?P<cls>\d{2})
          (?:(?P<subclass>[A-Z])
            (?:\s*(?P<main>\d{1,4})(?:\s*/\s*(?P<sub>\d{2,6}))?)?
          )?
        )?$""",
    re.VERBOSE,
)
_FOURTEEN = re.compile(r"^(?P<subclass>[A-H]\d{2}[A-Z])(?P<main>\d{4})(?P<sub>\d{6})$")

# In free text a code needs at least a subclass (``G06F``): a bare ``G06`` or ``H2`` is too
# ambiguous in prose. The boundaries are ASCII-only on purpose: Chinese text runs straight into
# codes (``分类号H04W``), so ``\b`` (which treats CJK as word characters) would miss them.
_IN_TEXT = re.compile(
    r"""(?<![A-Za-z0-9/])
        (?P<subclass>[A-H]\d{2}[A-Z])
        (?:
            (?P<fourteen>\d{10})(?![0-9])                      # G06F0016000000
          | [ \t\u00a0]{0,3}(?P<main>\d{1,4})
            (?:[ \t\u00a0]*/[ \t\u00a0]*(?P<sub>\d{2,6}))?
            (?![0-9/])
        )?
        (?![A-Za-z0-9])""",
    re.VERBOSE,
)
# The short end of an abbreviated range ``A61B 1/00-5/00``: the second end inherits the subclass.
_RANGE_TAIL = re.compile(r"[ \t]*[-–—~～至到][ \t]*(?P<main>\d{1,4})[ \t]*/[ \t]*(?P<sub>\d{2,6})(?![0-9/])")


class InvalidIpcCode(ValueError):
    """Raised for a string that is not an IPC symbol at all (as opposed to one absent from a scheme)."""


@dataclass(frozen=True)
class IpcCode:
    """One IPC symbol at any depth, from a section (``G``) down to a subgroup (``G06F16/245``)."""

    section: str
    cls: str | None = None  # two digits, e.g. "06"
    subclass: str | None = None  # one letter, e.g. "F"
    main_group: str | None = None  # digits without leading zeros, e.g. "16"
    subgroup: str | None = None  # digits, at least two, e.g. "00", "245"

    @property
    def sort_key(self) -> tuple[str, str, str, int, str]:
        """Scheme order: main groups numerically (G06F9 before G06F16), subgroups as decimal
        fractions (``/04`` < ``/045`` < ``/063`` < ``/08``), parents before their children."""
        main = -1 if self.main_group is None else int(self.main_group)
        return (self.section, self.cls or "", self.subclass or "", main, (self.subgroup or "").ljust(6, "0"))

    def __lt__(self, other: IpcCode) -> bool:
        return self.sort_key < other.sort_key

    @property
    def level(self) -> Level:
        """The deepest level this symbol names; ``G06F16/00`` is a main group, ``G06F16/24`` a subgroup."""
        if self.main_group is None:
            if self.subclass is not None:
                return "subclass"
            return "class" if self.cls is not None else "section"
        return "main_group" if self.subgroup == "00" else "subgroup"

    def __str__(self) -> str:
        text = self.section
        if self.cls is not None:
            text += self.cls
        if self.subclass is not None:
            text += self.subclass
        if self.main_group is not None:
            text += f"{self.main_group}/{self.subgroup}"
        return text

    def truncate(self, level: Level) -> IpcCode | None:
        """This code cut to ``level``; None when the code does not reach that deep.

        A main group is its own ``main_group`` ancestor; a subgroup's ``main_group`` ancestor is
        ``X/00``. So ``G06F16/245`` at main_group level is ``G06F16/00``.
        """
        depth = LEVELS.index(level)
        if depth > LEVELS.index(self.level):
            return None
        if level == "section":
            return IpcCode(self.section)
        if level == "class":
            return IpcCode(self.section, self.cls)
        if level == "subclass":
            return IpcCode(self.section, self.cls, self.subclass)
        if level == "main_group":
            return IpcCode(self.section, self.cls, self.subclass, self.main_group, "00")
        return self

    def ancestors(self) -> list[IpcCode]:
        """Section, class, subclass and (for a subgroup) main group above this code, top first."""
        result = []
        for level in LEVELS[: LEVELS.index(self.level)]:
            parent = self.truncate(level)
            if parent is not None and parent != self:
                result.append(parent)
        return result

    @property
    def subclass_code(self) -> str | None:
        """``G06F`` for any code at subclass depth or deeper."""
        code = self.truncate("subclass")
        return str(code) if code else None


def _build(section: str, cls: str | None, subclass: str | None, main: str | None, sub: str | None) -> IpcCode:
    if main is not None:
        main = str(int(main))
        sub = "00" if sub is None else sub
        if len(sub) > 2:
            # Google's fixed-width subgroup is right-padded: "092500" -> "0925"; keep >= 2 digits.
            sub = sub.rstrip("0").ljust(2, "0")
    return IpcCode(section, cls, subclass, main, sub)


def parse_ipc(text: str) -> IpcCode:
    """Parse one IPC symbol written in any common form; raise InvalidIpcCode otherwise.

    Accepts ``G06F 16/00``, ``G06F16/00``, ``G06F16`` (main group without ``/00``), zero-padded groups
    (``H01M010/052``), ``G06F0016000000`` (14 characters, WIPO's title list, Google Patents / PATSTAT;
    ``G06F0000000000`` is the subclass), full-width forms, and section / class / subclass alone.
    One symbol only: for symbols inside text (``包括G06N、A61B``) use ``extract_ipc_codes``.
    """
    normalised = unicodedata.normalize("NFKC", text).strip().upper()
    match = _FOURTEEN.match(normalised)
    if match:
        sub = match["subclass"]
        if match["main"] == "0000" and match["sub"] == "000000":  # a subclass padded to 14 characters
            return IpcCode(sub[0], sub[1:3], sub[3])
        return _build(sub[0], sub[1:3], sub[3], match["main"], match["sub"])
    match = _STRICT.match(normalised)
    if not match:
        raise InvalidIpcCode(f"not an IPC symbol: {text!r}")
    return _build(match["section"], match["cls"], match["subclass"], match["main"], match["sub"])


def canonical_ipc(text: str) -> str:
    """Canonical string of one IPC symbol, e.g. ``canonical_ipc("G06F 16/00") == "G06F16/00"``."""
    return str(parse_ipc(text))


def extract_ipc_codes(text: str) -> list[IpcCode]:
    """Every IPC symbol in free text, each once, in order of first appearance.

    Handles codes run into Chinese text (``包括G06N、A61B``, ``涉及H04W``), spacing variants
    (``G06F 16/00``), zero-padded groups (``H01M010/052``), full-width characters, markdown emphasis,
    titles in brackets after a code, ranges (both ends; ``A61B 1/00-5/00`` included) and the
    14-character form (``G06F0016000000``). Requires at
    least subclass depth, so words that merely look similar (``USB3``, ``H2O``, ``GPT4``,
    ``ISO9001``, ``5G``) are not codes.
    """
    normalised = unicodedata.normalize("NFKC", text)
    found: dict[str, IpcCode] = {}
    for match in _IN_TEXT.finditer(normalised):
        subclass = match["subclass"]
        section, cls, letter = subclass[0], subclass[1:3], subclass[3]
        if match["fourteen"]:
            digits = match["fourteen"]
            main = None if digits == "0" * 10 else digits[:4]  # only zeros: the subclass, padded
            code = _build(section, cls, letter, main, digits[4:] if main else None)
        else:
            code = _build(section, cls, letter, match["main"], match["sub"])
        found.setdefault(str(code), code)
        if match["sub"]:
            tail = _RANGE_TAIL.match(normalised, match.end())
            if tail:
                end = _build(section, cls, letter, tail["main"], tail["sub"])
                found.setdefault(str(end), end)
    return list(found.values())
