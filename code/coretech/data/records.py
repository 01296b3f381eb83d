"""Reading user records (JSON Lines, JSON arrays, CSV, XLSX) with a location for every record.

Every builder reads user files through here so that a bad record is always reported the same way,
``<file>:<line>: <reason>``, and either counted and skipped (the default) or fatal (``--strict``).
Nothing is dropped without a count: ``SkipLog`` collects counts per reason for the run's report.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from coretech.errors import CoreTechError


class RecordError(CoreTechError):
    """A record that cannot be used; ``str()`` is ``<file>:<line>: <reason>``."""


@dataclass(frozen=True)
class Record:
    """One input record and where it came from (``line`` for text formats, ``index`` for arrays/rows)."""

    data: dict[str, Any]
    path: Path
    line: int | None = None
    index: int | None = None

    @property
    def location(self) -> str:
        if self.line is not None:
            return f"{self.path}:{self.line}"
        return f"{self.path}: record {self.index}"


@dataclass
class SkipLog:
    """Counts of skipped records by reason, with the first few locations of each for the report.

    ``strict`` turns the first skip into a RecordError instead, for users who prefer a build to
    stop at the first bad record.
    """

    strict: bool = False
    examples_per_reason: int = 3
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, location: str, detail: str = "") -> None:
        message = f"{location}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise RecordError(message)
        self.counts[reason] += 1
        bucket = self.examples.setdefault(reason, [])
        if len(bucket) < self.examples_per_reason:
            bucket.append(message)

    def merge(self, other: SkipLog) -> None:
        self.counts.update(other.counts)
        for reason, messages in other.examples.items():
            bucket = self.examples.setdefault(reason, [])
            bucket.extend(messages[: max(0, self.examples_per_reason - len(bucket))])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts.most_common()), "examples": self.examples}


# What reading a damaged .gz raises part-way (an interrupted download): the rest of the file is lost.
CORRUPT_COMPRESSION = (EOFError, gzip.BadGzipFile, zlib.error)


def input_suffix(path: Path) -> str:
    """The format's extension, looking through ``.gz`` (``patents.jsonl.gz`` is ``.jsonl``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return suffixes[-1] if suffixes else ""


def open_input(path: Path) -> IO[bytes]:
    """A binary stream of the file's content: ``.gz`` files (BigQuery's compressed exports) decompress
    on the fly, so a 100 GB export is never unpacked on disk."""
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def check_input_file(path: Path) -> None:
    """Missing and empty files are errors, not empty sources; a ``.gz`` is empty when its content is."""
    if not path.is_file():
        raise RecordError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise RecordError(f"{path}: file is empty")
    if path.suffix.lower() == ".gz":
        try:
            with open_input(path) as handle:
                if not handle.read(1):
                    raise RecordError(f"{path}: file is empty (after decompression)")
        except (OSError, *CORRUPT_COMPRESSION) as exc:
            raise RecordError(f"{path}: not a readable gzip file ({exc})") from None


def _decode_error(path: Path, line: int, exc: UnicodeDecodeError) -> RecordError:
    return RecordError(f"{path}:{line}: not UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})")


def _numbered_lines(path: Path, skips: SkipLog | None) -> Iterator[tuple[int, bytes]]:
    """Raw lines with their numbers; a damaged ``.gz`` ends the file with a located error or skip."""
    number = 0
    with open_input(path) as handle:
        try:
            for number, raw in enumerate(handle, 1):
                yield number, raw
        except CORRUPT_COMPRESSION as exc:
            location = f"{path}:{number + 1}"
            if skips is None:
                raise RecordError(f"{location}: compressed stream truncated or corrupt ({exc})") from None
            skips.skip("compressed stream truncated or corrupt (rest of the file unreadable)", location, str(exc))


def iter_jsonl(path: Path, skips: SkipLog | None = None) -> Iterator[Record]:
    """Stream a JSON Lines file; bad lines (not JSON, not an object, not UTF-8) go to ``skips``.

    Reading is in binary so that a single non-UTF-8 line is a counted, located skip rather than a
    decode error that aborts the whole file. Without ``skips`` every bad line is fatal.
    """
    for number, raw in _numbered_lines(path, skips):
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            error = _decode_error(path, number, exc)
            if skips is None:
                raise error from None
            skips.skip("not UTF-8", f"{path}:{number}")
            continue
        if not text.strip():
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if skips is None:
                raise RecordError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            skips.skip("not valid JSON", f"{path}:{number}", exc.msg)
            continue
        if not isinstance(data, dict):
            if skips is None:
                raise RecordError(f"{path}:{number}: expected a JSON object, got {type(data).__name__}")
            skips.skip("not a JSON object", f"{path}:{number}")
            continue
        yield Record(data, path, line=number)


def iter_json_array(path: Path, skips: SkipLog | None = None) -> Iterator[Record]:
    """A JSON array of objects (the whole file is parsed: use JSON Lines for large inputs)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON array of objects")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            if skips is None:
                raise RecordError(f"{path}: record {index}: expected a JSON object")
            skips.skip("not a JSON object", f"{path}: record {index}")
            continue
        yield Record(item, path, index=index)


def iter_csv(path: Path, required: tuple[str, ...] = ()) -> Iterator[Record]:
    """CSV/TSV rows as records with their physical line number; a missing column is fatal at once."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise RecordError(
                    f"{path}:1: missing column {missing[0]!r} (found: {', '.join(header) or 'no header'})"
                )
            reader.fieldnames = header
            start = 2
            for row in reader:
                yield Record({k: v for k, v in row.items() if k is not None}, path, line=start)
                start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 (byte offset {exc.start}); save the table as UTF-8 CSV") from None


def iter_xlsx(path: Path, required: tuple[str, ...] = ()) -> Iterator[Record]:
    """Rows of the first worksheet, keyed by the header row; line numbers are spreadsheet rows."""
    from openpyxl import load_workbook

    workbook = load_workbook(path, read_only=True, data_only=True)
    sheet = workbook.worksheets[0]
    rows = sheet.iter_rows(values_only=True)
    header_row = next(rows, None)
    if header_row is None:
        raise RecordError(f"{path}: empty workbook")
    header = [str(h).strip() if h is not None else "" for h in header_row]
    missing = [c for c in required if c not in header]
    if missing:
        raise RecordError(f"{path}:1: missing column {missing[0]!r} (found: {', '.join(h for h in header if h)})")
    for number, values in enumerate(rows, 2):
        if values is None or all(v is None or str(v).strip() == "" for v in values):
            continue
        data = {h: ("" if v is None else str(v)) for h, v in zip(header, values, strict=False) if h}
        yield Record(data, path, line=number)
    workbook.close()


def iter_records(path: str | Path, skips: SkipLog | None = None, required: tuple[str, ...] = ()) -> Iterator[Record]:
    """Records from any supported file, chosen by extension; empty and missing files are errors.

    JSON Lines may be gzip-compressed (``.jsonl.gz``); tables and arrays are read uncompressed.
    """
    path = Path(path)
    check_input_file(path)
    suffix = input_suffix(path)
    if path.suffix.lower() == ".gz" and suffix != ".jsonl":
        raise RecordError(f"{path}: only JSON Lines may be gzip-compressed here (.jsonl.gz); decompress it first")
    if suffix == ".jsonl":
        return iter_jsonl(path, skips)
    if suffix == ".json":
        return iter_json_array(path, skips)
    if suffix in {".csv", ".tsv"}:
        return iter_csv(path, required)
    if suffix in {".xlsx", ".xlsm"}:
        return iter_xlsx(path, required)
    raise RecordError(f"{path}: unsupported format {suffix!r} (use .jsonl, .json, .csv, .tsv or .xlsx)")
