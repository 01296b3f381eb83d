"""Turning key-technology entries into IPC_TASK and TECH_TASK question–answer records.

Owns the question phrasings (Chinese and English), the answer layout, the glossary that gives
English names to Chinese table terms, and :class:`SftRecord`, the record every later step
(teacher rewriting, split, difficulty, curriculum) works on. Answers are rendered from the table;
each IPC code carries its title from the IPC scheme in the question's language.

Answer layout (what the evaluation parses): a header line, then one item per line:
``G06N3/063：<title>`` for IPC_TASK, ``1. 智能芯片（神经网络处理器、…）`` for TECH_TASK.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from coretech.data.records import RecordError
from coretech.data.sft.imports import ImportedRecord
from coretech.data.sft.subjects import Task
from coretech.data.sft.tables import KeyTechEntry, TableCode, Technology
from coretech.ipc import IpcScheme

Language = Literal["zh", "en"]

# (instruction, input) pairs; ``{domain}`` is the subject. Several phrasings per task and language
# so the model learns the task rather than one sentence; the input-column variants teach the
# alpaca "instruction + input" shape that users of the finished model also send.
TEMPLATES: dict[Task, dict[Language, list[tuple[str, str]]]] = {
    "ipc": {
        "zh": [
            ("{domain}领域涉及哪些IPC分类号？", ""),
            ("请列出{domain}相关的IPC分类号及其含义。", ""),
            ("{domain}方面的专利通常归入哪些IPC分类？", ""),
            ("下面的技术领域涉及哪些IPC分类号？", "{domain}"),
            ("作为专利分析师，请给出{domain}领域对应的国际专利分类（IPC）号。", ""),
        ],
        "en": [
            ("Which IPC codes does the field of {domain} involve?", ""),
            ("List the IPC codes relevant to {domain}, with their titles.", ""),
            ("Under which IPC classes are patents on {domain} usually filed?", ""),
            ("Which IPC codes does this technical field involve?", "{domain}"),
            (
                "As a patent analyst, give the International Patent Classification codes for the field of {domain}.",
                "",
            ),
        ],
    },
    "tech": {
        "zh": [
            ("{domain}领域包含哪些关键核心技术？", ""),
            ("请列举{domain}的关键技术。", ""),
            ("{domain}产业有哪些需要突破的关键核心技术？", ""),
            ("下面的技术领域包含哪些关键核心技术？", "{domain}"),
            ("从专利布局的角度看，{domain}领域的关键技术有哪些？", ""),
        ],
        "en": [
            ("Which key technologies does the field of {domain} contain?", ""),
            ("List the key technologies of {domain}.", ""),
            ("What are the core technologies behind {domain}?", ""),
            ("Which key technologies does this technical field contain?", "{domain}"),
            ("From a patent perspective, what are the key technologies in the field of {domain}?", ""),
        ],
    },
}

# Areas and technologies are asked about by name, without ``领域`` (``智能芯片涉及哪些IPC分类号？``),
# as the reference asks per key technology.
SUBJECT_TEMPLATES: dict[Task, dict[Language, list[tuple[str, str]]]] = {
    "ipc": {
        "zh": [
            ("{domain}涉及哪些IPC分类号？", ""),
            ("{domain}涉及的IPC分类编号有哪些？", ""),
            ("{domain}会涉及到哪些IPC分类号？", ""),
            ("请列出与{domain}相关的IPC分类号。", ""),
            ("下面的技术涉及哪些IPC分类号？", "{domain}"),
        ],
        "en": [
            ("Which IPC codes does {domain} involve?", ""),
            ("Which IPC codes are relevant to {domain}?", ""),
            ("List the IPC codes related to {domain}.", ""),
            ("Under which IPC codes are patents on {domain} filed?", ""),
            ("Which IPC codes does this technology involve?", "{domain}"),
        ],
    },
    "tech": {
        "zh": [
            ("{domain}包含哪些关键技术？", ""),
            ("{domain}涉及哪些关键技术？", ""),
            ("请列举{domain}的关键技术。", ""),
            ("实现{domain}需要用到哪些关键技术？", ""),
            ("下面的技术包含哪些关键技术？", "{domain}"),
        ],
        "en": [
            ("Which key technologies does {domain} include?", ""),
            ("List the key technologies of {domain}.", ""),
            ("What are the core technologies behind {domain}?", ""),
            ("Which key technologies are needed for {domain}?", ""),
            ("Which key technologies does this technology include?", "{domain}"),
        ],
    },
}

HEADERS: dict[Task, dict[Language, str]] = {
    "ipc": {"zh": "{domain}领域涉及的IPC分类号：", "en": "IPC codes for {domain}:"},
    "tech": {"zh": "{domain}领域的关键核心技术：", "en": "Key technologies of {domain}:"},
}
SUBJECT_HEADERS: dict[Task, dict[Language, str]] = {
    "ipc": {"zh": "{domain}涉及的IPC分类号：", "en": "IPC codes for {domain}:"},
    "tech": {"zh": "{domain}包含的关键技术：", "en": "Key technologies of {domain}:"},
}
Level = Literal["domain", "area", "technology"]


@dataclass
class SftRecord:
    """One alpaca sample plus the fields that trace it (domain, task, source, origin) and its scores."""

    instruction: str
    input: str
    output: str
    domain: str
    task: Task
    source: str
    language: str
    origin: str  # <file>:<row> of the table row or imported record
    system: str = ""  # LLaMA-Factory's alpaca mapping reads this column; empty means the template's default
    subject: str = ""  # what the question names: the domain, a level-1 area or a technology of it
    level: str = "domain"  # domain, area or technology (imported records: the subject's level is unknown)
    difficulty: float | None = None
    difficulty_rule: float | None = None
    difficulty_model: float | None = None
    rendered: bool = True  # False for imported records (never rewritten by the teacher)

    def as_json(self, with_scores: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data.pop("rendered")
        if not with_scores:
            for key in ("difficulty", "difficulty_rule", "difficulty_model"):
                data.pop(key)
        return data


@dataclass
class Glossary:
    """Chinese table terms with English names (``zh,en`` CSV), for the English questions and answers.

    A term without an English name stays Chinese and is counted in ``untranslated`` so the report
    shows which terms to add.
    """

    english: dict[str, str] = field(default_factory=dict)
    untranslated: Counter = field(default_factory=Counter)

    @classmethod
    def load(cls, paths: list[Path]) -> Glossary:
        glossary = cls()
        for path in paths:
            if not path.is_file():
                raise RecordError(f"{path}: glossary file not found")
            with path.open(encoding="utf-8-sig", newline="") as handle:
                reader = csv.DictReader(handle)
                if not {"zh", "en"} <= set(reader.fieldnames or []):
                    raise RecordError(f"{path}:1: a glossary needs the columns zh,en")
                for row in reader:
                    zh, en = (row.get("zh") or "").strip(), (row.get("en") or "").strip()
                    if zh and en:
                        glossary.english[zh] = en
                    elif zh or en:
                        raise RecordError(f"{path}:{reader.line_num}: a glossary row needs both zh and en")
        return glossary

    def translate(self, term: str, language: str) -> str:
        if language == "zh" or not re.search(r"[\u4e00-\u9fff]", term):
            return term
        english = self.english.get(term)
        if english is None:
            self.untranslated[term] += 1
            return term
        return english

    def aliases(self) -> dict[str, str]:
        """English name → Chinese term, so ``artificial intelligence`` and ``人工智能`` group together."""
        return {en: zh for zh, en in self.english.items()}


def _sentence_case(title: str) -> str:
    """WIPO writes section to subclass titles in capitals; sentence case reads (and tokenises) better."""
    if title.upper() != title:
        return title
    parts = []
    for part in title.split(";"):
        text = part.strip().capitalize()
        # Bracketed abbreviations stay as WIPO writes them: [UAV], [ICT], [PV].
        text = re.sub(r"\[([^\]]+)\]", lambda m: f"[{m[1].upper()}]", text)
        parts.append(text)
    return "; ".join(parts)


@dataclass
class RenderSettings:
    """What goes into an answer; a subset of the SFT config's ``questions`` section."""

    languages: list[str]
    phrasings: dict[str, int]
    tasks: list[str]
    levels: list[str]
    tech_details: bool
    code_titles: bool
    keep_codes_missing_from_scheme: bool


@dataclass
class RenderLog:
    """Codes absent from the scheme (``<file>:<row>: <code>``) and entries without anything for a task."""

    missing_from_scheme: list[str] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)


def render_ipc_answer(
    subject: str,
    codes: list[TableCode],
    language: str,
    scheme: IpcScheme,
    glossary: Glossary,
    with_titles: bool,
    level: str = "domain",
) -> str:
    """Header and one ``code：title`` line per code, codes in scheme order (easier to learn than table order)."""
    headers = HEADERS if level == "domain" else SUBJECT_HEADERS
    header = headers["ipc"][language].format(domain=glossary.translate(subject, language))
    colon = "：" if language == "zh" else ": "
    lines = [header]
    for item in sorted(codes, key=lambda c: c.code.sort_key):
        title = scheme.title(item.code, language) if with_titles else None
        if title is None and with_titles and item.description and language == "zh":
            title = item.description  # the table's own words, when the scheme lacks the code
        lines.append(f"{item.code}{colon}{_sentence_case(title)}" if title else str(item.code))
    return "\n".join(lines)


def render_tech_answer(
    subject: str,
    technologies: list[Technology],
    language: str,
    glossary: Glossary,
    with_details: bool,
    level: str = "domain",
) -> str:
    """Header and a numbered line per technology, with its details in brackets when asked for."""
    headers = HEADERS if level == "domain" else SUBJECT_HEADERS
    header = headers["tech"][language].format(domain=glossary.translate(subject, language))
    lines = [header]
    for number, tech in enumerate(technologies, 1):
        name = glossary.translate(tech.name, language)
        details = [glossary.translate(d, language) for d in tech.details] if with_details else []
        if details:
            name += f"（{'、'.join(details)}）" if language == "zh" else f" ({', '.join(details)})"
        lines.append(f"{number}. {name}")
    return "\n".join(lines)


def _checked_codes(
    entry: KeyTechEntry, codes: list[TableCode], scheme: IpcScheme, settings: RenderSettings, log: RenderLog
) -> list[TableCode]:
    kept = []
    for item in codes:
        if not scheme.exists(item.code):
            message = f"{entry.location}: {item.code}"
            if message not in log.missing_from_scheme:
                log.missing_from_scheme.append(message)
            if not settings.keep_codes_missing_from_scheme:
                continue
        kept.append(item)
    return kept


def _questions(
    seed: int, key: str, task: Task, language: Language, count: int, subject: str, level: str = "domain"
) -> list[tuple[str, str]]:
    """``count`` phrasings, chosen by a generator seeded with the entry's key: stable across runs and
    independent of the other entries (adding a table row does not reshuffle everyone's questions)."""
    templates = (TEMPLATES if level == "domain" else SUBJECT_TEMPLATES)[task][language]
    rng = random.Random(f"{seed}|{key}|{task}|{language}")  # noqa: S311 -- seeded phrasing choice
    chosen = rng.sample(templates, min(count, len(templates)))
    return [(i.format(domain=subject), q.format(domain=subject)) for i, q in chosen]


def render_entry(
    entry: KeyTechEntry,
    scheme: IpcScheme,
    glossary: Glossary,
    settings: RenderSettings,
    seed: int,
    log: RenderLog,
) -> list[SftRecord]:
    """All records of one table entry: per task, language and phrasing, at each level asked for.

    Levels: the domain (all technologies and codes), each level-1 area of an office table (its
    technologies and their codes) and each technology (its codes; its directions as TECH_TASK).
    """
    subjects: list[tuple[str, str, list[Technology], list[TableCode]]] = []
    if "domain" in settings.levels:
        subjects.append(("domain", entry.domain, entry.technologies, entry.all_codes()))
    if "area" in settings.levels:
        for area in entry.areas():
            technologies = [t for t in entry.technologies if t.area == area]
            codes = list({str(c.code): c for t in technologies for c in t.codes}.values())
            subjects.append(("area", area, technologies, codes))
    if "technology" in settings.levels:
        for tech in entry.technologies:
            directions = [Technology(name=d) for d in tech.details]
            subjects.append(("technology", tech.name, directions, tech.codes))
    records = []
    for level, subject, technologies, raw_codes in subjects:
        codes = _checked_codes(entry, raw_codes, scheme, settings, log)
        for task in settings.tasks:
            if task == "ipc" and not codes:
                log.notes[f"IPC_TASK not built ({level}): no valid IPC codes"] += 1
                continue
            if task == "tech" and not technologies:
                log.notes[f"TECH_TASK not built ({level}): no technologies"] += 1
                continue
            for language in settings.languages:
                if task == "ipc":
                    answer = render_ipc_answer(subject, codes, language, scheme, glossary, settings.code_titles, level)
                else:
                    answer = render_tech_answer(subject, technologies, language, glossary, settings.tech_details, level)
                shown = glossary.translate(subject, language)
                count = settings.phrasings.get(language, 0)
                key = f"{entry.source}|{entry.domain}|{subject}"
                phrasings = _questions(seed, key, task, language, count, shown, level)  # type: ignore[arg-type]
                for instruction, query in phrasings:
                    records.append(
                        SftRecord(
                            instruction=instruction,
                            input=query,
                            output=answer,
                            domain=entry.domain,
                            task=task,  # type: ignore[arg-type]
                            source=entry.source,
                            language=language,
                            origin=entry.location,
                            subject=subject,
                            level=level,
                        )
                    )
    return records


def imported_to_record(item: ImportedRecord) -> SftRecord:
    language = "zh" if re.search(r"[\u4e00-\u9fff]", item.instruction + item.input) else "en"
    return SftRecord(
        instruction=item.instruction,
        input=item.input,
        output=item.output,
        domain=item.domain,
        task=item.task,
        source=item.source,
        language=language,
        origin=item.location,
        system=item.system,
        subject=item.domain,
        rendered=False,
    )
