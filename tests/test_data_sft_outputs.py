"""All-or-nothing SFT output: a full disk (a real 1 MiB tmpfs) leaves the previous set as it was,
no temporary files, and a one-line error naming the file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from coretech.data.sft import build_sft_datasets, load_sft_config
from coretech.data.sft.outputs import DiskFullError, StagedOutputs

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "smollm2-135m" / "prepare_sft.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def rules_only_config():
    config = load_sft_config(DEMO_CONFIG)
    config.difficulty.model = None
    return config


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (root only); skipped with the reason where mounting is not allowed."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_leaves_previous_build_intact_and_names_the_file(small_tmpfs):
    out = small_tmpfs / "prepared"
    build_sft_datasets(rules_only_config(), out)
    before = snapshot(out)
    assert "dataset_info.json" in before and "sft/stage3.jsonl" in before
    # Fill the disk, leaving less room than one more build needs.
    free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
    filler = small_tmpfs / "filler"
    with filler.open("wb") as handle, contextlib.suppress(OSError):
        handle.write(b"\0" * max(0, free - 24 * 1024))
    config = rules_only_config()
    config.seed = 7  # a different split: every data file would change
    with pytest.raises(DiskFullError) as caught:
        build_sft_datasets(config, out)
    message = str(caught.value)
    assert "\n" not in message and "no space left on device" in message
    assert message.startswith(str(out / "sft")), message
    filler.unlink()
    assert snapshot(out) == before  # nothing renamed, no .partial files left behind


def test_staged_files_appear_only_on_commit(tmp_path):
    staged = StagedOutputs()
    final = tmp_path / "sft" / "train.jsonl"
    staged.write_text(final, "x\n")
    staged.write_json(tmp_path / "sft" / "split.json", {"a": 1})
    assert not final.exists()
    assert len(list((tmp_path / "sft").iterdir())) == 2  # two temporaries beside the finals
    staged.commit()
    assert final.read_text() == "x\n" and json.loads((tmp_path / "sft" / "split.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == ["split.json", "train.jsonl"]


def test_discarded_build_leaves_no_temporary_files(tmp_path):
    staged = StagedOutputs()
    staged.write_text(tmp_path / "a.jsonl", "x")
    staged.discard()
    assert list(tmp_path.iterdir()) == []
