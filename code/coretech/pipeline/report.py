"""The run report (``report.md``): stages with times and losses, the data summaries, one metrics table
per test set with its chart, and the curriculum-against-shuffled comparison."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coretech.files import write_text_atomic
from coretech.log import get_logger
from coretech.pipeline.context import RunContext, format_seconds
from coretech.tables import markdown_table

log = get_logger(__name__)


def demote_headings(markdown: str, to_level: int) -> str:
    """Shift a builder's own Markdown report so its top heading sits at ``to_level`` in ours."""
    levels = [len(line) - len(line.lstrip("#")) for line in markdown.splitlines() if line.startswith("#")]
    if not levels:
        return markdown
    shift = to_level - min(levels)
    return "\n".join("#" * shift + line if line.startswith("#") else line for line in markdown.splitlines())


def metrics_by_test_set(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Test set → (model → metrics row); one test set keeps ``metrics.json`` flat as before."""
    if not ctx.metrics or not ctx.spec.predict:
        return {}
    if len(ctx.spec.predict.datasets) == 1:
        return {ctx.spec.predict.datasets[0]: ctx.metrics}
    return ctx.metrics


def _stage_rows(ctx: RunContext) -> list[list[Any]]:
    rows = []
    for index, stage in enumerate(ctx.spec.stages, 1):
        entry = ctx.manifest.entry("stages", stage.name)
        loss = (
            f"{entry['first_loss']:.3f} → {entry['last_loss']:.3f}"
            if "first_loss" in entry and "last_loss" in entry
            else "–"
        )
        took = ctx.timings.get(f"{stage.name}.train")
        took_text = format_seconds(took + ctx.timings.get(f"{stage.name}.export", 0)) if took else "skipped (unchanged)"
        output = entry.get("adapter") or entry.get("model")
        rows.append(
            [index, stage.name, stage.start_from, entry.get("global_step", "–"), loss, took_text, f"`{output}`"]
        )
    return rows


def write_report(ctx: RunContext, wall_seconds: float) -> Path:
    """``report.md``: stages with times and losses, data summaries, the metrics tables and charts."""
    spec = ctx.spec
    lines = [
        f"# CoreTech run `{spec.name}`",
        "",
        f"Pipeline `{ctx.loaded.path}` · base model `{spec.base_model}` · "
        f"{ctx.launch.nnodes} node(s) × {ctx.launch.nproc_per_node or 'all'} process(es), DeepSpeed per recipe · "
        f"wall time {format_seconds(wall_seconds)}",
        "",
        "## Stages",
        "",
        markdown_table(
            ["#", "stage", "starts from", "steps", "first → last loss", "time (this run)", "output"], _stage_rows(ctx)
        ),
    ]
    prepare = ctx.manifest.entry("steps", "prepare")
    for key, title in (("cpt", "CPT corpus"), ("sft", "SFT datasets")):
        if prepare.get(key):
            lines += ["", f"## {title}", "", demote_headings(prepare[key].strip(), to_level=3)]
    rag = ctx.manifest.entry("steps", "prepare.rag")
    if rag.get("rag"):
        lines += ["", "## Retrieval-augmented datasets", "", demote_headings(rag["rag"].strip(), to_level=3)]
    by_set = metrics_by_test_set(ctx)
    if by_set:
        from coretech.eval.report import metrics_table_markdown

        several = len(by_set) > 1
        for dataset, metrics in by_set.items():
            lines += ["", f"## Metrics: `{dataset}`" if several else "## Metrics", ""]
            if dataset in TEST_SETS:
                lines += [f"Test set: {TEST_SETS[dataset]}.", ""]
            lines += [metrics_table_markdown(metrics).strip(), ""]
            lines += _rag_evidence(ctx, dataset, metrics)
            lines += _zero_evidence(metrics)
            chart = Path("eval") / (dataset if several else "") / "f1_by_level.png"
            if (ctx.run_dir / chart).is_file():
                lines += [f"![F1 by IPC level]({chart.as_posix()})", ""]
            lines += _curriculum_comparison(ctx, metrics)
    if ctx.timings:
        lines += ["", "## Wall time of this invocation", ""]
        lines += [markdown_table(["step", "time"], [[k, format_seconds(v)] for k, v in ctx.timings.items()])]
    path = ctx.run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


# What each test set measures: the report says which protocol a table follows (coretech.data.sft builds both).
TEST_SETS = {
    "coretech_sft_test": "unseen subjects: no subject, answer, code set or near-duplicate answer of it is in "
    "training (the leak-free grouped split)",
    "coretech_sft_test_phrasing": "seen subjects asked in phrasings held out of training (the reference's "
    "protocol: training subjects, new wording)",
}


def _rag_evidence(ctx: RunContext, dataset: str, metrics: dict[str, dict]) -> list[str]:
    """For rows asked with retrieved candidates: how many of the gold codes the candidates held, so a low
    F1 can be traced to the retriever (low recall) or to the model (high recall, low F1)."""
    rows = [m.name for m in ctx.spec.predict.entries if m.rag and m.name in metrics] if ctx.spec.predict else []
    entry = ctx.manifest.entry("steps", "prepare.rag")
    recall = (entry.get("recall") or {}).get(dataset)
    if not rows or not recall:
        return []
    codes, subclasses = ("–" if r is None else f"{r:.3f}" for r in recall)
    return [
        f"{', '.join(f'`{r}`' for r in rows)} asked with the top {entry.get('k')} retrieved codes in each IPC "
        f"question: they hold {codes} of the gold codes ({subclasses} of the gold subclasses), "
        f"an answer that only copies candidates reaches at most that recall.",
        "",
    ]


def _zero_evidence(metrics: dict[str, dict]) -> list[str]:
    """Where IPC subclass F1 is 0 or undefined, the evidence why: no code written at all, or codes not in the
    scheme, or valid codes that are not the reference's."""
    lines = []
    for name, row in metrics.items():
        if row.get("ipc.subclass.f1") not in (0, 0.0, None) or not row.get("n_ipc"):
            continue
        with_codes, n = row.get("ipc.answers_with_codes"), row.get("n_ipc")
        invalid, predicted = row.get("ipc.n_invalid_codes"), row.get("ipc.n_predicted_codes")
        why = f"{with_codes} of {n} IPC answers contain any code"
        if predicted:
            why += f"; {invalid} of their {predicted} codes are not in the scheme" if invalid is not None else ""
        lines.append(f"- `{name}` scores IPC subclass F1 {row.get('ipc.subclass.f1') or 0:.3f}: {why}.")
    return ["Why an IPC F1 is 0:", "", *lines, ""] if lines else []


def _curriculum_comparison(ctx: RunContext, metrics: dict[str, dict]) -> list[str]:
    """One line per key metric: the main chain's final stage against the ablation (a match_steps stage)."""
    ablations = [s.name for s in ctx.spec.stages if s.match_steps]
    # a stage's plain row: the one named after it (sft_stage3, not sft_stage3_constrained), else its first row
    rows: dict[str, str] = {}
    for m in ctx.spec.predict.entries if ctx.spec.predict else []:
        if m.name == m.model or m.model not in rows:
            rows[m.model] = m.name
    last, ablation = rows.get(ctx.spec.final_stage or ""), next((rows[a] for a in ablations if a in rows), None)
    if not last or not ablation or last not in metrics or ablation not in metrics:
        return []
    lines = ["## Curriculum against shuffled (same steps)", ""]

    def shown(name: str, key: str) -> str:
        value = metrics[name][key]
        low, high = metrics[name].get(f"{key}_ci_low"), metrics[name].get(f"{key}_ci_high")
        interval = f" [{low:.3f}, {high:.3f}]" if isinstance(low, int | float) and isinstance(high, int | float) else ""
        return f"{value:.3f}{interval}"

    for key in ("ipc.subclass.f1", "ipc.class.f1", "tech.f1", "rouge_l"):
        a, b = metrics[last].get(key), metrics[ablation].get(key)
        if isinstance(a, int | float) and isinstance(b, int | float):
            lines.append(
                f"- `{key}`: curriculum `{last}` {shown(last, key)} vs shuffled `{ablation}` {shown(ablation, key)} "
                f"(difference {a - b:+.3f})"
            )
    n = metrics[last].get("n")
    lines.append(
        f"\nBrackets: 95% bootstrap intervals over the {n} test answers; overlapping intervals mean no clear winner."
    )
    return [*lines, ""]


def print_summary(ctx: RunContext, report: Path) -> None:
    """The metrics table(s) on stdout (what the command produces); where the files are on stderr."""
    by_set = metrics_by_test_set(ctx)
    if by_set:
        from coretech.eval.report import print_metrics_table

        for dataset, metrics in by_set.items():
            if len(by_set) > 1:
                print(f"test set {dataset}:", flush=True)
            print_metrics_table(metrics)
    log.info("report: %s", report)
    if by_set:
        log.info("metrics: %s", ctx.run_dir / "metrics.json")
