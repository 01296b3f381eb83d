"""End to end, for real: the demo pipeline on a reduced budget, then resume, then a failing stage.

Real ``llamafactory-cli``, real torchrun with 2 processes, real DeepSpeed ZeRO-3, the real embedded
SmolLM2 model; only the budget is small (2 optimizer steps per stage, 6 test prompts). The tests in
this module share one run folder and run in order: the later ones check what a rerun reuses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
STAGES = ["cpt", "sft_stage1", "sft_stage2", "sft_stage3", "sft_shuffled", "sft_rag"]
ROWS = ["base", "retrieval", "cpt", "sft_stage1", "sft_stage2", "sft_stage3", "sft_stage3_constrained", "sft_shuffled"]
ROWS.append("sft_rag")  # trained and asked with retrieved candidates in the question
TEST_SETS = ["coretech_sft_test", "coretech_sft_test_phrasing"]
BUDGET = ["train.max_steps=2", "train.save_steps=1000", "predict.max_samples=6"]


def coretech(*args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coretech", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, embedded_model) -> tuple[Path, subprocess.CompletedProcess]:
    run_dir = tmp_path_factory.mktemp("e2e") / "demo"
    result = coretech("run", "configs/pipelines/demo.yaml", "--run-dir", str(run_dir), *BUDGET)
    return run_dir, result


def test_demo_runs_every_stage_through_torchrun_and_deepspeed_zero3(demo_run):
    run_dir, result = demo_run
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in STAGES:
        folder = run_dir / stage
        config = (folder / "config.yaml").read_text()
        command = (folder / "command.txt").read_text()
        log = (folder / "train.log").read_text(errors="replace")
        assert "deepspeed:" in config and "ds_z3_small_config.json" in config
        assert "export FORCE_TORCHRUN=1" in command and "export NPROC_PER_NODE=2" in command
        assert f"llamafactory-cli train {folder / 'config.yaml'}" in command
        assert "world size: 2" in log, f"{stage}: the log does not show 2 processes"
        assert "Detected DeepSpeed ZeRO-3" in log, f"{stage}: ZeRO-3 was not active"
        assert (folder / "output" / "adapter_model.safetensors").is_file()
    assert (run_dir / "cpt" / "merged" / "model.safetensors").is_file()
    assert "llamafactory-cli export" in (run_dir / "cpt" / "export_command.txt").read_text()


def test_stages_are_chained_and_the_ablation_matches_the_curriculum_steps(demo_run):
    run_dir, _ = demo_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = manifest["stages"]
    assert [stages[s]["global_step"] for s in STAGES] == [2, 2, 2, 2, 6, 6]
    s2 = (run_dir / "sft_stage2" / "config.yaml").read_text()
    assert f"adapter_name_or_path: {run_dir / 'sft_stage1' / 'output'}" in s2
    assert f"model_name_or_path: {run_dir / 'cpt' / 'merged'}" in s2


def test_metrics_table_has_a_row_per_model_with_the_contract_keys(demo_run):
    run_dir, result = demo_run
    by_set = json.loads((run_dir / "metrics.json").read_text())
    assert list(by_set) == TEST_SETS
    for dataset, metrics in by_set.items():
        assert list(metrics) == ROWS
        for name in ROWS:
            row = metrics[name]
            assert row["n"] == 6
            for level in ("section", "class", "subclass", "main_group", "subgroup"):
                for measure in ("precision", "recall", "f1"):
                    assert 0.0 <= row[f"ipc.{level}.{measure}"] <= 1.0 or row[f"ipc.{level}.{measure}"] is None
            for key in ("ipc.invalid_rate", "tech.f1", "rouge_l", "bleu_4"):
                assert key in row
            lines = (run_dir / "predict" / dataset / name / "generated_predictions.jsonl").read_text().splitlines()
            assert len(lines) == 6 and all({"prompt", "predict", "label"} <= set(json.loads(x)) for x in lines)
        # grounded rows: every code they write exists in the scheme (None: no code written at all)
        for name in ("retrieval", "sft_stage3_constrained"):
            assert metrics[name]["ipc.invalid_rate"] in (0.0, None), (dataset, name)
        if metrics["retrieval"]["n_ipc"]:
            assert metrics["retrieval"]["ipc.answers_with_codes"] > 0  # retrieval answers with scheme codes
        assert (run_dir / "eval" / dataset / "f1_by_level.png").stat().st_size > 1000
    report = (run_dir / "report.md").read_text()
    assert "## Metrics: `coretech_sft_test`" in report and "## Metrics: `coretech_sft_test_phrasing`" in report
    assert "Test set: unseen subjects" in report and "Test set: seen subjects asked in phrasings" in report
    assert "sft_shuffled" in report and "f1_by_level.png" in report
    # the RAG variant: trained on the _rag data, asked the _rag test sets, its candidates' recall in the report
    assert "dataset: coretech_sft_shuffled_rag" in (run_dir / "sft_rag" / "config.yaml").read_text()
    for dataset in TEST_SETS:
        asked = json.loads(
            (run_dir / "predict" / dataset / "sft_rag" / "generated_predictions.jsonl.meta.json").read_text()
        )
        assert asked["dataset"] == f"{dataset}_rag", asked
    assert "## Retrieval-augmented datasets" in report and "`sft_rag` asked with the top 5 retrieved codes" in report
    for name in ROWS:
        assert name in result.stdout  # the table is printed in the terminal


def weight_stamps(run_dir: Path) -> dict[str, int]:
    files = {s: run_dir / s / "output" / "adapter_model.safetensors" for s in STAGES}
    files["cpt.merged"] = run_dir / "cpt" / "merged" / "model.safetensors"
    return {name: path.stat().st_mtime_ns for name, path in files.items()}


def planned(run_dir: Path) -> dict[str, str]:
    """The dry-run's plan for this run folder: step → what a real run would do, and why."""
    result = coretech("run", "configs/pipelines/demo.yaml", "--run-dir", str(run_dir), *BUDGET, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.removeprefix("plan: ") for line in result.stdout.splitlines() if line.startswith("plan: ")]
    return dict(line.split(": ", 1) for line in lines)


def test_after_the_run_a_dry_run_plans_no_work(demo_run):
    run_dir, _ = demo_run
    plan = planned(run_dir)
    assert len(plan) == 2 + 6 + 1 + 2 * 9 + 2  # prepare (+ rag), six stages, a merge, 9 rows × 2 sets, 2 evaluates
    assert all(action.startswith("skip") for action in plan.values()), plan


def test_rerun_skips_every_finished_stage(demo_run):
    run_dir, first = demo_run
    before = weight_stamps(run_dir)
    result = coretech("run", "configs/pipelines/demo.yaml", "--run-dir", str(run_dir), *BUDGET, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in STAGES:
        assert f"{stage} (train): unchanged since the last run, skipping" in result.stderr
    assert weight_stamps(run_dir) == before
    assert table_rows(result.stdout) == table_rows(first.stdout)  # the same metrics table, from the same answers


def table_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if any(name in line for name in ROWS)]


def test_a_copied_run_folder_reuses_every_finished_step(demo_run):
    run_dir, first = demo_run
    copy = run_dir.parent / "copied" / "demo"
    shutil.copytree(run_dir, copy)  # new mtimes, a new location: only content is the same
    before = weight_stamps(copy)
    plan = planned(copy)
    assert all(action.startswith("skip") for action in plan.values()), plan
    result = coretech("run", "configs/pipelines/demo.yaml", "--run-dir", str(copy), *BUDGET, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ": running" not in result.stderr and "[coretech] moved" not in result.stderr  # no step ran, none moved
    assert weight_stamps(copy) == before
    assert not list(copy.glob("*/previous-*"))
    assert table_rows(result.stdout) == table_rows(first.stdout)


def test_failing_stage_stops_the_run_with_one_line_and_keeps_earlier_outputs(demo_run):
    run_dir, _ = demo_run
    cpt_weights = run_dir / "cpt" / "merged" / "model.safetensors"
    cpt_mtime = cpt_weights.stat().st_mtime_ns
    # A LoRA rank of 0 passes every static check (it is an integer) but PEFT refuses it once the
    # model is loaded: a failure only the launched stage can report.
    result = coretech(
        "run",
        "configs/pipelines/demo.yaml",
        "--run-dir",
        str(run_dir),
        *BUDGET,
        "sft_stage1.lora_rank=0",
        timeout=900,
    )
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "stage sft_stage1 (train) failed with exit status" in error_lines[0]
    assert f"log: {run_dir / 'sft_stage1' / 'train.log'}" in error_lines[0]
    assert "sft_stage2 (train): running" not in result.stderr  # no later stage ran
    assert cpt_weights.stat().st_mtime_ns == cpt_mtime
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["cpt"]["status"] == "done"
    assert manifest["stages"]["sft_stage1"]["status"] == "failed"
    assert manifest["stages"]["sft_stage2"]["status"] == "done"  # from the earlier run, untouched
    # The changed stage's finished output was moved aside, not deleted, and the log says so.
    (previous,) = (run_dir / "sft_stage1").glob("previous-*")
    assert (previous / "output" / "adapter_model.safetensors").is_file()
    assert f"moved {run_dir / 'sft_stage1' / 'output'} to {previous / 'output'}" in result.stderr
