"""The retrieval baseline as a prediction backend: answers in the SFT answer layout, no model.

``coretech predict --backend retrieval`` encodes prompts like every backend (so its
``generated_predictions.jsonl`` lines match the model runs' prompt by prompt and ``coretech
evaluate`` scores it as one more run) and answers each question from :class:`CodeIndex`:

* IPC_TASK: the header and one ``code：title`` line per retrieved code (top ``k``), as the SFT
  answers are written (``coretech.data.sft.qa.render_ipc_answer``);
* TECH_TASK: the technologies of the most similar training subject (BM25 over the training
  split's TECH_TASK answers in the question's language), under the asked subject's header; an empty
  answer when nothing matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coretech.data.records import Record, SkipLog, iter_records
from coretech.errors import CoreTechError
from coretech.ground.index import CodeIndex, segment
from coretech.ipc import IpcScheme, parse_ipc
from coretech.log import get_logger

if TYPE_CHECKING:
    from llamafactory.data.parser import DatasetAttr

    from coretech.infer.prompts import EncodedPrompt

log = get_logger(__name__)
TRAIN_DATASET = "coretech_sft_train"
_CJK = re.compile(r"[\u4e00-\u9fff]")


def question_of(record: Record, attr: DatasetAttr) -> str:
    """The user's last question of a record, in alpaca (instruction + input) or sharegpt/openai layout."""
    data = record.data
    if attr.formatting == "alpaca":
        return f"{data.get(attr.prompt) or ''}\n{data.get(attr.query) or ''}".strip()
    messages = data.get(attr.messages) or []
    users = [m for m in messages if isinstance(m, dict) and m.get(attr.role_tag) == attr.user_tag]
    return str(users[-1].get(attr.content_tag, "")) if users else ""


def training_records(dataset_dir: Path, dataset: str = TRAIN_DATASET) -> list[dict[str, Any]]:
    """The training split's records (the index must never see test subjects)."""
    from coretech.infer.prompts import dataset_files

    _, files = dataset_files(dataset_dir, dataset)
    skips = SkipLog()
    return [record.data for path in files for record in iter_records(path, skips)]


def render_codes(subject: str, codes: list[str], language: str, scheme: IpcScheme) -> str:
    """The SFT IPC answer for ``codes`` (header, then ``code：title`` lines in scheme order)."""
    from coretech.data.sft.cells import TableCode
    from coretech.data.sft.qa import Glossary, render_ipc_answer

    table_codes = [TableCode(parse_ipc(code)) for code in codes]
    return render_ipc_answer(subject, table_codes, language, scheme, Glossary(), with_titles=True)


class TechIndex:
    """BM25 over the training split's TECH_TASK answers, per language: a nearest-subject lookup."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        import bm25s

        self.answers: dict[str, list[str]] = {}
        self.bm25: dict[str, Any] = {}
        grouped: dict[str, list[tuple[str, str]]] = {}
        for record in records:
            if record.get("task") != "tech":
                continue
            language = "zh" if _CJK.search(str(record.get("instruction", "")) + str(record.get("input", ""))) else "en"
            text = f"{record.get('subject') or record.get('domain') or ''} {record.get('output', '')}"
            grouped.setdefault(language, []).append((text, str(record.get("output", ""))))
        for language, pairs in grouped.items():
            tokenised = [segment(text) for text, _ in pairs]
            kept = [(tokens, answer) for tokens, (_, answer) in zip(tokenised, pairs, strict=True) if tokens]
            if not kept:
                continue
            index = bm25s.BM25()
            index.index([tokens for tokens, _ in kept], show_progress=False)
            self.bm25[language] = index
            self.answers[language] = [answer for _, answer in kept]

    def technologies(self, question: str, language: str) -> list[str]:
        index = self.bm25.get(language)
        if index is None:
            return []
        tokens = [t for t in segment(question) if t in index.vocab_dict]
        if not tokens:
            return []
        scores = index.get_scores(tokens)
        best = int(scores.argmax())
        if scores[best] <= 0:
            return []
        lines = self.answers[language][best].splitlines()[1:]  # without the training subject's header
        return [re.sub(r"^\d+\.\s*", "", line) for line in lines if line.strip()]


def render_technologies(subject: str, technologies: list[str], language: str) -> str:
    from coretech.data.sft.qa import HEADERS

    if not technologies:
        return ""
    header = HEADERS["tech"][language].format(domain=subject)
    return "\n".join([header, *(f"{n}. {name}" for n, name in enumerate(technologies, 1))])


class RetrievalGenerator:
    """Answers encoded prompts from the indexes; the prediction loop calls :meth:`generate`."""

    name = "retrieval"

    def __init__(
        self,
        index: CodeIndex,
        tech: TechIndex,
        scheme: IpcScheme,
        questions: dict[tuple[int, ...], dict[str, Any]],
        k: int,
    ) -> None:
        if k < 1:
            raise CoreTechError(f"retrieval k must be at least 1, got {k}")
        self.index, self.tech, self.scheme, self.questions, self.k = index, tech, scheme, questions, k

    @classmethod
    def for_dataset(
        cls,
        dataset_dir: Path,
        records: list[Record],
        attr: DatasetAttr,
        encoded: list[EncodedPrompt],
        scheme_files: list[Path] | None,
        k: int,
    ) -> RetrievalGenerator:
        from coretech.infer.constrain import load_scheme

        scheme = load_scheme(scheme_files)
        train = training_records(dataset_dir)
        by_location = {record.location: record for record in records}
        questions = {}
        for item in encoded:
            record = by_location[item.location]
            questions[tuple(item.prompt_ids)] = {**record.data, "_question": question_of(record, attr)}
        index = CodeIndex.build(scheme, train)
        if index.codes_not_in_scheme:
            log.warning(
                "retrieval: %d training codes are not in the IPC scheme and are never answered: %s",
                len(index.codes_not_in_scheme),
                ", ".join(index.codes_not_in_scheme[:10]),
            )
        return cls(index, TechIndex(train), scheme, questions, k)

    def answer(self, record: dict[str, Any]) -> str:
        question = record["_question"]
        language = "zh" if _CJK.search(question) else "en"
        subject = str(record.get("subject") or record.get("domain") or question)
        if record.get("task") == "tech":
            return render_technologies(subject, self.tech.technologies(question, language), language)
        codes = [code for code, _ in self.index.search(question, self.k)]
        return render_codes(subject, codes, language, self.scheme) if codes else ""

    def generate(self, batch: list[list[int]]) -> list[str]:
        return [self.answer(self.questions[tuple(ids)]) for ids in batch]
