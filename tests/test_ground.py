"""The retrieval baseline and retrieval-augmented datasets on the prepared demo data: BM25 over the
sample scheme and the training split, `coretech predict --backend retrieval` scored by `coretech
evaluate` as the run `retrieval`, and `coretech prepare rag` with its recall report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coretech.cli import main
from coretech.errors import CoreTechError
from coretech.ground.answer import training_records
from coretech.ground.index import CodeIndex, segment
from coretech.ground.rag import build_rag_datasets
from coretech.infer.constrain import load_scheme
from coretech.ipc import extract_ipc_codes

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SCHEME = [REPO / "data/samples/ipc_scheme_en.xml", REPO / "data/samples/ipc_titles_zh.csv"]

SCHEME_ARGS = ["--scheme", "data/samples/ipc_scheme_en.xml", "--scheme", "data/samples/ipc_titles_zh.csv"]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch, repo_root):
    monkeypatch.chdir(repo_root)


@pytest.fixture(scope="module")
def index(prepared_demo_data) -> CodeIndex:
    return CodeIndex.build(load_scheme(SAMPLE_SCHEME), training_records(prepared_demo_data))


def test_segment_drops_question_words_and_punctuation():
    assert segment("下面的技术领域涉及哪些IPC分类号？锂电池") == ["锂电池"]
    assert segment("Which IPC codes does the field of Image Recognition involve?") == ["image", "recognition"]


def test_search_finds_codes_by_scheme_titles_and_training_subjects(index):
    by_title = [code for code, _ in index.search("neural network hardware", 5)]
    assert any(code.startswith("G06N") for code in by_title), by_title
    by_subject = [code for code, _ in index.search("人工智能领域涉及哪些IPC分类号？", 10)]
    assert "G06N3/063" in by_subject  # a training subject's own code
    assert index.search("人工智能", 10, exclude_subject="人工智能") != index.search("人工智能", 10)
    assert index.search("？？？", 5) == []


def test_retrieval_backend_is_scored_as_a_run(prepared_demo_data, embedded_model, tmp_path):
    out = tmp_path / "retrieval" / "generated_predictions.jsonl"
    argv = ["predict", "--model", str(embedded_model), "--recipe", "configs/smollm2-135m/predict.yaml"]
    argv += ["--dataset", "coretech_sft_test", "--dataset-dir", str(prepared_demo_data), "--backend", "retrieval"]
    assert main([*argv, "--out", str(out), "--k", "4", *SCHEME_ARGS]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    test_file = prepared_demo_data / "sft" / "test.jsonl"
    assert len(lines) == len(test_file.read_text(encoding="utf-8").splitlines())
    assert all({"prompt", "predict", "label", "task"} <= set(line) for line in lines)
    ipc = [line for line in lines if line["task"] == "ipc"]
    assert any(extract_ipc_codes(line["predict"]) for line in ipc)
    assert all(len(extract_ipc_codes(line["predict"])) <= 4 for line in ipc)
    scheme = load_scheme(SAMPLE_SCHEME)
    assert all(scheme.exists(code) for line in lines for code in extract_ipc_codes(line["predict"]))
    first = next(line for line in ipc if line["predict"])
    assert first["predict"].splitlines()[0].endswith(("：", ":"))  # the SFT answer's header line

    report = tmp_path / "eval"
    argv = ["evaluate", "--predictions", str(out), "--name", "retrieval", "--out", str(report), *SCHEME_ARGS]
    assert main(argv) == 0
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))["retrieval"]
    assert metrics["ipc.invalid_rate"] == 0
    assert metrics["ipc.section.f1"] > 0


def test_prepare_rag_writes_registers_and_reports_recall(prepared_demo_data, tmp_path, capsys):
    folder = tmp_path / "data"
    shutil.copytree(prepared_demo_data, folder)
    assert main(["prepare", "rag", "--dataset-dir", str(folder), "--k", "10", *SCHEME_ARGS]) == 0
    assert "recall@10" in capsys.readouterr().out
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    for name in ("coretech_sft_train", "coretech_sft_test", "coretech_sft_stage1", "coretech_sft_shuffled"):
        assert f"{name}_rag" in info and name in info
    report = json.loads((folder / "sft" / "rag" / "rag.json").read_text(encoding="utf-8"))
    test = report["datasets"]["coretech_sft_test"]
    assert test["ipc_records"] > 0 and 0 <= test["recall"] <= 1 and 0 <= test["subclass_recall"] <= 1
    assert (folder / "sft" / "rag" / "rag.md").is_file()

    original = [json.loads(x) for x in (folder / "sft" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    rag_file = folder / info["coretech_sft_test_rag"]["file_name"]
    augmented = [json.loads(x) for x in rag_file.read_text(encoding="utf-8").splitlines()]
    assert len(original) == len(augmented)
    for before, after in zip(original, augmented, strict=True):
        assert after["output"] == before["output"]
        if before["task"] == "tech":
            assert after == before
        else:
            assert after["input"].startswith(before["input"])
            assert "候选IPC分类号" in after["input"] or "candidate IPC codes" in after["input"]

    # LLaMA-Factory's own dataset parser reads the new entries.
    from coretech.infer.prompts import dataset_files

    _, files = dataset_files(folder, "coretech_sft_train_rag")
    assert files == [folder / "sft" / "rag" / "coretech_sft_train.jsonl"]


def test_prepare_rag_refuses_bad_input(tmp_path):
    with pytest.raises(CoreTechError, match="k must be at least 1"):
        build_rag_datasets(tmp_path, 0, load_scheme(SAMPLE_SCHEME))
    (tmp_path / "dataset_info.json").write_text("{}", encoding="utf-8")
    with pytest.raises(CoreTechError, match="no coretech_sft_train"):
        build_rag_datasets(tmp_path, 5, load_scheme(SAMPLE_SCHEME))
