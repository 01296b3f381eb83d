"""The per-record work of a CPT build (render → clean → filter → tokenize → MinHash) and its process pool.

Results come back in task order whatever the number of workers, so the output does not depend on it.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from coretech.data.clean import TextCleaner
from coretech.data.cpt.faults import signals_deferred
from coretech.data.cpt.patents import PatentRenderer
from coretech.data.cpt.settings import CptCorpusConfig
from coretech.data.cpt.sources import RenderedDocument, Unusable, render_general, render_ipc_description
from coretech.data.dedup import MinHasher, exact_hash
from coretech.errors import CoreTechError
from coretech.ipc import IpcScheme


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
    dedup: bool = False  # the source's setting; description files read for the IPC source always are


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
        self.scheme = setup.scheme
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
            return payload if isinstance(payload, RenderedDocument) else render_ipc_description(payload, self.scheme)
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
            outcome.dedup = settings.dedup or (source == "ipc" and not isinstance(payload, RenderedDocument))
            pending.append(outcome)
        if pending:
            encodings = self.tokenizer.encode_batch_fast([o.text for o in pending], add_special_tokens=False)
            for outcome, encoding in zip(pending, encodings, strict=True):
                dedup = self.config.dedup if outcome.dedup else None
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


def _init_worker(setup_file: str) -> None:
    global _WORKER
    # One Rust thread per worker process: the processes already use every core.
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C reaches the whole process group: the main process stops the workers, which must not
    # each print a KeyboardInterrupt traceback of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(setup_file, "rb") as handle:
        setup = pickle.load(handle)  # noqa: S301 (written by the parent process a moment ago)
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
        self.setup_file: Path | None = None
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
            # The settings (tokenizer, scheme: megabytes) reach the workers through a file: as start-up
            # arguments they would go through a pipe that blocks the main process until each new worker
            # has started Python and read them, and a stop signal could not be acted on in between.
            # The file lives in the system's temporary folder, not beside the corpus: a full output disk
            # must fail on a shard, and the file goes when the pool does.
            fd, setup_file = tempfile.mkstemp(prefix="coretech-cpt-workers.", suffix=".pickle")
            self.setup_file = Path(setup_file)
            with os.fdopen(fd, "wb") as handle:
                pickle.dump(self.setup, handle, protocol=pickle.HIGHEST_PROTOCOL)
            self.pool = ProcessPoolExecutor(
                max_workers=self.count,
                mp_context=get_context("spawn"),  # fork after tokenizers' threads start can deadlock
                initializer=_init_worker,
                initargs=(str(setup_file),),
            )
        pending: deque = deque()

        def oldest() -> tuple[int, list[_Outcome]]:
            shard, future = pending.popleft()
            try:
                return future.result()
            except BrokenProcessPool:
                raise WorkerDied(shard) from None

        try:
            for task in tasks:
                try:
                    with signals_deferred():  # submit may start a worker process
                        pending.append((task[1], self.pool.submit(_process_in_worker, task)))
                except BrokenProcessPool:  # the pool broke before this task: the oldest in flight was lost
                    raise WorkerDied(pending[0][0] if pending else task[1]) from None
                if len(pending) >= 3 * self.count:
                    yield oldest()
            while pending:
                yield oldest()
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        """Wait for the workers to finish their tasks and exit (the build's normal end)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self._remove_setup_file()

    def terminate(self) -> None:
        """Stop every worker now (interrupted or failed build): nothing they compute would be used."""
        if self.pool is None:
            return
        processes = list((self.pool._processes or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self.pool = None
        self._remove_setup_file()

    def _remove_setup_file(self) -> None:
        if self.setup_file is not None:
            self.setup_file.unlink(missing_ok=True)
            self.setup_file = None


class WorkerDied(Exception):
    """A worker process ended abruptly (killed, out of memory) while it held a task of ``shard``."""

    def __init__(self, shard: int) -> None:
        super().__init__(f"a worker process died during shard {shard}")
        self.shard = shard


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

    from coretech.models import check_model_reference

    check_model_reference(name, "tokenizer")  # a missing local path is one line now, not five hub retries
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise CoreTechError(f"tokenizer {name!r}: cannot load ({str(exc).splitlines()[0]})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CoreTechError(f"tokenizer {name!r}: no fast (Rust) tokenizer, needed to count tokens at scale")
    return backend.to_str()
