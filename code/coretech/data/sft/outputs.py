"""All-or-nothing output of one SFT build: every file is written to a temporary name first and
renamed into place only when all of them are written, ``dataset_info.json`` last.

A build that stops part-way (a full disk, a crash) must not leave ``train.jsonl`` from this build
beside ``stage3.jsonl`` from the last one, registered as if finished. Temporary files sit beside
their final names (one file system, so each rename is atomic) and are removed on failure. A full
disk (ENOSPC) becomes a one-line error naming the file being written.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from coretech.errors import CoreTechError
from coretech.files import write_json_atomic


class DiskFullError(CoreTechError):
    """ENOSPC while writing ``path``; ``str()`` is ``<path>: no space left on device …``."""


def disk_full(path: Path, exc: OSError) -> CoreTechError:
    """The one-line error for an OSError while writing ``path`` (ENOSPC and EDQUOT say what to do)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"{path}: no space left on device while writing; nothing of this build was put in place "
            "(the previous datasets, if any, are unchanged): free some space and run it again"
        )
    return CoreTechError(f"{path}: cannot write ({exc.strerror or exc})")


class StagedOutputs:
    """Files written under temporary names and put in place together by :meth:`commit`."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []  # (temporary, final)

    def temporary_path(self, final: Path) -> Path:
        """A fresh temporary path beside ``final`` for writers that need a file name (a plot)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
        os.close(fd)
        self._pending.append((Path(name), final))
        return Path(name)

    @contextmanager
    def open(self, final: Path) -> Iterator[IO[str]]:
        """A text handle on a temporary file that :meth:`commit` will rename to ``final``."""
        try:
            path = self.temporary_path(final)
            with path.open("w", encoding="utf-8") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise disk_full(final, exc) from None

    def write_text(self, final: Path, text: str) -> None:
        with self.open(final) as handle:
            handle.write(text)

    def write_json(self, final: Path, data: Any) -> None:
        with self.open(final) as handle:
            json.dump(data, handle, ensure_ascii=False, indent=2)
            handle.write("\n")

    @property
    def finals(self) -> list[Path]:
        return [final for _, final in self._pending]

    def commit(self) -> None:
        """Rename every temporary file into place, in the order written."""
        for temporary, final in self._pending:
            os.replace(temporary, final)
        self._pending.clear()

    def discard(self) -> None:
        """Remove the temporary files of a build that did not finish."""
        for temporary, _ in self._pending:
            temporary.unlink(missing_ok=True)
        self._pending.clear()


def write_json_or_fail(path: Path, data: Any) -> None:
    """``write_json_atomic`` with a full disk reported as a one-line error naming ``path``."""
    try:
        write_json_atomic(path, data)
    except OSError as exc:
        raise disk_full(path, exc) from None
