"""The launcher: environment for LLaMA-Factory's own torchrun, argv lists, logs and exit statuses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from coretech.errors import CoreTechError
from coretech.launch import (
    LaunchSettings,
    check_launch_path,
    child_environment,
    describe_command,
    llamafactory_cli,
    run_logged,
)


def test_single_node_environment_forces_torchrun_with_process_count():
    env = LaunchSettings(nproc_per_node=2).environment()
    assert env["FORCE_TORCHRUN"] == "1"
    assert env["NPROC_PER_NODE"] == "2"
    assert env["NNODES"] == "1"
    assert env["NODE_RANK"] == "0"
    assert "MASTER_PORT" not in env  # LLaMA-Factory picks a free port on one node


def test_multi_node_variables_pass_through_from_the_environment():
    scheduler_env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29600"}
    settings = LaunchSettings(nproc_per_node=4).with_environment(scheduler_env)
    env = settings.environment()
    assert (env["NNODES"], env["NODE_RANK"], env["MASTER_ADDR"], env["MASTER_PORT"]) == ("2", "1", "10.0.0.5", "29600")
    assert env["NPROC_PER_NODE"] == "4"


def test_multi_node_without_port_gets_a_fixed_one_every_node_agrees_on():
    env = LaunchSettings(nnodes=2, node_rank=0).environment()
    assert env["MASTER_PORT"] == "29500"


def test_node_rank_outside_nnodes_is_rejected():
    with pytest.raises(ValueError, match="node_rank 2"):
        LaunchSettings().with_environment({"NNODES": "2", "NODE_RANK": "2"})


def test_paths_with_whitespace_are_refused_before_launch():
    with pytest.raises(CoreTechError, match="splits its arguments on spaces"):
        check_launch_path("/data/my runs/config.yaml", "stage config")
    check_launch_path("/data/runs/config.yaml", "stage config")


def test_command_file_shows_launch_variables_and_redacts_secrets():
    env = {
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": "2",
        "CORETECH_TEACHER_API_KEY": "sk-very-secret",
        "UNRELATED": "x",
    }
    text = describe_command(["llamafactory-cli", "train", "/runs/demo/cpt/config.yaml"], env)
    assert "export FORCE_TORCHRUN=1" in text
    assert "export NPROC_PER_NODE=2" in text
    assert "sk-very-secret" not in text
    assert "export CORETECH_TEACHER_API_KEY='<redacted>'" in text
    assert "UNRELATED" not in text
    assert text.rstrip().endswith("llamafactory-cli train /runs/demo/cpt/config.yaml")


def test_child_environment_puts_this_environment_first_on_path():
    env = child_environment({"FORCE_TORCHRUN": "1"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["FORCE_TORCHRUN"] == "1"


def test_llamafactory_cli_is_found_in_this_environment():
    assert Path(llamafactory_cli()).name == "llamafactory-cli"


def test_run_logged_writes_the_log_and_returns_the_exit_status(tmp_path):
    script = "import sys; print('hello from a rank'); sys.stdout.flush(); sys.exit(3)"
    status = run_logged([sys.executable, "-c", script], child_environment({}), tmp_path / "x.log")
    assert status == 3
    assert "hello from a rank" in (tmp_path / "x.log").read_text()
