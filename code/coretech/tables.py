"""Markdown tables for every report (run report, split.md, CPT stats, metrics): one helper over tabulate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate


def markdown_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    floatfmt: str = ".3f",
    numbers_right: bool = False,
) -> str:
    """GitHub-flavoured table; floats are formatted with ``floatfmt``, everything else is shown as given.

    A ``|`` inside a cell is escaped (a title or an answer may hold one; unescaped it splits the row).
    ``numbers_right``: every column after the first is right-aligned, as tables of scores read best."""

    def cell(value: Any) -> str:
        text = format(value, floatfmt) if isinstance(value, float) else ("" if value is None else str(value))
        return text.replace("|", "\\|")

    body = [[cell(v) for v in row] for row in rows]
    if not numbers_right:
        return tabulate(body, headers=list(headers), tablefmt="github", disable_numparse=True)
    align = ("left", *("right" for _ in headers[1:]))
    return tabulate(body, headers=list(headers), tablefmt="pipe", disable_numparse=True, colalign=align)
