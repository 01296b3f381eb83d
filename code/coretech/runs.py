"""The run folder contract: ``manifest.json``, which model a run produced, the run lock, fingerprints.

A run folder (``runs/<name>/``) is what ``coretech run`` leaves behind and what ``coretech predict /
chat / api --run`` read. Everything here is location-independent: the manifest stores paths
relative to the run folder, and fingerprints replace the run folder and the repository by
``<run>`` / ``<repo>`` and identify files by content, so a run folder that is copied or moved keeps
every finished step. This module depends only on ``coretech.files`` and ``coretech.errors``, so
``infer`` and ``pipeline`` both import it and neither imports the other.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coretech.errors import CoreTechError
from coretech.files import write_json_atomic

MANIFEST = "manifest.json"
LOCK = ".coretech.lock"
MANIFEST_SECTIONS = ("stages", "steps")
# Files up to this size are hashed whole; bigger ones (a 7B model shard, a CPT corpus) by their size
# and 16 blocks of 1 MiB spread over the file: content, not mtime, so a copy keeps its fingerprint.
WHOLE_HASH_LIMIT = 64 * 1024 * 1024
_SAMPLE_BLOCKS, _BLOCK = 16, 1 << 20


class ManifestError(CoreTechError):
    """A manifest that cannot be trusted: the message names the file and what is wrong."""


# --- manifest --------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check ``manifest.json``; every malformation is one ManifestError naming the file."""
    if path.is_dir():
        raise ManifestError(f"{path}: is a directory, not a manifest file; move it away")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start}); restore it or rerun with --fresh") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); restore it or rerun with --fresh"
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object with 'stages' and 'steps', got {type(data).__name__}")
    for section in MANIFEST_SECTIONS:
        entries = data.setdefault(section, {})
        if not isinstance(entries, dict):
            raise ManifestError(f"{path}: '{section}' must be an object of name → entry, got {type(entries).__name__}")
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise ManifestError(f"{path}: {section}.{name} must be an object, got {type(entry).__name__}")
    if not isinstance(data.setdefault("order", []), list):
        raise ManifestError(f"{path}: 'order' must be a list")
    return data


class Manifest:
    """``manifest.json``: every step's fingerprint and status; rewritten atomically after each change."""

    def __init__(self, path: Path, *, read: bool = True) -> None:
        self.path = path
        if read and (path.exists() or path.is_symlink()):
            self.data = read_manifest(path)
        else:
            self.data = {"stages": {}, "steps": {}, "order": []}

    def entry(self, section: str, name: str) -> dict[str, Any]:
        return self.data[section].get(name, {})

    def done(self, section: str, name: str, fp: str) -> dict | None:
        """The finished entry of ``name`` when its fingerprint is ``fp``, else None."""
        entry = self.entry(section, name)
        if entry.get("status") == "done" and entry.get("fingerprint") == fp:
            return entry
        return None

    def record(self, section: str, name: str, entry: dict[str, Any]) -> None:
        self.data[section][name] = entry
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


def stored_path(run_dir: Path, path: str | Path | None) -> str | None:
    """How the manifest stores a path: relative to the run folder when inside it (so it moves with it)."""
    if path is None:
        return None
    absolute = Path(path).resolve() if Path(path).exists() or Path(path).is_absolute() else Path(path)
    try:
        return str(absolute.relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def run_path(run_dir: Path, value: str | None) -> str | None:
    """A path read from the manifest: relative ones are inside the run folder."""
    if value is None:
        return None
    path = Path(value)
    return str(path if path.is_absolute() else (run_dir / path).resolve())


# --- which model a run produced --------------------------------------------------------------


@dataclass
class RunModel:
    """What to load for one stage of a finished run: a full model folder plus an optional adapter."""

    model: str
    adapter: str | None
    template: str | None
    stage: str


def resolve_run_model(run_dir: str | Path, stage: str | None = None) -> RunModel:
    """The model of ``stage`` in a run folder; by default the final stage of the main chain.

    The main chain's final stage (the curriculum's last stage, never an ablation) is recorded by the
    runner as ``final_stage``; ``base`` names the base model the run started from.
    """
    run_dir = Path(run_dir)
    manifest_path = run_dir / MANIFEST
    if not manifest_path.exists():
        raise CoreTechError(f"{run_dir}: no {MANIFEST}; is this a run folder made by `coretech run`?")
    data = read_manifest(manifest_path)
    name = stage or data.get("final_stage")
    if name == "base" and isinstance(data.get("base"), dict) and data["base"].get("model"):
        base = data["base"]
        return RunModel(str(base["model"]), None, base.get("template"), "base")
    stages = data["stages"]
    if not name or name not in stages:
        known = ", ".join(n for n, e in stages.items() if e.get("status") == "done") or "none"
        raise CoreTechError(f"{manifest_path}: stage {name!r} not found (finished stages: {known})")
    entry = stages[name]
    if entry.get("status") != "done":
        raise CoreTechError(f"{manifest_path}: stage {name!r} has not finished (status {entry.get('status')})")
    if not isinstance(entry.get("model"), str):
        raise ManifestError(f"{manifest_path}: stages.{name} has no 'model' path")
    return RunModel(
        run_path(run_dir, entry["model"]) or "", run_path(run_dir, entry.get("adapter")), entry.get("template"), name
    )


# --- the run lock ----------------------------------------------------------------------------


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One runner per run folder: a second `coretech run` on the same folder fails at once."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise CoreTechError(f"{run_dir} is in use by another `coretech run`; wait for it or pick --run-dir") from None
    try:
        yield
    finally:
        lock.release()


# --- fingerprints ----------------------------------------------------------------------------


def content_digest(path: Path) -> str:
    """A file's or folder's content (names relative to it, bytes), independent of where it lies and its mtime."""
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(child.relative_to(path)).encode() + b"\0")
            digest.update(content_digest(child).encode())
        return digest.hexdigest()[:16]
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        if size <= WHOLE_HASH_LIMIT:
            for block in iter(lambda: handle.read(_BLOCK), b""):
                digest.update(block)
        else:
            for index in range(_SAMPLE_BLOCKS):
                handle.seek(index * (size - _BLOCK) // (_SAMPLE_BLOCKS - 1))
                digest.update(handle.read(_BLOCK))
    return digest.hexdigest()[:16]


def relative_paths(value: Any, roots: dict[str, Path]) -> Any:
    """``value`` with absolute paths under each root written as ``<label>/rest``: location out, content in."""
    if isinstance(value, dict):
        return {k: relative_paths(v, roots) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [relative_paths(v, roots) for v in value]
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and value.startswith("/"):
        # Longest root first: the run folder usually sits inside the repository.
        for label, root in sorted(roots.items(), key=lambda item: -len(str(item[1]))):
            text = str(root.resolve())
            if value == text or value.startswith(text + "/"):
                return f"<{label}>{value[len(text) :]}"
    return value


def named_inputs(settings: Any, base: Path) -> list[Path]:
    """Every file a settings mapping names (globs expanded, relative paths against ``base``), sorted.

    This is what a prepare step reads, so a raw export replaced under a glob changes its fingerprint.
    """
    found: set[Path] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str) and 0 < len(value) < 4096 and "\n" not in value and ("/" in value or "." in value):
            pattern = value if Path(value).is_absolute() else str(base / value)
            matches = glob.glob(pattern, recursive=True) if glob.has_magic(value) else [pattern]
            for match in matches:
                try:
                    if Path(match).exists():
                        found.add(Path(match).resolve())
                except OSError:
                    continue

    visit(settings)
    return sorted(found)


def fingerprint_parts(parts: dict[str, Any]) -> str:
    """One fingerprint over named parts (each JSON-serialisable); parts are kept so a plan can say which changed."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_parts(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """Names of the fingerprint parts that differ between a recorded entry and now."""
    old = old or {}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
