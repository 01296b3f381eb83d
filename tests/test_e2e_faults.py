"""Faults for real: a training stage killed with SIGKILL mid-run resumes from its checkpoint.

The kill takes down every process of the run (runner, torchrun and both ranks), as a node crash or
the OOM killer would. The rerun must find the checkpoint, continue from it and finish the stage,
with nothing produced before lost or corrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from coretech.errors import CoreTechError
from coretech.pipeline import refuse_if_still_running

REPO = Path(__file__).resolve().parent.parent


def cpt_only_pipeline(path: Path, processes_per_node: int) -> Path:
    """A one-stage pipeline (the demo's CPT on the demo's corpus): the smallest real training run."""
    path.write_text(
        yaml.safe_dump(
            {
                "name": path.stem,
                "base_model": "models/smollm2-135m-instruct",
                "embedded_model": True,
                "launch": {"nproc_per_node": processes_per_node},
                "data": {"cpt": "configs/smollm2-135m/prepare_cpt.yaml"},
                "stages": [{"name": "cpt", "recipe": "configs/smollm2-135m/cpt.yaml"}],
            }
        )
    )
    return path


def _kill_everything_of(run_dir: Path, runner: subprocess.Popen) -> int:
    victims = [runner.pid]
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(run_dir) in part for part in process.info["cmdline"] or []):
                victims.append(process.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    os.killpg(runner.pid, signal.SIGKILL)
    for pid in set(victims):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    runner.wait(timeout=30)
    psutil.wait_procs([p for p in psutil.process_iter() if p.pid in victims], timeout=30)
    return len(set(victims))


@pytest.mark.e2e
@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_resumes_from_the_checkpoint(tmp_path, embedded_model):
    pipeline = cpt_only_pipeline(tmp_path / "kill.yaml", processes_per_node=2)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "coretech", "run", str(pipeline), "--run-dir", str(run_dir)]
    budget = ["train.max_steps=4", "train.save_steps=2"]
    runner = subprocess.Popen(
        [*argv, *budget], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoint = run_dir / "cpt" / "output" / "checkpoint-2"
    deadline = time.monotonic() + 900
    while not (checkpoint / "trainer_state.json").is_file():
        assert runner.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 15 minutes"
        time.sleep(1)
    time.sleep(2)  # let the rank that writes the checkpoint close its files
    killed = _kill_everything_of(run_dir, runner)
    assert killed >= 3  # runner, torchrun, two ranks (torchrun's ranks outlive a process-group kill)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["cpt"]["status"] == "running"
    saved = (checkpoint / "adapter_model.safetensors").read_bytes()

    rerun = subprocess.run([*argv, *budget], cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "cpt (train): resuming (same inputs, running earlier" in rerun.stderr
    log = (run_dir / "cpt" / "train.log").read_text(errors="replace")
    assert f"Resuming training from {checkpoint}" in log
    state = json.loads((run_dir / "cpt" / "output" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (checkpoint / "adapter_model.safetensors").read_bytes() == saved  # nothing before the kill was lost
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["cpt"]["status"] == "done"


def test_a_stage_whose_earlier_ranks_still_run_is_refused(tmp_path):
    config = tmp_path / "cpt" / "config.yaml"
    config.parent.mkdir()
    config.write_text("stage: pt\n")
    # A real process whose argv names the stage config, as an orphaned training rank's does.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(config)])
    try:
        time.sleep(0.5)
        with pytest.raises(CoreTechError, match=rf"processes of an earlier run are still training .*pids {orphan.pid}"):
            refuse_if_still_running(config, "cpt")
    finally:
        orphan.kill()
        orphan.wait()
    refuse_if_still_running(config, "cpt")


def test_two_runners_on_one_run_folder_are_refused(tmp_path):
    from coretech.pipeline import run_lock

    with run_lock(tmp_path), pytest.raises(CoreTechError, match="in use by another"), run_lock(tmp_path):
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_two_nodes_on_loopback_train_one_stage_together(tmp_path, embedded_model):
    """A real two-node launch: two `coretech run` processes with NNODES=2 and NODE_RANK 0 and 1, one
    rank each, meeting at MASTER_ADDR:MASTER_PORT on loopback and sharing the run folder (as nodes
    share a file system). Node 1 follows node 0's manifest and only joins the training."""
    pipeline = cpt_only_pipeline(tmp_path / "two_nodes.yaml", processes_per_node=1)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "coretech", "run", str(pipeline), "--run-dir", str(run_dir), "train.max_steps=2"]
    port = str(_free_port())
    nodes = []
    for rank in (0, 1):
        env = dict(os.environ, NNODES="2", NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        nodes.append(
            subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [node.communicate(timeout=1500)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    node0_log = (run_dir / "cpt" / "train.log").read_text(errors="replace")
    node1_log = (run_dir / "cpt" / "train.node1.log").read_text(errors="replace")
    assert "world size: 2" in node0_log and "Multi-node training enabled: num nodes: 2, node rank: 0" in node0_log
    assert "world size: 2" in node1_log
    assert "export NODE_RANK=1" in (run_dir / "cpt" / "command.node1.txt").read_text()
    assert "worker node" in outputs[1]
    state = json.loads((run_dir / "cpt" / "output" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
