"""The RAG variant as pipeline steps: data.rag, the prepare.rag step, rows asked with candidates, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coretech.config import ConfigError
from coretech.pipeline import load_pipeline, preflight, resolve_stages
from coretech.pipeline.context import RunContext
from coretech.pipeline.report import _rag_evidence
from coretech.pipeline.steps import RagStep, build_steps
from coretech.preflight import PreflightFailed
from coretech.runs import Manifest, fingerprint_parts
from test_pipeline import demo_data  # the demo pipeline with absolute paths (tests/ is on sys.path)
from test_pipeline import write_yaml as write_pipeline


def rag_context(tmp_path: Path, prepared: Path, data: dict | None = None) -> tuple[RunContext, RagStep]:
    loaded = load_pipeline(write_pipeline(tmp_path / "configs" / "p.yaml", data or demo_data()))
    run_dir = (tmp_path / "run").resolve()
    shutil.copytree(prepared, run_dir / "data")
    ctx = RunContext(loaded, run_dir, Manifest(run_dir / "manifest.json"), loaded.spec.launch)
    steps = build_steps(ctx, resolve_stages(loaded, run_dir))
    return ctx, next(s for s in steps if isinstance(s, RagStep))


def test_a_rag_row_without_data_rag_is_a_config_error_naming_the_row(tmp_path):
    data = demo_data()
    del data["data"]["rag"]
    with pytest.raises(ConfigError, match=r"predict.models 'sft_rag' asks with rag: true, but data.rag is not set"):
        load_pipeline(write_pipeline(tmp_path / "p.yaml", data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["data"].update(rag={"k": 0}), r"data.rag: k must be at least 1, got 0"),
        (lambda d: d["data"].pop("sft"), r"rag: needs sft"),
    ],
    ids=["k zero", "no sft"],
)
def test_data_rag_settings_are_checked_when_the_pipeline_loads(tmp_path, change, message):
    data = demo_data()
    change(data)
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write_pipeline(tmp_path / "p.yaml", data))


def test_a_stage_training_on_rag_data_without_data_rag_fails_preflight_naming_the_dataset(tmp_path):
    data = demo_data()
    del data["data"]["rag"]
    data["predict"]["models"] = [m for m in data["predict"]["models"] if not isinstance(m, dict) or not m.get("rag")]
    loaded = load_pipeline(write_pipeline(tmp_path / "p.yaml", data))
    run_dir = (tmp_path / "run").resolve()
    with pytest.raises(PreflightFailed) as failed:
        preflight(loaded, resolve_stages(loaded, run_dir), run_dir, after_prepare=False)
    message = str(failed.value)
    assert "sft_rag.yaml (dataset): dataset 'coretech_sft_shuffled_rag' is not in" in message
    assert "data.rag in the pipeline writes the _rag variants" in message


def test_the_rag_step_writes_every_variant_and_its_fingerprint_follows_k_and_the_data(tmp_path, prepared_demo_data):
    ctx, step = rag_context(tmp_path, prepared_demo_data)
    data_dir = ctx.run_dir / "data"
    assert not step.complete(ctx)
    before = fingerprint_parts(step.fingerprint_parts(ctx))
    entry = step.run(ctx, before)
    assert step.complete(ctx)
    info = json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    for name in ("coretech_sft_shuffled", "coretech_sft_test", "coretech_sft_test_phrasing"):
        assert (data_dir / info[f"{name}_rag"]["file_name"]).is_file()
    assert entry["k"] == 5 and set(entry["recall"]) >= {"coretech_sft_test", "coretech_sft_test_phrasing"}
    assert "Retrieval-augmented datasets (k = 5)" in entry["rag"]
    # the step's own outputs do not change its inputs: a rerun plans a skip
    assert fingerprint_parts(step.fingerprint_parts(ctx)) == before
    ctx.loaded.spec.data.rag.k = 7
    assert fingerprint_parts(step.fingerprint_parts(ctx)) != before
    ctx.loaded.spec.data.rag.k = 5
    with (data_dir / "sft" / "test.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"instruction": "Which IPC codes?", "input": "", "output": "A01B", "task": "ipc"}) + "\n")
    assert fingerprint_parts(step.fingerprint_parts(ctx)) != before
    # a prepare rerun that rewrote dataset_info.json without the variants: not complete, so it runs again
    del info["coretech_sft_test_rag"]
    (data_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    assert not step.complete(ctx)


def test_every_rag_question_carries_its_candidates_and_tech_questions_are_unchanged(tmp_path, prepared_demo_data):
    ctx, step = rag_context(tmp_path, prepared_demo_data)
    step.run(ctx, "fp")
    data_dir = ctx.run_dir / "data"

    def records(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]

    plain = records(data_dir / "sft" / "test.jsonl")
    rag = records(data_dir / "sft" / "rag" / "coretech_sft_test.jsonl")
    assert len(plain) == len(rag)
    for before, after in zip(plain, rag, strict=True):
        assert after["output"] == before["output"]  # the same gold answer: scored with the plain test set
        if before.get("task") == "ipc":
            assert "候选IPC分类号" in after["input"] or "candidate IPC codes" in after["input"]
        else:
            assert after == before


def test_the_report_traces_a_rag_rows_score_to_the_candidates_recall(tmp_path, prepared_demo_data):
    ctx, step = rag_context(tmp_path, prepared_demo_data)
    entry = step.run(ctx, "fp")
    ctx.manifest.record("steps", "prepare.rag", {"status": "done", **entry})
    metrics = {"sft_rag": {"ipc.subclass.f1": 0.0}, "sft_stage3": {"ipc.subclass.f1": 0.0}}
    codes, subclasses = entry["recall"]["coretech_sft_test"]
    (line, blank) = _rag_evidence(ctx, "coretech_sft_test", metrics)
    assert line.startswith("`sft_rag` asked with the top 5 retrieved codes")
    assert f"they hold {codes:.3f} of the gold codes ({subclasses:.3f} of the gold subclasses)" in line
    assert blank == ""
    assert _rag_evidence(ctx, "coretech_sft_test", {"sft_stage3": {}}) == []  # no RAG row scored: no line


def test_curriculum_against_shuffled_compares_the_plain_final_stage_not_its_grounded_row(tmp_path):
    from coretech.pipeline.report import _curriculum_comparison

    loaded = load_pipeline(write_pipeline(tmp_path / "configs" / "p.yaml", demo_data()))
    ctx = RunContext(loaded, tmp_path / "run", Manifest(tmp_path / "run" / "manifest.json"), loaded.spec.launch)
    names = [m.name for m in loaded.spec.predict.entries]
    assert names.index("sft_stage3_constrained") > names.index("sft_stage3")  # the grounded row comes after
    metrics = {name: {"ipc.subclass.f1": 0.0, "rouge_l": 0.1, "n": 36} for name in names}
    metrics["sft_stage3"]["rouge_l"] = 0.3
    lines = _curriculum_comparison(ctx, metrics)
    assert any("curriculum `sft_stage3` 0.300 vs shuffled `sft_shuffled` 0.100" in line for line in lines), lines
