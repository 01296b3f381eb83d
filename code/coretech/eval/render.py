"""The evaluation outputs users read: the comparison table (Markdown, terminal), metrics.csv, the F1
chart and report.md, all rendered from the metrics dict ``coretech.eval.report`` computes.

Rendering is kept apart from reading and scoring so that each stays small, and so the files can be
produced in memory first and written together (``coretech.eval.outputs``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coretech.eval.metrics import CONFIDENCE
from coretech.files import atomic_open, write_text_atomic
from coretech.ipc import LEVELS
from coretech.tables import markdown_table

CHART_FILE = "f1_by_level.png"
LEVEL_TITLES = {
    "section": "Section",
    "class": "Class",
    "subclass": "Subclass",
    "main_group": "Main group",
    "subgroup": "Subgroup",
}


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _f1_cell(metrics: Mapping[str, Any], prefix: str) -> str:
    f1 = metrics.get(f"{prefix}.f1")
    if f1 is None:
        return "–"
    low, high = metrics.get(f"{prefix}.f1_ci_low"), metrics.get(f"{prefix}.f1_ci_high")
    return f"{f1:.3f} [{low:.2f}, {high:.2f}]"


def _table_rows(metrics: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = [
        "Run",
        "n (IPC/tech)",
        *(f"{LEVEL_TITLES[level]} F1" for level in LEVELS),
        "Invalid IPC",
        "Tech F1",
        "Tech F1 (fuzzy)",
        "ROUGE-L",
        "BLEU-4",
    ]
    rows = []
    for name, run in metrics.items():
        rows.append(
            [
                name,
                f"{run.get('n')} ({run.get('n_ipc')}/{run.get('n_tech')})",
                *(_f1_cell(run, f"ipc.{level}") for level in LEVELS),
                _number(run.get("ipc.invalid_rate")),
                _f1_cell(run, "tech"),
                _f1_cell(run, "tech.fuzzy"),
                _number(run.get("rouge_l")),
                _number(run.get("bleu_4")),
            ]
        )
    return header, rows


def metrics_table_markdown(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """The comparison table in Markdown, one row per run; F1 cells are micro F1 [95% bootstrap CI]."""
    header, rows = _table_rows(metrics)
    return markdown_table(header, rows, numbers_right=True) + "\n"


def print_metrics_table(metrics: Mapping[str, Mapping[str, Any]]) -> None:
    """The table in the terminal (rich), micro F1 without the CIs so that a row of five levels, the
    technology scores and ROUGE/BLEU fits a terminal; report.md has the intervals."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 120))  # logs and pipes: no terminal to fit
    table = Table(
        title="CoreTech evaluation (micro F1)",
        box=box.SIMPLE_HEAVY,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    columns = ["Run", "n (IPC/tech)", "Sect.", "Class", "Subcl.", "Main", "Subgr.", "Inval.", "Tech", "Tech~"]
    for index, column in enumerate([*columns, "R-L", "B-4"]):
        table.add_column(column, justify="left" if index == 0 else "right", no_wrap=True)
    for name, run in metrics.items():
        table.add_row(
            name,
            f"{run.get('n')} ({run.get('n_ipc')}/{run.get('n_tech')})",
            *(_number(run.get(f"ipc.{level}.f1")) for level in LEVELS),
            _number(run.get("ipc.invalid_rate")),
            _number(run.get("tech.f1")),
            _number(run.get("tech.fuzzy.f1")),
            _number(run.get("rouge_l")),
            _number(run.get("bleu_4")),
        )
    console.print(table)
    console.print(
        "Inval.: invalid IPC rate; Tech~: fuzzy match; R-L/B-4: ROUGE-L/BLEU-4. CIs and detail: report.md",
        style="dim",
        highlight=False,
    )


def write_metrics_csv(metrics: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """metrics.csv on its own (``metrics_csv_text``), written atomically."""
    write_text_atomic(path, metrics_csv_text(metrics))


def metrics_csv_text(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per run, one column per metric key (union over runs, first-seen order; blank = none)."""
    columns: list[str] = []
    for run in metrics.values():
        columns += [key for key in run if key not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *columns])
    for name, run in metrics.items():
        writer.writerow([name, *("" if run.get(key) is None else run.get(key) for key in columns)])
    return buffer.getvalue()


def write_f1_chart(metrics: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """The chart on its own (``render_f1_chart``), written atomically."""
    path = Path(path)
    with atomic_open(path, "wb") as handle:
        render_f1_chart(metrics, handle)
    return path


def render_f1_chart(metrics: Mapping[str, Mapping[str, Any]], handle: Any) -> None:
    """Grouped bars of micro F1 per IPC level, one colour per run, 95% CI whiskers, as PNG into ``handle``.

    Uses matplotlib's object API (no pyplot) so no GUI backend or global figure state is touched.
    """
    import numpy as np
    from matplotlib.figure import Figure

    names = list(metrics)
    levels = list(LEVELS)
    width = 0.8 / max(len(names), 1)
    figure = Figure(figsize=(max(8.0, 1.2 * len(levels) * max(1, len(names)) ** 0.5 + 2), 5), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(levels))
    for index, name in enumerate(names):
        run = metrics[name]
        positions = x + (index - (len(names) - 1) / 2) * width
        values = [run.get(f"ipc.{level}.f1") for level in levels]
        lows = [run.get(f"ipc.{level}.f1_ci_low") for level in levels]
        highs = [run.get(f"ipc.{level}.f1_ci_high") for level in levels]
        heights = [np.nan if v is None else v for v in values]
        errors = np.array(
            [
                [0.0 if v is None else v - low, 0.0 if v is None else high - v]
                for v, low, high in zip(values, lows, highs, strict=True)
            ]
        ).T
        axes.bar(positions, heights, width, yerr=errors, capsize=3, label=name, error_kw={"elinewidth": 1})
        for position, value, high in zip(positions, values, highs, strict=True):
            if value is not None:
                # above the whisker, so the number never sits on the CI line
                axes.text(position, high + 0.015, f"{value:.2f}", ha="center", va="bottom", fontsize=7)
    axes.set_xticks(x, [LEVEL_TITLES[level] for level in levels])
    axes.set_ylim(0, 1.12)
    axes.set_ylabel("F1 (micro)")
    axes.set_title(f"IPC F1 by hierarchy level (whiskers: {CONFIDENCE:.0%} bootstrap CI)")
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    figure.legend(loc="outside lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    figure.savefig(handle, format="png", dpi=120)


def _run_details(name: str, run: Mapping[str, Any]) -> list[str]:
    lines = [f"### {name}", "", f"Source: `{run.get('source', '?')}`  "]
    lines.append(f"Lines scored: n = {run['n']} (IPC {run['n_ipc']}, key technologies {run['n_tech']})")
    measures = ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1")
    rows = [
        [LEVEL_TITLES[level], run.get(f"ipc.{level}.n"), *(_number(run.get(f"ipc.{level}.{m}")) for m in measures)]
        for level in LEVELS
    ]
    scored_tech = run.get("tech.n") - run.get("tech.n_unscored", 0)
    for prefix, label in (("tech", "Key tech (exact)"), ("tech.fuzzy", "Key tech (fuzzy)")):
        rows.append([label, scored_tech, *(_number(run.get(f"{prefix}.{m}")) for m in measures)])
    header = ["Level", "n", "P", "R", "F1", "macro P", "macro R", "macro F1"]
    lines += ["", markdown_table(header, rows, numbers_right=True), ""]
    notes = []
    if run.get("n_cut"):
        notes.append(
            f"{run['n_cut']} answer(s) (or references) longer than {run.get('max_answer_chars')} characters were "
            "cut to that length before extraction and ROUGE/BLEU."
        )
    if run.get("ipc.n_unscored"):
        notes.append(f"{run['ipc.n_unscored']} IPC line(s) have no IPC code in the reference and are not scored.")
    if run.get("tech.n_unscored"):
        notes.append(f"{run['tech.n_unscored']} tech line(s) list no technology in the reference and are not scored.")
    if run.get("ipc.n_invalid_codes") is not None:
        notes.append(
            f"Invalid codes: {run.get('ipc.n_invalid_codes')} of {run.get('ipc.n_predicted_codes')} predicted "
            f"symbols are not in the IPC scheme in use (rate {_number(run.get('ipc.invalid_rate'))})."
        )
    else:
        notes.append("No IPC scheme given: the invalid-code rate is not computed.")
    notes.append(
        f"ROUGE-1 {_number(run.get('rouge_1'))}, ROUGE-2 {_number(run.get('rouge_2'))}, "
        f"ROUGE-L {_number(run.get('rouge_l'))}, BLEU-4 {_number(run.get('bleu_4'))} over all {run['n']} lines."
    )
    lines += [f"- {note}" for note in notes] + [""]
    return lines


def report_markdown(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """report.md: the scheme codes were checked against, the comparison table, the chart and per-run
    detail with every n."""
    first = next(iter(metrics.values()))
    threshold = first.get("tech.fuzzy_threshold")
    resamples = first.get("bootstrap_resamples")
    lines = [
        "# CoreTech evaluation",
        "",
        f"IPC scheme: {first.get('ipc.scheme') or 'none'}",
        "",
        metrics_table_markdown(metrics),
        f"F1 cells: micro F1 over answers [{CONFIDENCE:.0%} percentile bootstrap CI, {resamples} resamples "
        "of answers]. A level is scored only on answers whose reference has a code that deep. "
        f"Key technologies: exact = same name after normalisation; fuzzy = rapidfuzz ratio >= {threshold}. "
        "ROUGE/BLEU as LLaMA-Factory computes them, on a 0-1 scale (LLaMA-Factory's value / 100).",
        "",
        f"![IPC F1 by hierarchy level]({CHART_FILE})",
        "",
        "## Per run",
        "",
    ]
    for name, run in metrics.items():
        lines += _run_details(name, run)
    return "\n".join(lines)
