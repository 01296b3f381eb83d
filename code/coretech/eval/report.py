"""``coretech evaluate``: prediction files in, one metrics row per run out (JSON, CSV, Markdown, PNG).

This module owns reading prediction files (LLaMA-Factory's ``generated_predictions.jsonl`` or any
JSON Lines with named prediction/reference fields), deciding each line's task, scoring them with
``coretech.eval.metrics`` and writing ``metrics.json``, ``metrics.csv``, ``report.md`` and
``f1_by_level.png`` (rendered by ``coretech.eval.render``).

A bad line stops the evaluation with its file and line: a metric over a silently shortened test
set would compare models on different questions.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coretech.data.records import iter_records
from coretech.errors import CoreTechError
from coretech.eval.metrics import BOOTSTRAP_RESAMPLES, score_ipc, score_tech, score_text
from coretech.eval.outputs import write_outputs_together
from coretech.eval.render import (  # the table, chart and report.md; re-exported for existing callers
    CHART_FILE,
    metrics_csv_text,
    metrics_table_markdown,  # noqa: F401 (the pipeline and tests import it from here)
    print_metrics_table,
    render_f1_chart,
    report_markdown,
)
from coretech.eval.tech import extract_technologies
from coretech.ipc import IpcScheme, SchemeError, extract_ipc_codes, load_scheme
from coretech.log import get_logger

log = get_logger(__name__)

TASKS = ("ipc", "tech")
# What extraction, key-technology matching and ROUGE/BLEU see of one answer (and of its reference).
# A rambling model output of megabytes made ROUGE's tables grow by ~2.2 KB per byte (a 2 MB answer:
# 4.5 GB, 44 s); no real answer of either task comes near this, and cut answers are counted.
MAX_ANSWER_CHARS = 20_000


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
    line in the last file does not leave a half-made report behind. Without ``scheme`` codes are
    checked against the built-in full IPC scheme; which scheme judged them is recorded per run
    (``ipc.scheme``, ``ipc.scheme_edition``) and printed in report.md.
    """
    if not runs:
        raise EvaluationError("no prediction files to evaluate")
    if fuzzy_threshold is not None and not 0 < fuzzy_threshold <= 100:
        raise EvaluationError(f"fuzzy threshold {fuzzy_threshold} is outside (0, 100]")
    read = {
        name: read_predictions(path, task=task, prediction_field=prediction_field, reference_field=reference_field)
        for name, path in runs.items()
    }
    if scheme is None:
        try:
            scheme = load_scheme()
        except SchemeError as exc:
            raise EvaluationError(str(exc)) from None
    metrics: dict[str, dict] = {}
    for name, lines in read.items():
        run_metrics = score_predictions(lines, scheme=scheme, fuzzy_threshold=fuzzy_threshold, description=name)
        run_metrics["source"] = str(runs[name])
        run_metrics["ipc.scheme"] = scheme.source
        run_metrics["ipc.scheme_edition"] = scheme.edition
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
            "report.md": report_markdown(metrics).encode("utf-8"),
        },
    )
    return metrics


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
    try:
        scheme = load_scheme(args.scheme)  # none given: the built-in full scheme
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
