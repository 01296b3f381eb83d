"""Markdown tables for every report (run report, split.md, CPT stats, metrics): one helper over tabulate."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tabulate import tabulate


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, floatfmt: str = ".3f") -> str:
    """GitHub-flavoured table; floats are formatted with ``floatfmt``, everything else is shown as given."""
    body = [
        [format(v, floatfmt) if isinstance(v, float) else ("" if v is None else str(v)) for v in row] for row in rows
    ]
    return tabulate(body, headers=list(headers), tablefmt="github", disable_numparse=True)
