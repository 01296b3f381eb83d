"""How a CPT build stops: SIGTERM becomes an exception in the main thread (so every worker is stopped and
every temporary file removed on the way out), and a dead worker or a full disk becomes one line naming
the shard or file. Finished shards stay valid in every case; rerunning the same command resumes."""

from __future__ import annotations

import errno
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from coretech.errors import CoreTechError

RESUME_HINT = "finished shards are kept; rerun the same command to resume"


class BuildTerminated(CoreTechError):
    """SIGTERM (a service manager, Slurm, ``kill``) arrived during the build."""


_state: dict[str, object] = {"root": None, "critical": 0, "pending": None}


def _stop(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    raise BuildTerminated(f"{_state['root']}: stopped by {signal.Signals(signum).name}; {RESUME_HINT}")


def _handler(signum: int, _frame: object) -> None:
    if _state["critical"]:
        _state["pending"] = signum  # raised when the critical section ends
        return
    _stop(signum)


@contextmanager
def stop_on_signals(root: Path) -> Iterator[None]:
    """While the build runs, SIGTERM raises ``BuildTerminated`` (and SIGINT ``KeyboardInterrupt``) in the
    main thread instead of ending the process on the spot, which would leave the worker processes and
    multiprocessing's resource tracker running."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread; a caller's thread keeps its own rules
        return
    _state.update(root=root, critical=0, pending=None)
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold a stop signal until the block ends: an exception in the middle of starting a worker would
    leave it reading half its start-up data, and it would print a traceback of its own."""
    _state["critical"] = int(_state["critical"]) + 1  # type: ignore[call-overload]
    try:
        yield
    finally:
        _state["critical"] = int(_state["critical"]) - 1  # type: ignore[call-overload]
        pending = _state["pending"]
        if not _state["critical"] and pending is not None:
            _state["pending"] = None
            _stop(int(pending))  # type: ignore[call-overload]


def note_file(exc: OSError, path: Path) -> OSError:
    """Name ``path`` in an OSError raised by a bare write, flush or fsync (they carry no file name)."""
    if exc.filename is None:
        exc.filename = str(path)
    return exc


def one_line_error(exc: BaseException, root: Path) -> CoreTechError | None:
    """The one-line error for a full disk (naming the file) or a dead worker (naming the shard), else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = exc.filename or root
        return CoreTechError(f"{where}: no space left on device while writing the CPT corpus; {RESUME_HINT}")
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        where = root / "state" / "dedup.sqlite"
        return CoreTechError(f"{where}: no space left on device ({exc}); {RESUME_HINT}")
    return None
