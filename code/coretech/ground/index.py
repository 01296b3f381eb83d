"""A BM25 index from technical text to IPC codes: the retrieval baseline and the RAG candidates.

Documents come from two places, both tokenised by jieba (Chinese words; English words stay whole,
lower-cased): the IPC scheme's titles (every language it has, subclasses and main groups), one
document per code; and the training split's IPC_TASK records, grouped by subject, one document per
subject whose text is the subject, its questions and answers (technologies, code titles) and whose
codes are the ones its IPC_TASK answers list. A code's score is the best score of
any document that names it. BM25 itself is ``bm25s`` (sparse-matrix scoring: fast on the 75k-code
scheme).

The training split only: test subjects must never leak into the index (the test questions would
find their own answers).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from coretech.ipc import IpcScheme, extract_ipc_codes

# Scheme levels indexed by default; subgroups (most of the 75k codes) are too fine for a baseline.
LEVELS = ("subclass", "main_group")
_WORD = re.compile(r"[0-9A-Za-z\u4e00-\u9fff]")
# Words every question has; left in, they would tie every training subject with every question.
_QUESTION_WORDS = {
    "ipc", "codes", "code", "which", "does", "the", "field", "of", "involve", "list", "relevant", "to", "with",
    "their", "titles", "under", "classes", "are", "patents", "on", "usually", "filed", "this", "technical",
    "as", "a", "patent", "analyst", "give", "international", "classification", "for", "and", "in",
    "领域", "涉及", "哪些", "分类号", "请", "列出", "相关", "及其", "含义", "方面", "专利", "通常", "归入",
    "分类", "下面", "技术", "作为", "分析师", "给出", "对应", "国际", "专利分类", "的", "是", "和", "与",
}  # fmt: skip


def segment(text: str) -> list[str]:
    """Search tokens of ``text``: jieba words, lower-cased, without punctuation and question words."""
    import jieba

    tokens = []
    for word in jieba.lcut(text.lower()):
        word = word.strip()
        if word and _WORD.search(word) and word not in _QUESTION_WORDS:
            tokens.append(word)
    return tokens


@dataclass
class CodeDocument:
    """One indexed text and the codes it stands for; ``origin`` says where it came from."""

    text: str
    codes: list[str]
    origin: str
    subject: str | None = None  # the training subject it describes (None for scheme titles)


@dataclass
class TrainingSubject:
    """What the training split says about one subject: its questions, technologies and codes."""

    texts: list[str] = field(default_factory=list)
    codes: dict[str, None] = field(default_factory=dict)  # ordered set
    origin: str = ""


def scheme_documents(scheme: IpcScheme, levels: Iterable[str] = LEVELS) -> list[CodeDocument]:
    """One document per code of ``levels``: its titles in every language (and the code itself)."""
    wanted = set(levels)
    documents = []
    for key, entry in scheme.entries.items():
        if entry.code.level in wanted and entry.titles:
            documents.append(CodeDocument(" ".join(entry.titles.values()), [key], f"scheme:{key}"))
    return documents


def training_documents(records: Iterable[dict[str, Any]]) -> list[CodeDocument]:
    """One document per training subject that has IPC_TASK answers (alpaca records with ``task``)."""
    subjects: dict[str, TrainingSubject] = defaultdict(TrainingSubject)
    for record in records:
        subject = str(record.get("subject") or record.get("domain") or "").strip()
        if not subject:
            continue
        entry = subjects[subject]
        entry.origin = entry.origin or str(record.get("origin") or subject)
        question = f"{record.get('instruction', '')} {record.get('input', '')}"
        entry.texts.append(question)
        answer = str(record.get("output", ""))
        entry.texts.append(answer)  # technologies, and the codes' titles
        if record.get("task") == "ipc":
            for code in extract_ipc_codes(answer):
                entry.codes.setdefault(str(code))
    return [
        CodeDocument(" ".join([name, *entry.texts]), list(entry.codes), f"train:{entry.origin}", name)
        for name, entry in subjects.items()
        if entry.codes
    ]


class CodeIndex:
    """BM25 over code documents; :meth:`search` ranks codes for a question."""

    def __init__(self, documents: list[CodeDocument]) -> None:
        import bm25s

        self.documents = [d for d in documents if segment(d.text)]
        if not self.documents:
            raise ValueError("no documents to index (empty scheme and training split)")
        self.bm25 = bm25s.BM25()
        self.bm25.index([segment(d.text) for d in self.documents], show_progress=False)
        self.vocabulary = set(self.bm25.vocab_dict)
        self.codes_not_in_scheme: list[str] = []

    @classmethod
    def build(
        cls, scheme: IpcScheme, training_records: Iterable[dict[str, Any]], levels: Iterable[str] = LEVELS
    ) -> CodeIndex:
        """The scheme's documents and the training split's; a training code the scheme lacks is left
        out (counted in ``codes_not_in_scheme``), so retrieval answers only with existing codes."""
        training = training_documents(training_records)
        missing: dict[str, None] = {}
        for document in training:
            missing.update(dict.fromkeys(c for c in document.codes if c not in scheme))
            document.codes = [c for c in document.codes if c in scheme]
        index = cls(scheme_documents(scheme, levels) + [d for d in training if d.codes])
        index.codes_not_in_scheme = list(missing)
        return index

    def search(self, question: str, k: int, exclude_subject: str | None = None) -> list[tuple[str, float]]:
        """The ``k`` best codes for ``question`` with their scores, best first (fewer when fewer match).

        ``exclude_subject`` leaves that training subject's document out: a training question's
        candidates then come from other subjects, as a test question's do."""
        tokens = [t for t in segment(question) if t in self.vocabulary]
        if not tokens:
            return []
        scores = self.bm25.get_scores(tokens)
        best: dict[str, float] = {}
        for position in scores.argsort()[::-1]:
            score = float(scores[position])
            if score <= 0 or len(best) >= k:
                break
            document = self.documents[position]
            if exclude_subject is not None and document.subject == exclude_subject:
                continue
            for code in document.codes:
                if code not in best and len(best) < k:
                    best[code] = score
        return list(best.items())
