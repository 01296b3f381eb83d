"""Shards on disk: a writer whose file appears under its final name only once complete, the per-shard
tallies (the marker written after it), and the input-file helpers the build fingerprints."""

from __future__ import annotations

import contextlib
import glob
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coretech.data.cpt.faults import note_file
from coretech.data.records import SkipLog
from coretech.errors import CoreTechError
from coretech.files import atomic_open


class _SkipRouter(SkipLog):
    """Reader-level skips (bad JSON lines) go to the shard being filled when the reader meets them."""

    def __init__(self) -> None:
        super().__init__()
        self.target = SkipLog()

    def skip(self, reason: str, location: str, detail: str = "") -> None:
        self.target.skip(reason, location, detail)


class _ShardWriter:
    """A shard file that appears under its final name only once complete (``atomic_open`` with its
    temporary file in ``tmp_dir``, outside the dataset folder). Opened on the first line, so a shard
    whose records were all dropped leaves no file."""

    def __init__(self, tmp_dir: Path, final: Path) -> None:
        self.tmp_dir, self.final = tmp_dir, final
        self.context: Any = None
        self.handle: Any = None

    def write(self, line: str) -> None:
        try:
            if self.handle is None:
                self.context = atomic_open(self.final, tmp_dir=self.tmp_dir)
                self.handle = self.context.__enter__()
            self.handle.write(line)
        except OSError as exc:
            raise note_file(exc, self.final) from None

    def commit(self) -> None:
        if self.context is not None:
            context, self.context, self.handle = self.context, None, None
            try:
                context.__exit__(None, None, None)
            except OSError as exc:
                raise note_file(exc, self.final) from None

    def abort(self) -> None:
        if self.context is not None:
            context, self.context, self.handle = self.context, None, None
            # the context manager removes the temporary file when it sees an exception; closing the file
            # may fail again on a full disk, which must not hide the first error
            with contextlib.suppress(OSError):
                context.__exit__(RuntimeError, RuntimeError("shard aborted"), None)


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
