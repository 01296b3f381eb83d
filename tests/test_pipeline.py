"""The runner without training: pipeline files, overrides, chaining, fingerprints, plans, pre-flight, dry-run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from coretech.cli import main
from coretech.config import ConfigError, parse_overrides
from coretech.errors import CoreTechError
from coretech.pipeline import load_pipeline, preflight, resolve_recipe, resolve_stages
from coretech.pipeline.context import RunContext
from coretech.pipeline.runner import move_aside
from coretech.pipeline.steps import EvaluateStep, PredictStep, RagStep, build_steps
from coretech.pipeline.training import MergeStep, TrainStep
from coretech.preflight import PreflightFailed
from coretech.runs import Manifest, fingerprint_parts, relative_paths, resolve_run_model

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "configs" / "pipelines" / "demo.yaml"
STAGES = ["cpt", "sft_stage1", "sft_stage2", "sft_stage3", "sft_shuffled", "sft_rag"]


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def demo_data() -> dict:
    """The demo pipeline with its repository paths made absolute, to be written anywhere."""
    data = yaml.safe_load(DEMO.read_text())
    for stage in data["stages"]:
        stage["recipe"] = str(REPO / stage["recipe"])
        if stage.get("merge"):
            stage["merge"] = str(REPO / stage["merge"])
    data["data"] = {k: v if isinstance(v, dict) else str(REPO / v) for k, v in data["data"].items()}
    data["predict"]["recipe"] = str(REPO / data["predict"]["recipe"])
    data["evaluate"]["scheme"] = [str(REPO / p) for p in data["evaluate"]["scheme"]]
    data["base_model"] = str(REPO / data["base_model"])
    return data


# --- overrides and the pipeline file ---------------------------------------------------------


def test_overrides_are_one_omegaconf_dotlist_typed_like_yaml():
    parsed = parse_overrides(["train.max_steps=2", "sft_stage1.learning_rate=1e-4", "predict.backend=hf"])
    assert parsed == {"train": {"max_steps": 2}, "sft_stage1": {"learning_rate": 1e-4}, "predict": {"backend": "hf"}}
    assert isinstance(parsed["sft_stage1"]["learning_rate"], float)


def test_train_override_learning_rate_is_a_float(tmp_path):
    config = resolve_recipe(REPO / "configs" / "smollm2-135m" / "cpt.yaml", ["learning_rate=1e-4", "max_steps=3"])
    assert config["learning_rate"] == 1e-4 and isinstance(config["learning_rate"], float)
    assert config["max_steps"] == 3
    # The recipe's DeepSpeed path names a file of the recipe's repository, wherever we run from.
    assert config["deepspeed"] == str(REPO / "configs" / "deepspeed" / "ds_z3_small_config.json")


@pytest.mark.parametrize("bad", ["max_steps=2", "train.max_steps", "=3", "train..x=1"])
def test_malformed_override_is_one_clear_error(bad):
    with pytest.raises(ConfigError, match=r"key=value"):
        load_pipeline(DEMO, [bad])


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


def test_paths_resolve_against_the_repository_of_the_pipeline_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_pipeline(DEMO).spec
    assert spec.stages[0].recipe == REPO / "configs" / "smollm2-135m" / "cpt.yaml"
    assert spec.data.cpt == REPO / "configs" / "smollm2-135m" / "prepare_cpt.yaml"
    assert spec.base_model == str(REPO / "models" / "smollm2-135m-instruct")
    assert spec.evaluate is not None and spec.evaluate.scheme[0] == REPO / "data" / "samples" / "ipc_scheme_en.xml"


def test_the_run_model_is_the_end_of_the_main_chain_never_the_ablation():
    spec = load_pipeline(DEMO).spec
    assert [s.name for s in spec.stages[-2:]] == ["sft_shuffled", "sft_rag"]  # both match the curriculum's steps
    assert spec.final_stage == "sft_stage3"


def test_predict_takes_several_test_sets_and_model_rows_with_backend_and_options(tmp_path):
    data = demo_data()
    data["predict"]["datasets"] = ["coretech_sft_test", "coretech_sft_stage1"]
    data["predict"]["models"] = [
        "base",
        {"name": "sft_constrained", "model": "sft_stage3", "backend": "hf", "options": {"constrain_codes": True}},
    ]
    loaded = load_pipeline(write_yaml(tmp_path / "configs" / "p.yaml", data))
    run_dir = (tmp_path / "run").resolve()
    ctx = RunContext(loaded, run_dir, Manifest(run_dir / "manifest.json"), loaded.spec.launch, dry_run=True)
    steps = build_steps(ctx, resolve_stages(loaded, run_dir))
    predicts = [s for s in steps if isinstance(s, PredictStep)]
    assert [s.name for s in predicts] == [
        "predict.coretech_sft_test.base",
        "predict.coretech_sft_test.sft_constrained",
        "predict.coretech_sft_stage1.base",
        "predict.coretech_sft_stage1.sft_constrained",
    ]
    constrained = predicts[1]
    assert constrained.row.options == {"constrain_codes": True} and constrained.row.backend == "hf"
    assert constrained.adapter == str(run_dir / "sft_stage3" / "output")
    assert constrained.out_file == run_dir / "predict" / "coretech_sft_test" / "sft_constrained" / (
        "generated_predictions.jsonl"
    )
    evaluates = [s for s in steps if isinstance(s, EvaluateStep)]
    assert [e.out_dir for e in evaluates] == [
        run_dir / "eval" / "coretech_sft_test",
        run_dir / "eval" / "coretech_sft_stage1",
    ]


def test_demo_predicts_both_test_sets_with_the_retrieval_and_constrained_rows(tmp_path):
    loaded = load_pipeline(DEMO)
    sets = ["coretech_sft_test", "coretech_sft_test_phrasing"]
    assert loaded.spec.predict is not None and loaded.spec.predict.datasets == sets
    run_dir = (tmp_path / "run").resolve()
    ctx = RunContext(loaded, run_dir, Manifest(run_dir / "manifest.json"), loaded.spec.launch, dry_run=True)
    steps = build_steps(ctx, resolve_stages(loaded, run_dir))
    rows = ["base", "retrieval", "cpt", "sft_stage1", "sft_stage2", "sft_stage3", "sft_stage3_constrained"]
    rows += ["sft_shuffled", "sft_rag"]
    expected = [f"predict.{d}.{m}" for d in sets for m in rows]
    assert [s.name for s in steps if isinstance(s, PredictStep)] == expected
    constrained = next(s for s in steps if s.name == "predict.coretech_sft_test.sft_stage3_constrained")
    assert constrained.row.options == {"constrain_codes": True} and constrained.row.model == "sft_stage3"
    assert next(s for s in steps if s.name.endswith(".retrieval")).row.backend == "retrieval"
    assert steps[0].name == "prepare" and steps[-1].name == f"evaluate.{sets[-1]}"
    assert [s.name for s in steps if isinstance(s, EvaluateStep)] == [f"evaluate.{d}" for d in sets]
    assert [type(s) for s in steps[1:4]] == [RagStep, TrainStep, MergeStep]
    rag = next(s for s in steps if s.name == "predict.coretech_sft_test_phrasing.sft_rag")
    assert rag.source == "coretech_sft_test_phrasing_rag" and rag.row.model == "sft_rag"  # asked with candidates
    assert (
        rag.out_file == run_dir / "predict" / "coretech_sft_test_phrasing" / "sft_rag" / "generated_predictions.jsonl"
    )
    evaluate = next(s for s in steps if s.name == "evaluate.coretech_sft_test_phrasing")
    assert evaluate.predictions["sft_rag"] == rag.out_file  # scored beside the plain rows of the same test set


def test_stages_chain_each_from_the_previous_result(tmp_path):
    loaded = load_pipeline(DEMO, ["train.max_steps=2"])
    stages = {s.spec.name: s for s in resolve_stages(loaded, tmp_path / "run")}
    cpt, s1, s2, s3 = (stages[n] for n in ("cpt", "sft_stage1", "sft_stage2", "sft_stage3"))
    assert cpt.config["model_name_or_path"] == str(REPO / "models" / "smollm2-135m-instruct")
    assert cpt.result_model == str(cpt.merged_dir) and cpt.result_adapter is None
    assert s1.config["model_name_or_path"] == str(cpt.merged_dir)
    assert "adapter_name_or_path" not in s1.config
    assert s2.config["adapter_name_or_path"] == str(s1.output_dir)
    assert s3.config["adapter_name_or_path"] == str(s2.output_dir)
    assert all(s.config["dataset_dir"] == str((tmp_path / "run" / "data").resolve()) for s in stages.values())
    assert all(s.config["overwrite_output_dir"] is False for s in stages.values())
    # The ablation trains as many steps as the three curriculum stages together.
    assert stages["sft_shuffled"].config["max_steps"] == 6


# --- the run folder --------------------------------------------------------------------------


def test_fingerprints_see_content_and_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    config = {"output_dir": str(a / "cpt" / "output"), "lr": 1e-4}
    moved = {"output_dir": str(b / "cpt" / "output"), "lr": 1e-4}
    assert fingerprint_parts(relative_paths(config, {"run": a})) == fingerprint_parts(relative_paths(moved, {"run": b}))
    assert relative_paths(config, {"run": a})["output_dir"] == "<run>/cpt/output"
    assert fingerprint_parts({"lr": 1e-4}) != fingerprint_parts({"lr": 2e-4})


def test_manifest_only_counts_finished_entries_with_the_same_fingerprint(tmp_path):
    manifest = Manifest(tmp_path / "manifest.json")
    manifest.record("stages", "cpt", {"status": "running", "fingerprint": "a"})
    assert manifest.done("stages", "cpt", "a") is None
    manifest.record("stages", "cpt", {"status": "done", "fingerprint": "a"})
    assert Manifest(tmp_path / "manifest.json").done("stages", "cpt", "a")
    assert Manifest(tmp_path / "manifest.json").done("stages", "cpt", "b") is None


def test_resolve_run_model_reads_paths_relative_to_the_run_folder(tmp_path):
    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "stages": {"sft_stage3": {"status": "done", "model": "cpt/merged", "adapter": "sft_stage3/output"}},
                "final_stage": "sft_stage3",
            }
        )
    )
    model = resolve_run_model(tmp_path)
    assert (model.model, model.adapter, model.stage) == (
        str(tmp_path.resolve() / "cpt" / "merged"),
        str(tmp_path.resolve() / "sft_stage3" / "output"),
        "sft_stage3",
    )
    with pytest.raises(CoreTechError, match="stage 'cpt' not found"):
        resolve_run_model(tmp_path, "cpt")
    with pytest.raises(CoreTechError, match=r"no manifest\.json"):
        resolve_run_model(tmp_path / "nothing")


MALFORMED = {
    "non-UTF-8": b'{"stages": {"\xff": 1}}',
    "a list": b"[]",
    "null": b"null",
    "stages as a list": b'{"stages": []}',
    "a stage that is a string": b'{"stages": {"cpt": "done"}}',
    "truncated": b'{"stages": {"cpt": {"status": "do',
}


@pytest.mark.parametrize("case", [*MALFORMED, "a directory"])
def test_malformed_manifest_is_one_line_naming_the_file_in_run_and_predict(case, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    manifest = run_dir / "manifest.json"
    if case == "a directory":
        manifest.mkdir()
    else:
        manifest.write_bytes(MALFORMED[case])
    commands = [
        ["run", str(DEMO), "--run-dir", str(run_dir), "--dry-run"],
        ["predict", "--run", str(run_dir), "--dataset", "x", "--out", str(tmp_path / "p.jsonl")],
    ]
    for argv in commands:
        assert main(argv) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(manifest) in errors[0], err
        assert "Traceback" not in err
    assert manifest.exists()  # nothing was deleted or replaced


def test_move_aside_keeps_finished_work_under_previous(tmp_path):
    output = tmp_path / "cpt" / "output"
    output.mkdir(parents=True)
    (output / "adapter_model.safetensors").write_bytes(b"weights")
    move_aside([output], "config changed")
    (previous,) = (tmp_path / "cpt").glob("previous-*")
    assert (previous / "output" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert not output.exists()


# --- plans: skip, resume, rerun, move aside --------------------------------------------------


def finish_without_training(pipeline: Path, run_dir: Path, overrides: list[str]) -> None:
    """Record every step of a pipeline as finished, with stand-in outputs, by the runner's own fingerprints.

    What the plan of a later run says is then a question of fingerprints and files alone."""
    loaded = load_pipeline(pipeline, overrides)
    run_dir = run_dir.resolve()
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    (run_dir / "data" / "dataset_info.json").write_text("{}")
    ctx = RunContext(loaded, run_dir, Manifest(run_dir / "manifest.json"), loaded.spec.launch, dry_run=True)
    for step in build_steps(ctx, resolve_stages(loaded, run_dir)):
        parts = step.fingerprint_parts(ctx)
        ctx.fingerprints[step.key] = fp = fingerprint_parts(parts)
        for output in step.outputs():
            if isinstance(step, PredictStep):
                output.parent.mkdir(parents=True, exist_ok=True)
                output.write_text('{"predict": "A01B", "label": "A01B"}\n')
            else:
                output.mkdir(parents=True, exist_ok=True)
                (output / ("model.safetensors" if isinstance(step, MergeStep) else "adapter_model.safetensors")).touch()
        if isinstance(step, EvaluateStep):
            step.out_dir.mkdir(parents=True, exist_ok=True)
            step.metrics_file.write_text("{}")
        if isinstance(step, RagStep):
            (run_dir / "data" / "sft" / "rag").mkdir(parents=True, exist_ok=True)
            (run_dir / "data" / "sft" / "rag" / "rag.json").write_text("{}")
        ctx.manifest.record(step.section, step.name, {"status": "done", "fingerprint": fp, "parts": parts})


def plan_lines(out: str) -> dict[str, str]:
    return dict(line.removeprefix("plan: ").split(": ", 1) for line in out.splitlines() if line.startswith("plan: "))


def test_a_copied_run_folder_plans_no_training(tmp_path, capsys):
    overrides = ["train.max_steps=2", "predict.max_samples=6"]
    finish_without_training(DEMO, tmp_path / "runs" / "demo", overrides)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tmp_path / "runs" / "demo", copy)
    assert main(["run", str(DEMO), "--run-dir", str(copy), "--dry-run", *overrides]) == 0
    plans = plan_lines(capsys.readouterr().out)
    assert len(plans) == 2 + 6 + 1 + 2 * 9 + 2  # prepare (+ rag), 6 stages, a merge, 9 rows × 2 test sets, 2 evaluates
    assert all(plan.startswith("skip") for plan in plans.values()), plans


def test_a_changed_override_reruns_that_stage_and_every_later_one_and_says_what_moves(tmp_path, capsys):
    overrides = ["train.max_steps=2"]
    run_dir = tmp_path / "run"
    finish_without_training(DEMO, run_dir, overrides)
    (run_dir / "sft_stage2" / "config.yaml").write_text("# what was trained\n")
    assert main(["run", str(DEMO), "--run-dir", str(run_dir), "--dry-run", *overrides, "sft_stage2.lora_rank=8"]) == 0
    plans = plan_lines(capsys.readouterr().out)
    for name in ("prepare", "cpt (train)", "cpt (merge)", "sft_stage1 (train)", "sft_shuffled (train)"):
        assert plans[name].startswith("skip"), plans
    assert (
        plans["sft_stage2 (train)"] == "rerun (changed: config); moves sft_stage2/output to previous-<UTC time>/ first"
    )
    assert plans["sft_stage3 (train)"].startswith("rerun (changed: starts from)")
    for test_set in ("coretech_sft_test", "coretech_sft_test_phrasing"):
        assert plans[f"predict.{test_set}.sft_stage2"].startswith("rerun (changed: model)")
        assert plans[f"predict.{test_set}.sft_stage3_constrained"].startswith("rerun (changed: model)")
        assert plans[f"predict.{test_set}.cpt"].startswith("skip")
        assert plans[f"predict.{test_set}.retrieval"].startswith("skip")
    assert (run_dir / "sft_stage2" / "output" / "adapter_model.safetensors").exists()  # a plan moves nothing
    assert (run_dir / "sft_stage2" / "config.yaml").read_text() == "# what was trained\n"  # nor overwrites
    assert "lora_rank: 8" in (run_dir / "sft_stage2" / "config.planned.yaml").read_text()


def glob_prepare_settings(tmp_path: Path, tokenizer: str) -> tuple[Path, dict]:
    """The demo's CPT settings with its patents read through a glob over a copy of the samples in ``raw/``."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("patents_google.jsonl", "patents_flat.jsonl"):
        shutil.copy(REPO / "data" / "samples" / name, raw / name)
    settings = yaml.safe_load((REPO / "configs" / "smollm2-135m" / "prepare_cpt.yaml").read_text())
    settings["patents"]["files"] = [str(raw / "*.jsonl")]
    settings["tokenizer"] = tokenizer
    settings["ipc_scheme"] = [str(REPO / p) for p in settings["ipc_scheme"]]
    settings["general"]["files"] = [str(REPO / p) for p in settings["general"]["files"]]
    return raw, settings


def test_replacing_a_raw_file_a_glob_matches_reruns_prepare(tmp_path, capsys):
    raw, settings = glob_prepare_settings(tmp_path, str(REPO / "models" / "smollm2-135m-instruct"))
    data = demo_data()
    data["data"]["cpt"] = str(write_yaml(tmp_path / "prepare_cpt.yaml", settings))
    pipeline = write_yaml(tmp_path / "p.yaml", data)
    run_dir = tmp_path / "run"
    finish_without_training(pipeline, run_dir, [])
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--dry-run"]) == 0
    assert plan_lines(capsys.readouterr().out)["prepare"].startswith("skip")
    lines = (raw / "patents_flat.jsonl").read_text().splitlines()
    (raw / "patents_flat.jsonl").write_text("\n".join(reversed(lines)) + "\n")  # a new export of the same shape
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--dry-run"]) == 0
    assert plan_lines(capsys.readouterr().out)["prepare"] == "run (changed: cpt inputs)"


# --- pre-flight ------------------------------------------------------------------------------


def test_preflight_reports_every_problem_together_before_any_launch(tmp_path):
    recipe = yaml.safe_load((REPO / "configs/smollm2-135m/cpt.yaml").read_text())
    recipe["lora_rnak"] = 8  # typo
    recipe["dataset"] = "coretech_missing"
    ds = json.loads((REPO / "configs/deepspeed/ds_z3_config.json").read_text())
    ds["zero_optimization"]["stage"] = 5
    ds_path = tmp_path / "ds_bad.json"
    ds_path.write_text(json.dumps(ds))
    recipe["deepspeed"] = str(ds_path)
    bad_recipe = write_yaml(tmp_path / "cpt_bad.yaml", recipe)
    pipeline = write_yaml(
        tmp_path / "p.yaml",
        {
            "name": "bad",
            "base_model": str(REPO / "models/smollm2-135m-instruct"),
            "embedded_model": True,
            "stages": [{"name": "cpt", "recipe": str(bad_recipe)}],
        },
    )
    loaded = load_pipeline(pipeline)
    run_dir = tmp_path / "run dir with spaces"
    stages = resolve_stages(loaded, run_dir)
    with pytest.raises(PreflightFailed) as caught:
        preflight(loaded, stages, run_dir, after_prepare=True)
    text = str(caught.value)
    assert "nothing was launched" in text
    assert f"{bad_recipe}:" in text and "(lora_rnak): unknown key" in text
    assert "dataset 'coretech_missing'" in text
    assert "DeepSpeed rejects it" in text and "stage" in text
    assert "whitespace" in text
    assert len(caught.value.problems) >= 4
    assert not (run_dir / "cpt").exists()


def test_preflight_catches_a_mistyped_value_llamafactory_would_accept(tmp_path):
    recipe = yaml.safe_load((REPO / "configs/smollm2-135m/sft_stage1.yaml").read_text())
    recipe["lora_rank"] = "sixteen"
    bad = write_yaml(tmp_path / "sft_bad.yaml", recipe)
    from coretech.preflight import check_llamafactory_config

    problems = check_llamafactory_config(recipe, bad)
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if text.startswith("lora_rank:"))
    assert [p.where for p in problems] == [f"{bad}:{line} (lora_rank)"]
    assert "expected int" in problems[0].message and "'sixteen'" in problems[0].message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda text: text.replace("dedup:\n", "shard_recrods: 4\ndedup:\n", 1), "unknown key 'shard_recrods'"),
        (lambda text: text + "\nexploit: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ],
    ids=["unknown key", "python tag"],
)
def test_validate_checks_the_prepare_settings_as_prepare_will(tmp_path, capsys, edit, expected):
    text = (REPO / "configs/smollm2-135m/prepare_cpt.yaml").read_text()
    prepare = REPO / "configs" / "smollm2-135m" / f"prepare_cpt_{tmp_path.name}.yaml"
    prepare.write_text(edit(text))  # inside the repository: its relative inputs resolve as the real one's
    try:
        data = demo_data()
        data["data"]["cpt"] = str(prepare)
        pipeline = write_yaml(tmp_path / "p.yaml", data)
        assert main(["validate", str(pipeline), "--run-dir", str(tmp_path / "run")]) == 2
    finally:
        prepare.unlink()
    err = capsys.readouterr().err
    assert "pre-flight found" in err and expected in err and str(prepare) in err


def test_a_bad_scheme_file_in_the_evaluate_step_is_one_line(tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text('{"predict": "A01B", "label": "A01B"}\n')
    scheme = tmp_path / "scheme.xml"
    scheme.write_text("<not xml")
    data = demo_data()
    data["evaluate"]["scheme"] = [str(scheme)]
    loaded = load_pipeline(write_yaml(tmp_path / "p.yaml", data))
    ctx = RunContext(loaded, tmp_path / "run", Manifest(tmp_path / "run" / "manifest.json"), loaded.spec.launch)
    step = EvaluateStep(ctx, "coretech_sft_test", {"base": predictions}, several=False)
    with pytest.raises(CoreTechError, match=str(scheme)):
        step.run(ctx, "fp")


def test_dry_run_prints_each_stage_environment_and_command_and_launches_nothing(tmp_path, capsys):
    status = main(["run", str(DEMO), "--run-dir", str(tmp_path / "run"), "--dry-run", "train.max_steps=2"])
    out = capsys.readouterr().out
    assert status == 0
    for stage in STAGES:
        assert f"--- {stage} (train)" in out
        assert f"llamafactory-cli train {(tmp_path / 'run' / stage / 'config.yaml').resolve()}" in out
        assert not (tmp_path / "run" / stage / "output").exists()
        assert plan_lines(out)[f"{stage} (train)"] == "run (not run yet)"
    assert "--- cpt (export)" in out
    assert out.count("export FORCE_TORCHRUN=1") == len(STAGES)
    assert out.count("export NPROC_PER_NODE=2") == len(STAGES)
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_builder_reports_are_nested_under_the_run_report_headings():
    from coretech.pipeline.report import demote_headings

    text = "# SFT data\n\nWritten.\n\n## Split\n| a |"
    assert demote_headings(text, to_level=3) == "### SFT data\n\nWritten.\n\n#### Split\n| a |"
    assert demote_headings("no headings", to_level=3) == "no headings"


def test_fresh_deletes_only_when_asked_and_says_what(tmp_path, capsys):
    run_dir = tmp_path / "run"
    finish_without_training(DEMO, run_dir, [])
    assert main(["run", str(DEMO), "--run-dir", str(run_dir), "--dry-run", "--fresh"]) == 0
    captured = capsys.readouterr()
    plans = plan_lines(captured.out)
    assert plans["--fresh"].startswith("deletes the manifest, data/, predict/, eval/ and every stage folder")
    assert plans["cpt (train)"] == "run (not run yet)"
    assert (run_dir / "cpt" / "output").exists() and (run_dir / "manifest.json").exists()  # a dry-run deletes nothing

    from coretech.pipeline.runner import fresh_start

    (run_dir / "cpt" / "config.yaml").write_text("stage: pt\n")
    fresh_start(run_dir)
    err = capsys.readouterr().err
    assert "--fresh: deleting" in err and str(run_dir / "manifest.json") in err and str(run_dir / "cpt") in err
    assert not (run_dir / "cpt").exists() and not (run_dir / "manifest.json").exists()


def test_a_new_raw_export_under_a_glob_reruns_prepare_and_every_later_stage(tmp_path, embedded_model):
    """For real: prepare runs twice in-process; training is stood in for, its plan is what is checked."""
    from coretech.pipeline.runner import plan_step, run_step

    raw, settings = glob_prepare_settings(tmp_path, str(embedded_model))
    cpt_recipe = str(REPO / "configs" / "smollm2-135m" / "cpt.yaml")
    pipeline = write_yaml(
        tmp_path / "glob.yaml",
        {
            "name": "glob",
            "base_model": str(embedded_model),
            "embedded_model": True,
            "data": {"cpt": str(write_yaml(tmp_path / "prepare_cpt.yaml", settings))},
            "stages": [
                {"name": "cpt", "recipe": cpt_recipe},
                {"name": "cpt_more", "recipe": cpt_recipe, "start_from": "cpt"},
            ],
        },
    )
    loaded = load_pipeline(pipeline)
    run_dir = (tmp_path / "run").resolve()

    def steps_and_context():
        ctx = RunContext(loaded, run_dir, Manifest(run_dir / "manifest.json"), loaded.spec.launch)
        return build_steps(ctx, resolve_stages(loaded, run_dir)), ctx

    steps, ctx = steps_and_context()
    run_step(ctx, steps[0])  # the real prepare step
    for step in steps[1:]:  # stand-ins for two finished training stages
        parts = step.fingerprint_parts(ctx)
        ctx.fingerprints[step.key] = fp = fingerprint_parts(parts)
        step.outputs()[0].mkdir(parents=True)
        (step.outputs()[0] / "adapter_model.safetensors").touch()
        ctx.manifest.record(step.section, step.name, {"status": "done", "fingerprint": fp, "parts": parts})
    corpus_before = (run_dir / "data" / "dataset_info.json").read_text()

    lines = (raw / "patents_flat.jsonl").read_text().splitlines()
    (raw / "patents_flat.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # a new export
    steps, ctx = steps_and_context()
    prepare_plan = plan_step(ctx, steps[0], fingerprint_parts(parts := steps[0].fingerprint_parts(ctx)), parts)
    assert (prepare_plan.action, prepare_plan.reason) == ("run", "changed: cpt inputs")
    run_step(ctx, steps[0])
    assert ctx.manifest.entry("steps", "prepare")["status"] == "done"
    assert (run_dir / "data" / "dataset_info.json").read_text() == corpus_before  # same names, new content
    plans = {}
    for step in steps[1:]:
        parts = step.fingerprint_parts(ctx)
        ctx.fingerprints[step.key] = fp = fingerprint_parts(parts)
        plans[step.name] = plan_step(ctx, step, fp, parts)
    assert plans["cpt"].action == "rerun" and plans["cpt"].reason == "changed: datasets"
    assert plans["cpt_more"].action == "rerun" and "starts from" in plans["cpt_more"].reason
    assert plans["cpt"].move_aside == [run_dir / "cpt" / "output"]


def test_a_predict_model_row_with_an_unknown_key_names_it(tmp_path):
    data = demo_data()
    data["predict"]["models"] = [{"name": "x", "model": "cpt", "backnd": "hf"}]
    with pytest.raises(ConfigError, match=r"predict\.models\[0\]: unknown key 'backnd'"):
        load_pipeline(write_yaml(tmp_path / "p.yaml", data))


def test_prediction_options_must_be_arguments_of_run_prediction(tmp_path):
    data = demo_data()
    data["predict"]["models"] = [
        {"name": "a", "model": "cpt", "options": {"max_new_tokenz": 3}},
        {"name": "b", "model": "cpt", "options": {"out_file": "x"}},
    ]
    loaded = load_pipeline(write_yaml(tmp_path / "p.yaml", data))
    with pytest.raises(PreflightFailed) as caught:
        preflight(loaded, resolve_stages(loaded, tmp_path / "run"), tmp_path / "run", after_prepare=False)
    text = str(caught.value)
    assert "predict.models[0].options.max_new_tokenz: is not an argument of run_prediction" in text
    assert "predict.models[1].options.out_file: is set by the runner" in text


def test_commands_with_run_say_which_model_they_serve(tmp_path, capsys):
    from coretech.infer.recipe import resolve_model

    (tmp_path / "manifest.json").write_text(
        json.dumps(
            {
                "stages": {
                    "sft_stage3": {"status": "done", "model": "cpt/merged", "adapter": "sft_stage3/output"},
                    "sft_shuffled": {"status": "done", "model": "cpt/merged", "adapter": "sft_shuffled/output"},
                },
                "final_stage": "sft_stage3",
            }
        )
    )
    model, adapter, _ = resolve_model(tmp_path, None, None, None)
    assert adapter == str(tmp_path.resolve() / "sft_stage3" / "output")
    err = capsys.readouterr().err
    assert f"model: stage sft_stage3 of run {tmp_path} ({model} with adapter {adapter})" in err


def test_a_vllm_prediction_is_checked_before_any_training(tmp_path, embedded_model):
    """No vLLM on this machine: the pipeline stops in pre-flight, not after days of training."""
    data = demo_data()
    data["predict"]["backend"] = "vllm"
    loaded = load_pipeline(write_yaml(tmp_path / "p.yaml", data))
    with pytest.raises(PreflightFailed) as caught:
        preflight(loaded, resolve_stages(loaded, tmp_path / "run"), tmp_path / "run", after_prepare=False)
    assert "predict.backend (vllm): vLLM is not installed" in str(caught.value)


def test_preflight_refuses_a_dataset_file_outside_its_folder(tmp_path):
    from coretech.preflight import check_datasets

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tmp_path / "x.jsonl").write_text("{}\n", encoding="utf-8")
    (data_dir / "dataset_info.json").write_text(json.dumps({"leak": {"file_name": "../x.jsonl"}}), encoding="utf-8")
    problems = [str(p) for p in check_datasets(["leak"], data_dir, "recipe.yaml", set())]
    assert len(problems) == 1 and "(leak)" in problems[0]
    assert "file_name '../x.jsonl' resolves to" in problems[0] and "outside the dataset folder" in problems[0]
