"""General ability before and after CPT: CMMLU / C-Eval / MMLU multiple choice through lm-evaluation-harness.

``llamafactory-cli eval`` used to do this and raises NotImplementedError since 0.9.5, so this module
drives lm-evaluation-harness (``lm_eval``) instead, fully offline: the benchmarks are read from a
local copy in the layout their authors distribute (CSV files per subject in ``dev/`` and
``test/`` or ``val/``), rewritten as JSON Lines in the schema of the Hugging Face dataset that
lm_eval's own task expects, and scored with lm_eval's own task definition for that subject
(prompt, few-shot description, answer choices, metrics) with only the data source swapped. So the
numbers are the ones ``lm_eval --tasks cmmlu`` would give on the same files, without a hub.

This module owns the local-file readers, the generated task YAMLs, the run and the comparison
table (``general.json``, ``general.md``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from coretech.config import load_dataclass
from coretech.errors import CoreTechError
from coretech.files import write_json_atomic, write_text_atomic

CHOICES = ("A", "B", "C", "D")


class GeneralEvalError(CoreTechError):
    """A benchmark file or setting that cannot be used; names the file and line."""


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark keeps its splits locally and which lm_eval task scores each subject."""

    eval_split: str  # the split with answers that is scored (C-Eval's test split has none)
    lm_eval_task: str  # lm_eval's per-subject task YAML, relative to lm_eval/tasks
    lm_eval_default: str  # the template that file includes, for subjects lm_eval does not list
    description: str  # for subjects lm_eval does not list; {subject} is filled in


BENCHMARKS: dict[str, Benchmark] = {
    "cmmlu": Benchmark(
        "test",
        "cmmlu/cmmlu_{subject}.yaml",
        "cmmlu/_default_template_yaml",
        "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
    ),
    "ceval": Benchmark(
        "val",
        "ceval/ceval-valid_{subject}.yaml",
        "ceval/_default_ceval_yaml",
        "以下是中国关于{subject}的单项选择题，请选出其中的正确答案。\n\n",
    ),
    "mmlu": Benchmark(
        "test",
        "mmlu/default/mmlu_{subject}.yaml",
        "mmlu/default/_default_template_yaml",
        "The following are multiple choice questions (with answers) about {subject}.\n\n",
    ),
}
FEWSHOT_SPLIT = "dev"


@dataclass
class GeneralEvalConfig:
    """Settings of the general-ability check (configs/eval/general.yaml)."""

    benchmarks: dict[str, Path]  # benchmark name (cmmlu, ceval, mmlu) -> local copy folder
    num_fewshot: int = 5
    batch_size: int = 8
    limit: int | None = None  # questions per subject; None scores all
    device: str = "cpu"
    dtype: str = "auto"
    models: dict[str, str] = field(default_factory=dict)  # run name -> model folder

    def check(self) -> None:
        unknown = sorted(set(self.benchmarks) - set(BENCHMARKS))
        if unknown:
            raise ValueError(f"benchmarks: unknown benchmark {unknown[0]!r} (known: {', '.join(BENCHMARKS)})")
        if not self.benchmarks:
            raise ValueError("benchmarks: name at least one of " + ", ".join(BENCHMARKS))
        if self.num_fewshot < 0:
            raise ValueError("num_fewshot must be >= 0")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 or null")


def load_general_config(path: str | Path) -> GeneralEvalConfig:
    return load_dataclass(GeneralEvalConfig, path)


# --- local benchmark files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, str, str, str]
    answer: str  # A-D
    explanation: str = ""


def _field(row: Mapping[str, Any], name: str) -> Any:
    for key, value in row.items():
        if isinstance(key, str) and key.strip().lower() == name:
            return value
    return None


def _question_from_row(row: Mapping[str, Any], location: str) -> Question:
    """One question from a row in any of the three layouts (columns A-D, or a ``choices`` list with
    an integer ``answer`` as in the Hugging Face copy of MMLU)."""
    question = _field(row, "question")
    choices = _field(row, "choices")
    options = tuple(_field(row, c.lower()) for c in CHOICES) if choices is None else tuple(choices)
    answer = _field(row, "answer")
    if question is None or len(options) != 4 or any(o is None for o in options) or answer is None:
        found = ", ".join(str(k) for k in row)
        raise GeneralEvalError(
            f"{location}: needs question, A, B, C, D and answer (or choices and answer); found {found}"
        )
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < 4:
        answer = CHOICES[answer]
    answer = str(answer).strip().upper()
    if answer not in CHOICES:
        raise GeneralEvalError(f"{location}: answer {answer!r} is not one of A, B, C, D")
    explanation = _field(row, "explanation") or ""
    return Question(str(question), tuple(str(o) for o in options), answer, str(explanation))  # type: ignore[arg-type]


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows keyed by header; MMLU's original CSVs have no header, so a first row that does not
    name a question column is data in the order question, A, B, C, D, answer."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        if any(h.strip().lower() == "question" for h in header):
            columns = [h.strip() for h in header]
            first_data = None
        else:
            columns = ["question", "A", "B", "C", "D", "answer"]
            first_data = header
        if first_data is not None:
            yield f"{path}:1", dict(zip(columns, first_data, strict=False))
        for row in reader:
            if any(cell.strip() for cell in row):
                yield f"{path}:{reader.line_num}", dict(zip(columns, row, strict=False))


def read_questions(path: Path) -> list[Question]:
    """Questions of one subject file (.csv, .jsonl or .json); any bad row names file and line."""
    from coretech.data.records import iter_records

    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
    else:
        rows = ((record.location, record.data) for record in iter_records(path))
    try:
        questions = [_question_from_row(row, location) for location, row in rows]
    except UnicodeDecodeError as exc:
        raise GeneralEvalError(f"{path}: not UTF-8 (byte offset {exc.start})") from None
    if not questions:
        raise GeneralEvalError(f"{path}: no questions")
    return questions


def _subject(path: Path, split: str) -> str:
    stem = path.stem
    return stem[: -len(split) - 1] if stem.endswith(f"_{split}") else stem


def find_subjects(folder: Path, split: str) -> dict[str, Path]:
    """Subject name -> file in ``folder/split`` (``agronomy.csv`` or ``agronomy_test.csv``)."""
    split_dir = folder / split
    if not split_dir.is_dir():
        raise GeneralEvalError(f"{folder}: no {split}/ folder (expected {split}/<subject>.csv files)")
    files = sorted(p for p in split_dir.iterdir() if p.suffix.lower() in {".csv", ".jsonl", ".json"})
    if not files:
        raise GeneralEvalError(f"{split_dir}: no .csv, .jsonl or .json files")
    return {_subject(p, split): p for p in files}


def _hf_record(benchmark: str, subject: str, index: int, q: Question) -> dict[str, Any]:
    """A question in the column schema of the benchmark's Hugging Face dataset, which is what
    lm_eval's task templates (doc_to_text, doc_to_target) read."""
    if benchmark == "cmmlu":
        return {"Question": q.question, **dict(zip(CHOICES, q.options, strict=True)), "Answer": q.answer}
    if benchmark == "ceval":
        return {
            "id": index,
            "question": q.question,
            **dict(zip(CHOICES, q.options, strict=True)),
            "answer": q.answer,
            "explanation": q.explanation,
        }
    return {"question": q.question, "subject": subject, "choices": list(q.options), "answer": CHOICES.index(q.answer)}


# --- lm_eval task configs ----------------------------------------------------------------------


def _lm_eval_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def _read_lm_eval_yaml(path: Path) -> dict[str, Any]:
    """lm_eval's task YAML with its ``include`` merged in (the multiple-choice templates used here
    have no ``!function`` tags, so the safe loader reads them)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    include = data.pop("include", None)
    if include is None:
        return data
    return {**_read_lm_eval_yaml(path.parent / include), **data}


def task_config(benchmark: str, subject: str, data_files: dict[str, str]) -> dict[str, Any]:
    """lm_eval's own task for this subject with the data source swapped for local JSON Lines."""
    spec = BENCHMARKS[benchmark]
    tasks_dir = _lm_eval_tasks_dir()
    own = tasks_dir / spec.lm_eval_task.format(subject=subject)
    if own.is_file():
        config = _read_lm_eval_yaml(own)
    else:
        config = _read_lm_eval_yaml(tasks_dir / spec.lm_eval_default)
        config["description"] = spec.description.format(subject=subject.replace("_", " "))
    for key in ("dataset_name", "tag", "group", "task_alias"):
        config.pop(key, None)
    config.update(
        task=f"{benchmark}_local_{subject}",
        dataset_path="json",
        dataset_kwargs={"data_files": data_files},
    )
    return config


def write_task_configs(config: GeneralEvalConfig, tasks_dir: Path) -> dict[str, list[str]]:
    """Convert the local copies and write one lm_eval task per subject plus one group per benchmark.

    Returns benchmark -> subject task names. The files stay in the output folder so a run can be
    repeated with ``lm_eval --include_path <tasks_dir> --tasks cmmlu_local``.
    """
    groups: dict[str, list[str]] = {}
    for benchmark, folder in config.benchmarks.items():
        spec = BENCHMARKS[benchmark]
        folder = Path(folder)
        scored = find_subjects(folder, spec.eval_split)
        shots = find_subjects(folder, FEWSHOT_SPLIT) if config.num_fewshot else {}
        names = []
        for subject, eval_file in scored.items():
            data_files = {}
            splits = [(spec.eval_split, eval_file)]
            if config.num_fewshot:
                if subject not in shots:
                    raise GeneralEvalError(
                        f"{folder / FEWSHOT_SPLIT}: no {subject} file for the {config.num_fewshot}-shot examples"
                    )
                splits.append((FEWSHOT_SPLIT, shots[subject]))
            for split, source in splits:
                questions = read_questions(source)
                if split == FEWSHOT_SPLIT and len(questions) < config.num_fewshot:
                    raise GeneralEvalError(
                        f"{source}: {len(questions)} questions, fewer than num_fewshot={config.num_fewshot}"
                    )
                target = tasks_dir / benchmark / "data" / f"{subject}_{split}.jsonl"
                target.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(
                    target,
                    "".join(
                        json.dumps(_hf_record(benchmark, subject, i, q), ensure_ascii=False) + "\n"
                        for i, q in enumerate(questions)
                    ),
                )
                data_files[split] = str(target.resolve())
            task = task_config(benchmark, subject, data_files)
            if not config.num_fewshot:
                task.pop("fewshot_split", None)
            write_text_atomic(
                tasks_dir / benchmark / f"{task['task']}.yaml",
                yaml.safe_dump(task, allow_unicode=True, sort_keys=False),
            )
            names.append(task["task"])
        group = {
            "group": f"{benchmark}_local",
            "task": names,
            "aggregate_metric_list": [{"metric": "acc", "aggregation": "mean", "weight_by_size": True}],
            "metadata": {"version": 1.0},
        }
        write_text_atomic(tasks_dir / benchmark / f"_{benchmark}_local.yaml", yaml.safe_dump(group, sort_keys=False))
        groups[benchmark] = names
    return groups


# --- run ---------------------------------------------------------------------------------------


def run_general_eval(
    models: Mapping[str, str | Path], config: GeneralEvalConfig, out_dir: Path
) -> dict[str, dict[str, Any]]:
    """Score each model on each benchmark; write general.json and general.md into ``out_dir``.

    Returns run name -> ``{"<benchmark>.acc", "<benchmark>.acc_stderr", "<benchmark>.n"}``. The
    first model is the baseline of the table's deltas: pass the base model first and the CPT
    model after it to see what continued pretraining cost in general ability.
    """
    if not models:
        raise GeneralEvalError("no model to evaluate (give --model or models: in the config)")
    for name, model in models.items():
        if not Path(model).is_dir():
            raise GeneralEvalError(f"model {name!r}: {model} is not a model folder")
    # Everything is local; without these a missing file would turn into a hub download attempt.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    out_dir = Path(out_dir)
    tasks_dir = out_dir / "lm_eval_tasks"
    groups = write_task_configs(config, tasks_dir)
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)

    results: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        output = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(Path(model).resolve()), "dtype": config.dtype},
            tasks=[f"{benchmark}_local" for benchmark in groups],
            num_fewshot=config.num_fewshot,
            batch_size=config.batch_size,
            device=config.device,
            limit=config.limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=1000,  # accuracy's stderr is analytic; this only bounds other metrics' cost
        )
        if output is None:
            raise GeneralEvalError(f"model {name!r}: lm_eval returned no results")
        write_json_atomic(out_dir / "lm_eval" / f"{name}.json", json.loads(json.dumps(output, default=str)))
        row: dict[str, Any] = {"model": str(model)}
        for benchmark, tasks in groups.items():
            group = output["results"][f"{benchmark}_local"]
            row[f"{benchmark}.acc"] = float(group["acc,none"])
            stderr = group.get("acc_stderr,none")
            row[f"{benchmark}.acc_stderr"] = None if stderr in (None, "N/A") else float(stderr)
            row[f"{benchmark}.n"] = sum(int(output["n-samples"][t]["effective"]) for t in tasks)
        results[name] = row
    write_json_atomic(out_dir / "general.json", results)
    write_text_atomic(out_dir / "general.md", general_table_markdown(results, config))
    return results


def general_table_markdown(results: Mapping[str, Mapping[str, Any]], config: GeneralEvalConfig) -> str:
    """Accuracy per benchmark and model, with the change against the first model in points."""
    benchmarks = list(config.benchmarks)
    names = list(results)
    baseline = results[names[0]] if names else {}
    header = ["Model", *(f"{b.upper()} acc (n)" for b in benchmarks)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(benchmarks)) + "|"]
    for index, name in enumerate(names):
        cells = [name]
        for b in benchmarks:
            acc = results[name][f"{b}.acc"]
            stderr = results[name][f"{b}.acc_stderr"]
            cell = f"{acc:.3f}" + ("" if stderr is None else f" ± {stderr:.3f}") + f" ({results[name][f'{b}.n']})"
            if index:
                cell += f" Δ {100 * (acc - baseline[f'{b}.acc']):+.1f} pt"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return (
        "# General ability\n\n"
        + "\n".join(lines)
        + f"\n\n{config.num_fewshot}-shot multiple choice (lm-evaluation-harness, acc, weighted by subject size); "
        f"Δ against {names[0] if names else '-'}.\n"
    )


def general_eval_from_cli(args: Any) -> int:
    """``coretech general-eval``: config file plus command-line models and overrides."""
    config = load_general_config(args.config)
    if args.benchmark:
        for spec in args.benchmark:
            name, sep, path = spec.partition("=")
            if not sep or name not in BENCHMARKS:
                raise GeneralEvalError(
                    f"--benchmark {spec!r}: expected NAME=FOLDER with NAME in {', '.join(BENCHMARKS)}"
                )
            config.benchmarks[name] = Path(path)
    for key in ("num_fewshot", "limit", "batch_size", "device"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, value)
    try:
        config.check()
    except ValueError as exc:
        raise GeneralEvalError(f"{args.config}: {exc}") from None
    models: dict[str, str] = dict(config.models)
    if args.model:
        names = args.name or [Path(m).name for m in args.model]
        if len(names) != len(args.model):
            raise GeneralEvalError(f"{len(names)} --name value(s) for {len(args.model)} --model value(s)")
        models = dict(zip(names, args.model, strict=True))
    results = run_general_eval(models, config, Path(args.out))
    print(general_table_markdown(results, config))
    return 0
