"""A code's title read together with its ancestors' titles (``coretech ipc show``).

A subgroup title such as "using electronic means" (G06N3/063) only makes sense under its parents:
"Computer systems based on biological models" → … The chain follows the scheme's own parents, so a
WIPO XML scheme shows the dot-level subgroups in between, and a title list (no dot levels) goes
section → class → subclass → main group → subgroup.
"""

from __future__ import annotations

from collections.abc import Sequence

from coretech.ipc.codes import IpcCode
from coretech.ipc.scheme import IpcEntry, IpcScheme

INDENT = "  "


def lineage(scheme: IpcScheme, code: IpcCode) -> list[IpcEntry]:
    """The code's entry and the entries above it, top first; empty when the scheme lacks the code."""
    entry = scheme.get(code)
    chain: list[IpcEntry] = []
    seen: set[str] = set()
    while entry is not None and str(entry.code) not in seen:
        seen.add(str(entry.code))
        chain.append(entry)
        entry = scheme.get(entry.parent) if entry.parent else None
    return chain[::-1]


def render_lineage(scheme: IpcScheme, code: IpcCode, languages: Sequence[str] | None = None) -> list[str]:
    """One line per level, indented by depth: ``code  title``, then the same code's title in each
    further language on its own line beneath (English first, then the others the scheme has)."""
    if languages is None:
        available = scheme.languages()
        languages = [lang for lang in ("en", *available) if lang in available]
        languages = list(dict.fromkeys(languages))
    lines = []
    for depth, entry in enumerate(lineage(scheme, code)):
        head = f"{INDENT * depth}{entry.code}"
        titles = [entry.titles[lang] for lang in languages if entry.titles.get(lang)]
        lines.append(f"{head}  {titles[0]}" if titles else head)
        lines += [f"{' ' * len(head)}  {title}" for title in titles[1:]]
    return lines
