"""Key technologies: extraction from the shapes answers take, normalisation, exact and fuzzy matching."""

from __future__ import annotations

import pytest

from coretech.eval.tech import (
    DEFAULT_FUZZY_THRESHOLD,
    extract_technologies,
    match_technologies,
    normalise_technology,
)


@pytest.mark.parametrize(
    ("answer", "names"),
    [
        # numbered, inline, Chinese separators
        ("关键技术：1. 智能芯片；2. 类脑计算；3. 边缘计算", ["智能芯片", "类脑计算", "边缘计算"]),
        ("关键技术:1.智能芯片 2.类脑计算", ["智能芯片", "类脑计算"]),
        ("Key technologies: 1. AI chips; 2. neuromorphic computing", ["AI chips", "neuromorphic computing"]),
        # other numbering styles
        ("1、激光雷达\n2、高精地图", ["激光雷达", "高精地图"]),
        ("1) 激光雷达\n2) 高精地图\n3) 5G通信", ["激光雷达", "高精地图", "5G通信"]),
        ("(1)深度学习 (2)强化学习 (3)知识图谱", ["深度学习", "强化学习", "知识图谱"]),
        ("（1）深度学习；（2）强化学习", ["深度学习", "强化学习"]),
        ("①智能芯片②类脑计算③存算一体", ["智能芯片", "类脑计算", "存算一体"]),
        ("一、深度学习\n二、强化学习", ["深度学习", "强化学习"]),
        # bulleted
        ("- 智能芯片\n- 类脑计算\n* 边缘计算\n• 存算一体", ["智能芯片", "类脑计算", "边缘计算", "存算一体"]),
        # bold names with explanations; headings and small talk around the list are ignored
        (
            "### 关键技术\n1. **智能芯片**：用于加速推理。\n2. **类脑计算**：模拟大脑。\n\n"
            "以上是主要技术，希望对您有帮助！",
            ["智能芯片", "类脑计算"],
        ),
        ("关键技术包括**智能芯片**和**类脑计算**。", ["智能芯片", "类脑计算"]),
        (
            "1. LiDAR perception: sensing the surroundings\n2. Path planning - choosing a route",
            ["LiDAR perception", "Path planning"],
        ),
        # 、 / ； / , separated lists with a heading
        ("智能芯片、类脑计算、边缘计算", ["智能芯片", "类脑计算", "边缘计算"]),
        ("关键技术：智能芯片；类脑计算", ["智能芯片", "类脑计算"]),
        ("该领域的关键技术包括智能芯片、类脑计算以及边缘计算。", ["智能芯片", "类脑计算", "边缘计算"]),
        ("关键技术：动力电池，电池管理系统，充电技术", ["动力电池", "电池管理系统", "充电技术"]),
        (
            "Key technologies: AI chips, neuromorphic computing, and edge computing",
            ["AI chips", "neuromorphic computing", "edge computing"],
        ),
        (
            "Key technologies include AI chips, neuromorphic computing and edge computing.",
            ["AI chips", "neuromorphic computing", "edge computing"],
        ),
        # full-width characters become half-width in the name
        ("关键技术：１. ＡＩ芯片；２. ５Ｇ通信", ["AI芯片", "5G通信"]),
        # symbols that carry meaning stay
        ("1. C++ 编译器\n2. Wi-Fi 6", ["C++ 编译器", "Wi-Fi 6"]),
        # details in brackets after a name are not part of it (the SFT answers' format)
        (
            "人工智能领域的关键核心技术：\n1. 智能芯片（神经网络处理器、存算一体芯片）\n2. 类脑计算",
            ["智能芯片", "类脑计算"],
        ),
        (
            "Key technologies of AI:\n1. AI chips (neural processors, in-memory computing)\n2. Edge AI",
            ["AI chips", "Edge AI"],
        ),
        ("Key technologies: AI chips (NPU, PIM), edge computing", ["AI chips", "edge computing"]),
        # a hierarchical list with direction and code lines under each item (the office table's layout)
        (
            "1.人工智能硬件平台\n1.智能芯片\n技术方向：神经网络处理器、存算一体芯片\n分类号：G06N3/063、H01L25/00",
            ["人工智能硬件平台", "智能芯片"],
        ),
        # "and" inside a single name is not a separator
        ("关键技术：Perception and decision", ["Perception and decision"]),
    ],
)
def test_extracts_listed_technologies(answer: str, names: list[str]) -> None:
    assert extract_technologies(answer) == names


def test_each_technology_once_by_normalised_name() -> None:
    assert extract_technologies("1. 智能芯片\n2. 类脑计算\n3. 智能 芯片\n4. ＡＩ chips\n5. ai-chips") == [
        "智能芯片",
        "类脑计算",
        "AI chips",
    ]


def test_no_technologies_in_small_talk_or_empty_text() -> None:
    assert extract_technologies("") == []
    assert extract_technologies("关键技术：") == []
    # a sentence longer than any technology name is not one
    assert extract_technologies("这是一段很长的没有任何列表结构的回答" * 6) == []


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ＡＩ芯片", "AI芯片"),  # width
        ("Deep Learning", "deep learning"),  # case
        ("deep-learning", "deep learning"),  # punctuation
        ("智能 芯片", "智能芯片"),  # whitespace
        ("“类脑计算”。", "类脑计算"),
    ],
)
def test_normalisation_makes_spellings_equal(a: str, b: str) -> None:
    assert normalise_technology(a) == normalise_technology(b)


def test_normalisation_keeps_meaningful_symbols() -> None:
    assert normalise_technology("C++") != normalise_technology("C")


def test_exact_matching_is_one_to_one_after_normalisation() -> None:
    assert match_technologies(["AI chips", "ai-chips", "类脑计算"], ["AI Chips", "边缘计算"]) == 1
    assert match_technologies([], ["智能芯片"]) == 0
    assert match_technologies(["智能芯片"], []) == 0


def test_fuzzy_matching_uses_the_threshold() -> None:
    predicted = ["类脑计算技术", "量子计算"]
    reference = ["类脑计算", "存算一体"]
    assert match_technologies(predicted, reference) == 0  # exact only
    # rapidfuzz ratio of 类脑计算 / 类脑计算技术 is 80
    assert match_technologies(predicted, reference, fuzzy_threshold=80) == 1
    assert match_technologies(predicted, reference, fuzzy_threshold=81) == 0


def test_fuzzy_matching_does_not_pair_different_fields() -> None:
    assert match_technologies(["深度学习"], ["强化学习"], DEFAULT_FUZZY_THRESHOLD) == 0
    assert match_technologies(["AI chip"], ["AI chips"], DEFAULT_FUZZY_THRESHOLD) == 1


def test_fuzzy_matching_prefers_the_best_pair() -> None:
    """Greedy by score: 'path planning' goes to 'path planning' even if listed after a weaker match."""
    predicted = ["path plannin", "path planning"]
    reference = ["path planning"]
    assert match_technologies(predicted, reference, 50) == 1
    assert match_technologies(["path plannin", "motion plannin"], ["path planning", "motion planning"], 80) == 2
