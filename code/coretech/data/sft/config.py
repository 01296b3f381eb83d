"""The SFT build's settings: :class:`SftDataConfig`, read from ``configs/<model>/prepare_sft.yaml``.

Dataclasses that reject unknown keys (``build_dataclass``) and check their own values, so a typo
in a recipe stops before anything is read.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from coretech.config import ConfigError, build_dataclass, load_yaml
from coretech.ipc import config_root, resolve_scheme_paths

DATASET_PREFIX = "coretech_sft"
SFT_DIR = "sft"


# --- settings --------------------------------------------------------------------------------


@dataclass
class SftInput:
    """One source file; ``source`` names it in records and the split table (default: the file stem)."""

    path: Path
    source: str = ""
    format: Literal["auto", "office", "papers", "alpaca", "sharegpt"] = "auto"

    @property
    def name(self) -> str:
        return self.source or self.path.stem


@dataclass
class QuestionSettings:
    languages: list[Literal["zh", "en"]] = field(default_factory=lambda: ["zh", "en"])
    # phrasings drawn per domain, task and language (at most the 5 templates each language has)
    phrasings: dict[str, int] = field(default_factory=lambda: {"zh": 3, "en": 3})
    tasks: list[Literal["ipc", "tech"]] = field(default_factory=lambda: ["ipc", "tech"])
    # what questions are asked about: each domain; each level-1 area of an office table; each
    # technology (its own codes as IPC_TASK, its directions as TECH_TASK), as the reference asks
    levels: list[Literal["domain", "area", "technology"]] = field(default_factory=lambda: ["domain"])
    tech_details: bool = True  # technology directions / bracketed details in TECH_TASK answers
    code_titles: bool = True  # the IPC scheme title beside each code in IPC_TASK answers

    def check(self) -> None:
        if not self.languages or not self.tasks or not self.levels:
            raise ValueError("questions: languages, tasks and levels must not be empty")
        for language in self.languages:
            if self.phrasings.get(language, 0) < 1:
                raise ValueError(f"questions.phrasings: {language!r} needs at least 1 phrasing")
        unknown = set(self.phrasings) - {"zh", "en"}
        if unknown:
            raise ValueError(f"questions.phrasings: unknown language {sorted(unknown)[0]!r} (zh, en)")


@dataclass
class DifficultySettings:
    model: str | None = None  # a causal LM (folder or cached hub id) for the model-based score; None = rules only
    metric: Literal["loss", "ifd"] = "ifd"
    per: Literal["answer", "record"] = "answer"  # score each distinct answer once, or every record
    model_weight: float = 0.5  # share of the model score in the difficulty; the rest is the rule score
    rule_weights: dict[str, float] = field(default_factory=lambda: {"items": 1.0, "depth": 1.0, "tokens": 1.0})
    batch_size: int = 8
    max_length: int = 384
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where the hardware has it (ModelScorer)

    def check(self) -> None:
        if not 0 <= self.model_weight <= 1:
            raise ValueError("difficulty.model_weight must be in [0, 1]")
        unknown = set(self.rule_weights) - {"items", "depth", "tokens"}
        if unknown:
            raise ValueError(f"difficulty.rule_weights: unknown feature {sorted(unknown)[0]!r}")
        if any(w < 0 for w in self.rule_weights.values()) or not any(self.rule_weights.values()):
            raise ValueError("difficulty.rule_weights: weights must be >= 0 and not all 0")
        if self.batch_size < 1 or self.max_length < 8:
            raise ValueError("difficulty: batch_size >= 1 and max_length >= 8")


@dataclass
class CurriculumSettings:
    stages: int = 3
    mode: Literal["disjoint", "cumulative"] = "disjoint"
    order: Literal["easy_to_hard", "shuffled"] = "easy_to_hard"

    def check(self) -> None:
        if not 1 <= self.stages <= 20:
            raise ValueError("curriculum.stages must be between 1 and 20")


@dataclass
class TeacherSettings:
    base_url: str  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key_env: str = "CORETECH_TEACHER_API_KEY"
    cache: Path | None = None  # default <out>/sft/teacher_cache.jsonl
    max_retries: int = 3
    timeout_s: float = 60.0
    temperature: float = 0.3
    concurrency: int = 4
    tasks: list[Literal["ipc", "tech"]] = field(default_factory=lambda: ["ipc", "tech"])
    languages: list[Literal["zh", "en"]] = field(default_factory=lambda: ["zh", "en"])

    def check(self) -> None:
        if not re.match(r"^https?://", self.base_url):
            raise ValueError(f"teacher.base_url must start with http:// or https://, got {self.base_url!r}")


@dataclass
class SftDataConfig:
    """Everything the SFT build needs; paths are relative to the working directory (the repo root)."""

    inputs: list[SftInput | str] = field(default_factory=list)
    # empty: the built-in full IPC scheme; title tables alone (Chinese titles) are layered on it;
    # relative paths are from the config's repository (the folder holding configs/)
    scheme: list[Path] = field(default_factory=list)
    glossary: list[Path] = field(default_factory=list)
    seed: int = 42
    test_share: float = 0.2
    # answers this similar (MinHash Jaccard over character 3-grams) are one split group; 1 = exact only
    near_duplicate_threshold: float = 0.8
    # share of training answers asked in >= 2 phrasings that lose one phrasing to the phrasing test set
    phrasing_test_share: float = 0.15
    keep_codes_missing_from_scheme: bool = True  # well-formed codes the scheme lacks: kept, and reported
    # one answer per domain over all tables (source ``office+papers``); else each table answers apart
    # and a question asked of both gets two labels (counted in the report)
    merge_domains_across_sources: bool = True
    questions: QuestionSettings = field(default_factory=QuestionSettings)
    difficulty: DifficultySettings = field(default_factory=DifficultySettings)
    curriculum: CurriculumSettings = field(default_factory=CurriculumSettings)
    teacher: TeacherSettings | None = None

    def __post_init__(self) -> None:
        self.inputs = [SftInput(Path(i)) if isinstance(i, str | Path) else i for i in self.inputs]

    def check(self) -> None:
        if not 0 <= self.test_share < 1:
            raise ValueError("test_share must be in [0, 1)")
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ValueError("near_duplicate_threshold must be in (0, 1]")
        if not 0 <= self.phrasing_test_share <= 1:
            raise ValueError("phrasing_test_share must be in [0, 1]")

    @property
    def sources(self) -> list[SftInput]:
        return [i for i in self.inputs if isinstance(i, SftInput)]


def load_sft_config(path: Path | None, inputs: list[Path] | None = None) -> SftDataConfig:
    """The SFT settings from ``path`` (or the defaults); ``inputs`` from ``--input`` replace the file's list.

    Replacing rather than extending lets one config serve other data: ``--config demo.yaml --input
    mine.csv`` builds from ``mine.csv`` with the demo's settings.
    """
    config = build_dataclass(SftDataConfig, load_yaml(path), str(path)) if path else SftDataConfig()
    if path:
        config.scheme = resolve_scheme_paths(config.scheme, config_root(path))
    if inputs:
        config.inputs = [SftInput(Path(p)) for p in inputs]
    if not config.inputs:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}no SFT inputs: give --input FILE or list them under 'inputs'")
    names = Counter(i.name for i in config.sources)
    duplicate = next((n for n, c in names.items() if c > 1), None)
    if duplicate:
        raise ConfigError(f"{path or '--input'}: two inputs are both named source {duplicate!r}; set 'source'")
    return config
