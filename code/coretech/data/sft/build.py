"""The SFT data build: tables → IPC_TASK / TECH_TASK records → grouped split → curriculum stages.

Owns the SFT settings (:class:`SftDataConfig`, loaded from ``configs/<model>/prepare_sft.yaml``) and
:func:`build_sft_datasets`, which writes under ``<out>/sft/`` and registers in
``<out>/dataset_info.json`` (shared with the CPT corpus):

* ``coretech_sft_train`` / ``coretech_sft_test``: the leak-free split (``groups``): no subject, answer,
  code set or near-duplicate answer on both sides (unseen subjects);
* ``coretech_sft_test_phrasing``: seen subjects asked in unseen phrasings (the reference's protocol);
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
from pathlib import Path
from typing import Any

from coretech.data.dataset_info import DATASET_INFO, alpaca_entry, read_dataset_info
from coretech.data.records import RecordError, SkipLog
from coretech.data.sft.config import DATASET_PREFIX, SFT_DIR, SftDataConfig
from coretech.data.sft.curriculum import plot_stage_histogram, schedule_stages, score_difficulty
from coretech.data.sft.groups import leak_free_split
from coretech.data.sft.imports import detect_format, read_alpaca, read_sharegpt
from coretech.data.sft.outputs import StagedOutputs, disk_full, write_json_or_fail
from coretech.data.sft.qa import Glossary, RenderLog, RenderSettings, SftRecord, imported_to_record, render_entry
from coretech.data.sft.report import SftBuildReport, level_rows
from coretech.data.sft.split import normalise_domain
from coretech.data.sft.tables import KeyTechEntry, TableLog, merge_across_sources, read_office_table, read_paper_table
from coretech.data.sft.teacher import apply_teacher
from coretech.errors import CoreTechError
from coretech.ipc import IpcScheme, SchemeError, load_scheme

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
        levels=list(q.levels),
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


def _write_jsonl(staged: StagedOutputs, path: Path, records: list[SftRecord], with_scores: bool = False) -> None:
    with staged.open(path) as handle:
        for record in records:
            handle.write(json.dumps(record.as_json(with_scores), ensure_ascii=False) + "\n")


def _stale_stages(info: dict[str, Any], keep: set[str]) -> list[str]:
    """Stages of an earlier build with more stages: a recipe naming ``coretech_sft_stage4`` must fail
    at pre-flight, not train on last week's data, so they are unregistered and deleted."""
    return [n for n in info if re.fullmatch(rf"{DATASET_PREFIX}_stage\d+", n) and n not in keep]


def _put_in_place(staged: StagedOutputs, out_dir: Path, datasets: dict[str, dict[str, Any]]) -> None:
    """Rename the written files into place and register them, ``dataset_info.json`` last.

    Our entries are unregistered before any rename, so a failure between the renames and the final
    registration leaves datasets that are not registered, never a mixed set that looks finished.
    """
    info_path = out_dir / DATASET_INFO
    info = read_dataset_info(out_dir)
    ours = [n for n in info if n.startswith(f"{DATASET_PREFIX}_")]
    if ours:
        write_json_or_fail(info_path, {k: v for k, v in sorted(info.items()) if k not in ours})
    staged.commit()
    for name in _stale_stages(info, set(datasets)):
        number = name.rsplit("stage", 1)[1]
        (out_dir / SFT_DIR / f"stage{number}.jsonl").unlink(missing_ok=True)
        (out_dir / SFT_DIR / f"difficulty_stage{number}.png").unlink(missing_ok=True)
    info = {k: v for k, v in info.items() if k not in ours}
    for name, entry in datasets.items():
        if not (out_dir / entry["file_name"]).is_file():
            raise CoreTechError(f"{info_path}: dataset {name!r} names missing file {entry['file_name']!r}")
        info[name] = entry
    write_json_or_fail(info_path, dict(sorted(info.items())))


def build_sft_datasets(config: SftDataConfig, out_dir: Path, *, strict: bool = False) -> SftBuildReport:
    """Read the inputs, render QA, split, score difficulty, write stages; see the module doc.

    ``strict`` stops at the first unreadable row or invalid IPC symbol instead of counting it.
    Every output is written to a temporary file first and put in place at the end (``outputs``).
    """
    staged = StagedOutputs()
    try:
        report, datasets = _build(config, Path(out_dir), strict, staged)
        _put_in_place(staged, Path(out_dir), datasets)
    finally:
        staged.discard()
    return report


def _build(
    config: SftDataConfig, out_dir: Path, strict: bool, staged: StagedOutputs
) -> tuple[SftBuildReport, dict[str, dict[str, Any]]]:
    started = time.perf_counter()
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
    teacher_stats = apply_teacher(config.teacher, records, out_dir / SFT_DIR / "teacher_cache.jsonl")

    aliases = glossary.aliases()
    split = leak_free_split(
        records,
        config.test_share,
        config.seed,
        aliases,
        config.near_duplicate_threshold,
        config.phrasing_test_share,
    )
    train, test, test_phrasing = split.train, split.test, split.test_phrasing
    if not train:
        raise CoreTechError("the split left no training records: lower test_share or add domains")
    difficulty = score_difficulty(config.difficulty, train)
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
    _write_jsonl(staged, sft_dir / "train.jsonl", train, with_scores=True)
    _write_jsonl(staged, sft_dir / "test.jsonl", test)
    _write_jsonl(staged, sft_dir / "test_phrasing.jsonl", test_phrasing)
    datasets[f"{DATASET_PREFIX}_train"] = alpaca_entry(f"{SFT_DIR}/train.jsonl")
    datasets[f"{DATASET_PREFIX}_test"] = alpaca_entry(f"{SFT_DIR}/test.jsonl")
    datasets[f"{DATASET_PREFIX}_test_phrasing"] = alpaca_entry(f"{SFT_DIR}/test_phrasing.jsonl")
    all_scores = [r.difficulty or 0.0 for r in train]
    union: list[SftRecord] = []
    for k, indices in enumerate(stage_indices, 1):
        stage_records = [train[i] for i in indices]
        union.extend(stage_records)
        name = f"{DATASET_PREFIX}_stage{k}"
        _write_jsonl(staged, sft_dir / f"stage{k}.jsonl", stage_records, with_scores=True)
        datasets[name] = alpaca_entry(f"{SFT_DIR}/stage{k}.jsonl")
        scores = [r.difficulty or 0.0 for r in stage_records]
        png = sft_dir / f"difficulty_stage{k}.png"
        try:
            title = f"{name}: difficulty of {len(scores)} samples"
            plot_stage_histogram(staged.temporary_path(png), scores, all_scores, title)
        except OSError as exc:
            raise disk_full(png, exc) from None
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
    _write_jsonl(staged, sft_dir / "shuffled.jsonl", shuffled, with_scores=True)
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
    report.level_rows = level_rows(train, test, test_phrasing)
    report.split_check = {
        "groups": split.groups,
        "test_groups": len(split.test_groups),
        "joined_by": split.joined_by,
        "near_duplicate_threshold": config.near_duplicate_threshold,
        "leaks": len(split.leaks),
        "leak_examples": [f"{a[:60]} ~ {b[:60]} ({score:.0f})" for a, b, score in split.leaks[:3]],
        "test": len(test),
        "test_phrasing": len(test_phrasing),
        "phrasing_test_share": config.phrasing_test_share,
    }
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

    split_json = {
        "seed": config.seed,
        "test_share": config.test_share,
        "rows": report.split_rows,
        "train": len(train),
        "test": len(test),
        "train_domains": report.train_domains,
        "test_domains": report.test_domains,
        "test_phrasing": len(test_phrasing),
        "levels": report.level_rows,
        "check": report.split_check,
        "domain_keys": {"train": split.train_groups, "test": split.test_groups},
    }
    staged.write_json(sft_dir / "split.json", split_json)
    report.seconds = time.perf_counter() - started
    staged.write_text(sft_dir / "split.md", report.split_markdown(config.test_share))
    staged.write_json(sft_dir / "report.json", report.as_dict())
    return report, datasets


def planned_dataset_names(config: SftDataConfig) -> list[str]:
    """The datasets ``build_sft_datasets`` registers with these settings, known before it runs, so the
    pipeline's pre-flight can check recipes against them without building anything."""
    stages = [f"{DATASET_PREFIX}_stage{k}" for k in range(1, config.curriculum.stages + 1)]
    tests = [f"{DATASET_PREFIX}_test", f"{DATASET_PREFIX}_test_phrasing"]
    return [f"{DATASET_PREFIX}_train", *tests, *stages, f"{DATASET_PREFIX}_shuffled"]
