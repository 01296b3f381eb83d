"""Difficulty scores (rule-based and with the real embedded model) and the curriculum schedule."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest

from coretech.data.sft.curriculum import (
    ModelScorer,
    answer_features,
    approximate_tokens,
    percentile_ranks,
    plot_stage_histogram,
    ranks_within_groups,
    rule_scores,
    schedule_stages,
)

WEIGHTS = {"items": 1.0, "depth": 1.0, "tokens": 1.0}


def test_percentile_ranks_with_ties():
    assert percentile_ranks([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert percentile_ranks([1.0, 1.0, 2.0]) == [0.25, 0.25, 1.0]
    assert percentile_ranks([5.0]) == [0.5]
    assert percentile_ranks([]) == []


def test_answer_features_count_codes_depth_technologies_and_tokens():
    ipc = answer_features("IPC codes:\nG06N3/063: x\nG06N3/08: y\nB25J: z", "ipc", approximate_tokens)
    assert ipc.items == 3
    assert ipc.depth == pytest.approx((4 + 4 + 2) / 3)  # two subgroups and a subclass
    tech = answer_features("关键技术：\n1. 智能芯片\n2. 深度学习框架\n3. 自然语言处理", "tech", approximate_tokens)
    assert (tech.items, tech.depth) == (3, 0.0)
    prose = answer_features("包括智能芯片、深度学习框架、知识图谱和大模型", "tech", approximate_tokens)
    assert prose.items == 3
    assert approximate_tokens("智能芯片 AI chips") == 6


def test_rule_scores_rank_more_and_deeper_codes_as_harder_within_each_task():
    answers = [
        ("ipc", "A:\nB25J: x"),
        ("ipc", "A:\nG06N3/063: x\nG06N3/08: y\nG06N3/045: z"),
        ("ipc", "A:\nG06N3/00: x\nH04W4/00: y"),
        ("tech", "T:\n1. a"),
        ("tech", "T:\n1. a\n2. b\n3. c\n4. d"),
    ]
    features = [answer_features(text, task, approximate_tokens) for task, text in answers]
    scores = rule_scores(features, [task for task, _ in answers], WEIGHTS)
    assert scores[0] < scores[2] < scores[1]
    assert scores[3] < scores[4]
    assert scores[1] == 1.0 and scores[4] == 1.0  # ranked within the task: each task has its hardest at 1
    only_tokens = rule_scores(features, [t for t, _ in answers], {"items": 0, "depth": 0, "tokens": 1})
    assert only_tokens[1] == 1.0


def test_ranks_within_groups_and_languages_ranked_apart():
    assert ranks_within_groups([5.0, 1.0, 50.0, 10.0], ["zh", "en", "zh", "en"]) == [0.0, 0.0, 1.0, 1.0]
    long_zh = answer_features("技术：\n1. 智能芯片与存算一体\n2. 深度学习框架", "tech", approximate_tokens)
    short_zh = answer_features("技术：\n1. 芯片\n2. 框架", "tech", approximate_tokens)
    long_en = answer_features(
        "T:\n1. AI chips and compute in memory\n2. deep learning frameworks", "tech", approximate_tokens
    )
    short_en = answer_features("T:\n1. chips\n2. frameworks", "tech", approximate_tokens)
    features = [long_zh, short_zh, long_en, short_en]
    scores = rule_scores(features, ["tech"] * 4, {"items": 0, "depth": 0, "tokens": 1}, ["zh", "zh", "en", "en"])
    assert scores == [1.0, 0.0, 1.0, 0.0]  # the longer answer is the harder one in each language


def difficulties(n: int = 30, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.random(), 1) for _ in range(n)]  # rounded: plenty of ties


def test_disjoint_stages_partition_the_data_easy_to_hard_and_keep_order():
    scores = difficulties()
    stages = schedule_stages(scores, 3, "disjoint", "easy_to_hard", seed=1)
    assert [len(s) for s in stages] == [10, 10, 10]
    assert sorted(i for s in stages for i in s) == list(range(30))
    for stage in stages:
        assert [scores[i] for i in stage] == sorted(scores[i] for i in stage)
    for easier, harder in itertools.pairwise(stages):
        assert max(scores[i] for i in easier) <= min(scores[i] for i in harder)


def test_cumulative_stages_replay_the_easier_ones():
    scores = difficulties()
    disjoint = schedule_stages(scores, 3, "disjoint", "easy_to_hard", seed=1)
    cumulative = schedule_stages(scores, 3, "cumulative", "easy_to_hard", seed=1)
    assert [len(s) for s in cumulative] == [10, 20, 30]
    assert set(cumulative[0]) == set(disjoint[0])
    assert set(cumulative[1]) == set(disjoint[0]) | set(disjoint[1])
    assert set(cumulative[2]) == set(range(30))
    assert [scores[i] for i in cumulative[2]] == sorted(scores)


def test_shuffled_order_keeps_members_and_is_seeded():
    scores = difficulties()
    ordered = schedule_stages(scores, 3, "disjoint", "easy_to_hard", seed=1)
    shuffled = schedule_stages(scores, 3, "disjoint", "shuffled", seed=1)
    assert [set(s) for s in shuffled] == [set(s) for s in ordered]
    assert shuffled != ordered
    assert shuffled == schedule_stages(scores, 3, "disjoint", "shuffled", seed=1)


def test_uneven_sizes_and_one_stage():
    assert [len(s) for s in schedule_stages([0.0] * 10, 3, "disjoint", "easy_to_hard", 0)] == [3, 4, 3]
    assert schedule_stages([0.3, 0.1, 0.2], 1, "disjoint", "easy_to_hard", 0) == [[1, 2, 0]]
    with pytest.raises(ValueError):
        schedule_stages([0.1], 0, "disjoint", "easy_to_hard", 0)


def test_histogram_is_a_png(tmp_path: Path):
    path = tmp_path / "h.png"
    plot_stage_histogram(path, [0.1, 0.2, 0.2], [0.1, 0.2, 0.2, 0.8, 0.9], "stage 1")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the real model --------------------------------------------------------------------------

PAIRS = [
    ("Which IPC codes does the field of drones involve?", "IPC codes for drones:\nB64U10/00: Type of UAV"),
    (
        "List the key technologies of lidar.",
        "Key technologies of lidar:\n1. point cloud processing\n2. solid-state lidar",
    ),
    ("人工智能领域涉及哪些IPC分类号？", "人工智能领域涉及的IPC分类号：\nG06N3/08：学习方法"),
    ("Say hello.", "Hello! How can I help you today?"),
]


@pytest.fixture(scope="module")
def scorer(embedded_model: Path) -> ModelScorer:
    return ModelScorer(embedded_model, max_length=128, dtype="float32")


def test_model_losses_do_not_depend_on_batching_or_padding(scorer: ModelScorer):
    one_by_one = scorer.answer_losses(PAIRS, batch_size=1)
    batched = scorer.answer_losses(PAIRS, batch_size=4)
    assert all(math.isfinite(x) and x > 0 for x in one_by_one)
    assert batched == pytest.approx(one_by_one, rel=1e-3)


def test_model_finds_a_fluent_reply_easier_than_noise(scorer: ModelScorer):
    fluent, noise = scorer.answer_losses(
        [("Say hello.", "Hello! How can I help you today?"), ("Say hello.", "zq7 ;; Xw_ plo0 Gk'' 9vv# mmr")]
    )
    assert fluent < noise


def test_ifd_is_the_ratio_of_conditional_to_unconditional_loss(scorer: ModelScorer):
    conditional = scorer.scores(PAIRS, "loss")
    ifd = scorer.scores(PAIRS, "ifd")
    alone = scorer.answer_losses([("", answer) for _, answer in PAIRS])
    assert ifd == pytest.approx([c / a for c, a in zip(conditional, alone, strict=True)], rel=1e-4)
    # A question that determines its answer makes the answer much easier than without it.
    (copy,) = scorer.scores(
        [("Repeat exactly: purple elephants dance at midnight", "purple elephants dance at midnight")], "ifd"
    )
    assert copy < 0.8


def test_prompt_is_cut_from_the_left_to_fit(embedded_model: Path):
    short = ModelScorer(embedded_model, max_length=24, dtype="float32")
    long_question = "Please answer carefully. " * 40 + "Say hello."
    (loss,) = short.answer_losses([(long_question, "Hello! How can I help you today?")])
    assert math.isfinite(loss)
