"""How long `coretech evaluate` takes per test-set size, and which part of it costs what.

Builds a synthetic prediction file of N lines by cycling the sample answers in
tests/fixtures/eval (Chinese and English, IPC and key technologies, with model-like noise), then
times each stage of scoring: extraction, IPC/tech metrics with 1,000 bootstrap resamples,
ROUGE/BLEU, and the whole `evaluate_runs` call with its four output files. Prints a Markdown
table of medians for docs/benchmarks.md.

Usage: .venv/bin/python benchmarks/bench_eval.py [--lines 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from coretech.eval.metrics import score_ipc, score_tech, score_text
from coretech.eval.report import evaluate_runs, read_predictions
from coretech.eval.tech import extract_technologies
from coretech.ipc import IpcScheme, extract_ipc_codes

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "eval"


def build_predictions(path: Path, lines: int) -> None:
    """N lines cycling the SFT-like sample predictions, each made unique by a line number so that
    nothing downstream can cache its way out of the work."""
    samples = [json.loads(line) for line in (FIXTURES / "sft_stage3.jsonl").read_text().splitlines()]
    with path.open("w", encoding="utf-8") as handle:
        for index in range(lines):
            record = dict(samples[index % len(samples)])
            record["predict"] = f"{record['predict']}\n（第{index}条）"
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    scheme = IpcScheme.load([REPO / "data/samples/ipc_scheme_en.xml", REPO / "data/samples/ipc_titles_zh.csv"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "predictions.jsonl"
        build_predictions(path, args.lines)
        lines = read_predictions(path)
        score_text([(lines[0].prediction, lines[0].reference)])  # load jieba's dictionary outside the timings

        ipc = [(line.prediction, line.reference) for line in lines if line.task == "ipc"]
        tech = [(line.prediction, line.reference) for line in lines if line.task == "tech"]
        ipc_codes = [(extract_ipc_codes(p), extract_ipc_codes(r)) for p, r in ipc]
        tech_names = [(extract_technologies(p), extract_technologies(r)) for p, r in tech]
        pairs = [(line.prediction, line.reference) for line in lines]

        rows = [
            ("read + check the file", median_seconds(lambda: read_predictions(path), args.repeats)),
            (
                "extract IPC codes + technologies",
                median_seconds(
                    lambda: (
                        [(extract_ipc_codes(p), extract_ipc_codes(r)) for p, r in ipc],
                        [(extract_technologies(p), extract_technologies(r)) for p, r in tech],
                    ),
                    args.repeats,
                ),
            ),
            (
                "IPC metrics, 5 levels, 1000 bootstrap resamples",
                median_seconds(lambda: score_ipc(ipc_codes, scheme), args.repeats),
            ),
            (
                "tech metrics, exact + fuzzy, 1000 resamples",
                median_seconds(lambda: score_tech(tech_names), args.repeats),
            ),
            ("ROUGE-1/2/L + BLEU-4 (jieba)", median_seconds(lambda: score_text(pairs), args.repeats)),
            (
                "evaluate_runs: all of it + 4 output files",
                median_seconds(lambda: evaluate_runs({"run": path}, Path(tmp) / "out", scheme=scheme), args.repeats),
            ),
        ]
    print(f"{args.lines} lines ({len(ipc)} IPC, {len(tech)} tech), median of {args.repeats} runs\n")
    print("| step | median s | lines/s |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {args.lines / seconds:,.0f} |")


if __name__ == "__main__":
    main()
