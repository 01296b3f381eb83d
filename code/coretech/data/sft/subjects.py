"""The subject of a key-technology question, and its task, read from the question text.

Imported SFT files (the reference release's alpaca JSONL) carry no domain field: each answer is
asked several times in different phrasings (``智能芯片涉及的IPC分类编号有哪些？``, ``智能芯片会涉及到
哪些IPC分类号``, ``Which IPC codes would AI chips involve?``). The split keeps paraphrases of one
subject together only if every phrasing yields the same subject, so the phrasings are handled by
an explicit, tested list of patterns rather than one ad-hoc regular expression:

* Chinese: drop lead-in clauses (``请问``, ``作为专利分析师，``, ``从专利布局的角度看，``, ``关于…，``),
  then cut at the first predicate (``涉及``, ``会涉及到``, ``需要用到``, ``包含``, ``的关键技术``, ``相关``…);
* English: an ordered list of patterns around the subject (``the field of X``, ``relevant to X``,
  ``does X involve``…).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Literal

Task = Literal["ipc", "tech"]

_CJK = re.compile(r"[\u4e00-\u9fff]")

# Whole clauses that introduce a question without naming its subject.
_ZH_LEAD_CLAUSE = re.compile(
    r"^(?:从.{0,12}(?:角度|层面|方面|视角)(?:来看|看|出发|分析)?|作为.{0,12}|根据.{0,12}|按照.{0,12}"
    r"|请问|你好|您好|我想(?:了解|知道|问)|请(?:你|您)?(?:帮我)?|帮我|麻烦(?:你|您)?|问一下)$"
)
# Lead-in words at the start of the clause that names the subject.
_ZH_LEAD = re.compile(
    r"^(?:请问|请你|请您|请|帮我|麻烦你|我想(?:了解|知道)|想了解|能否|能不能|可以|"
    r"(?:列出|列举|给出|说明|介绍|总结|归纳|概括|分析|梳理|指出|说出|告诉我)(?:一下)?|"
    r"关于|对于|针对|围绕|研究|研发|实现|在(?![线役轨建])|就(?!业)|与|和(?!谐)|跟(?!踪)|同(?![步态位源质]))+"
)
# ``哪些IPC分类号与智能芯片相关？``: the subject sits inside the clause.
_ZH_INNER = re.compile(r"(?:与|和|跟|同|适用于|应用于|用于)(?P<s>[^与和跟同]+?)(?:相关|有关|对应|有联系|[？?。]|$)")
# Where the subject ends: the first predicate or question word after it.
_ZH_STOP = re.compile(
    r"(?:会涉及到|会涉及|涉及到|涉及|需要用到|需要|会用到|用到|主要包含|包含|主要包括|包括|主要有|囊括|涵盖|覆盖"
    r"|有哪些|有什么|是哪些|是什么|都有|有何|相关|有关|对应|方面|属于|归入|归属|所属|分在|划分|落在"
    r"|的(?:关键|核心|重点|主要|国际专利|IPC|专利|技术领域|相关)|(?:中|里|内)的|领域|行业|产业|时|哪些|哪几"
    r"|IPC|国际专利分类|[？?。!！])"
)
_ZH_SUFFIX = re.compile(r"(?:的|之|这一|这个|这项|该)?(?:技术领域|领域|行业|产业|方向)?$")
_PRONOUN = re.compile(r"^(?:它|其|该|这|此|那|下面|下列|以下|上述|如下)")
_QUESTION_FIRST = re.compile(r"^(?:哪些|哪几|什么|何种|哪种|哪类)")

_EN_END = (
    r"(?=\s+(?:involves?|contains?|includes?|covers?|depends?|usually|typically|generally|often|would|might|"
    r"could|needs?|requires?|uses?|with|is|are|filed|classified|found|listed|placed)\b|[?,.;:\n]|$)"
)
_EN_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"\b(?:field|domain|sector|area|industry) of (?:the )?(?P<s>.+?)" + _EN_END,
        r"technical field:\s*(?P<s>.+?)" + _EN_END,
        r"\b(?:does|do|would|will|might|could|can|should) (?:the )?(?P<s>(?!this\b|these\b|that\b).+?) "
        r"(?:field |domain |sector |industry |technology )?"
        r"(?:involve|include|contain|cover|use|need|require|touch on|comprise|rely on|fall under|belong to)\b",
        r"\b(?:relevant to|related to|associated with|linked to|patents on|patents in|patents for|patents about"
        r"|technologies of|technologies in|technologies for|technologies behind|technologies underlying"
        r"|codes for|codes of|classes for|classifications for|involved in|used in|needed for|needed in"
        r"|required for|required in|important for|important in|key to|essential to|about|behind|for|in|of) "
        r"(?:the )?(?P<s>(?!this\b|these\b|that\b).+?)" + _EN_END,
        r"^(?P<s>(?!which\b|what\b|list\b|name\b|give\b)[^?]+?) (?:involves?|includes?|contains?|covers?|uses?"
        r"|needs?|requires?)\b",
    )
]
_EN_TRAILING = re.compile(
    r"\s+(?:field|domain|sector|industry|area)$|\s*,?\s*(?:with|and) (?:their|its) (?:titles|descriptions)$", re.I
)


def subject_from_question(question: str) -> str:
    """The domain or technology a Chinese or English key-technology question asks about ('' if none).

    ``智能芯片涉及的IPC分类编号有哪些？`` → ``智能芯片``; ``作为专利分析师，请给出区块链领域对应的国际专利
    分类（IPC）号。`` → ``区块链``; ``Which IPC codes would AI chips involve?`` → ``AI chips``.
    """
    text = unicodedata.normalize("NFKC", question).strip()
    if _CJK.search(text):
        return _zh_subject(text)
    return _en_subject(text)


def domain_from_question(question: str) -> str:
    """The domain of a table's question (``人工智能领域的关键核心技术有哪些？`` → ``人工智能``): the
    subject, without a trailing 领域/行业/产业."""
    subject = subject_from_question(question)
    return re.sub(r"(?:技术)?(?:领域|行业|产业)$", "", subject).strip() or subject


def _zh_subject(text: str) -> str:
    for clause in re.split(r"[，,：:；;]", text):
        clause = clause.strip(" 。")
        if not clause or _ZH_LEAD_CLAUSE.match(clause):
            continue
        clause = _ZH_LEAD.sub("", clause)
        if not clause or _PRONOUN.match(clause):
            continue
        if _QUESTION_FIRST.match(clause):
            inner = _ZH_INNER.search(clause)
            if not inner:
                continue
            clause = inner["s"]
        stop = _ZH_STOP.search(clause, 1)
        subject = clause[: stop.start()] if stop else clause
        subject = _ZH_SUFFIX.sub("", subject).strip(" 的")
        subject = re.sub(r"^[\"'“‘《「]|[\"'”’》」]$", "", subject)
        if 0 < len(subject) <= 30 and not _ZH_LEAD_CLAUSE.match(subject):
            return subject
    return ""


def _en_subject(text: str) -> str:
    for pattern in _EN_PATTERNS:
        match = pattern.search(text)
        if match:
            subject = match["s"].strip().strip("\"'").strip()
            subject = _EN_TRAILING.sub("", subject).strip()
            subject = re.sub(r"^(?:the|a|an)\s+", "", subject, flags=re.IGNORECASE)
            if subject and len(subject) <= 80 and not re.search(r"\b(?:IPC|codes?|classes)\b", subject, re.I):
                return subject
    return ""


_IPC_WORDS = re.compile(
    r"IPC|分类号|分类编号|分类代码|专利分类|classification|patent class|\bclass(?:es)?\b|\bcodes?\b", re.I
)
_TECH_WORDS = re.compile(r"技术|technolog|techniques?", re.I)


def task_from_text(question: str, answer: str, has_codes: bool) -> Task:
    """IPC_TASK when the question asks for classification codes, TECH_TASK when it asks for
    technologies; a question that says neither is decided by the answer (codes in it → IPC_TASK).

    The question wins over the answer: a teacher's prose about technologies may mention a code,
    and an IPC question may say ``该技术``, which is why IPC words are checked first.
    """
    if _IPC_WORDS.search(question):
        return "ipc"
    if _TECH_WORDS.search(question):
        return "tech"
    return "ipc" if has_codes else "tech"
