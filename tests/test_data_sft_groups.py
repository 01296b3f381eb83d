"""Leak-free splits and the phrasing test set, on the reference release's format (fixtures with invented
content) through the real `coretech prepare sft` command, and on the sample tables."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from coretech.cli import main
from coretech.data.sft.groups import (
    group_records,
    hold_out_phrasings,
    leaked_answers,
    normalise_answer,
    subject_key,
)
from coretech.data.sft.split import split_by_domain

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests" / "fixtures" / "sft_reference"
ALIASES = {"quantum communication": "量子通信", "machine vision": "机器视觉"}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class Row:
    """The fields grouping reads, as the build's records have them."""

    instruction: str
    output: str
    domain: str
    subject: str = ""
    input: str = ""
    task: str = "ipc"


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    import os

    out = tmp_path_factory.mktemp("reference")
    cwd = Path.cwd()
    os.chdir(REPO)
    try:
        assert main(["prepare", "sft", "--config", str(REFERENCE / "prepare_sft.yaml"), "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    return out


def test_prepare_sft_imports_the_reference_format_with_subject_and_task(imported):
    records = [r for side in ("train", "test", "test_phrasing") for r in read_jsonl(imported / "sft" / f"{side}.jsonl")]
    fixture = [r for f in sorted(REFERENCE.glob("*.jsonl")) for r in read_jsonl(f)]
    assert len(records) == len(fixture)  # nothing dropped
    by_question = {r["instruction"]: r for r in records}
    assert by_question["量子通信会涉及到哪些IPC分类号"]["domain"] == "量子通信"
    assert by_question["量子通信会涉及到哪些IPC分类号"]["task"] == "ipc"
    assert by_question["固态电池需要用到哪些关键技术"]["task"] == "tech"
    assert by_question["哪些IPC分类号与脑机接口相关？"]["domain"] == "脑机接口"
    assert by_question["Which IPC codes would quantum communication need?"]["domain"] == "quantum communication"
    # every phrasing of one answer got the same subject
    subjects: dict[str, set[str]] = {}
    for record in records:
        subjects.setdefault(record["output"], set()).add(subject_key(record["domain"], ALIASES))
    assert all(len(s) == 1 for s in subjects.values()), subjects


def test_paraphrases_and_shared_answers_never_straddle(imported):
    train = read_jsonl(imported / "sft" / "train.jsonl")
    test = read_jsonl(imported / "sft" / "test.jsonl")
    assert train and test
    train_answers = {normalise_answer(r["output"]) for r in train}
    assert not {normalise_answer(r["output"]) for r in test} & train_answers
    codes = lambda r: frozenset(c for c in r["output"].split("**")[1::2])  # noqa: E731 -- bold codes
    train_code_sets = {codes(r) for r in train if r["task"] == "ipc"}
    assert not {codes(r) for r in test if r["task"] == "ipc"} & train_code_sets
    train_subjects = {subject_key(r["domain"], ALIASES) for r in train}
    assert not {subject_key(r["domain"], ALIASES) for r in test} & train_subjects
    # the near-duplicate answer of the second release file sits with its original
    near = next(r for r in train + test if r["instruction"].startswith("全固态锂电池"))
    original = next(r for r in train + test if r["instruction"] == "固态电池涉及哪些IPC分类号？")
    assert (near in train) == (original in train)
    assert leaked_answers(train_rows(train), train_rows(test)) == []
    assert "test answers identical or near-identical to a train answer: 0" in (imported / "sft" / "split.md").read_text(
        encoding="utf-8"
    )


def train_rows(records: list[dict]) -> list[Row]:
    return [Row(r["instruction"], r["output"], r["domain"], r.get("subject", "")) for r in records]


def test_phrasing_test_set_holds_unseen_phrasings_of_trained_answers(imported):
    train = read_jsonl(imported / "sft" / "train.jsonl")
    held = read_jsonl(imported / "sft" / "test_phrasing.jsonl")
    assert held
    trained_questions = {(r["instruction"], r["input"]) for r in train}
    trained_answers = {r["output"] for r in train}
    for record in held:
        assert (record["instruction"], record["input"]) not in trained_questions
        assert record["output"] in trained_answers
    info = json.loads((imported / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["coretech_sft_test_phrasing"]["file_name"] == "sft/test_phrasing.jsonl"
    assert info["coretech_sft_test"]["file_name"] == "sft/test.jsonl"
    text = (imported / "sft" / "split.md").read_text(encoding="utf-8")
    assert "`coretech_sft_test_phrasing` (seen subjects asked in unseen phrasings" in text
    assert f"n = {len(held)}" in text


def test_naive_domain_split_leaks_and_the_check_counts_it():
    """The check is computed: a split by the guessed question text puts paraphrases on both sides."""
    answer = "**H01M10/0562** — 固体电解质"
    rows = [Row(q, answer, q) for q in ("固态电池涉及哪些IPC分类号？", "固态电池需要用到哪些IPC分类号")]
    rows += [Row("柔性显示涉及哪些IPC分类号？", "**G09F9/30** — 柔性显示装置", "柔性显示")]
    naive = split_by_domain(rows, 0.34, 0)
    assert leaked_answers(naive.train, naive.test) or leaked_answers(naive.test, naive.train)
    assert len(set(group_records(rows, None, 0.8).group_of)) == 2  # the two paraphrases are one group


def test_grouping_joins_by_subject_codes_answer_and_near_duplicates():
    rows = [
        Row("a", "量子通信的关键技术：量子密钥分发、量子中继", "量子通信"),
        Row("b", "Key technologies: QKD and quantum repeaters", "quantum communication"),  # alias of a
        Row("c", "1. **H04L9/08**\n2. **G06N10/00**", "x"),
        Row("d", "G06N10/00 and H04L9/08, see above", "y"),  # same code set as c
        Row("e", "固态电池的关键技术包括固态电解质、界面工程与锂金属负极三个方面。", "固态电池"),
        Row("f", "固态电池的关键技术包括固态电解质、界面工程和锂金属负极三个方面。", "全固态锂电池"),  # near e
        Row("g", "柔性显示", "柔性显示"),
    ]
    grouping = group_records(rows, ALIASES, near_threshold=0.5)
    group = grouping.group_of
    assert group[0] == group[1] and group[2] == group[3] and group[4] == group[5]
    assert len({group[0], group[2], group[4], group[6]}) == 4
    assert grouping.joined_by["near"] >= 1 and grouping.joined_by["codes"] >= 1
    exact_only = group_records(rows, ALIASES, near_threshold=1.0).group_of
    assert exact_only[4] != exact_only[5]


def test_held_out_phrasing_is_seeded_and_never_the_only_one():
    rows = [Row(f"问法{i}", "答案A", "甲") for i in range(3)] + [Row("唯一问法", "答案B", "乙")]
    kept, held = hold_out_phrasings(rows, 1.0, 1, None)
    assert len(held) == 1 and held[0].output == "答案A" and len(kept) == 3
    assert hold_out_phrasings(rows, 1.0, 1, None)[1] == held
    assert hold_out_phrasings(rows, 0.0, 1, None) == (rows, [])
