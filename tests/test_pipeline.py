"""The runner without training: pipeline files, overrides, chaining, fingerprints, pre-flight, dry-run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coretech.cli import main
from coretech.config import ConfigError
from coretech.errors import CoreTechError
from coretech.pipeline import (
    Manifest,
    fingerprint,
    load_pipeline,
    parse_overrides,
    preflight,
    resolve_run_model,
    resolve_stages,
)
from coretech.preflight import PreflightFailed

DEMO = Path("configs/pipelines/demo.yaml")


@pytest.fixture(autouse=True)
def _in_repo(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def test_overrides_are_typed_like_yaml():
    parsed = parse_overrides(["train.max_steps=2", "sft_stage1.learning_rate=1e-4", "predict.backend=hf"])
    assert parsed == {"train": {"max_steps": 2}, "sft_stage1": {"learning_rate": 1e-4}, "predict": {"backend": "hf"}}
    assert isinstance(parsed["sft_stage1"]["learning_rate"], float)


@pytest.mark.parametrize("bad", ["max_steps=2", "train.max_steps", "=3"])
def test_malformed_override_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match=r"expected scope\.key=value"):
        parse_overrides([bad])


def test_override_of_unknown_stage_is_rejected():
    with pytest.raises(ConfigError, match="override scope 'sft_stage9'"):
        load_pipeline(DEMO, ["sft_stage9.max_steps=1"])


def test_runner_owned_keys_cannot_be_overridden():
    with pytest.raises(ConfigError, match="set by the runner"):
        load_pipeline(DEMO, ["train.output_dir=/tmp/elsewhere"])


def test_unknown_pipeline_key_names_file_and_key(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data["stages"][1]["strat_from"] = "cpt"
    path = write_yaml(tmp_path / "typo.yaml", data)
    with pytest.raises(ConfigError, match=r"typo\.yaml\.stages\[1\]: unknown key 'strat_from'"):
        load_pipeline(path)


def test_start_from_must_name_an_earlier_stage(tmp_path):
    data = yaml.safe_load(DEMO.read_text())
    data["stages"][1]["start_from"] = "sft_stage3"
    with pytest.raises(ConfigError, match="start_from 'sft_stage3' is not an earlier stage"):
        load_pipeline(write_yaml(tmp_path / "order.yaml", data))


def test_stages_chain_each_from_the_previous_result(tmp_path):
    spec, overrides = load_pipeline(DEMO, ["train.max_steps=2"])
    stages = {s.spec.name: s for s in resolve_stages(spec, overrides, tmp_path / "run", {})}
    cpt, s1, s2, s3 = (stages[n] for n in ("cpt", "sft_stage1", "sft_stage2", "sft_stage3"))
    assert cpt.config["model_name_or_path"] == str(Path("models/smollm2-135m-instruct").resolve())
    assert cpt.result_model == str(cpt.merged_dir) and cpt.result_adapter is None
    assert s1.config["model_name_or_path"] == str(cpt.merged_dir)
    assert "adapter_name_or_path" not in s1.config
    assert s2.config["adapter_name_or_path"] == str(s1.output_dir)
    assert s3.config["adapter_name_or_path"] == str(s2.output_dir)
    assert all(s.config["dataset_dir"] == str((tmp_path / "run" / "data").resolve()) for s in stages.values())
    assert all(s.config["overwrite_output_dir"] is False for s in stages.values())
    # The ablation trains as many steps as the three curriculum stages together.
    assert stages["sft_shuffled"].config["max_steps"] == 6


def test_fingerprint_changes_with_config_and_input_content(tmp_path):
    data = tmp_path / "d.json"
    data.write_text("[1]")
    first = fingerprint({"lr": 1e-4}, paths=[data])
    assert fingerprint({"lr": 1e-4}, paths=[data]) == first
    assert fingerprint({"lr": 2e-4}, paths=[data]) != first
    data.write_text("[2]")
    assert fingerprint({"lr": 1e-4}, paths=[data]) != first


def test_manifest_only_counts_finished_entries_with_the_same_fingerprint(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.record("stages", "cpt", {"status": "running", "fingerprint": "a"})
    assert manifest.done("stages", "cpt", "a") is None
    manifest.record("stages", "cpt", {"status": "done", "fingerprint": "a"})
    assert Manifest(tmp_path / "manifest.json").done("stages", "cpt", "a")
    assert Manifest(tmp_path / "manifest.json").done("stages", "cpt", "b") is None


def test_resolve_run_model_reads_the_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "stages": {"sft_stage1": {"status": "done", "model": "/m", "adapter": "/a", "template": "smollm2"}},
                "order": ["sft_stage1"],
                "final_stage": "sft_stage1",
            }
        )
    )
    model = resolve_run_model(tmp_path)
    assert (model.model, model.adapter, model.template, model.stage) == ("/m", "/a", "smollm2", "sft_stage1")
    with pytest.raises(CoreTechError, match="stage 'cpt' not found"):
        resolve_run_model(tmp_path, "cpt")
    with pytest.raises(CoreTechError, match=r"no manifest\.json"):
        resolve_run_model(tmp_path / "nothing")


def test_preflight_reports_every_problem_together_before_any_launch(tmp_path):
    recipe = yaml.safe_load(Path("configs/smollm2-135m/cpt.yaml").read_text())
    recipe["lora_rnak"] = 8  # typo
    recipe["dataset"] = "coretech_missing"
    ds = json.loads(Path("configs/deepspeed/ds_z3_config.json").read_text())
    ds["zero_optimization"]["stage"] = 5
    ds_path = tmp_path / "ds_bad.json"
    ds_path.write_text(json.dumps(ds))
    recipe["deepspeed"] = str(ds_path)
    bad_recipe = write_yaml(tmp_path / "cpt_bad.yaml", recipe)
    pipeline = write_yaml(
        tmp_path / "p.yaml",
        {
            "name": "bad",
            "base_model": "models/smollm2-135m-instruct",
            "embedded_model": True,
            "stages": [{"name": "cpt", "recipe": str(bad_recipe)}],
        },
    )
    spec, overrides = load_pipeline(pipeline)
    run_dir = tmp_path / "run dir with spaces"
    stages = resolve_stages(spec, overrides, run_dir, {})
    with pytest.raises(PreflightFailed) as caught:
        preflight(spec, stages, run_dir, after_prepare=True)
    text = str(caught.value)
    assert "nothing was launched" in text
    assert f"{bad_recipe}:" in text and "(lora_rnak): unknown key" in text
    assert "dataset 'coretech_missing'" in text
    assert "DeepSpeed rejects it" in text and "stage" in text
    assert "whitespace" in text
    assert len(caught.value.problems) >= 4
    assert not (run_dir / "cpt").exists()


def test_preflight_catches_a_mistyped_value_llamafactory_would_accept(tmp_path):
    recipe = yaml.safe_load(Path("configs/smollm2-135m/sft_stage1.yaml").read_text())
    recipe["lora_rank"] = "sixteen"
    bad = write_yaml(tmp_path / "sft_bad.yaml", recipe)
    from coretech.preflight import check_llamafactory_config

    problems = check_llamafactory_config(recipe, bad)
    assert [p.where for p in problems] == [f"{bad}:{_line_of(bad, 'lora_rank')} (lora_rank)"]
    assert "integer" in problems[0].message


def _line_of(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(f"{key}:"))


def test_dry_run_prints_each_stage_environment_and_command_and_launches_nothing(tmp_path, capsys):
    status = main(["run", str(DEMO), "--run-dir", str(tmp_path / "run"), "--dry-run", "train.max_steps=2"])
    out = capsys.readouterr().out
    assert status == 0
    for stage in ("cpt", "sft_stage1", "sft_stage2", "sft_stage3", "sft_shuffled"):
        assert f"--- {stage} (train)" in out
        assert f"llamafactory-cli train {(tmp_path / 'run' / stage / 'config.yaml').resolve()}" in out
        assert not (tmp_path / "run" / stage / "output").exists()
    assert "--- cpt (export)" in out
    assert out.count("export FORCE_TORCHRUN=1") == 5
    assert out.count("export NPROC_PER_NODE=2") == 5
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_builder_reports_are_nested_under_the_run_report_headings():
    from coretech.pipeline import demote_headings

    text = "# SFT data\n\nWritten.\n\n## Split\n| a |"
    assert demote_headings(text, to_level=3) == "### SFT data\n\nWritten.\n\n#### Split\n| a |"
    assert demote_headings("no headings", to_level=3) == "no headings"
