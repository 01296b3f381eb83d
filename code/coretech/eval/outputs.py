"""Writing the evaluation outputs as one set: all to temporary files first, then renamed into place.

Writing each output atomically on its own still leaves a mixed set when the disk fills up between two
files (a new ``metrics.json`` next to the previous run's ``report.md``). Here every file is written
and synced beside its target first; only when all of them are on disk are they renamed, so a failure
leaves the previous outputs untouched, and a full disk is one line naming the file, not a traceback.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from coretech.errors import CoreTechError


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


def write_outputs_together(out_dir: Path, contents: dict[str, bytes]) -> list[Path]:
    """Write ``{file name: bytes}`` into ``out_dir`` so that either all files are replaced or none is."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CoreTechError(f"{out_dir}: cannot create the output folder ({_describe(exc)})") from None
    written: list[tuple[str, Path]] = []
    try:
        for name, data in contents.items():
            target = out_dir / name
            try:
                fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
                written.append((tmp_name, target))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                raise CoreTechError(
                    f"{target}: cannot write ({_describe(exc)}); earlier outputs left as they were"
                ) from None
        for tmp_name, target in written:
            os.replace(tmp_name, target)
    finally:
        for tmp_name, _ in written:
            Path(tmp_name).unlink(missing_ok=True)
    return [out_dir / name for name in contents]
