"""General-ability check: local benchmark files, lm_eval task configs, and a real run of the embedded model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from coretech.config import ConfigError
from coretech.errors import CoreTechError
from coretech.eval.general import (
    GeneralEvalConfig,
    general_table_markdown,
    load_general_config,
    read_questions,
    run_general_eval,
    write_task_configs,
)

SAMPLE = Path(__file__).parent / "fixtures" / "general"


def sample_config(**changes) -> GeneralEvalConfig:
    config = GeneralEvalConfig(
        benchmarks={name: SAMPLE / name for name in ("cmmlu", "ceval", "mmlu")},
        num_fewshot=2,
        batch_size=4,
        device="cpu",
        dtype="float32",
    )
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# --- reading the distributed layouts -----------------------------------------------------------


def test_reads_the_three_layouts() -> None:
    cmmlu = read_questions(SAMPLE / "cmmlu" / "test" / "computer_science.csv")  # header with index column
    assert len(cmmlu) == 4
    assert cmmlu[0].question == "1字节等于多少位"
    assert cmmlu[0].options == ("4", "8", "16", "32") and cmmlu[0].answer == "B"
    ceval = read_questions(SAMPLE / "ceval" / "dev" / "computer_network_dev.csv")
    assert ceval[0].explanation == "IPv4地址长度为32位。"
    mmlu = read_questions(SAMPLE / "mmlu" / "test" / "computer_security_test.csv")  # no header
    assert len(mmlu) == 4
    assert mmlu[1].question == "What is two-factor authentication?" and mmlu[1].answer == "B"


def test_reads_hugging_face_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "anatomy_test.jsonl"
    path.write_text(json.dumps({"question": "q?", "choices": ["a", "b", "c", "d"], "answer": 2}) + "\n")
    (question,) = read_questions(path)
    assert question.answer == "C" and question.options == ("a", "b", "c", "d")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("question,A,B,C,D,answer\nq,a,b,c,d,A\nq2,a,b,c,d,E\n", ":3: answer 'E' is not one of A, B, C, D"),
        ("question,A,B,answer\nq,a,b,A\n", ":2: needs question, A, B, C, D and answer"),
        ("question,A,B,C,D,answer\n", ": no questions"),
    ],
)
def test_bad_benchmark_rows_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x_test.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CoreTechError) as error:
        read_questions(path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value)


# --- task configs ------------------------------------------------------------------------------


def test_task_configs_are_lm_evals_own_with_local_data(tmp_path: Path) -> None:
    groups = write_task_configs(sample_config(), tmp_path)
    assert groups == {
        "cmmlu": ["cmmlu_local_computer_science"],
        "ceval": ["ceval_local_computer_network"],
        "mmlu": ["mmlu_local_computer_security"],
    }
    cmmlu = yaml.safe_load((tmp_path / "cmmlu" / "cmmlu_local_computer_science.yaml").read_text())
    # prompt and description come from lm_eval's cmmlu_computer_science task
    assert cmmlu["description"] == "以下是关于计算机科学的单项选择题，请直接给出正确答案的选项。\n\n"
    assert cmmlu["doc_to_text"].endswith("答案：")
    assert cmmlu["dataset_path"] == "json"
    assert "dataset_name" not in cmmlu
    files = cmmlu["dataset_kwargs"]["data_files"]
    assert set(files) == {"test", "dev"} and all(Path(f).is_absolute() for f in files.values())
    first = json.loads(Path(files["test"]).read_text(encoding="utf-8").splitlines()[0])
    assert first == {"Question": "1字节等于多少位", "A": "4", "B": "8", "C": "16", "D": "32", "Answer": "B"}

    ceval = yaml.safe_load((tmp_path / "ceval" / "ceval_local_computer_network.yaml").read_text())
    assert ceval["validation_split"] == "val" and set(ceval["dataset_kwargs"]["data_files"]) == {"val", "dev"}
    assert "计算机网络" in ceval["description"]

    mmlu = yaml.safe_load((tmp_path / "mmlu" / "mmlu_local_computer_security.yaml").read_text())
    assert "about computer security" in mmlu["description"]
    record = json.loads(Path(mmlu["dataset_kwargs"]["data_files"]["test"]).read_text().splitlines()[0])
    assert record["choices"] == ["SHA-256", "AES", "RSA", "TLS"] and record["answer"] == 0

    group = yaml.safe_load((tmp_path / "mmlu" / "_mmlu_local.yaml").read_text())
    assert group["group"] == "mmlu_local" and group["task"] == ["mmlu_local_computer_security"]
    assert group["aggregate_metric_list"][0]["weight_by_size"] is True


def test_subject_unknown_to_lm_eval_gets_the_benchmark_template(tmp_path: Path) -> None:
    folder = tmp_path / "mmlu"
    for split in ("dev", "test"):
        (folder / split).mkdir(parents=True)
        shutil.copy(
            SAMPLE / "mmlu" / split / f"computer_security_{split}.csv", folder / split / f"patent_law_{split}.csv"
        )
    write_task_configs(sample_config(benchmarks={"mmlu": folder}), tmp_path / "tasks")
    task = yaml.safe_load((tmp_path / "tasks" / "mmlu" / "mmlu_local_patent_law.yaml").read_text())
    assert task["description"] == "The following are multiple choice questions (with answers) about patent law.\n\n"
    assert task["doc_to_text"].endswith("Answer:")


def test_missing_or_short_few_shot_files_are_errors(tmp_path: Path) -> None:
    folder = tmp_path / "cmmlu"
    shutil.copytree(SAMPLE / "cmmlu", folder)
    with pytest.raises(CoreTechError, match="fewer than num_fewshot=6"):
        write_task_configs(sample_config(benchmarks={"cmmlu": folder}, num_fewshot=6), tmp_path / "t1")
    (folder / "dev" / "computer_science.csv").rename(folder / "dev" / "astronomy.csv")
    with pytest.raises(CoreTechError, match="no computer_science file for the 2-shot examples"):
        write_task_configs(sample_config(benchmarks={"cmmlu": folder}), tmp_path / "t2")
    (folder / "dev" / "astronomy.csv").unlink()
    with pytest.raises(CoreTechError, match=r"cmmlu/dev: no \.csv, \.jsonl or \.json files"):
        write_task_configs(sample_config(benchmarks={"cmmlu": folder}), tmp_path / "t5")
    # zero-shot needs no dev split at all
    assert write_task_configs(sample_config(benchmarks={"cmmlu": folder}, num_fewshot=0), tmp_path / "t3")
    with pytest.raises(CoreTechError, match="no test/ folder"):
        write_task_configs(sample_config(benchmarks={"cmmlu": tmp_path / "nowhere"}), tmp_path / "t4")


# --- settings ----------------------------------------------------------------------------------


def test_shipped_configs_load(repo_root: Path) -> None:
    config = load_general_config(repo_root / "configs" / "eval" / "general.yaml")
    assert config.num_fewshot == 5
    assert set(config.benchmarks) == {"cmmlu", "ceval", "mmlu"}
    assert load_general_config(SAMPLE / "general.yaml").device == "cpu"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("benchmarks: {gsm8k: x}\n", "unknown benchmark 'gsm8k'"),
        ("benchmarks: {mmlu: x}\nshots: 5\n", "unknown key 'shots'"),
        ("benchmarks: {mmlu: x}\nnum_fewshot: -1\n", "num_fewshot must be >= 0"),
    ],
)
def test_bad_settings_are_rejected(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "general.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_general_config(path)


def test_table_shows_the_change_against_the_first_model() -> None:
    results = {
        "base": {"cmmlu.acc": 0.40, "cmmlu.acc_stderr": 0.02, "cmmlu.n": 100},
        "cpt": {"cmmlu.acc": 0.37, "cmmlu.acc_stderr": None, "cmmlu.n": 100},
    }
    table = general_table_markdown(results, sample_config(benchmarks={"cmmlu": SAMPLE / "cmmlu"}))
    assert "| base | 0.400 ± 0.020 (100) |" in table
    assert "| cpt | 0.370 (100) Δ -3.0 pt |" in table


# --- a real run --------------------------------------------------------------------------------


def test_embedded_model_two_shot_on_the_local_sample(tmp_path: Path, embedded_model: Path) -> None:
    results = run_general_eval({"base": embedded_model}, sample_config(limit=2), tmp_path)
    row = results["base"]
    # limit=2 questions per subject, one subject per benchmark: every one of them scored
    assert (row["cmmlu.n"], row["ceval.n"], row["mmlu.n"]) == (2, 2, 2)
    for benchmark in ("cmmlu", "ceval", "mmlu"):
        assert row[f"{benchmark}.acc"] in (0.0, 0.5, 1.0)
    assert json.loads((tmp_path / "general.json").read_text()) == results
    assert "| base |" in (tmp_path / "general.md").read_text()
    raw = json.loads((tmp_path / "lm_eval" / "base.json").read_text())
    assert raw["configs"]["cmmlu_local_computer_science"]["num_fewshot"] == 2
    assert raw["results"]["mmlu_local_computer_security"]["acc,none"] == row["mmlu.acc"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no/such/model"], "error: model 'model': no/such/model is not a model folder"),
        (["--model", "models", "--benchmark", "gsm8k=x"], "error: --benchmark 'gsm8k=x': expected NAME=FOLDER"),
        (["--model", "models", "--num-fewshot", "-1"], "num_fewshot must be >= 0"),
    ],
)
def test_cli_errors_exit_2(tmp_path: Path, repo_root: Path, extra: list[str], message: str) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "coretech", "general-eval", "--config", str(SAMPLE / "general.yaml"),
         "--out", str(tmp_path), *extra],
        capture_output=True, text=True, cwd=repo_root, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
