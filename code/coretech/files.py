"""Files: atomic output (a crash or SIGKILL never leaves a half-written file under its final name)
and fingerprints of settings and inputs (how the runner and the corpus builder know what changed)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

HASH_CONTENT_LIMIT = 256 * 1024 * 1024  # bigger files are fingerprinted by size and mtime


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", encoding: str | None = "utf-8", tmp_dir: str | Path | None = None
) -> Iterator[IO[Any]]:
    """Write to a temporary file beside ``path`` and rename it over ``path`` only on success.

    The temporary file sits in the same directory so the final ``os.replace`` is a rename on one
    file system, which POSIX makes atomic. ``tmp_dir`` puts it elsewhere on the same file system, for
    folders whose readers take every file they find (LLaMA-Factory loads all files of a dataset folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    where = path.parent if tmp_dir is None else Path(tmp_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=where)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write or fsync (a full disk) names no file by itself
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_open(path) as handle:
        handle.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    with atomic_open(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def fingerprint_path(path: Path, digest: Any) -> None:
    """Feed a file or folder into ``digest``: contents for normal files, size+mtime for huge ones."""
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode())
            fingerprint_path(child, digest)
        return
    if not path.exists():
        digest.update(b"<missing>")
        return
    stat = path.stat()
    if stat.st_size > HASH_CONTENT_LIMIT:
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        return
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def fingerprint(*parts: Any, paths: list[Path] = ()) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(str(path).encode())
        fingerprint_path(path, digest)
    return digest.hexdigest()[:16]
