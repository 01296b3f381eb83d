"""Metrics against values worked out by hand, and ROUGE/BLEU against LLaMA-Factory's own code."""

from __future__ import annotations

import numpy as np
import pytest

from coretech.eval.metrics import (
    ipc_level_counts,
    precision_recall_f1,
    score_counts,
    score_ipc,
    score_tech,
    score_text,
    text_similarity,
)
from coretech.ipc import IpcScheme, parse_ipc


def codes(*written: str):
    return [parse_ipc(c) for c in written]


@pytest.fixture(scope="module")
def scheme(samples) -> IpcScheme:
    return IpcScheme.load([samples / "ipc_scheme_en.xml", samples / "ipc_titles_zh.csv"])


# Two answers worked by hand (subclass level):
#   1: predicted {G06F, G06N}, reference {G06F}             tp 1, pred 2, ref 1: P 1/2, R 1,   F1 2/3
#   2: predicted {H04W}, reference {H04W, H04L, H01M}        tp 1, pred 1, ref 3: P 1,   R 1/3, F1 1/2
#   micro: tp 2, pred 3, ref 4 -> P 2/3, R 1/2, F1 4/7;  macro: P 3/4, R 2/3, F1 (2/3 + 1/2) / 2 = 7/12
ANSWERS = [
    (codes("G06F16/35", "G06N3/08"), codes("G06F16/00")),
    (codes("H04W4/40"), codes("H04W4/40", "H04L67/10", "H01M10/0525")),
]


def test_precision_recall_f1_edge_cases() -> None:
    assert precision_recall_f1(1, 2, 1) == pytest.approx((0.5, 1.0, 2 / 3))
    assert precision_recall_f1(0, 0, 3) == (0.0, 0.0, 0.0)  # answered nothing
    assert precision_recall_f1(0, 2, 2) == (0.0, 0.0, 0.0)


def test_level_counts_cut_codes_to_the_level() -> None:
    pred, ref = ANSWERS[0]
    assert ipc_level_counts(pred, ref, "section") == (1, 1, 1)
    assert ipc_level_counts(pred, ref, "subclass") == (1, 2, 1)
    assert ipc_level_counts(pred, ref, "main_group") == (1, 2, 1)  # G06F16/35 counts as G06F16/00
    # the reference names no subgroup: the level is not scored for this answer
    assert ipc_level_counts(pred, ref, "subgroup") is None
    assert ipc_level_counts(codes("G06F16/00"), codes("G06F"), "main_group") is None


def test_micro_and_macro_differ_as_computed_by_hand() -> None:
    metrics = score_ipc(ANSWERS)
    assert metrics["ipc.subclass.n"] == 2
    assert metrics["ipc.subclass.precision"] == pytest.approx(2 / 3)
    assert metrics["ipc.subclass.recall"] == pytest.approx(1 / 2)
    assert metrics["ipc.subclass.f1"] == pytest.approx(4 / 7)
    assert metrics["ipc.subclass.macro_precision"] == pytest.approx(3 / 4)
    assert metrics["ipc.subclass.macro_recall"] == pytest.approx(2 / 3)
    assert metrics["ipc.subclass.macro_f1"] == pytest.approx(7 / 12)
    # section: both answers get their only section right
    assert metrics["ipc.section.f1"] == pytest.approx(1.0)
    # class: answer 2 misses H01 -> micro tp 2, pred 2, ref 3
    assert metrics["ipc.class.f1"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    # subgroup: only answer 2 has a subgroup in its reference
    assert metrics["ipc.subgroup.n"] == 1
    assert metrics["ipc.subgroup.precision"] == pytest.approx(1.0)
    assert metrics["ipc.subgroup.recall"] == pytest.approx(1 / 3)
    assert metrics["ipc.subgroup.f1"] == pytest.approx(0.5)
    assert metrics["ipc.n"] == 2


def test_answer_without_reference_codes_is_counted_not_scored() -> None:
    metrics = score_ipc([*ANSWERS, (codes("G06F"), [])])
    assert metrics["ipc.n"] == 3
    assert metrics["ipc.n_unscored"] == 1
    assert metrics["ipc.subclass.n"] == 2
    assert metrics["ipc.subclass.f1"] == pytest.approx(4 / 7)


def test_invalid_rate_against_the_scheme(scheme: IpcScheme) -> None:
    answers = [
        (codes("G06F16/00", "G06Z1/00"), codes("G06F16/00")),  # G06Z does not exist
        (codes("H04W4/99", "H04W"), codes("H04W4/40")),  # H04W4/99 is well formed but invented
    ]
    metrics = score_ipc(answers, scheme)
    assert metrics["ipc.n_predicted_codes"] == 4
    assert metrics["ipc.n_invalid_codes"] == 2
    assert metrics["ipc.invalid_rate"] == pytest.approx(0.5)
    assert score_ipc(answers)["ipc.invalid_rate"] is None  # no scheme, no verdict


def test_self_scoring_gives_one_everywhere(scheme: IpcScheme) -> None:
    refs = [ref for _, ref in ANSWERS] + [codes("A61B34/30", "B25J9/16")]
    metrics = score_ipc([(ref, ref) for ref in refs], scheme)
    for key, value in metrics.items():
        if key.endswith(("precision", "recall", "f1", "_ci_low", "_ci_high")):
            assert value == pytest.approx(1.0), key
    assert metrics["ipc.invalid_rate"] == 0.0
    no_codes = score_ipc([(codes(), codes("G06N3/08"))], scheme)
    assert no_codes["ipc.n_predicted_codes"] == 0
    assert no_codes["ipc.invalid_rate"] is None  # undefined, not "perfectly valid"


def test_tech_exact_and_fuzzy_by_hand() -> None:
    answers = [
        (["智能芯片", "类脑计算技术", "量子计算"], ["智能芯片", "类脑计算"]),  # exact 1, fuzzy 2
        ([], ["动力电池"]),  # nothing predicted
        (["AI chips"], []),  # reference lists nothing: counted, not scored
    ]
    metrics = score_tech(answers, fuzzy_threshold=80)
    assert metrics["tech.n"] == 3
    assert metrics["tech.n_unscored"] == 1
    # exact: micro tp 1, pred 3, ref 3
    assert metrics["tech.precision"] == pytest.approx(1 / 3)
    assert metrics["tech.recall"] == pytest.approx(1 / 3)
    assert metrics["tech.f1"] == pytest.approx(1 / 3)
    # exact macro: answer 1 P 1/3 R 1/2 F1 2/5; answer 2 all 0
    assert metrics["tech.macro_precision"] == pytest.approx(1 / 6)
    assert metrics["tech.macro_recall"] == pytest.approx(1 / 4)
    assert metrics["tech.macro_f1"] == pytest.approx(1 / 5)
    # fuzzy: micro tp 2, pred 3, ref 3
    assert metrics["tech.fuzzy.f1"] == pytest.approx(2 / 3)
    assert metrics["tech.fuzzy_threshold"] == 80


def test_nothing_to_score_gives_none_not_zero() -> None:
    metrics = score_tech([])
    assert metrics["tech.n"] == 0
    assert metrics["tech.f1"] is None
    assert metrics["tech.f1_ci_low"] is None
    assert score_text([])["rouge_l"] is None


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(60):
        n_ref = int(rng.integers(1, 5))
        n_pred = int(rng.integers(0, 5))
        counts.append((int(rng.integers(0, min(n_ref, n_pred) + 1)), n_pred, n_ref))
    first = score_counts(counts, resamples=500, seed=3)
    again = score_counts(counts, resamples=500, seed=3)
    assert first == again
    assert first["f1_ci_low"] < first["f1"] < first["f1_ci_high"]
    assert first["macro_f1_ci_low"] < first["macro_f1"] < first["macro_f1_ci_high"]
    # more answers -> narrower interval
    wide = score_counts(counts[:10], resamples=500, seed=3)
    assert (wide["f1_ci_high"] - wide["f1_ci_low"]) > (first["f1_ci_high"] - first["f1_ci_low"])


def test_bootstrap_of_one_answer_is_the_point() -> None:
    result = score_counts([(1, 2, 1)])
    assert result["f1_ci_low"] == result["f1_ci_high"] == pytest.approx(2 / 3)


def test_text_similarity_of_identical_answers_is_100() -> None:
    text = "该领域涉及的IPC分类号：G06N3/08（学习方法）；G06F16/00（信息检索）"
    assert text_similarity(text, text) == {"rouge-1": 100.0, "rouge-2": 100.0, "rouge-l": 100.0, "bleu-4": 100.0}
    assert text_similarity("", text)["rouge-l"] == 0.0


def test_text_metrics_match_llamafactory_compute_similarity(embedded_model) -> None:
    """The same pairs through LLaMA-Factory's ComputeSimilarity (token ids in, as in training) and
    through score_text (text in) give the same numbers (LLaMA-Factory's on the 0-100 scale)."""
    from llamafactory.extras.constants import IGNORE_INDEX
    from llamafactory.train.sft.metric import ComputeSimilarity
    from transformers import AutoTokenizer, EvalPrediction

    pairs = [
        (
            "该领域涉及的IPC分类号：G06N3/08（学习方法）",
            "该领域涉及的IPC分类号：G06N3/08（学习方法）；G06F16/00（信息检索）",
        ),
        ("关键技术：1. 智能芯片；2. 量子计算", "关键技术：1. 智能芯片；2. 类脑计算；3. 存算一体"),
        ("IPC codes: G06N3/08 (Learning methods)", "IPC codes: B60W60/00; G05D1/00"),
        ("完全无关的回答。", "Key technologies: 1. Lidar perception; 2. Path planning"),
    ]
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    encoded_pred = [tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs]
    encoded_ref = [tokenizer.encode(r, add_special_tokens=False) for _, r in pairs]
    assert [tokenizer.decode(ids) for ids in encoded_pred] == [p for p, _ in pairs]  # lossless round trip
    width = max(map(len, encoded_pred + encoded_ref))
    padded = [ids + [IGNORE_INDEX] * (width - len(ids)) for ids in encoded_pred]
    padded_ref = [ids + [IGNORE_INDEX] * (width - len(ids)) for ids in encoded_ref]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    theirs = ComputeSimilarity(tokenizer=tokenizer)(
        EvalPrediction(predictions=np.array(padded), label_ids=np.array(padded_ref))
    )
    ours = score_text(pairs)
    for key in ("rouge-1", "rouge-2", "rouge-l", "bleu-4"):
        assert ours[key.replace("-", "_")] * 100 == pytest.approx(theirs[key], abs=1e-9), key
    assert 0 < ours["rouge_l"] < 1
