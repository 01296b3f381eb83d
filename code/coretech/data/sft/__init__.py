"""The SFT data build: tables and imported files → IPC_TASK / TECH_TASK records → leak-free split →
curriculum stages, registered in ``dataset_info.json``.

One module per concern: ``config`` (settings), ``tables`` (office and literature tables),
``imports`` (alpaca / sharegpt files), ``subjects`` (subject and task of a question), ``qa``
(questions and answers), ``teacher`` (optional rewriting), ``split`` (grouped split),
``curriculum`` (difficulty and stages), ``outputs`` (all-or-nothing writes), ``report`` and
``build`` (the orchestration). The names other modules use are re-exported here.
"""

from coretech.data.sft.build import build_sft_datasets, planned_dataset_names, read_sources
from coretech.data.sft.config import (
    DATASET_PREFIX,
    SFT_DIR,
    CurriculumSettings,
    DifficultySettings,
    QuestionSettings,
    SftDataConfig,
    SftInput,
    TeacherSettings,
    load_sft_config,
)
from coretech.data.sft.curriculum import ModelScorer
from coretech.data.sft.qa import TEMPLATES, Glossary, SftRecord
from coretech.data.sft.report import SftBuildReport
from coretech.data.sft.split import normalise_domain, split_by_domain
from coretech.data.sft.teacher import TeacherRewriter, check_rewrite

__all__ = [
    "DATASET_PREFIX",
    "SFT_DIR",
    "TEMPLATES",
    "CurriculumSettings",
    "DifficultySettings",
    "Glossary",
    "ModelScorer",
    "QuestionSettings",
    "SftBuildReport",
    "SftDataConfig",
    "SftInput",
    "SftRecord",
    "TeacherRewriter",
    "TeacherSettings",
    "build_sft_datasets",
    "check_rewrite",
    "load_sft_config",
    "normalise_domain",
    "planned_dataset_names",
    "read_sources",
    "split_by_domain",
]
