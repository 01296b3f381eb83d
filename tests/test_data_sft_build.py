"""The whole SFT build on the sample tables: files, registration, split table, stages, CLI, LLaMA-Factory loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coretech.cli import main
from coretech.config import ConfigError
from coretech.data.records import RecordError
from coretech.data.sft import SftDataConfig, build_sft_datasets, load_sft_config
from coretech.data.sft.split import normalise_domain

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "smollm2-135m" / "prepare_sft.yaml"
NAMES = [f"coretech_sft_{s}" for s in ("train", "test", "stage1", "stage2", "stage3", "shuffled")]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name repository-relative paths


def rules_only_config(**changes) -> SftDataConfig:
    """The demo settings without the model-based score (fast); the model path is tested separately."""
    config = load_sft_config(DEMO_CONFIG)
    config.difficulty.model = None
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, object]:
    import os

    out = tmp_path_factory.mktemp("sft")
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        report = build_sft_datasets(rules_only_config(), out)
    finally:
        os.chdir(cwd)
    return out, report


def test_datasets_are_written_and_registered(built):
    out, report = built
    info = json.loads((out / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(NAMES) <= set(info)
    for name in NAMES:
        entry = info[name]
        assert entry["formatting"] == "alpaca" and (out / entry["file_name"]).is_file()
    for k in (1, 2, 3):
        assert (out / "sft" / f"difficulty_stage{k}.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("split.md", "split.json", "report.json"):
        assert (out / "sft" / name).is_file()
    assert report.datasets["coretech_sft_stage2"] == "sft/stage2.jsonl"


def test_records_carry_alpaca_and_trace_fields(built):
    out, _ = built
    records = read_jsonl(out / "sft" / "train.jsonl") + read_jsonl(out / "sft" / "test.jsonl")
    assert 100 <= len(records) <= 400  # the demo trains ~8 steps of 8 per stage
    for record in records:
        assert {"instruction", "input", "output", "system", "domain", "task", "source", "origin"} <= set(record)
        assert record["task"] in ("ipc", "tech") and record["output"].strip()
        assert record["origin"].startswith("data/samples/key_tech_")
    assert {r["source"] for r in records} == {
        "key_tech_office",
        "key_tech_papers",
        "key_tech_office+key_tech_papers",  # 人工智能, 工业机器人, 智能网联汽车 are in both tables
        "key_tech_extra_alpaca",
    }
    assert {r["language"] for r in records} == {"zh", "en"}
    english = [r for r in records if r["language"] == "en" and r["source"] != "key_tech_extra_alpaca"]
    assert len(english) > len(records) / 2  # English is cheaper for SmolLM2's tokenizer
    drones = next(r for r in records if r["domain"] == "无人机" and r["task"] == "ipc" and r["language"] == "en")
    assert "B64U10/00: Type of UAV" in drones["output"]  # the title is the scheme's, in English


def test_a_domain_in_two_tables_gets_one_answer_per_question(built, tmp_path: Path):
    out, report = built
    records = read_jsonl(out / "sft" / "train.jsonl") + read_jsonl(out / "sft" / "test.jsonl")
    answers: dict = {}
    for record in records:
        answers.setdefault((record["instruction"], record["input"]), set()).add(record["output"])
    assert all(len(outputs) == 1 for outputs in answers.values())
    robots = next(r for r in records if r["domain"] == "工业机器人" and r["task"] == "tech" and r["language"] == "zh")
    assert robots["origin"] == "data/samples/key_tech_office.csv:16; data/samples/key_tech_papers.xlsx:6"
    assert "机器人控制系统" in robots["output"] and "视觉引导抓取" in robots["output"]  # office + papers
    assert report.notes["domains merged across sources (one answer per domain)"] == 3

    apart = build_sft_datasets(rules_only_config(merge_domains_across_sources=False), tmp_path)
    assert apart.notes["questions with different answers (one domain in several sources)"] > 0
    assert "key_tech_office+key_tech_papers" not in {row["source"] for row in apart.split_rows}


def test_no_domain_on_both_sides_and_split_table_matches_files(built):
    out, _ = built
    train, test = read_jsonl(out / "sft" / "train.jsonl"), read_jsonl(out / "sft" / "test.jsonl")
    aliases = {"blockchain": "区块链", "smart agriculture": "智慧农业"}
    train_keys = {normalise_domain(r["domain"], aliases) for r in train}
    test_keys = {normalise_domain(r["domain"], aliases) for r in test}
    assert test_keys and not train_keys & test_keys
    split = json.loads((out / "sft" / "split.json").read_text(encoding="utf-8"))
    for row in split["rows"]:
        assert row["train"] == sum(r["source"] == row["source"] and r["task"] == row["task"] for r in train)
        assert row["test"] == sum(r["source"] == row["source"] and r["task"] == row["task"] for r in test)
    table = (out / "sft" / "split.md").read_text(encoding="utf-8")
    assert "| Source | Task | Train | Test | Total |" in table
    assert f"| **all** | | **{len(train)}** | **{len(test)}** | **{len(train) + len(test)}** |" in table


def test_stages_cover_the_training_set_easy_to_hard(built):
    out, report = built
    train = read_jsonl(out / "sft" / "train.jsonl")
    stages = [read_jsonl(out / "sft" / f"stage{k}.jsonl") for k in (1, 2, 3)]
    key = lambda r: (r["instruction"], r["input"], r["output"])  # noqa: E731
    assert sorted(key(r) for s in stages for r in s) == sorted(key(r) for r in train)
    for stage in stages:
        scores = [r["difficulty"] for r in stage]
        assert scores == sorted(scores)
    assert max(r["difficulty"] for r in stages[0]) <= min(r["difficulty"] for r in stages[2])
    shuffled = read_jsonl(out / "sft" / "shuffled.jsonl")
    assert sorted(map(key, shuffled)) == sorted(key(r) for s in stages for r in s)
    assert [r["difficulty"] for r in shuffled] != sorted(r["difficulty"] for r in shuffled)
    assert [s["samples"] for s in report.stages] == [len(s) for s in stages]


def test_report_names_invalid_symbols_and_codes_missing_from_the_scheme(built):
    _, report = built
    assert report.invalid_symbols == [
        "data/samples/key_tech_papers.xlsx:9: 'GO6Q40/00' is not an IPC symbol",
        "data/samples/key_tech_papers.xlsx:10: 'G10L15-00' is not an IPC symbol",
    ]
    assert report.missing_from_scheme == ["data/samples/key_tech_papers.xlsx:9: G06Q20/00"]
    text = report.markdown()
    assert "'GO6Q40/00' is not an IPC symbol" in text and "G06Q20/00" in text
    assert "| coretech_sft_stage1 |" in text.replace("| 1 | coretech_sft_stage1 |", "| coretech_sft_stage1 |")
    assert report.as_dict()["invalid_symbols"] == report.invalid_symbols


def test_same_seed_same_files_other_seed_other_split(tmp_path: Path):
    first = build_sft_datasets(rules_only_config(), tmp_path / "a")
    again = build_sft_datasets(rules_only_config(), tmp_path / "b")
    other = build_sft_datasets(rules_only_config(seed=7), tmp_path / "c")
    for name in ("train", "test", "stage1", "stage3", "shuffled"):
        assert (tmp_path / "a" / "sft" / f"{name}.jsonl").read_bytes() == (
            tmp_path / "b" / "sft" / f"{name}.jsonl"
        ).read_bytes()
    assert first.test_domains == again.test_domains != other.test_domains


def test_cumulative_curriculum_and_register_merges_with_existing_datasets(tmp_path: Path):
    (tmp_path / "dataset_info.json").write_text(json.dumps({"coretech_cpt": {"file_name": "cpt.jsonl"}}))
    (tmp_path / "cpt.jsonl").write_text("{}\n")
    config = rules_only_config()
    config.curriculum.mode = "cumulative"
    report = build_sft_datasets(config, tmp_path)
    sizes = [s["samples"] for s in report.stages]
    assert sizes[0] < sizes[1] < sizes[2] == sum(r["train"] for r in report.split_rows)
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert "coretech_cpt" in info and "coretech_sft_stage3" in info
    shuffled = read_jsonl(tmp_path / "sft" / "shuffled.jsonl")
    assert len(shuffled) == sum(sizes)  # the ablation sees the curriculum's samples, replays included

    config.curriculum.stages = 2  # a rebuild with fewer stages leaves no stale stage registered
    build_sft_datasets(config, tmp_path)
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert "coretech_sft_stage2" in info and "coretech_sft_stage3" not in info and "coretech_cpt" in info
    assert not (tmp_path / "sft" / "stage3.jsonl").exists()
    assert not (tmp_path / "sft" / "difficulty_stage3.png").exists()


def test_strict_stops_at_the_first_invalid_symbol(tmp_path: Path):
    with pytest.raises(RecordError, match=r"key_tech_papers\.xlsx:9: 'GO6Q40/00' is not an IPC symbol"):
        build_sft_datasets(rules_only_config(), tmp_path, strict=True)


def test_config_errors_name_the_file_and_key(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [a.csv]\ncurriculum: {stages: 3, mood: disjoint}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml\.curriculum: unknown key 'mood'"):
        load_sft_config(bad)
    bad.write_text("inputs: [a.csv]\ndifficulty: {model_weight: 2}\n")
    with pytest.raises(ConfigError, match=r"model_weight must be in \[0, 1\]"):
        load_sft_config(bad)
    with pytest.raises(ConfigError, match="no SFT inputs"):
        load_sft_config(None)
    replaced = load_sft_config(DEMO_CONFIG, [Path("mine.csv")])
    assert [str(i.path) for i in replaced.sources] == ["mine.csv"]


@pytest.mark.parametrize("model", ["models/no-such-model", "/no/such/folder/model"])
def test_a_difficulty_model_that_cannot_be_loaded_is_a_config_error(tmp_path: Path, model: str):
    config = rules_only_config()
    config.difficulty.model = model
    with pytest.raises(ConfigError, match=rf"difficulty\.model: cannot load '{model}'"):
        build_sft_datasets(config, tmp_path)


def test_cli_builds_from_inputs_and_reports_bad_input_in_one_line(tmp_path: Path, capsys):
    out = tmp_path / "out"
    status = main(
        [
            "prepare",
            "sft",
            "--input",
            "data/samples/key_tech_office.csv",
            "--input",
            "data/samples/key_tech_papers.csv",
            "--out",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "| key_tech_papers | ipc |" in printed and "data/samples/key_tech_papers.csv:11: 'GO6Q40/00'" in printed
    assert (out / "sft" / "stage3.jsonl").is_file()

    assert main(["prepare", "sft", "--input", str(tmp_path / "nowhere.csv"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nowhere.csv'}: SFT input not found"

    broken = tmp_path / "broken.csv"
    broken.write_text("question,reply\na,b\n", encoding="utf-8")
    assert main(["prepare", "sft", "--input", str(broken), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "broken.csv:1" in error and "\n" not in error


def test_llamafactory_loads_the_registered_datasets(built, embedded_model: Path, tmp_path: Path):
    """LLaMA-Factory's own parser, loader and smollm2 template read the stage and test sets."""
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    out, _ = built
    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(embedded_model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "coretech_sft_stage1",
            "eval_dataset": "coretech_sft_test",
            "dataset_dir": str(out),
            "template": "smollm2",
            "cutoff_len": 384,
            "disable_shuffling": True,
            "output_dir": str(tmp_path / "lf"),
            "overwrite_cache": True,
            "preprocessing_num_workers": 1,
            "report_to": "none",
        }
    )
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    stage1 = read_jsonl(out / "sft" / "stage1.jsonl")
    test = read_jsonl(out / "sft" / "test.jsonl")
    assert len(module["train_dataset"]) == len(stage1)
    assert len(module["eval_dataset"]) == len(test)
    tokenizer = tokenizer_module["tokenizer"]
    first = tokenizer.decode(module["train_dataset"][0]["input_ids"])
    assert stage1[0]["instruction"] in first and stage1[0]["output"] in first  # order kept, nothing truncated
    assert all(len(ids) < 384 for ids in module["train_dataset"]["input_ids"])  # the demo cutoff keeps whole answers


@pytest.mark.slow
def test_demo_config_scores_with_the_real_model(prepared_demo_data: Path):
    """The demo settings as the pipeline runs them, model-based difficulty included."""
    report = json.loads((prepared_demo_data / "sft" / "report.json").read_text(encoding="utf-8"))
    assert report["difficulty"]["metric"] == "loss" and report["difficulty"]["model_scored"] > 0
    stage1 = read_jsonl(prepared_demo_data / "sft" / "stage1.jsonl")
    assert all(r["difficulty_model"] is not None and r["difficulty_model"] > 0 for r in stage1)
    for k in (1, 2, 3):
        assert (prepared_demo_data / "sft" / f"difficulty_stage{k}.png").is_file()
