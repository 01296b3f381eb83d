"""The continued-pretraining corpus behind ``coretech prepare cpt``.

Owns the build from the raw sources users download (an IPC scheme, patents, WuDao) to datasets
LLaMA-Factory's ``pt`` stage reads. Per source: render documents, clean them, drop what is too
short, too long, in another language or a duplicate (exact hash, then MinHash LSH), count tokens
with the target model's tokenizer, write shards. Then mix the sources by token budget.

Scale decides the shape. Records stream through a bounded window of worker processes (results
come back in input order, so output does not depend on the number of workers); the dedup index
lives on disk; shards are written whole or not at all, each followed by a marker with its stats,
so an interrupted build resumes after the last finished shard. Memory does not grow with the
corpus. Every record that does not become a document is counted with its reason.

Layout under ``out_dir`` (shared with the SFT builder, which registers its own datasets)::

    dataset_info.json          coretech_cpt (the mix) and coretech_cpt_{ipc,patents,general}
    cpt/{ipc,patents,general}/part-NNNNN.jsonl   cleaned documents per source
    cpt/mixed/<source>-NNNNN.jsonl               the token-budgeted mix
    cpt/stats.md, cpt/stats.json
    cpt/state/                 fingerprints, one marker per finished shard, dedup.sqlite

LLaMA-Factory 0.9.5 loads every file of a dataset folder and requires one file type, so the data
folders hold nothing but finished ``.jsonl`` shards; temporary files live in ``cpt/state/tmp``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from coretech.config import ConfigError, load_dataclass
from coretech.data.clean import CleaningConfig, TextCleaner
from coretech.data.cpt_sources import (
    PatentRenderer,
    RenderedDocument,
    Unusable,
    ipc_definition_documents,
    iter_corpus_records,
    render_general,
)
from coretech.data.dataset_info import pretraining_entry, register_datasets
from coretech.data.dedup import DedupConfig, DedupIndex, MinHasher, exact_hash
from coretech.data.records import SkipLog
from coretech.errors import CoreTechError
from coretech.files import fingerprint, write_json_atomic, write_text_atomic
from coretech.ipc import IpcScheme, Level, SchemeError

SourceName = Literal["ipc", "patents", "general"]
SOURCES: tuple[SourceName, ...] = ("ipc", "patents", "general")
LABELS = {"ipc": "IPC definitions", "patents": "Patents", "general": "General corpus (WuDao)"}
DATASET_NAMES = {"mixed": "coretech_cpt", **{s: f"coretech_cpt_{s}" for s in SOURCES}}
BUILD_FORMAT = 1  # bump when the output of the same inputs changes, so old state is not resumed

_SHARD_BITS = 24  # document id = source << 48 | shard << 24 | record: ids grow with build position
_END = [-1, -1]  # stream position of "everything read"


# --- settings --------------------------------------------------------------------------------


@dataclass
class IpcSourceConfig:
    """IPC definition documents rendered from ``ipc_scheme``."""

    levels: list[Level] = field(default_factory=lambda: ["section", "class", "subclass", "main_group"])
    languages: list[str] | None = None  # None: every language the scheme has titles in
    min_chars: int = 1
    max_chars: int = 200_000
    dedup: bool = False  # definitions are unique by construction and share template text
    tokens: int | None = None  # token budget in the mix (None: all)
    ratio: float | None = None  # share of the mix (instead of tokens)


@dataclass
class PatentSourceConfig:
    """Patents in Google Patents public-data shape or the flat form (files: paths or glob patterns)."""

    files: list[str]
    description_max_chars: int = 2000
    min_chars: int = 100
    max_chars: int = 200_000
    dedup: bool = True
    tokens: int | None = None
    ratio: float | None = None


@dataclass
class GeneralSourceConfig:
    """A general corpus in WuDao's JSON format, filtered on ``dataType``."""

    files: list[str]
    keep_data_types: list[str] = field(default_factory=list)  # empty: keep every dataType not dropped
    drop_data_types: list[str] = field(default_factory=list)
    min_chars: int = 50
    max_chars: int = 200_000
    dedup: bool = True
    tokens: int | None = None
    ratio: float | None = None


@dataclass
class CptCorpusConfig:
    """Everything ``coretech prepare cpt`` needs; paths are relative to the current directory."""

    tokenizer: str  # model folder or hub id: tokens are counted the way the trained model sees them
    ipc_scheme: list[Path] = field(default_factory=list)  # WIPO XML and/or code,title[,language] tables
    ipc: IpcSourceConfig | None = None
    patents: PatentSourceConfig | None = None
    general: GeneralSourceConfig | None = None
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    total_tokens: int | None = None  # with ratios: the mix's size (None: largest mix the ratios allow)
    shard_records: int = 10_000  # input records per shard: the unit of resuming
    batch_records: int = 64  # records per task sent to a worker process
    seed: int = 0  # which documents a budget keeps

    def sources(self) -> dict[SourceName, Any]:
        return {name: getattr(self, name) for name in SOURCES if getattr(self, name) is not None}

    def check(self) -> None:
        sources = self.sources()
        if not sources:
            raise ValueError("configure at least one source: ipc, patents or general")
        if self.ipc is not None and not self.ipc_scheme:
            raise ValueError("ipc: needs ipc_scheme (the WIPO XML and/or title tables)")
        if not 1 <= self.shard_records < 2**_SHARD_BITS:
            raise ValueError(f"shard_records: must be between 1 and {2**_SHARD_BITS - 1}")
        if self.batch_records < 1:
            raise ValueError("batch_records: must be at least 1")
        for name, source in sources.items():
            if source.tokens is not None and source.ratio is not None:
                raise ValueError(f"{name}: give tokens or ratio, not both")
            if source.tokens is not None and source.tokens < 0:
                raise ValueError(f"{name}.tokens: must be >= 0")
            if source.ratio is not None and source.ratio <= 0:
                raise ValueError(f"{name}.ratio: must be > 0")
            if not 0 < source.min_chars <= source.max_chars:
                raise ValueError(f"{name}: need 0 < min_chars <= max_chars")
            if name != "ipc" and not source.files:
                raise ValueError(f"{name}.files: list at least one input file")
        with_ratio = [n for n, s in sources.items() if s.ratio is not None]
        if with_ratio and len(with_ratio) != len(sources):
            missing = sorted(set(sources) - set(with_ratio))
            raise ValueError(f"ratios: every source needs a ratio once one has (missing: {', '.join(missing)})")
        if self.total_tokens is not None and not with_ratio:
            raise ValueError("total_tokens: only meaningful with ratios; use tokens per source instead")
        if self.patents is not None and self.patents.description_max_chars < 0:
            raise ValueError("patents.description_max_chars: must be >= 0")


def load_cpt_config(path: str | Path) -> CptCorpusConfig:
    """Read a ``prepare_cpt.yaml``; unknown keys, wrong types and bad budgets fail with file and key."""
    return load_dataclass(CptCorpusConfig, path)


# --- report ----------------------------------------------------------------------------------


def _skiplog_from(data: dict[str, Any]) -> SkipLog:
    log = SkipLog()
    log.counts.update(data.get("by_reason", {}))
    log.examples = {k: list(v) for k, v in data.get("examples", {}).items()}
    return log


@dataclass
class SourceReport:
    """One source after cleaning and dedup: what was read, kept and dropped (by reason)."""

    name: str
    files: list[str] = field(default_factory=list)
    shards: int = 0
    read: int = 0
    kept: int = 0
    tokens: int = 0
    chars: int = 0
    malformed: SkipLog = field(default_factory=SkipLog)
    filtered: SkipLog = field(default_factory=SkipLog)
    repaired: SkipLog = field(default_factory=SkipLog)
    notes: Counter = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return self.malformed.total + self.filtered.total

    def add_shard(self, marker: dict[str, Any]) -> None:
        self.shards += 1
        for key in ("read", "kept", "tokens", "chars"):
            setattr(self, key, getattr(self, key) + marker[key])
        for key in ("malformed", "filtered", "repaired"):
            getattr(self, key).merge(_skiplog_from(marker[key]))
        self.notes.update(marker["notes"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": LABELS[self.name],
            "files": self.files,
            "shards": self.shards,
            "read": self.read,
            "kept": self.kept,
            "tokens": self.tokens,
            "chars": self.chars,
            "dropped": self.dropped,
            "malformed": self.malformed.as_dict(),
            "filtered": self.filtered.as_dict(),
            "repaired": self.repaired.as_dict(),
            "notes": dict(self.notes.most_common()),
        }


@dataclass
class MixReport:
    """One source's part of the mixed corpus."""

    budget: int | None
    entries: int = 0
    tokens: int = 0
    left_out: int = 0  # documents not taken because the budget was spent

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def human_tokens(n: int) -> str:
    """Token counts the way the reference table writes them: 0.16B, 5.76B, 31.2k."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}" if n < 100 * scale else f"{n / scale:.0f}{suffix}"
    return str(n)


@dataclass
class CptBuildReport:
    """What ``build_cpt_corpus`` did: per-source stats, the mix, registered datasets, timing."""

    out_dir: Path
    tokenizer: str
    sources: dict[str, SourceReport]
    mix: dict[str, MixReport]
    datasets: dict[str, str]  # dataset name -> file_name in dataset_info.json
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        total = self.total()
        return {
            "out_dir": str(self.out_dir),
            "tokenizer": self.tokenizer,
            "seconds": round(self.seconds, 2),
            "sources": {name: report.as_dict() for name, report in self.sources.items()},
            "mix": {name: report.as_dict() for name, report in self.mix.items()},
            "total": total,
            "datasets": self.datasets,
        }

    def total(self) -> dict[str, int]:
        return {
            "entries": sum(m.entries for m in self.mix.values()),
            "tokens": sum(m.tokens for m in self.mix.values()),
            "read": sum(s.read for s in self.sources.values()),
            "dropped": sum(s.dropped for s in self.sources.values()),
            "left_out": sum(m.left_out for m in self.mix.values()),
        }

    def markdown(self) -> str:
        lines = [
            f"## CPT corpus (tokens counted with `{self.tokenizer}`)",
            "",
            "| source | entries | tokens | budget | cleaned entries | cleaned tokens | read | dropped |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, source in self.sources.items():
            mix = self.mix.get(name, MixReport(budget=None))
            budget = "all" if mix.budget is None else human_tokens(mix.budget)
            lines.append(
                f"| {LABELS[name]} | {mix.entries:,} | {human_tokens(mix.tokens)} | {budget} | "
                f"{source.kept:,} | {human_tokens(source.tokens)} | {source.read:,} | {source.dropped:,} |"
            )
        total = self.total()
        lines.append(
            f"| **total** | **{total['entries']:,}** | **{human_tokens(total['tokens'])}** | | "
            f"{sum(s.kept for s in self.sources.values()):,} | "
            f"{human_tokens(sum(s.tokens for s in self.sources.values()))} | {total['read']:,} | "
            f"{total['dropped']:,} |"
        )
        lines += [
            "",
            "entries/tokens: the mixed corpus; cleaned: after cleaning and dedup, before the budget.",
            "",
            "Datasets: " + ", ".join(f"`{n}` → `{f}`" for n, f in self.datasets.items()),
        ]
        drops = [
            (name, kind, reason, count, (log.examples.get(reason) or [""])[0])
            for name, source in self.sources.items()
            for kind, log in (("malformed", source.malformed), ("filtered", source.filtered))
            for reason, count in log.counts.most_common()
        ]
        drops += [
            (name, "budget", "over the token budget", mix.left_out, "")
            for name, mix in self.mix.items()
            if mix.left_out
        ]
        lines += ["", "### Dropped by reason", ""]
        if drops:
            lines += ["| source | kind | reason | count | first example |", "| --- | --- | --- | ---: | --- |"]
            lines += [f"| {LABELS[n]} | {k} | {r} | {c:,} | {e} |" for n, k, r, c, e in drops]
        else:
            lines.append("Nothing was dropped.")
        repairs = [
            (name, reason, count, (source.repaired.examples.get(reason) or [""])[0])
            for name, source in self.sources.items()
            for reason, count in source.repaired.counts.most_common()
        ]
        if repairs:
            lines += ["", "### Repaired and kept", "", "| source | repair | count | first example |"]
            lines += ["| --- | --- | ---: | --- |"]
            lines += [f"| {LABELS[n]} | {r} | {c:,} | {e} |" for n, r, c, e in repairs]
        notes = [(n, note, c) for n, s in self.sources.items() for note, c in s.notes.most_common()]
        if notes:
            lines += ["", "### Notes", "", "| source | note | count |", "| --- | --- | ---: |"]
            lines += [f"| {LABELS[n]} | {note} | {c:,} |" for n, note, c in notes]
        return "\n".join(lines) + "\n"


# --- worker side ---------------------------------------------------------------------------


@dataclass
class _Outcome:
    """What became of one input record; documents carry what the main process needs for dedup."""

    index: int  # position in the shard
    location: str
    name: str = ""
    drop: tuple[str, str, str] | None = None  # (kind, reason, detail)
    repairs: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    language: str = ""
    text: str = ""
    tokens: int = 0
    exact: int = 0
    keys: list[int] = field(default_factory=list)
    signature: bytes = b""


@dataclass
class _WorkerSetup:
    config: CptCorpusConfig
    tokenizer_json: str
    scheme: IpcScheme | None


class _Worker:
    """Render → clean → filter → tokenize → MinHash, for one batch of records of one source."""

    def __init__(self, setup: _WorkerSetup) -> None:
        from tokenizers import Tokenizer

        self.config = setup.config
        self.cleaner = TextCleaner(setup.config.cleaning)
        self.languages = set(setup.config.cleaning.languages)
        self.tokenizer = Tokenizer.from_str(setup.tokenizer_json)
        self.hasher = MinHasher(setup.config.dedup)
        patents = setup.config.patents
        self.patents = (
            PatentRenderer(
                setup.scheme,
                setup.config.cleaning.languages,
                patents.description_max_chars,
                self.cleaner.detect_language,
            )
            if patents is not None
            else None
        )

    def _render(self, source: str, payload: Any) -> RenderedDocument:
        if source == "ipc":
            return payload
        if source == "patents":
            assert self.patents is not None
            return self.patents.render(payload)
        general = self.config.general
        assert general is not None
        return render_general(payload, general.keep_data_types, general.drop_data_types)

    def process(self, source: str, items: list[tuple[int, str, Any]]) -> list[_Outcome]:
        settings = getattr(self.config, source)
        outcomes, pending = [], []
        for index, location, payload in items:
            outcome = _Outcome(index, location)
            outcomes.append(outcome)
            try:
                document = self._render(source, payload)
                outcome.name = document.name or location
                outcome.repairs, outcome.notes = document.repairs, document.notes
                text = self.cleaner.clean(document.text)
                if len(text) < settings.min_chars:
                    raise Unusable("too short", f"{len(text)} characters", kind="filtered")
                if len(text) > settings.max_chars:
                    raise Unusable("too long", f"{len(text)} characters", kind="filtered")
                language = document.language or self.cleaner.detect_language(text)
                if language not in self.languages:
                    raise Unusable(f"language not kept: {language}", kind="filtered")
            except Unusable as exc:
                outcome.drop = (exc.kind, exc.reason, exc.detail)
                continue
            outcome.language, outcome.text = language, text
            pending.append(outcome)
        if pending:
            encodings = self.tokenizer.encode_batch_fast([o.text for o in pending], add_special_tokens=False)
            dedup = self.config.dedup if settings.dedup else None
            for outcome, encoding in zip(pending, encodings, strict=True):
                ids = encoding.ids
                outcome.tokens = len(ids)
                if dedup is not None and dedup.exact:
                    outcome.exact = exact_hash(outcome.text)
                if dedup is not None and dedup.near:
                    signature = self.hasher.signature(ids)
                    outcome.keys = self.hasher.band_keys(signature)
                    outcome.signature = signature.tobytes()
        return outcomes


_WORKER: _Worker | None = None


def _init_worker(setup: _WorkerSetup) -> None:
    global _WORKER
    # One Rust thread per worker process: the processes already use every core.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = _Worker(setup)


def _process_in_worker(task: tuple[str, int, list[tuple[int, str, Any]]]) -> tuple[int, list[_Outcome]]:
    source, shard, items = task
    assert _WORKER is not None
    return shard, _WORKER.process(source, items)


class _Workers:
    """Worker processes for the whole build (started once, on first use), or this process alone.

    Results come back in task order with at most a few tasks per worker in flight: ``Pool.imap``
    would read the whole input ahead of slow workers, the window keeps memory at a few batches.
    With one worker everything runs in this process (tests, debugging).
    """

    def __init__(self, setup: _WorkerSetup, count: int) -> None:
        self.setup, self.count = setup, count
        self.local: _Worker | None = None
        self.pool: ProcessPoolExecutor | None = None

    def ordered_results(
        self, tasks: Iterator[tuple[str, int, list[tuple[int, str, Any]]]]
    ) -> Iterator[tuple[int, list[_Outcome]]]:
        if self.count <= 1:
            if self.local is None:
                self.local = _Worker(self.setup)
            for source, shard, items in tasks:
                yield shard, self.local.process(source, items)
            return
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=self.count,
                mp_context=get_context("spawn"),  # fork after tokenizers' threads start can deadlock
                initializer=_init_worker,
                initargs=(self.setup,),
            )
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(self.pool.submit(_process_in_worker, task))
                if len(pending) >= 3 * self.count:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# --- main side ------------------------------------------------------------------------------


class _SkipRouter(SkipLog):
    """Reader-level skips (bad JSON lines) go to the shard being filled when the reader meets them."""

    def __init__(self) -> None:
        super().__init__()
        self.target = SkipLog()

    def skip(self, reason: str, location: str, detail: str = "") -> None:
        self.target.skip(reason, location, detail)


class _ShardWriter:
    """A shard file that appears under its final name only once complete (temporary file elsewhere)."""

    def __init__(self, tmp_dir: Path, final: Path) -> None:
        self.tmp_dir, self.final = tmp_dir, final
        self.handle: Any = None
        self.tmp_name = ""

    def write(self, line: str) -> None:
        if self.handle is None:
            fd, self.tmp_name = tempfile.mkstemp(prefix=f"{self.final.stem}.", suffix=".tmp", dir=self.tmp_dir)
            self.handle = os.fdopen(fd, "w", encoding="utf-8")
        self.handle.write(line)

    def commit(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_name, self.final)
            self.handle = None

    def abort(self) -> None:
        if self.handle is not None:
            self.handle.close()
            Path(self.tmp_name).unlink(missing_ok=True)
            self.handle = None


@dataclass
class _Shard:
    number: int
    writer: _ShardWriter
    strict: bool
    items: int = 0
    kept: int = 0
    tokens: int = 0
    chars: int = 0
    worker_malformed: int = 0  # malformed records the reader did yield (already counted in items)
    end: list[int] = field(default_factory=list)  # where the next shard starts: [file, record in file]
    malformed: SkipLog = field(init=False)
    filtered: SkipLog = field(default_factory=SkipLog)
    repaired: SkipLog = field(init=False)
    notes: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.malformed = SkipLog(strict=self.strict)
        self.repaired = SkipLog(strict=self.strict)

    def marker(self) -> dict[str, Any]:
        return {
            "shard": self.number,
            # bad lines the reader skipped never became items, but they were read
            "read": self.items + self.malformed.total - self.worker_malformed,
            "kept": self.kept,
            "tokens": self.tokens,
            "chars": self.chars,
            "malformed": self.malformed.as_dict(),
            "filtered": self.filtered.as_dict(),
            "repaired": self.repaired.as_dict(),
            "notes": dict(self.notes),
            "next": self.end,
        }


def _file_stamp(path: Path) -> list[Any]:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _resolve_files(patterns: list[str], where: str) -> list[Path]:
    """Input files in a stable order; a pattern that matches nothing is an error, not an empty source."""
    files: list[Path] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not matches:
                raise CoreTechError(f"{where}: no file matches {pattern!r}")
            files += matches
        else:
            path = Path(pattern)
            if not path.is_file():
                raise CoreTechError(f"{where}: input file not found: {pattern}")
            files.append(path)
    return list(dict.fromkeys(files))


@lru_cache(maxsize=4)
def tokenizer_json(name: str) -> str:
    """The target model's fast tokenizer as JSON, which worker processes rebuild without transformers.

    A model folder's ``tokenizer.json`` is read directly (importing transformers costs seconds);
    hub ids and folders without one go through ``AutoTokenizer``.
    """
    local = Path(name) / "tokenizer.json"
    if local.is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(local)).to_str()
        except Exception as exc:  # the Rust library raises a bare Exception for a broken file
            raise CoreTechError(f"{local}: not a tokenizer file ({str(exc).splitlines()[0]})") from None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise CoreTechError(f"tokenizer {name!r}: cannot load ({str(exc).splitlines()[0]})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CoreTechError(f"tokenizer {name!r}: no fast (Rust) tokenizer, needed to count tokens at scale")
    return backend.to_str()


class _Build:
    """One run of the builder over one output folder."""

    def __init__(self, config: CptCorpusConfig, out_dir: Path, strict: bool, workers: int) -> None:
        self.config, self.strict, self.workers = config, strict, workers
        self.out_dir = out_dir
        self.root = out_dir / "cpt"
        self.state = self.root / "state"
        self.tmp = self.state / "tmp"

    # -- source stage --

    def _source_stream(
        self, name: SourceName, files: list[Path], scheme: IpcScheme | None, start: list[int], router: _SkipRouter
    ) -> Iterator[tuple[list[int], str, Any]]:
        """(position after the record, location, payload) from ``start`` = [file, records to skip]."""
        if start == _END:
            return
        if name == "ipc":
            assert scheme is not None and self.config.ipc is not None
            documents = ipc_definition_documents(scheme, self.config.ipc.levels, self.config.ipc.languages)
            for count, document in enumerate(documents, 1):
                if count > start[1]:
                    yield [0, count], f"IPC scheme: {document.name}", document
            return
        first_file, skip = start
        for file_index in range(first_file, len(files)):
            records = iter_corpus_records(files[file_index], router)
            skip_here = skip if file_index == first_file else 0
            if skip_here:
                target, router.target = router.target, SkipLog()  # counted by an earlier run
                for _ in range(skip_here):
                    if next(records, None) is None:
                        break
                router.target = target
            for count, record in enumerate(records, skip_here + 1):
                yield [file_index, count], record.location, record.data

    def _tasks(
        self,
        name: SourceName,
        stream: Iterator[tuple[list[int], str, Any]],
        first_shard: int,
        router: _SkipRouter,
        shards: dict[int, _Shard],
        progress: tqdm,
    ) -> Iterator[tuple[str, int, list[tuple[int, str, Any]]]]:
        size, batch_size = self.config.shard_records, self.config.batch_records

        def open_shard(number: int) -> _Shard:
            writer = _ShardWriter(self.tmp, self.root / name / f"part-{number:05d}.jsonl")
            shard = shards[number] = _Shard(number, writer, self.strict)
            router.target = shard.malformed
            return shard

        shard = open_shard(first_shard)
        batch: list[tuple[int, str, Any]] = []
        for position, location, payload in stream:
            batch.append((shard.items, location, payload))
            shard.items += 1
            progress.update(1)
            if shard.items == size:
                shard.end = position
                yield name, shard.number, batch
                batch = []
                shard = open_shard(shard.number + 1)
            elif len(batch) == batch_size:
                yield name, shard.number, batch
                batch = []
        shard.end = _END
        if batch or shard.items or shard.malformed.total:
            yield name, shard.number, batch
        else:
            shards.pop(shard.number)

    def _take(self, name: SourceName, source_number: int, shard: _Shard, outcome: _Outcome) -> None:
        for reason, detail in outcome.repairs:
            shard.repaired.skip(reason, outcome.location, detail)
        shard.notes.update(outcome.notes)
        if outcome.drop is not None:
            kind, reason, detail = outcome.drop
            if kind == "malformed":
                shard.worker_malformed += 1
                shard.malformed.skip(reason, outcome.location, detail)
            else:
                shard.filtered.skip(reason, outcome.location, detail)
            return
        doc = (source_number << (2 * _SHARD_BITS)) | (shard.number << _SHARD_BITS) | outcome.index
        dedup = self.config.dedup if getattr(self.config, name).dedup else None
        if dedup is not None and dedup.exact:
            original = self.index.exact_duplicate_of(outcome.exact, doc)
            if original is not None:
                shard.filtered.skip("exact duplicate", outcome.location, f"of {original}")
                return
        if dedup is not None and dedup.near:
            original = self.index.near_duplicate_of(outcome.keys, outcome.signature)
            if original is not None:
                self.index.add_name(doc, outcome.name)
                shard.filtered.skip("near duplicate", outcome.location, f"of {original}")
                return
            self.index.add_near(doc, outcome.keys)
        if dedup is not None and (dedup.exact or dedup.near):
            self.index.add_name(doc, outcome.name, outcome.signature if dedup.near else None)
        record = {
            "text": outcome.text,
            "source": name,
            "id": outcome.name,
            "lang": outcome.language,
            "tokens": outcome.tokens,
        }
        shard.writer.write(json.dumps(record, ensure_ascii=False) + "\n")
        shard.kept += 1
        shard.tokens += outcome.tokens
        shard.chars += len(outcome.text)

    def _finish(self, name: SourceName, shard: _Shard) -> None:
        shard.writer.commit()
        self.index.commit()
        write_json_atomic(self.state / name / f"shard-{shard.number:05d}.json", shard.marker())

    def build_source(
        self,
        name: SourceName,
        source_number: int,
        fingerprint: str,
        files: list[Path],
        scheme: IpcScheme | None,
    ) -> SourceReport:
        data_dir, state_dir = self.root / name, self.state / name
        report = SourceReport(name, files=[str(f) for f in files])
        first_doc = source_number << (2 * _SHARD_BITS)
        if _read_json(state_dir / "fingerprint.json") != fingerprint:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)
            self.index.rollback(first_doc)
            state_dir.mkdir(parents=True)
            write_json_atomic(state_dir / "fingerprint.json", fingerprint)
        markers = []
        while (marker := _read_json(state_dir / f"shard-{len(markers):05d}.json")) is not None:
            markers.append(marker)
        for marker in markers:
            report.add_shard(marker)
        if (state_dir / "done.json").exists():
            return report
        first = len(markers)
        for stale in [*data_dir.glob("part-*.jsonl"), *state_dir.glob("shard-*.json")]:
            if int(stale.stem.split("-")[1]) >= first:
                stale.unlink()
        self.index.rollback(first_doc | (first << _SHARD_BITS))
        start = markers[-1]["next"] if markers else [0, 0]
        if first:
            print(f"cpt {name}: resuming after {first} finished shard(s)", flush=True)

        router = _SkipRouter()
        shards: dict[int, _Shard] = {}
        with tqdm(desc=f"cpt {name}", unit="rec", disable=None) as progress:
            stream = self._source_stream(name, files, scheme, start, router)
            tasks = self._tasks(name, stream, first, router, shards, progress)
            current: _Shard | None = None
            try:
                with closing(self.pool.ordered_results(tasks)) as results:
                    for number, outcomes in results:
                        if current is not None and number != current.number:
                            self._finish(name, current)
                            report.add_shard(shards.pop(current.number).marker())
                        current = shards[number]
                        for outcome in outcomes:
                            self._take(name, source_number, current, outcome)
                if current is not None:
                    self._finish(name, current)
                    report.add_shard(shards.pop(current.number).marker())
            finally:
                for shard in shards.values():
                    shard.writer.abort()
        write_json_atomic(state_dir / "done.json", {"shards": report.shards})
        return report

    # -- mix stage --

    def budgets(self, available: dict[str, int]) -> dict[str, int | None]:
        """Token budget per source: absolute tokens, or ratios of total_tokens (or of the largest mix)."""
        sources = self.config.sources()
        ratios = {name: s.ratio for name, s in sources.items() if s.ratio is not None}
        if not ratios:
            return {name: s.tokens for name, s in sources.items()}
        weight = sum(ratios.values())
        shares = {name: r / weight for name, r in ratios.items()}
        total = self.config.total_tokens
        if total is None:  # the largest mix: the source with the fewest tokens per share is taken whole
            total = min(available[name] / share for name, share in shares.items())
        return {name: round(total * share) for name, share in shares.items()}

    def mix(self, fingerprints: dict[str, str], reports: dict[str, SourceReport]) -> dict[str, MixReport]:
        budgets = self.budgets({name: r.tokens for name, r in reports.items()})
        mixed_dir, state_dir = self.root / "mixed", self.state / "mix"
        mix_fingerprint = fingerprint(fingerprints, budgets, self.config.seed)
        if _read_json(state_dir / "fingerprint.json") != mix_fingerprint:
            shutil.rmtree(mixed_dir, ignore_errors=True)
            shutil.rmtree(state_dir, ignore_errors=True)
            state_dir.mkdir(parents=True)
            write_json_atomic(state_dir / "fingerprint.json", mix_fingerprint)
        mixed_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, MixReport] = {}
        for name, report in reports.items():
            budget = budgets[name]
            mix = result[name] = MixReport(budget=budget)
            share = 1.0 if budget is None or budget >= report.tokens else budget / max(report.tokens, 1)
            for shard_file in sorted((self.root / name).glob("part-*.jsonl")):
                number = int(shard_file.stem.split("-")[1])
                marker_path = state_dir / f"{name}-{number:05d}.json"
                marker = _read_json(marker_path)
                if marker is None:
                    target = mixed_dir / f"{name}-{number:05d}.jsonl"
                    marker = self._mix_shard(name, shard_file, target, share, budget, mix.tokens)
                    write_json_atomic(marker_path, marker)
                mix.entries += marker["entries"]
                mix.tokens += marker["tokens"]
                mix.left_out += marker["left_out"]
        if not any(m.entries for m in result.values()):
            raise CoreTechError(
                f"{self.root / 'stats.md'}: the mixed corpus is empty: every record was dropped or the budgets are 0"
            )
        return result

    def _mix_shard(
        self, name: str, source: Path, target: Path, share: float, budget: int | None, taken: int
    ) -> dict[str, int]:
        """Copy one shard's share of documents into the mix; a fully kept shard is hard-linked."""
        target.unlink(missing_ok=True)
        if share >= 1.0:
            marker = _read_json(self.state / name / f"shard-{int(source.stem.split('-')[1]):05d}.json")
            try:
                os.link(source, target)
            except OSError:
                shutil.copyfile(source, target)
            return {"entries": marker["kept"], "tokens": marker["tokens"], "left_out": 0}
        assert budget is not None
        writer = _ShardWriter(self.tmp, target)
        entries = tokens = left_out = 0
        threshold = int(share * 2**64)
        try:
            with source.open(encoding="utf-8") as handle:
                for number, line in enumerate(handle):
                    record = json.loads(line)
                    key = f"{self.config.seed}:{name}:{source.name}:{number}".encode()
                    draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
                    if draw < threshold and taken + tokens + record["tokens"] <= budget:
                        writer.write(line)
                        entries += 1
                        tokens += record["tokens"]
                    else:
                        left_out += 1
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        return {"entries": entries, "tokens": tokens, "left_out": left_out}

    # -- whole build --

    def run(self) -> CptBuildReport:
        started = time.monotonic()
        config = self.config
        files = {
            name: _resolve_files(s.files, f"{name}.files") for name, s in config.sources().items() if name != "ipc"
        }
        scheme = None
        if config.ipc_scheme:
            try:
                scheme = IpcScheme.load(config.ipc_scheme)
            except SchemeError as exc:
                raise CoreTechError(str(exc)) from None
        tokenizer = tokenizer_json(config.tokenizer)
        setup = _WorkerSetup(config, tokenizer, scheme)
        chain = fingerprint(
            BUILD_FORMAT,
            hashlib.sha256(tokenizer.encode()).hexdigest(),
            dataclasses.asdict(config.cleaning),
            dataclasses.asdict(config.dedup),
            [_file_stamp(p) for p in config.ipc_scheme],
            config.shard_records,
        )
        self.state.mkdir(parents=True, exist_ok=True)
        lock = (self.state / "lock").open("w")
        try:
            # two builds resuming from the same state would interleave shards and index rows
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise CoreTechError(f"{self.root}: another `coretech prepare cpt` is writing here") from None
        try:
            return self._run_locked(config, files, scheme, setup, chain, started)
        finally:
            lock.close()

    def _run_locked(
        self,
        config: CptCorpusConfig,
        files: dict[str, list[Path]],
        scheme: IpcScheme | None,
        setup: _WorkerSetup,
        chain: str,
        started: float,
    ) -> CptBuildReport:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.index = DedupIndex(self.state / "dedup.sqlite", config.dedup.threshold)
        self.pool = _Workers(setup, self.workers)
        reports: dict[str, SourceReport] = {}
        fingerprints: dict[str, str] = {}
        try:
            for number, name in enumerate(SOURCES):
                settings = getattr(config, name)
                if settings is None:
                    if (self.state / name).exists():  # dropped from the config since the last build
                        shutil.rmtree(self.root / name, ignore_errors=True)
                        shutil.rmtree(self.state / name)
                        self.index.rollback(number << (2 * _SHARD_BITS))
                    continue
                budgetless = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("tokens", "ratio")}
                chain = fingerprint(chain, name, budgetless, [_file_stamp(p) for p in files.get(name, [])])
                fingerprints[name] = chain
                reports[name] = self.build_source(name, number, chain, files.get(name, []), scheme)
            mix = self.mix(fingerprints, reports)
        finally:
            self.pool.close()
            self.index.close()
        datasets = {DATASET_NAMES["mixed"]: "cpt/mixed"}
        datasets.update({DATASET_NAMES[n]: f"cpt/{n}" for n, r in reports.items() if r.kept})
        register_datasets(self.out_dir, {n: pretraining_entry(f, "text") for n, f in datasets.items()})
        report = CptBuildReport(self.out_dir, config.tokenizer, reports, mix, datasets, time.monotonic() - started)
        write_text_atomic(self.root / "stats.md", report.markdown())
        write_json_atomic(self.root / "stats.json", report.as_dict())
        return report


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_cpt_corpus(
    config: CptCorpusConfig, out_dir: Path, *, strict: bool = False, workers: int | None = None
) -> CptBuildReport:
    """Build (or resume) the CPT corpus in ``out_dir/cpt`` and register it in ``out_dir/dataset_info.json``.

    Rerunning with the same settings and inputs reuses every finished shard; changing a source's
    settings rebuilds that source and those after it (dedup runs across sources in order); changing
    only budgets redoes only the mix. ``strict`` makes the first malformed record (or invalid IPC
    code) fatal instead of counted.
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers: must be at least 1, got {workers}")
    return _Build(config, Path(out_dir), strict, workers or available_cores()).run()
