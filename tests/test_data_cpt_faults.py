"""`coretech prepare cpt` under faults, run for real: SIGTERM and SIGINT to the command (every worker and
the resource tracker gone, one line), a worker killed mid-build (one line naming the shard), and a disk
that fills up (one line naming the file; no partial shard taken for a finished one)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from coretech.cli import main as cli_main
from test_data_cpt import DEMO_CONFIG, REPO, demo_config

STOP_WITHIN_S = 10.0  # measured: 1.5-2.5 s on 2 cores at load 14; generous for a loaded CI runner


def big_general_input(path: Path, records: int = 20_000) -> Path:
    """A WuDao-style JSON Lines file large enough that a 2-worker build runs for a while."""
    rng = random.Random(0)
    words = [f"词{n}" for n in range(3000)]
    with path.open("w", encoding="utf-8") as handle:
        for n in range(records):
            text = "，".join(rng.choice(words) for _ in range(120)) + "。"
            handle.write(json.dumps({"id": str(n), "content": text}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def big_config(tmp_path_factory: pytest.TempPathFactory, embedded_model: Path) -> Path:
    folder = tmp_path_factory.mktemp("cpt_faults")
    config = {
        "tokenizer": str(embedded_model),
        "general": {"files": [str(big_general_input(folder / "general.jsonl"))], "min_chars": 10},
        "cleaning": {"languages": ["zh"]},
        "shard_records": 500,
    }
    path = folder / "prepare_cpt.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def start_build(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "code"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "coretech", "prepare", "cpt", "--config", str(config), "--out", str(out)]
    return subprocess.Popen(
        [*command, "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_workers(process: subprocess.Popen, count: int = 2, timeout: float = 180) -> list[psutil.Process]:
    """The build's worker processes, once they run (the SIGTERM handler is installed before they start)."""
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        workers = [c for c in parent.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        if len(workers) >= count:
            time.sleep(1.0)  # let them take tasks
            return workers
        time.sleep(0.2)
    raise AssertionError("the build never started its workers")


def assert_all_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"


@pytest.mark.parametrize(
    ("sig", "returncode", "line"), [(signal.SIGTERM, 2, "stopped by SIGTERM"), (signal.SIGINT, 130, "interrupted")]
)
def test_signal_stops_every_worker_with_one_line(
    big_config: Path, tmp_path: Path, sig: signal.Signals, returncode: int, line: str
) -> None:
    process = start_build(big_config, tmp_path / "out")
    wait_for_workers(process)
    children = psutil.Process(process.pid).children(recursive=True)  # workers and the resource tracker
    assert any("resource_tracker" in " ".join(c.cmdline()) for c in children)
    sent = time.monotonic()
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert took < STOP_WITHIN_S, f"took {took:.1f} s to stop"
    assert process.returncode == returncode
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and line in lines[0], stderr
    assert_all_gone(children)
    # nothing half-written under a final name: every shard in the data folder has its marker
    parts = sorted((tmp_path / "out" / "cpt" / "general").glob("part-*.jsonl"))
    markers = sorted((tmp_path / "out" / "cpt" / "state" / "general").glob("shard-*.json"))
    assert [p.stem.split("-")[1] for p in parts] == [m.stem.split("-")[1] for m in markers]
    assert not (tmp_path / "out" / "dataset_info.json").exists()


def test_killed_worker_is_one_line_naming_the_shard(big_config: Path, tmp_path: Path) -> None:
    process = start_build(big_config, tmp_path / "out")
    workers = wait_for_workers(process)
    children = psutil.Process(process.pid).children(recursive=True)
    workers[0].send_signal(signal.SIGKILL)  # what the kernel's OOM killer does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1, stderr
    assert "/cpt/general/part-" in lines[0] and "a worker process died while building this shard" in lines[0]
    assert_all_gone(children)


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 2 MiB tmpfs, mostly full (needs root and mount); skipped with the reason where it cannot be mounted."""
    mountpoint = tmp_path / "tmpfs"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        # ballast: about 200 KiB stay free, so the demo corpus (about 600 KiB) fills the disk partway through
        (mountpoint / "ballast").write_bytes(b"\0" * (2 * 1024 * 1024 - 200 * 1024))
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_full_disk_is_one_line_naming_the_file(
    small_tmpfs: Path, embedded_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = demo_config(tokenizer=str(embedded_model))
    data = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    data.update(
        tokenizer=config.tokenizer,
        ipc_scheme=[str(p) for p in config.ipc_scheme],
        patents={**data["patents"], "files": config.patents.files},
        general={**data["general"], "files": config.general.files},
    )
    path = tmp_path / "prepare_cpt.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    out = small_tmpfs / "prepared"
    assert cli_main(["prepare", "cpt", "--config", str(path), "--out", str(out), "--workers", "1"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and "no space left on device" in err[0], err
    named = err[0].removeprefix("error: ").split(": no space left")[0]
    assert named.startswith(str(out)), err[0]  # the file that could not be written
    root = out / "cpt"
    for source in ("ipc", "patents", "general"):
        parts = sorted((root / source).glob("*"))
        assert all(p.name.startswith("part-") and p.suffix == ".jsonl" for p in parts)  # no temporary files
        for part in parts:  # every shard under its final name is complete and has its marker
            assert (root / "state" / source / f"shard-{part.stem.split('-')[1]}.json").exists()
            for line in part.read_text(encoding="utf-8").splitlines():
                json.loads(line)
    assert not list((root / "state" / "tmp").glob("*"))
    assert not (out / "dataset_info.json").exists()
    # space freed, the same command resumes after the finished shards and completes
    finished = len(list((root / "state" / "ipc").glob("shard-*.json")))
    (small_tmpfs / "ballast").unlink()
    assert cli_main(["prepare", "cpt", "--config", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert f"resuming after {finished} finished shard(s)" in capsys.readouterr().err
    assert json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))["coretech_cpt"]
