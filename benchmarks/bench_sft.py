"""Speed of `coretech prepare sft` on the demo data: the whole build, and the model-based difficulty alone.

Runs the real ``build_sft_datasets`` with ``configs/smollm2-135m/prepare_sft.yaml`` (rules only, and
with the embedded SmolLM2-135M scoring each distinct training answer), then the ``ModelScorer``
alone in each precision and metric on the same answers, in rounds (each case once per round, so
load changes on a shared machine hit every case alike), and reports medians.
The result replaces the "## SFT data" section of docs/benchmarks.md (other sections are kept).

Usage: .venv/bin/python benchmarks/bench_sft.py [--repeats 3] [--no-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmark_docs import write_section  # benchmarks/benchmark_docs.py, beside this script

from coretech.data.sft import ModelScorer, build_sft_datasets, load_sft_config
from coretech.data.sft.curriculum import cpu_has_bf16, resolve_dtype
from coretech.models import ensure_embedded_model

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2-135m" / "prepare_sft.yaml"
SECTION = "## SFT data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    args = parser.parse_args()
    os.chdir(REPO)
    import torch

    model = ensure_embedded_model()
    with tempfile.TemporaryDirectory() as tmp:
        rules = load_sft_config(CONFIG)
        rules.difficulty.model = None
        demo = load_sft_config(CONFIG)
        report = build_sft_datasets(demo, Path(tmp) / "demo")
        train = sum(r["train"] for r in report.split_rows)
        records = [json.loads(line) for line in (Path(tmp) / "demo" / "sft" / "train.jsonl").open(encoding="utf-8")]
        first: dict = {}
        for record in records:
            first.setdefault((record["output"], record["language"]), record)
        pairs = [("\n".join(filter(None, [r["instruction"], r["input"]])), r["output"]) for r in first.values()]
        scorers = {dtype: ModelScorer(model, demo.difficulty.max_length, dtype) for dtype in ("float32", "bfloat16")}
        auto = resolve_dtype("auto")
        # The cores are shared: run every case once per round, so load changes hit all cases alike.
        cases: dict[str, tuple[int, Callable[[], Any]]] = {
            "whole build, rule-based difficulty only": (train, lambda: build_sft_datasets(rules, Path(tmp) / "r")),
            f"whole build, demo config ({demo.difficulty.metric}, {demo.difficulty.dtype}, model loading included)": (
                train,
                lambda: build_sft_datasets(demo, Path(tmp) / "d"),
            ),
            "model score alone: loss, float32": (len(pairs), lambda: scorers["float32"].scores(pairs, "loss", 8)),
            "model score alone: loss, bfloat16": (len(pairs), lambda: scorers["bfloat16"].scores(pairs, "loss", 8)),
            f"model score alone: ifd, auto ({auto})": (len(pairs), lambda: scorers[auto].scores(pairs, "ifd", 8)),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        results: dict[str, Any] = {}
        for _ in range(args.repeats):
            for name, (_, function) in cases.items():
                started = time.perf_counter()
                results[name] = function()
                times[name].append(time.perf_counter() - started)
        rows = [
            (name, items, statistics.median(times[name]), min(times[name]), max(times[name]))
            for name, (items, _) in cases.items()
        ]
        fp32, bf16 = results["model score alone: loss, float32"], results["model score alone: loss, bfloat16"]
        drift = max(abs(a - b) / a for a, b in zip(fp32, bf16, strict=True))
        scored = len(pairs)
    load = os.getloadavg()[0]
    device = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    lines = [
        SECTION,
        "",
        "`benchmarks/bench_sft.py`: `coretech prepare sft` (the real `build_sft_datasets`) with",
        "`configs/smollm2-135m/prepare_sft.yaml` on the sample tables, and the model-based difficulty",
        f"(`ModelScorer`, embedded SmolLM2-135M-Instruct, batch 8) alone on the {scored} distinct training answers.",
        f"Median of {args.repeats} rounds (every case once per round). Machine: {device}, "
        f"{torch.get_num_threads()} torch threads,",
        f"torch {torch.__version__}; load average {load:.1f} when the run ended (the cores were shared with",
        "other engineers' jobs, so absolute numbers are pessimistic; compare rows with each other).",
        "",
        "| what | items | median s | min–max s |",
        "|---|---:|---:|---|",
    ]
    for what, items, median, low, high in rows:
        lines.append(f"| {what} | {items} | {median:.1f} | {low:.1f}–{high:.1f} |")
    lines += [
        "",
        f"bfloat16 losses differ from float32 by at most {drift:.1%} (relative) on these answers.",
        "The demo scores each distinct answer once (`per: answer`): paraphrased questions share their",
        "answer, so ~70 forward passes instead of ~170. `ifd` adds one answer-alone pass per answer.",
        f"This CPU {'has' if cpu_has_bf16() else 'has no'} native bfloat16 (AMX or AVX512-BF16), so `dtype: auto` "
        f"(the demo's setting) resolves to {auto} here: bfloat16 is fast only where the hardware computes it, and",
        "emulated it is slower than float32.",
        "",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_docs:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
