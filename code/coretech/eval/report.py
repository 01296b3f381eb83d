"""``coretech evaluate``: prediction files in, one metrics row per run out (JSON, CSV, Markdown, PNG).

This module owns reading prediction files (LLaMA-Factory's ``generated_predictions.jsonl`` or any
JSON Lines with named prediction/reference fields), deciding each line's task, turning the
metrics of ``coretech.eval.metrics`` into the table users compare models with, and writing
``metrics.json``, ``metrics.csv``, ``report.md`` and ``f1_by_level.png``.

A bad line stops the evaluation with its file and line: a metric over a silently shortened test
set would compare models on different questions.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coretech.data.records import iter_records
from coretech.errors import CoreTechError
from coretech.eval.metrics import BOOTSTRAP_RESAMPLES, CONFIDENCE, score_ipc, score_tech, score_text
from coretech.eval.outputs import write_outputs_together
from coretech.eval.tech import extract_technologies
from coretech.files import atomic_open, write_text_atomic
from coretech.ipc import LEVELS, IpcScheme, SchemeError, extract_ipc_codes
from coretech.log import get_logger

log = get_logger(__name__)

TASKS = ("ipc", "tech")
# What extraction, key-technology matching and ROUGE/BLEU see of one answer (and of its reference).
# A rambling model output of megabytes made ROUGE's tables grow by ~2.2 KB per byte (a 2 MB answer:
# 4.5 GB, 44 s); no real answer of either task comes near this, and cut answers are counted.
MAX_ANSWER_CHARS = 20_000
CHART_FILE = "f1_by_level.png"
LEVEL_TITLES = {
    "section": "Section",
    "class": "Class",
    "subclass": "Subclass",
    "main_group": "Main group",
    "subgroup": "Subgroup",
}


class EvaluationError(CoreTechError):
    """A prediction file or evaluation option that cannot be scored; names the file and line."""


@dataclass(frozen=True)
class PredictionLine:
    """One generated answer with its reference, the task it answers and where it was read."""

    prediction: str
    reference: str
    task: str  # "ipc" or "tech"
    location: str
    domain: str | None = None


def infer_task(reference: str) -> str:
    """``ipc`` when the reference answer names an IPC code, else ``tech``: the two tasks' reference
    answers differ exactly there, whatever the language or wording of the question."""
    return "ipc" if extract_ipc_codes(reference) else "tech"


def read_predictions(
    path: str | Path,
    *,
    task: str = "auto",
    prediction_field: str = "predict",
    reference_field: str = "label",
) -> list[PredictionLine]:
    """All lines of one prediction file; any unusable line is an EvaluationError naming file and line.

    With ``task="auto"`` a line's ``task`` field decides (the inference engineer writes it), else
    its reference is inspected (``infer_task``); ``ipc``/``tech`` forces the task for every line.
    """
    if task not in ("auto", *TASKS):
        raise EvaluationError(f"unknown task {task!r} (use ipc, tech or auto)")
    path = Path(path)
    lines: list[PredictionLine] = []
    for record in iter_records(path):
        data = record.data
        values = []
        for field_name, flag in ((prediction_field, "--prediction-field"), (reference_field, "--reference-field")):
            if field_name not in data:
                found = ", ".join(data) or "none"
                raise EvaluationError(
                    f"{record.location}: missing field {field_name!r} (fields: {found}; choose with {flag})"
                )
            value = data[field_name]
            if not isinstance(value, str):
                raise EvaluationError(
                    f"{record.location}: field {field_name!r} must be a string, got {type(value).__name__}"
                )
            values.append(value)
        prediction, reference = values
        if task != "auto":
            line_task = task
        elif "task" in data:
            # "IPC_TASK"/"TECH_TASK" is how the task names are spelled in the issue and some datasets
            line_task = str(data["task"]).strip().lower().removesuffix("_task")
            if line_task not in TASKS:
                raise EvaluationError(f"{record.location}: field 'task' is {data['task']!r}, expected ipc or tech")
        else:
            line_task = infer_task(reference)
        domain = data.get("domain")
        lines.append(
            PredictionLine(prediction, reference, line_task, record.location, None if domain is None else str(domain))
        )
    if not lines:
        raise EvaluationError(f"{path}: no predictions (only blank lines)")
    return lines


def score_predictions(
    lines: Sequence[PredictionLine],
    *,
    scheme: IpcScheme | None = None,
    fuzzy_threshold: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    description: str = "scoring",
) -> dict[str, Any]:
    """One run's flat metrics dict: IPC over the ipc lines, tech over the tech lines, text over all."""
    from tqdm import tqdm

    ipc_answers = []
    tech_answers = []
    text_pairs = []
    n_cut = 0
    for line in tqdm(lines, desc=f"{description}: extracting", unit="line", leave=False):
        prediction, reference = line.prediction[:MAX_ANSWER_CHARS], line.reference[:MAX_ANSWER_CHARS]
        n_cut += len(line.prediction) > MAX_ANSWER_CHARS or len(line.reference) > MAX_ANSWER_CHARS
        if line.task == "ipc":
            ipc_answers.append((extract_ipc_codes(prediction), extract_ipc_codes(reference)))
        else:
            tech_answers.append((extract_technologies(prediction), extract_technologies(reference)))
        text_pairs.append((prediction, reference))
    metrics: dict[str, Any] = {"n": len(lines), "n_ipc": len(ipc_answers), "n_tech": len(tech_answers)}
    metrics["n_cut"] = n_cut
    if n_cut:
        log.warning(
            "%s: %d answer(s) cut to their first %d characters for scoring", description, n_cut, MAX_ANSWER_CHARS
        )
    metrics["max_answer_chars"] = MAX_ANSWER_CHARS
    metrics.update(score_ipc(ipc_answers, scheme, resamples=resamples))
    metrics.update(score_tech(tech_answers, fuzzy_threshold, resamples=resamples))
    metrics.update(score_text(text_pairs, progress=f"{description}: ROUGE/BLEU"))
    metrics["bootstrap_resamples"] = resamples
    return metrics


def evaluate_runs(
    runs: Mapping[str, Path],
    out_dir: Path,
    *,
    task: str = "auto",
    scheme: IpcScheme | None = None,
    prediction_field: str = "predict",
    reference_field: str = "label",
    fuzzy_threshold: float | None = None,
) -> dict[str, dict]:
    """Score each run's prediction file and write metrics.json, metrics.csv, report.md and the chart.

    Runs keep the order given (base, cpt, sft_stage1, ...): the table reads top to bottom as the
    pipeline went. All files are read and checked before anything is scored or written, so a bad
    line in the last file does not leave a half-made report behind.
    """
    if not runs:
        raise EvaluationError("no prediction files to evaluate")
    if fuzzy_threshold is not None and not 0 < fuzzy_threshold <= 100:
        raise EvaluationError(f"fuzzy threshold {fuzzy_threshold} is outside (0, 100]")
    read = {
        name: read_predictions(path, task=task, prediction_field=prediction_field, reference_field=reference_field)
        for name, path in runs.items()
    }
    metrics: dict[str, dict] = {}
    for name, lines in read.items():
        run_metrics = score_predictions(lines, scheme=scheme, fuzzy_threshold=fuzzy_threshold, description=name)
        run_metrics["source"] = str(runs[name])
        metrics[name] = run_metrics
    chart = io.BytesIO()
    render_f1_chart(metrics, chart)
    # All four or none: a full disk leaves the previous outputs as they were (coretech.eval.outputs).
    write_outputs_together(
        Path(out_dir),
        {
            "metrics.json": (json.dumps(metrics, ensure_ascii=False, indent=2) + "\n").encode("utf-8"),
            "metrics.csv": metrics_csv_text(metrics).encode("utf-8"),
            CHART_FILE: chart.getvalue(),
            "report.md": report_markdown(metrics, scheme_loaded=scheme is not None).encode("utf-8"),
        },
    )
    return metrics


# --- output ------------------------------------------------------------------------------------


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
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


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


def _run_details(name: str, run: Mapping[str, Any], scheme_loaded: bool) -> list[str]:
    lines = [f"### {name}", "", f"Source: `{run.get('source', '?')}`  "]
    lines.append(f"Lines scored: n = {run['n']} (IPC {run['n_ipc']}, key technologies {run['n_tech']})")
    lines += [
        "",
        "| Level | n | P | R | F1 | macro P | macro R | macro F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in LEVELS:
        prefix = f"ipc.{level}"
        lines.append(
            f"| {LEVEL_TITLES[level]} | {run.get(prefix + '.n')} | "
            + " | ".join(
                _number(run.get(f"{prefix}.{key}"))
                for key in ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1")
            )
            + " |"
        )
    for prefix, label in (("tech", "Key tech (exact)"), ("tech.fuzzy", "Key tech (fuzzy)")):
        lines.append(
            f"| {label} | {run.get('tech.n') - run.get('tech.n_unscored', 0)} | "
            + " | ".join(
                _number(run.get(f"{prefix}.{key}"))
                for key in ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1")
            )
            + " |"
        )
    lines.append("")
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
    if scheme_loaded:
        notes.append(
            f"Invalid codes: {run.get('ipc.n_invalid_codes')} of {run.get('ipc.n_predicted_codes')} predicted "
            f"symbols are not in the IPC scheme (rate {_number(run.get('ipc.invalid_rate'))})."
        )
    else:
        notes.append("No IPC scheme given: the invalid-code rate is not computed (pass --scheme).")
    notes.append(
        f"ROUGE-1 {_number(run.get('rouge_1'))}, ROUGE-2 {_number(run.get('rouge_2'))}, "
        f"ROUGE-L {_number(run.get('rouge_l'))}, BLEU-4 {_number(run.get('bleu_4'))} over all {run['n']} lines."
    )
    lines += [f"- {note}" for note in notes] + [""]
    return lines


def report_markdown(metrics: Mapping[str, Mapping[str, Any]], *, scheme_loaded: bool) -> str:
    """report.md: the comparison table, the chart and per-run detail with every n."""
    threshold = next(iter(metrics.values())).get("tech.fuzzy_threshold")
    resamples = next(iter(metrics.values())).get("bootstrap_resamples")
    lines = [
        "# CoreTech evaluation",
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
        lines += _run_details(name, run, scheme_loaded)
    return "\n".join(lines)


# --- CLI ---------------------------------------------------------------------------------------


def run_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    """Run names: ``--name`` values in order, else each file's stem; LLaMA-Factory always writes
    ``generated_predictions.jsonl``, so for that file the folder name (the predict output_dir) is
    the run's name."""
    if names:
        if len(names) != len(paths):
            raise EvaluationError(f"{len(names)} --name value(s) for {len(paths)} --predictions file(s)")
        result = list(names)
    else:
        result = [path.parent.resolve().name if path.stem == "generated_predictions" else path.stem for path in paths]
    duplicates = sorted({name for name in result if result.count(name) > 1})
    if duplicates:
        raise EvaluationError(f"run name {duplicates[0]!r} used twice: give each file a --name")
    return result


def evaluate_from_cli(args: argparse.Namespace) -> int:
    """``coretech evaluate``: score the files, write the four outputs, print the table."""
    paths = [Path(p) for p in args.predictions]
    names = run_names(paths, args.name)
    scheme = None
    if args.scheme:
        try:
            scheme = IpcScheme.load(args.scheme)
        except SchemeError as exc:
            raise EvaluationError(str(exc)) from None
    metrics = evaluate_runs(
        dict(zip(names, paths, strict=True)),
        Path(args.out),
        task=args.task,
        scheme=scheme,
        prediction_field=args.prediction_field,
        reference_field=args.reference_field,
        fuzzy_threshold=args.fuzzy_threshold,
    )
    print_metrics_table(metrics)
    out = Path(args.out)
    for file_name in ("metrics.json", "metrics.csv", "report.md", CHART_FILE):
        print(out / file_name)
    return 0
