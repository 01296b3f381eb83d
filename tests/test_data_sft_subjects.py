"""Subject and task of a question, over the phrasings of the reference release and of our templates."""

from __future__ import annotations

import pytest

from coretech.data.sft.qa import SUBJECT_TEMPLATES, TEMPLATES
from coretech.data.sft.subjects import domain_from_question, subject_from_question, task_from_text

ZH = [
    ("智能芯片涉及的IPC分类编号有哪些？", "智能芯片"),
    ("智能芯片涉及哪些IPC分类号？", "智能芯片"),
    ("智能芯片会涉及到哪些IPC分类号", "智能芯片"),
    ("智能芯片需要用到哪些IPC分类号", "智能芯片"),
    ("研发智能芯片需要用到哪些关键技术？", "智能芯片"),
    ("实现智能芯片会用到哪些关键技术？", "智能芯片"),
    ("人工智能硬件平台包含哪些关键技术？", "人工智能硬件平台"),
    ("人工智能领域的关键核心技术有哪些？", "人工智能"),
    ("新能源汽车产业有哪些关键核心技术？", "新能源汽车"),
    ("请列出区块链相关的IPC分类号及其含义。", "区块链"),
    ("区块链方面的专利通常归入哪些IPC分类？", "区块链"),
    ("作为专利分析师，请给出区块链领域对应的国际专利分类（IPC）号。", "区块链"),
    ("从专利布局的角度看，智慧医疗领域的关键技术有哪些？", "智慧医疗"),
    ("在智能芯片领域，有哪些关键技术？", "智能芯片"),
    ("关于智能芯片，它涉及哪些IPC分类号？", "智能芯片"),
    ("与智能芯片相关的IPC分类号有哪些？", "智能芯片"),
    ("哪些IPC分类号与智能芯片相关？", "智能芯片"),
    ("智能芯片的专利一般分在哪些IPC类别下？", "智能芯片"),
    ("“智能芯片”涉及哪些IPC分类号？", "智能芯片"),
    ("请问同步辐射光源需要用到哪些IPC分类号？", "同步辐射光源"),
    ("在线教育领域涉及哪些IPC分类号？", "在线教育"),
    ("智能芯片领域对应的国际专利分类（IPC）号是什么？", "智能芯片"),
]
EN = [
    ("Which IPC codes does the field of blockchain involve?", "blockchain"),
    ("List the IPC codes relevant to smart agriculture, with their titles.", "smart agriculture"),
    ("Under which IPC classes are patents on AI chips usually filed?", "AI chips"),
    ("What IPC codes are involved in AI chips?", "AI chips"),
    ("Which IPC classifications would AI chips involve?", "AI chips"),
    ("Which IPC codes would quantum communication need?", "quantum communication"),
    ("What are the key technologies of smart agriculture?", "smart agriculture"),
    ("What key technologies does the AI hardware platform include?", "AI hardware platform"),
    ("Which IPC codes are needed for AI chips?", "AI chips"),
    ("From a patent perspective, what are the key technologies in the field of AI chips?", "AI chips"),
    ("What are the core technologies behind AI chips?", "AI chips"),
    ("For AI chips, which IPC codes are relevant?", "AI chips"),
    ("Which key technologies does the field of artificial intelligence contain?", "artificial intelligence"),
]


@pytest.mark.parametrize(("question", "subject"), ZH + EN)
def test_subject_of_many_phrasings(question, subject):
    assert subject_from_question(question) == subject


@pytest.mark.parametrize(
    "question", ["下面的技术领域涉及哪些IPC分类号？", "Which IPC codes does this technical field involve?"]
)
def test_a_question_that_names_no_subject_gives_none(question):
    assert subject_from_question(question) == ""


@pytest.mark.parametrize("table", [TEMPLATES, SUBJECT_TEMPLATES])
def test_every_template_of_ours_gives_back_its_subject(table):
    for task in ("ipc", "tech"):
        for language, subject in (("zh", "量子通信"), ("en", "quantum communication")):
            for instruction, query in table[task][language]:
                if "{domain}" in query:
                    continue  # the subject is the input column
                question = instruction.format(domain=subject)
                assert domain_from_question(question) == subject, question
                assert task_from_text(question, "", has_codes=False) == task, question


def test_task_from_the_question_first_then_the_answer():
    assert task_from_text("该技术涉及哪些IPC分类号？", "", has_codes=False) == "ipc"  # IPC words win over 技术
    assert task_from_text("智能芯片包含哪些关键技术？", "**H01L** — 半导体器件", has_codes=True) == "tech"
    assert task_from_text("智能芯片呢？", "1. **H01L** — 半导体器件", has_codes=True) == "ipc"
    assert task_from_text("智能芯片呢？", "1. 神经网络处理器", has_codes=False) == "tech"
