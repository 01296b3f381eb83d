"""The bad-input suite, through the real `coretech` CLI: every case gives one clear line naming the file
and the line, record or key, before anything is launched; nothing is dropped without being counted.

The SIGKILL-and-rerun case is in test_e2e_faults.py (it trains for real).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coretech.cli import main

REPO = Path(__file__).resolve().parent.parent
SFT_CONFIG = "configs/smollm2-135m/prepare_sft.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def only_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


ALPACA_OK = '{"instruction":"Which IPC codes does drone delivery involve?","input":"","output":"B64U10/00"}\n'


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    files = {
        "malformed_jsonl": ALPACA_OK + '{"instruction": broken\n' + ALPACA_OK.replace("drone", "UAV"),
        "non_utf8": ALPACA_OK + '{"instruction":"q","input":"","output":"\udcff"}\n',
        "wrong_columns": "q,a\nsomething,else\n",
        "empty": "",
    }
    paths = {}
    for name, text in files.items():
        suffix = ".csv" if name == "wrong_columns" else ".jsonl"
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        paths[name] = path
    return paths


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("malformed_jsonl", ":2: not valid JSON"),
        ("non_utf8", ":2: not UTF-8"),
        ("wrong_columns", ":1: neither an office table (question,answer) nor a literature table"),
        ("empty", ": file is empty"),
    ],
)
def test_strict_sft_build_stops_at_the_bad_record_with_file_and_line(capsys, tmp_path, bad_files, case, expected):
    path = bad_files[case]
    status, _, err = run_cli(
        capsys,
        "prepare",
        "sft",
        "--config",
        SFT_CONFIG,
        "--input",
        str(path),
        "--out",
        str(tmp_path / "out"),
        "--strict",
    )
    assert status == 2
    assert f"{path}{expected}" in only_error_line(err)
    assert not (tmp_path / "out" / "dataset_info.json").exists()


@pytest.mark.parametrize(("case", "reason"), [("malformed_jsonl", "not valid JSON"), ("non_utf8", "not UTF-8")])
def test_default_sft_build_counts_and_skips_the_bad_record(capsys, tmp_path, bad_files, case, reason):
    out = tmp_path / "out"
    status, stdout, _ = run_cli(
        capsys, "prepare", "sft", "--config", SFT_CONFIG, "--input", str(bad_files[case]), "--out", str(out)
    )
    assert status == 0
    report = json.loads((out / "sft" / "report.json").read_text(encoding="utf-8"))
    assert report["skips"]["by_reason"].get(reason) == 1, report["skips"]
    assert reason in stdout  # the printed report names it too


def test_strict_cpt_build_names_the_malformed_patent_line(capsys, tmp_path):
    patents = tmp_path / "patents.jsonl"
    good = (REPO / "data/samples/patents_google.jsonl").read_text(encoding="utf-8").splitlines()[0]
    patents.write_text(good + "\n{not json\n", encoding="utf-8")
    config = yaml.safe_load((REPO / "configs/smollm2-135m/prepare_cpt.yaml").read_text(encoding="utf-8"))
    config["patents"]["files"] = [str(patents)]
    config_path = tmp_path / "cpt.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    status, _, err = run_cli(
        capsys, "prepare", "cpt", "--config", str(config_path), "--out", str(tmp_path / "out"), "--strict"
    )
    assert status == 2
    assert f"{patents}:2" in only_error_line(err)


def test_empty_predictions_file_is_an_error_naming_it(capsys, tmp_path, bad_files):
    status, _, err = run_cli(
        capsys, "evaluate", "--predictions", str(bad_files["empty"]), "--out", str(tmp_path / "ev")
    )
    assert status == 2
    assert str(bad_files["empty"]) in only_error_line(err)


def _recipe_with(tmp_path: Path, **changes) -> Path:
    recipe = yaml.safe_load((REPO / "configs/smollm2-135m/cpt.yaml").read_text(encoding="utf-8"))
    recipe.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def test_recipe_with_an_unknown_key_is_refused_before_launch(capsys, tmp_path):
    recipe = _recipe_with(tmp_path, lerning_rate=1e-4, output_dir=str(tmp_path / "out"))
    status, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert status == 2
    assert "(lerning_rate): unknown key" in err and f"{recipe}:" in err
    assert not (tmp_path / "out").exists()


def test_recipe_naming_a_missing_dataset_is_refused_before_launch(capsys, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text('{"coretech_cpt": {"file_name": "cpt.jsonl"}}')
    (tmp_path / "data" / "cpt.jsonl").write_text('{"text": "x"}\n')
    recipe = _recipe_with(tmp_path, dataset="coretech_cpt_typo", dataset_dir=str(tmp_path / "data"))
    status, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert status == 2
    assert "dataset 'coretech_cpt_typo' is not in" in err and "known: coretech_cpt" in err


def test_deepspeed_config_with_an_invalid_zero_stage_is_refused_before_launch(capsys, tmp_path):
    ds = json.loads((REPO / "configs/deepspeed/ds_z3_config.json").read_text())
    ds["zero_optimization"]["stage"] = 4
    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps(ds))
    recipe = _recipe_with(tmp_path, deepspeed=str(ds_path))
    status, _, err = run_cli(capsys, "train", str(recipe), "--dry-run")
    assert status == 2
    assert f"{ds_path} (zero_optimization): DeepSpeed rejects it" in err


def test_pipeline_with_a_missing_recipe_dataset_launches_nothing(capsys, tmp_path):
    pipeline = yaml.safe_load((REPO / "configs/pipelines/demo.yaml").read_text())
    recipe = _recipe_with(tmp_path, dataset="coretech_nowhere")
    pipeline["stages"][0]["recipe"] = str(recipe)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    status, _, err = run_cli(capsys, "run", str(path), "--run-dir", str(tmp_path / "run"))
    assert status == 2
    assert "dataset 'coretech_nowhere'" in err and "nothing was launched" in err
    assert not (tmp_path / "run" / "cpt").exists()
    assert not (tmp_path / "run" / "data" / "dataset_info.json").exists()  # failed before the hour of tokenising


# --- dataset files stay inside their dataset folder ------------------------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlink_in_folder"])
def test_dataset_files_outside_the_dataset_folder_are_refused(capsys, tmp_path, kind, embedded_model):
    secret = tmp_path / "outside" / "x.jsonl"
    secret.parent.mkdir()
    secret.write_text(ALPACA_OK, encoding="utf-8")
    data = tmp_path / "deep" / "data"
    data.mkdir(parents=True)
    file_name = {"dotdot": "../../outside/x.jsonl", "absolute": str(secret)}.get(kind, "link.jsonl")
    if kind == "symlink":
        (data / "link.jsonl").symlink_to(secret)
    if kind == "symlink_in_folder":
        (data / "set").mkdir()
        (data / "set" / "x.jsonl").symlink_to(secret)
        file_name = "set"
    (data / "dataset_info.json").write_text(json.dumps({"leak": {"file_name": file_name}}), encoding="utf-8")
    status, _, err = run_cli(
        capsys,
        "predict",
        "--model",
        str(embedded_model),  # only its tokenizer is loaded: the dataset is refused before the model
        "--dataset",
        "leak",
        "--dataset-dir",
        str(data),
        "--recipe",
        "configs/smollm2-135m/predict.yaml",
        "--backend",
        "hf",
        "--out",
        str(tmp_path / "p.jsonl"),
    )
    assert status == 2
    line = only_error_line(err)
    assert line.startswith(f"error: {data / 'dataset_info.json'}: dataset 'leak'"), line
    assert "outside the dataset folder" in line or "is absolute" in line
    assert not (tmp_path / "p.jsonl").exists()
