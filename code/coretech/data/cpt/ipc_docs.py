"""IPC definition documents rendered from an ``IpcScheme``: what a code covers, where it sits and which
codes it contains, once per language that has titles."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from coretech.data.cpt.sources import RenderedDocument
from coretech.ipc import IpcEntry, IpcScheme


def _entry_title(entry: IpcEntry, language: str) -> str | None:
    return entry.titles.get(language) or entry.titles.get("en") or next(iter(entry.titles.values()), None)


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
