"""Which model wrote a predictions file: the sidecar ``<out>.meta.json`` and the check before appending.

Resuming appends to an existing ``generated_predictions.jsonl``. Without a record of who wrote the
lines already there, a rerun with another adapter kept the old model's answers (``0 written, 1 already
there``) and a larger ``--max-samples`` mixed two models in one file, so every score computed on it
was wrong. The sidecar records the model identity: a content fingerprint of the model and adapter
(not their location, so a moved run folder still resumes), the recipe's generation settings, the
dataset and the template. A rerun with the same identity resumes; any other is refused with the
difference named, or with ``--replace`` the old file is moved aside (never deleted).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from coretech.errors import CoreTechError
from coretech.files import write_json_atomic
from coretech.log import get_logger

log = get_logger(__name__)

META_SUFFIX = ".meta.json"
# Small files read whole: what defines the architecture, the tokenizer and the adapter's shape.
_CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer_config.json",
    "tokenizer.json",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
# Weights are sampled, not read whole (a 7B model is 15 GB): fine-tuning changes every tensor, so three
# 1 MiB slices per file tell two checkpoints of one architecture apart in milliseconds.
_SLICE = 1 << 20
# The order in which a mismatch is reported: the first differing key is named.
_COMPARED = ("model", "adapter", "generation", "dataset", "template", "answering")


def meta_path(out_file: Path) -> Path:
    return out_file.with_name(out_file.name + META_SUFFIX)


def _sample_file(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with path.open("rb") as handle:
        for start in sorted({0, max(0, size // 2 - _SLICE // 2), max(0, size - _SLICE)}):
            handle.seek(start)
            digest.update(handle.read(_SLICE))


def model_fingerprint(name_or_path: str | None) -> str | None:
    """A content fingerprint of a local model or adapter folder (configs whole, weights sampled);
    a hub id is its own identity."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if not path.exists():
        return f"hub:{name_or_path}"
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        if file.name in _CONFIG_FILES:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
        elif file.suffix in _WEIGHT_SUFFIXES:
            _sample_file(file, digest)
    return digest.hexdigest()[:16]


def prediction_identity(
    *,
    model: str,
    adapter: str | None,
    generation: dict[str, Any],
    dataset: str,
    template: str | None,
    answering: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What makes two prediction runs interchangeable; paths are recorded for the message only.
    ``answering`` is how answers are made beyond generation (constrained decoding, the retrieval backend)."""
    adapters = [a.strip() for a in adapter.split(",")] if adapter else []
    return {
        "model": model_fingerprint(model),
        "adapter": ",".join(str(model_fingerprint(a)) for a in adapters) or None,
        "generation": generation,
        "dataset": dataset,
        "template": template,
        "answering": answering or {},
        "paths": {"model": model, "adapter": adapter},
    }


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in _COMPARED:
        if old.get(key) != new.get(key):
            if key == "generation":
                keys = sorted(set(old.get(key) or {}) | set(new.get(key) or {}))
                changed = [k for k in keys if (old.get(key) or {}).get(k) != (new.get(key) or {}).get(k)]
                first = changed[0] if changed else "?"
                return f"generation setting {first}: {(old.get(key) or {}).get(first)!r} → {new[key].get(first)!r}"
            if key in ("model", "adapter"):
                was = (old.get("paths") or {}).get(key)
                now = new["paths"][key]
                return f"{key}: {was} ({old.get(key)}) → {now} ({new.get(key)})"
            return f"{key}: {old.get(key)!r} → {new.get(key)!r}"
    return None


def _move_aside(out_file: Path, reason: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = out_file.with_name(f"{out_file.name}.previous-{stamp}")
    os.replace(out_file, target)
    if meta_path(out_file).exists():
        os.replace(meta_path(out_file), meta_path(target))
    log.info("%s: written by another model or config (%s); moved aside to %s", out_file, reason, target)
    return target


def claim_output(out_file: Path, identity: dict[str, Any], *, replace: bool = False) -> None:
    """Make sure ``out_file`` holds (or will hold) answers of ``identity`` only, before any line is read
    or written: resume on a match, refuse or (``replace``) move aside otherwise, then record the sidecar."""
    out_file = Path(out_file)
    sidecar = meta_path(out_file)
    has_lines = out_file.is_file() and out_file.stat().st_size > 0
    if has_lines:
        if sidecar.is_file():
            try:
                old = json.loads(sidecar.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                old = None
            reason = _difference(old, identity) if isinstance(old, dict) else f"{sidecar} is unreadable"
        else:
            reason = f"no {sidecar.name} says which model wrote it"
        if reason is not None:
            if not replace:
                raise CoreTechError(
                    f"{out_file}: holds answers of another model or config ({reason}); "
                    "pass --replace to move it aside, or choose another --out"
                )
            _move_aside(out_file, reason)
    elif out_file.exists() and not out_file.is_file():
        raise CoreTechError(f"{out_file}: is not a file; choose another --out")
    write_json_atomic(sidecar, identity)
