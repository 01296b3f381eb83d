"""The SFT data build: tables → IPC_TASK / TECH_TASK records → grouped split → curriculum stages.

Owns the SFT settings (:class:`SftDataConfig`, loaded from ``configs/<model>/prepare_sft.yaml``) and
:func:`build_sft_datasets`, which writes under ``<out>/sft/`` and registers in
``<out>/dataset_info.json`` (shared with the CPT corpus):

* ``coretech_sft_train`` / ``coretech_sft_test``: the split, grouped by normalised domain;
* ``coretech_sft_stage1`` … ``coretech_sft_stageN``: the curriculum, easy → hard;
* ``coretech_sft_shuffled``: the stages' records once more, shuffled, for the one-stage ablation;

plus ``split.md`` / ``split.json`` (sizes per source and task), ``difficulty_stage{k}.png`` and
``report.json``. Records are alpaca (instruction, input, output, system) with ``domain``, ``task``,
``source``, ``language`` and ``origin`` (``file:row``) beside them; LLaMA-Factory ignores extras.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coretech.config import ConfigError, build_dataclass, load_yaml
from coretech.data.curriculum import (
    ModelScorer,
    answer_features,
    approximate_tokens,
    plot_stage_histogram,
    ranks_within_groups,
    rule_scores,
    schedule_stages,
)
from coretech.data.dataset_info import DATASET_INFO, alpaca_entry, read_dataset_info, register_datasets
from coretech.data.records import RecordError, SkipLog
from coretech.data.sft_qa import (
    Glossary,
    RenderLog,
    RenderSettings,
    SftRecord,
    imported_to_record,
    render_entry,
)
from coretech.data.sft_tables import (
    KeyTechEntry,
    TableLog,
    detect_format,
    merge_across_sources,
    read_alpaca,
    read_office_table,
    read_paper_table,
    read_sharegpt,
)
from coretech.data.split import normalise_domain, split_by_domain
from coretech.errors import CoreTechError
from coretech.files import atomic_open, write_json_atomic, write_text_atomic
from coretech.ipc import IpcScheme, SchemeError, config_root, load_scheme, resolve_scheme_paths

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
    area_questions: bool = False  # also ask about each level-1 area of an office table
    tech_details: bool = True  # technology directions / bracketed details in TECH_TASK answers
    code_titles: bool = True  # the IPC scheme title beside each code in IPC_TASK answers

    def check(self) -> None:
        if not self.languages or not self.tasks:
            raise ValueError("questions: languages and tasks must not be empty")
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
    dtype: Literal["float32", "bfloat16"] = "float32"

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


# --- report ----------------------------------------------------------------------------------


@dataclass
class SftBuildReport:
    """What the build wrote and found; ``markdown()`` is printed by the CLI and kept in the run folder."""

    out_dir: Path
    seed: int
    split_rows: list[dict[str, Any]] = field(default_factory=list)
    test_domains: list[str] = field(default_factory=list)
    train_domains: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    curriculum: dict[str, Any] = field(default_factory=dict)
    difficulty: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, str] = field(default_factory=dict)
    skips: SkipLog = field(default_factory=SkipLog)
    invalid_symbols: list[str] = field(default_factory=list)
    missing_from_scheme: list[str] = field(default_factory=list)
    missing_codes_kept: bool = True
    untranslated: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    seconds: float = 0.0

    def split_table(self) -> str:
        lines = ["| Source | Task | Train | Test | Total |", "|---|---|---:|---:|---:|"]
        totals = [0, 0]
        for row in self.split_rows:
            lines.append(
                f"| {row['source']} | {row['task']} | {row['train']} | {row['test']} | {row['train'] + row['test']} |"
            )
            totals[0] += row["train"]
            totals[1] += row["test"]
        lines.append(f"| **all** | | **{totals[0]}** | **{totals[1]}** | **{sum(totals)}** |")
        return "\n".join(lines)

    def markdown(self) -> str:
        out = [
            "# SFT data",
            "",
            f"Written to `{self.out_dir}` (seed {self.seed}).",
            "",
            "## Split (grouped by domain)",
        ]
        out += ["", self.split_table(), ""]
        out.append(f"Test domains ({len(self.test_domains)}): {', '.join(self.test_domains) or 'none'}")
        out += ["", "## Curriculum", ""]
        out.append(
            f"{len(self.stages)} stages, {self.curriculum.get('mode')}, order {self.curriculum.get('order')}; "
            f"difficulty: {self.difficulty.get('description', '')}"
        )
        out += [
            "",
            "| Stage | Dataset | Samples | Difficulty min | mean | max | Histogram |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for stage in self.stages:
            out.append(
                f"| {stage['stage']} | {stage['dataset']} | {stage['samples']} | {stage['min']:.3f} | "
                f"{stage['mean']:.3f} | {stage['max']:.3f} | {stage['histogram']} |"
            )
        out += ["", "## Problems found", ""]
        out.append(f"Skipped rows/records: {self.skips.total}")
        for reason, count in self.skips.counts.most_common():
            examples = "; ".join(self.skips.examples.get(reason, []))
            out.append(f"- {reason}: {count} (e.g. {examples})")
        out.append(f"Invalid IPC symbols (left out of the answers): {len(self.invalid_symbols)}")
        out += [f"- {line}" for line in self.invalid_symbols]
        kept = "kept" if self.missing_codes_kept else "left out"
        out.append(f"Well-formed codes missing from the IPC scheme ({kept}): {len(self.missing_from_scheme)}")
        out += [f"- {line}" for line in self.missing_from_scheme]
        if self.untranslated:
            terms = sorted(self.untranslated, key=lambda t: -self.untranslated[t])
            out.append(f"Terms without an English name (left in Chinese): {len(terms)}: {'、'.join(terms[:20])}")
        for note, count in sorted(self.notes.items()):
            out.append(f"- {note}: {count}")
        if self.teacher is not None:
            out += ["", "## Teacher rewrites", "", json.dumps(self.teacher, ensure_ascii=False)]
        out += ["", f"Built in {self.seconds:.1f} s."]
        return "\n".join(out) + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "seed": self.seed,
            "split": self.split_rows,
            "test_domains": self.test_domains,
            "train_domains": self.train_domains,
            "stages": self.stages,
            "curriculum": self.curriculum,
            "difficulty": self.difficulty,
            "datasets": self.datasets,
            "skips": self.skips.as_dict(),
            "invalid_symbols": self.invalid_symbols,
            "missing_from_scheme": self.missing_from_scheme,
            "missing_codes_kept": self.missing_codes_kept,
            "untranslated": self.untranslated,
            "notes": self.notes,
            "teacher": self.teacher,
            "seconds": round(self.seconds, 2),
        }


# --- build -----------------------------------------------------------------------------------


def read_sources(
    config: SftDataConfig, scheme: IpcScheme, glossary: Glossary, log: TableLog, render_log: RenderLog
) -> list[SftRecord]:
    """All records from all inputs, in input order."""
    q = config.questions
    settings = RenderSettings(
        languages=list(q.languages),
        phrasings=dict(q.phrasings),
        tasks=list(q.tasks),
        area_questions=q.area_questions,
        tech_details=q.tech_details,
        code_titles=q.code_titles,
        keep_codes_missing_from_scheme=config.keep_codes_missing_from_scheme,
    )
    entries: list[KeyTechEntry] = []
    imported: list[SftRecord] = []
    for source in config.sources:
        if not source.path.is_file():
            raise RecordError(f"{source.path}: SFT input not found")
        kind = detect_format(source.path) if source.format == "auto" else source.format
        if kind in ("office", "papers"):
            reader = read_office_table if kind == "office" else read_paper_table
            entries.extend(reader(source.path, source.name, log))
        else:
            reader = read_alpaca if kind == "alpaca" else read_sharegpt
            imported.extend(
                imported_to_record(item)
                for item in reader(source.path, source.name, log)
                if item.task in settings.tasks
            )
    if config.merge_domains_across_sources:
        aliases = glossary.aliases()
        entries = merge_across_sources(entries, lambda domain: normalise_domain(domain, aliases), log)
    records = [r for entry in entries for r in render_entry(entry, scheme, glossary, settings, config.seed, render_log)]
    return records + imported


_TECH_LINE = re.compile(r"^\d+\.\s*(?P<name>[^（(]+)", re.MULTILINE)


def _apply_teacher(config: SftDataConfig, records: list[SftRecord], out_dir: Path) -> dict[str, Any] | None:
    """Rewrite each distinct rendered answer once (paraphrased questions share it) through the teacher."""
    teacher = config.teacher
    if teacher is None:
        return None
    from coretech.data.sft_teacher import TeacherRewriter

    rewriter = TeacherRewriter(
        base_url=teacher.base_url,
        model=teacher.model,
        cache_path=teacher.cache or out_dir / SFT_DIR / "teacher_cache.jsonl",
        api_key_env=teacher.api_key_env,
        max_retries=teacher.max_retries,
        timeout_s=teacher.timeout_s,
        temperature=teacher.temperature,
        concurrency=teacher.concurrency,
    )
    first: dict[tuple[str, str, str], SftRecord] = {}
    for record in records:
        if record.rendered and record.task in teacher.tasks and record.language in teacher.languages:
            first.setdefault((record.output, record.language, record.task), record)
    jobs = [
        (
            "\n".join(filter(None, [r.instruction, r.input])),
            r.output,
            r.language,
            r.task,
            [m["name"].strip() for m in _TECH_LINE.finditer(r.output)] if r.task == "tech" else [],
        )
        for r in first.values()
    ]
    rewrites = dict(zip(first, rewriter.rewrite(jobs), strict=True))
    for record in records:
        key = (record.output, record.language, record.task)
        if key in rewrites:
            record.output = rewrites[key]
    return rewriter.stats.as_dict()


def _score(config: SftDataConfig, train: list[SftRecord]) -> dict[str, Any]:
    """Fill each training record's rule, model and combined difficulty; return a summary for the report."""
    settings = config.difficulty
    scorer = None
    started = time.perf_counter()
    if settings.model is not None:
        try:
            scorer = ModelScorer(settings.model, max_length=settings.max_length, dtype=settings.dtype)
        except (OSError, ValueError) as exc:  # missing folder, uncached hub id, invalid repo name
            raise ConfigError(
                f"difficulty.model: cannot load {settings.model!r} as a model folder or cached hub model "
                f"({str(exc).splitlines()[0]}); for the embedded model run `coretech prepare model` first"
            ) from None
    count = scorer.count_tokens if scorer else approximate_tokens
    features = [answer_features(r.output, r.task, count) for r in train]
    groups = [(r.task, r.language) for r in train]
    rule = rule_scores(features, [r.task for r in train], settings.rule_weights, [r.language for r in train])
    model_raw: list[float] | None = None
    keys: list[Any] = []
    if scorer is not None:
        # Paraphrased questions share one answer; with ``per: answer`` the model scores each distinct
        # answer once (with its first question), which divides the cost by the number of phrasings.
        keys = [(r.output, r.language) if settings.per == "answer" else i for i, r in enumerate(train)]
        first: dict[Any, SftRecord] = {}
        for key, record in zip(keys, train, strict=True):
            first.setdefault(key, record)
        pairs = [("\n".join(filter(None, [r.instruction, r.input])), r.output) for r in first.values()]
        by_key = dict(zip(first, scorer.scores(pairs, settings.metric, settings.batch_size), strict=True))
        model_raw = [by_key[key] for key in keys]
    # Per-token loss is ranked within each task and language too: byte-level tokenizers split a
    # Chinese character into predictable pieces, so raw losses are not comparable across scripts.
    model_rank = ranks_within_groups(model_raw, groups) if model_raw else None
    weight = settings.model_weight if model_rank else 0.0
    for i, record in enumerate(train):
        record.difficulty_rule = round(rule[i], 4)
        record.difficulty_model = round(model_raw[i], 4) if model_raw else None
        model_part = model_rank[i] if model_rank else 0.0
        record.difficulty = round((1 - weight) * rule[i] + weight * model_part, 4)
    if scorer is not None:
        description = (
            f"{1 - weight:.2f} × rule percentile + {weight:.2f} × {settings.metric} percentile "
            f"({settings.model}), ranked within task and language"
        )
    else:
        description = "rule-based only, ranked within task and language (set difficulty.model for the model score)"
    summary = {
        "description": description,
        "metric": settings.metric if scorer else None,
        "model": settings.model if scorer else None,
        "model_weight": weight,
        "model_scored": len(set(keys)),
        "rule_weights": settings.rule_weights,
        "token_counter": "model tokenizer" if scorer else "approximate (CJK characters + words)",
        "seconds": round(time.perf_counter() - started, 2),
    }
    return summary


def _write_jsonl(path: Path, records: list[SftRecord], with_scores: bool = False) -> None:
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record.as_json(with_scores), ensure_ascii=False) + "\n")


def _forget_stale_stages(out_dir: Path, keep: set[str]) -> None:
    """Unregister and delete stages of an earlier build with more stages: a recipe naming
    ``coretech_sft_stage4`` must fail at pre-flight, not train on last week's data."""
    info = read_dataset_info(out_dir)
    stale = [n for n in info if re.fullmatch(rf"{DATASET_PREFIX}_stage\d+", n) and n not in keep]
    for name in stale:
        number = name.rsplit("stage", 1)[1]
        (out_dir / SFT_DIR / f"stage{number}.jsonl").unlink(missing_ok=True)
        (out_dir / SFT_DIR / f"difficulty_stage{number}.png").unlink(missing_ok=True)
        del info[name]
    if stale:
        write_json_atomic(out_dir / DATASET_INFO, dict(sorted(info.items())))


def build_sft_datasets(config: SftDataConfig, out_dir: Path, *, strict: bool = False) -> SftBuildReport:
    """Read the inputs, render QA, split by domain, score difficulty, write stages; see the module doc.

    ``strict`` stops at the first unreadable row or invalid IPC symbol instead of counting it.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    sft_dir = out_dir / SFT_DIR
    try:
        scheme = load_scheme(config.scheme)
    except SchemeError as exc:
        raise CoreTechError(str(exc)) from None
    glossary = Glossary.load(config.glossary)
    log = TableLog(skips=SkipLog(strict=strict))
    render_log = RenderLog()
    records = read_sources(config, scheme, glossary, log, render_log)
    if not records:
        raise CoreTechError(
            f"no SFT records from {', '.join(str(s.path) for s in config.sources)} "
            f"({log.skips.total} rows skipped: {dict(log.skips.counts)})"
        )
    teacher_stats = _apply_teacher(config, records, out_dir)

    aliases = glossary.aliases()
    split = split_by_domain(records, config.test_share, config.seed, aliases)
    train, test = split.train, split.test
    if not train:
        raise CoreTechError("the split left no training records: lower test_share or add domains")
    difficulty = _score(config, train)
    curriculum = config.curriculum
    stage_indices = schedule_stages(
        [r.difficulty or 0.0 for r in train],
        curriculum.stages,
        curriculum.mode,
        curriculum.order,
        config.seed,
    )

    report = SftBuildReport(out_dir=out_dir, seed=config.seed)
    datasets: dict[str, dict[str, Any]] = {}
    _write_jsonl(sft_dir / "train.jsonl", train, with_scores=True)
    _write_jsonl(sft_dir / "test.jsonl", test)
    datasets[f"{DATASET_PREFIX}_train"] = alpaca_entry(f"{SFT_DIR}/train.jsonl")
    datasets[f"{DATASET_PREFIX}_test"] = alpaca_entry(f"{SFT_DIR}/test.jsonl")
    all_scores = [r.difficulty or 0.0 for r in train]
    union: list[SftRecord] = []
    for k, indices in enumerate(stage_indices, 1):
        stage_records = [train[i] for i in indices]
        union.extend(stage_records)
        name = f"{DATASET_PREFIX}_stage{k}"
        _write_jsonl(sft_dir / f"stage{k}.jsonl", stage_records, with_scores=True)
        datasets[name] = alpaca_entry(f"{SFT_DIR}/stage{k}.jsonl")
        scores = [r.difficulty or 0.0 for r in stage_records]
        png = sft_dir / f"difficulty_stage{k}.png"
        plot_stage_histogram(png, scores, all_scores, f"{name}: difficulty of {len(scores)} samples")
        report.stages.append(
            {
                "stage": k,
                "dataset": name,
                "file": f"{SFT_DIR}/stage{k}.jsonl",
                "samples": len(stage_records),
                "min": min(scores, default=0.0),
                "mean": sum(scores) / len(scores) if scores else 0.0,
                "max": max(scores, default=0.0),
                "by_task": dict(Counter(r.task for r in stage_records)),
                "histogram": f"{SFT_DIR}/{png.name}",
            }
        )
    # The ablation sees exactly the samples the curriculum sees (replays included), in one shuffled stage.
    shuffled = list(union)
    random.Random(f"{config.seed}|shuffled").shuffle(shuffled)  # noqa: S311 -- seeded data order
    _write_jsonl(sft_dir / "shuffled.jsonl", shuffled, with_scores=True)
    datasets[f"{DATASET_PREFIX}_shuffled"] = alpaca_entry(f"{SFT_DIR}/shuffled.jsonl")

    rows: Counter = Counter()
    for side, side_records in (("train", train), ("test", test)):
        for record in side_records:
            rows[(record.source, record.task, side)] += 1
    sources = list(dict.fromkeys(r.source for r in records))  # merged sources (office+papers) included
    for source in sources:
        for task in ("ipc", "tech"):
            train_n, test_n = rows[(source, task, "train")], rows[(source, task, "test")]
            if train_n or test_n:
                report.split_rows.append({"source": source, "task": task, "train": train_n, "test": test_n})
    report.test_domains = sorted({r.domain for r in test})
    report.train_domains = sorted({r.domain for r in train})
    report.curriculum = {"stages": curriculum.stages, "mode": curriculum.mode, "order": curriculum.order}
    report.difficulty = difficulty
    report.skips = log.skips
    report.invalid_symbols = log.invalid
    report.missing_from_scheme = render_log.missing_from_scheme
    report.untranslated = dict(glossary.untranslated)
    report.notes = {**log.notes, **render_log.notes}
    answers: dict[tuple[str, str], set[str]] = {}
    for record in records:
        answers.setdefault((record.instruction, record.input), set()).add(record.output)
    conflicting = sum(len(outputs) > 1 for outputs in answers.values())
    if conflicting:
        # A domain in two tables gets two answers; the same question then has two labels.
        report.notes["questions with different answers (one domain in several sources)"] = conflicting
    report.missing_codes_kept = config.keep_codes_missing_from_scheme
    report.teacher = teacher_stats
    report.datasets = {name: entry["file_name"] for name, entry in datasets.items()}

    _forget_stale_stages(out_dir, set(datasets))
    register_datasets(out_dir, datasets)
    split_json = {
        "seed": config.seed,
        "test_share": config.test_share,
        "rows": report.split_rows,
        "train": len(train),
        "test": len(test),
        "train_domains": report.train_domains,
        "test_domains": report.test_domains,
        "domain_keys": {"train": split.train_domains, "test": split.test_domains},
    }
    write_json_atomic(sft_dir / "split.json", split_json)
    report.seconds = time.perf_counter() - started
    write_text_atomic(
        sft_dir / "split.md",
        f"# SFT split (grouped by domain, seed {config.seed}, test share {config.test_share})\n\n"
        f"{report.split_table()}\n\nTest domains: {', '.join(report.test_domains) or 'none'}\n",
    )
    write_json_atomic(sft_dir / "report.json", report.as_dict())
    return report


def planned_dataset_names(config: SftDataConfig) -> list[str]:
    """The datasets ``build_sft_datasets`` registers with these settings, known before it runs, so the
    pipeline's pre-flight can check recipes against them without building anything."""
    stages = [f"{DATASET_PREFIX}_stage{k}" for k in range(1, config.curriculum.stages + 1)]
    return [f"{DATASET_PREFIX}_train", f"{DATASET_PREFIX}_test", *stages, f"{DATASET_PREFIX}_shuffled"]
