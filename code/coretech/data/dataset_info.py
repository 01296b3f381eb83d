"""Registering prepared datasets in LLaMA-Factory's ``dataset_info.json``.

Builders write their files into one dataset directory and register them here with LLaMA-Factory's
own conventions (``file_name``, ``formatting``, ``columns``), so recipes name datasets exactly as
a LLaMA-Factory user expects and ``dataset_dir`` points at that directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from coretech.errors import CoreTechError
from coretech.files import write_json_atomic

DATASET_INFO = "dataset_info.json"


def dataset_file_inside(dataset_dir: str | Path, file_name: str, where: str) -> Path:
    """``dataset_dir / file_name`` when it stays inside ``dataset_dir`` (symlinks followed), else a one-line
    error: ``../../x.jsonl``, an absolute path or a symlink leaving the folder would read (and a build
    could overwrite) files anywhere on the machine."""
    root = Path(dataset_dir).resolve()
    if not isinstance(file_name, str) or not file_name.strip():
        raise CoreTechError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    if Path(file_name).is_absolute() or Path(file_name).expanduser() != Path(file_name):
        raise CoreTechError(f"{where}: file_name {file_name!r} is absolute; name a file inside {root}")
    target = (root / file_name).resolve()
    if not target.is_relative_to(root):
        raise CoreTechError(f"{where}: file_name {file_name!r} resolves to {target}, outside the dataset folder {root}")
    return root / file_name


def read_dataset_info(dataset_dir: str | Path) -> dict[str, Any]:
    """The datasets registered in ``dataset_dir``; every local ``file_name`` must stay inside the folder."""
    path = Path(dataset_dir) / DATASET_INFO
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CoreTechError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise CoreTechError(f"{path}: expected a JSON object of dataset names")
    for name, entry in data.items():
        if isinstance(entry, dict) and "file_name" in entry:
            dataset_file_inside(dataset_dir, entry["file_name"], f"{path}: dataset {name!r}")
    return data


def register_datasets(dataset_dir: str | Path, entries: dict[str, dict[str, Any]]) -> Path:
    """Add or replace ``entries`` in ``dataset_dir/dataset_info.json``, keeping other datasets.

    Other builders may have registered their datasets in the same file (CPT and SFT share one
    directory), so this merges instead of overwriting, and writes atomically.
    """
    dataset_dir = Path(dataset_dir)
    info = read_dataset_info(dataset_dir)
    for name, entry in entries.items():
        file_name = entry.get("file_name")
        if file_name:
            dataset_file_inside(dataset_dir, file_name, f"{dataset_dir / DATASET_INFO}: dataset {name!r}")
        if file_name and not (dataset_dir / file_name).exists():
            raise CoreTechError(f"{dataset_dir / DATASET_INFO}: dataset {name!r} names missing file {file_name!r}")
        info[name] = entry
    path = dataset_dir / DATASET_INFO
    write_json_atomic(path, dict(sorted(info.items())))
    return path


def pretraining_entry(file_name: str, text_column: str = "text") -> dict[str, Any]:
    """A ``pt``-stage dataset: LLaMA-Factory reads raw text from the column mapped to ``prompt``."""
    return {"file_name": file_name, "columns": {"prompt": text_column}}


def alpaca_entry(file_name: str) -> dict[str, Any]:
    """An alpaca-format SFT dataset; extra fields (domain, task, source) are ignored by LLaMA-Factory."""
    return {
        "file_name": file_name,
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
    }
