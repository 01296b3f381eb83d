"""Prediction throughput of `coretech predict`: items per second per backend and batch size.

Runs the real ``run_prediction`` (LLaMA-Factory prompt encoding, generation, resumable writing)
with the demo predict recipe on a demo-like test set, several times per setting, and reports
medians. On CPU it sweeps the hf backend's batch size; on a machine with a CUDA GPU and vLLM it
also runs the vllm backend on the same test set in the same process, so the two are comparable.
The result replaces the "## Inference" section of docs/benchmarks.md (other sections are kept).

Test set: the demo's SFT test split ``coretech_sft_test``, from ``--dataset-dir`` (default
data/prepared/smollm2-135m) or else built into a temporary folder with the demo's
configs/smollm2-135m/prepare_sft.yaml; if the SFT builder is unavailable, a few dozen alpaca
records built here from the sample IPC scheme and the sample alpaca file.

It also times single-prompt decoding per token with 1 torch thread and with one per core: on a CPU
shared with other jobs, PyTorch's per-core threads wait on each other, which matters more than
the batch size.

Usage: .venv/bin/python benchmarks/bench_predict.py [--records 24] [--repeats 3] [--batch-sizes 1,4,8,16] [--threads 1]
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

from coretech.data.dataset_info import read_dataset_info
from coretech.infer.predict import run_prediction
from coretech.infer.vllm import vllm_available
from coretech.ipc import IpcScheme
from coretech.models import ensure_embedded_model

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "data" / "samples"
RECIPE = REPO / "configs" / "smollm2-135m" / "predict.yaml"
PREPARE_SFT = REPO / "configs" / "smollm2-135m" / "prepare_sft.yaml"
SECTION = "## Inference"


def build_test_set(folder: Path, records: int) -> tuple[Path, str, str]:
    """A demo-like alpaca test set: IPC questions from the sample scheme plus the sample alpaca file."""
    scheme = IpcScheme.load([SAMPLES / "ipc_scheme_en.xml", SAMPLES / "ipc_titles_zh.csv"])
    rows = [json.loads(line) for line in (SAMPLES / "key_tech_extra_alpaca.jsonl").read_text().splitlines()]
    for entry in scheme.at_level("subclass"):
        en, zh = entry.titles.get("en"), entry.titles.get("zh")
        if en:
            question = f"Which IPC codes does the field of {en.split(';')[0].lower()} involve?"
            rows.append({"instruction": question, "input": "", "output": f"{entry.code}: {en}", "task": "ipc"})
        if zh:
            question = f"{zh.split('；')[0]}领域涉及哪些IPC分类号？"
            rows.append({"instruction": question, "input": "", "output": f"{entry.code}：{zh}", "task": "ipc"})
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "bench_test.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows[:records]:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (folder / "dataset_info.json").write_text(json.dumps({"bench_test": {"file_name": "bench_test.jsonl"}}))
    return folder, "bench_test", f"{min(records, len(rows))} records built from data/samples (IPC scheme + alpaca)"


def prepare_sft_test_set(folder: Path) -> Path | None:
    """The demo's real SFT test split, built as `coretech prepare sft` builds it (about 15 s)."""
    try:
        from coretech.data.sft import build_sft_datasets, load_sft_config
    except ImportError:
        return None
    build_sft_datasets(load_sft_config(PREPARE_SFT), folder)
    return folder


def token_latency(model: Path, threads: int, repeats: int, tokens: int = 32) -> float:
    """Median seconds per generated token for one prompt, forcing exactly ``tokens`` new tokens."""
    import time

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    prompt = torch.ones((1, 40), dtype=torch.long)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.inference_mode():
            lm.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                min_new_tokens=tokens,
                max_new_tokens=tokens,
                do_sample=False,
                pad_token_id=2,
            )
        times.append((time.perf_counter() - started) / tokens)
    return statistics.median(times)


def measure(model: Path, dataset_dir: Path, dataset: str, backend: str, batch_size: int, records: int, work: Path):
    """One full prediction into a fresh file; items/s counts generation only (model loading apart)."""
    out = work / f"{backend}-{batch_size}.jsonl"
    out.unlink(missing_ok=True)
    result = run_prediction(
        model=str(model),
        adapter=None,
        dataset_dir=dataset_dir,
        dataset=dataset,
        out_file=out,
        recipe=RECIPE,
        backend=backend,
        max_samples=records,
        batch_size=batch_size,
    )
    tokens = sum(len(json.loads(line)["predict"]) for line in out.read_text(encoding="utf-8").splitlines())
    return result, tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="1,4,8,16")
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "data" / "prepared" / "smollm2-135m")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    args = parser.parse_args()
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]

    import torch

    model = ensure_embedded_model(REPO / "models" / "smollm2-135m-instruct").resolve()
    cores = os.cpu_count() or 1
    latency = {n: token_latency(model, n, args.repeats) for n in sorted({1, cores})}
    for n, seconds in latency.items():
        print(f"{n} threads: median {seconds:.3f} s/token", file=sys.stderr)
    torch.set_num_threads(args.threads or cores)
    backends = ["hf"]
    if torch.cuda.is_available() and vllm_available():
        backends.insert(0, "vllm")
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    dataset_dir = args.dataset_dir if "coretech_sft_test" in read_dataset_info(args.dataset_dir) else None
    if dataset_dir is None:
        dataset_dir = prepare_sft_test_set(work / "prepared")
    if dataset_dir is not None:
        dataset = "coretech_sft_test"
        described = (
            f"the demo's SFT test split `coretech_sft_test` ({PREPARE_SFT.relative_to(REPO)}), "
            f"first {args.records} records, IPC_TASK and TECH_TASK, Chinese and English"
        )
    else:
        dataset_dir, dataset, described = build_test_set(work / "data", args.records)

    rows = []
    for backend in backends:
        for batch_size in batch_sizes if backend == "hf" else [256]:
            rates, loads, chars = [], [], 0
            for _ in range(args.repeats):
                result, chars = measure(model, dataset_dir, dataset, backend, batch_size, args.records, work)
                rates.append(result.items_per_second)
                loads.append(result.load_seconds)
            rows.append((backend, batch_size, result.written, rates, statistics.median(loads), chars))
            print(
                f"{backend} batch {batch_size}: median {statistics.median(rates):.2f} items/s {rates}", file=sys.stderr
            )

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        SECTION,
        "",
        "`benchmarks/bench_predict.py`: `coretech predict` (the real `run_prediction`: LLaMA-Factory prompt",
        "encoding, generation, resumable writing) with `configs/smollm2-135m/predict.yaml` (greedy,",
        f"`max_new_tokens: 96`) on the embedded SmolLM2-135M-Instruct. Test set: {described}.",
        f"Median of {args.repeats} runs per row; items/s counts generation and writing, not model loading.",
        f"Machine: {device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()};",
        f"load average {load:.1f} when the run ended (the cores were shared with other jobs, so absolute",
        "numbers are pessimistic; compare rows with each other).",
        "",
        "| backend | batch size | items | items/s (median) | min–max | model load s (median) | answer chars (total) |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for backend, batch_size, items, rates, load_s, chars in rows:
        low, high = min(rates), max(rates)
        lines.append(
            f"| {backend} | {batch_size} | {items} | {statistics.median(rates):.2f} | {low:.2f}–{high:.2f} "
            f"| {load_s:.1f} | {chars} |"
        )
    hf = {batch: statistics.median(rates) for backend, batch, _, rates, _, _ in rows if backend == "hf"}
    if 1 in hf and len(hf) > 1:
        best = max(hf, key=hf.get)
        lines += ["", f"Batch size {best} is fastest on this machine: {hf[best] / hf[1]:.1f}× batch size 1."]
    if len({chars for *_, chars in rows}) > 1:
        lines += [
            "Answers differ slightly between batch sizes (see answer chars): left padding changes float",
            "rounding, and greedy decoding can then pick another token.",
        ]
    lines += [
        "",
        f"Decoding one prompt, median of {args.repeats} × 32 tokens, by torch CPU threads "
        "(set with `OMP_NUM_THREADS`):",
        "",
        "| torch threads | s/token (median) |",
        "|---:|---:|",
        *(f"| {n} | {seconds:.3f} |" for n, seconds in latency.items()),
    ]
    if "vllm" not in backends:
        lines += [
            "",
            "vLLM against hf on a GPU: not measured. No GPU was available when this was run, and the vllm",
            "backend needs one; run this script on a GPU machine with `pip install -r requirements-gpu.txt`",
            "and it adds the vllm row on the same test set in the same run.",
        ]
    body = "\n".join(lines) + "\n"
    print(body)
    if not args.no_docs:
        docs = write_section(SECTION, body)
        print(f"updated {docs.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
