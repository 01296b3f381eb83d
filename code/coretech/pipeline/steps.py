"""The non-training steps (prepare, predict, evaluate) and the list of steps a pipeline runs, in order."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from coretech.config import load_yaml, repo_root_of
from coretech.errors import CoreTechError
from coretech.files import write_json_atomic
from coretech.log import get_logger
from coretech.models import ensure_embedded_model
from coretech.pipeline.context import RunContext, Step
from coretech.pipeline.spec import PredictModel
from coretech.pipeline.stages import ResolvedStage
from coretech.pipeline.training import MergeStep, TrainStep, dataset_digest
from coretech.runs import content_digest, named_inputs

log = get_logger(__name__)


class PrepareStep(Step):
    """The embedded model (if the pipeline uses it) and the CPT/SFT datasets in ``<run>/data``.

    The fingerprint is taken after the embedded model exists (it is an input the settings name, the
    tokenizer), and covers every file the settings name, globs expanded, by content. The prepared
    data are not moved aside when inputs change: the builders rewrite them from the raw inputs, and
    each stage's fingerprint covers the datasets it reads, so exactly the affected stages rerun.
    """

    name = "prepare"
    kind = "prepare"

    def __init__(self, ctx: RunContext) -> None:
        self.data_dir = ctx.run_dir / "data"

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        if ctx.spec.embedded_model and not ctx.dry_run and ctx.is_main_node:
            started = time.monotonic()
            ensure_embedded_model(ctx.spec.base_model)
            ctx.timings["model"] = time.monotonic() - started
        parts: dict[str, Any] = {}
        for key, path in (("cpt", ctx.spec.data.cpt), ("sft", ctx.spec.data.sft)):
            if path is None:
                continue
            settings = load_yaml(path)
            repo = repo_root_of(path)
            parts[f"{key} settings"] = ctx.portable(settings)
            parts[f"{key} inputs"] = {
                str(ctx.portable(str(p))): content_digest(p) for p in named_inputs(settings, repo)
            }
        return parts

    def complete(self, ctx: RunContext) -> bool:
        return (self.data_dir / "dataset_info.json").is_file()

    def describe(self, ctx: RunContext) -> None:
        print(f"--- prepare\nin-process: coretech prepare cpt/sft → {self.data_dir}", flush=True)

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        from coretech.pipeline.stages import load_prepare_settings

        started = time.monotonic()
        settings = load_prepare_settings(ctx.spec)
        report: dict[str, Any] = {}
        if "cpt" in settings:
            from coretech.data.cpt import build_cpt_corpus

            log.info("prepare cpt: %s", ctx.spec.data.cpt)
            with contextlib.chdir(repo_root_of(ctx.spec.data.cpt)):
                report["cpt"] = build_cpt_corpus(settings["cpt"], self.data_dir.resolve()).markdown()
        if "sft" in settings:
            from coretech.data.sft import build_sft_datasets

            log.info("prepare sft: %s", ctx.spec.data.sft)
            with contextlib.chdir(repo_root_of(ctx.spec.data.sft)):
                report["sft"] = build_sft_datasets(settings["sft"], self.data_dir.resolve()).markdown()
        ctx.timings["prepare"] = time.monotonic() - started
        return {"seconds": round(ctx.timings["prepare"], 1), **report}


class RagStep(Step):
    """``<name>_rag`` variants of the prepared SFT datasets: the top-k retrieved candidate codes, with their
    titles, in each IPC question (``coretech.ground.rag``), and the candidates' recall@k per dataset.

    Like the prepared data it is rewritten, not moved aside: the stages and predictions that read the
    variants cover them by content, so exactly those rerun when the candidates change.
    """

    name = "prepare.rag"
    kind = "prepare"

    def __init__(self, ctx: RunContext) -> None:
        self.data_dir = ctx.run_dir / "data"

    def _sources(self) -> list[str]:
        """The prepared datasets that get a variant, as registered now (none before prepare ran)."""
        from coretech.data.dataset_info import read_dataset_info
        from coretech.ground import has_rag_variant

        return sorted(n for n in read_dataset_info(self.data_dir) if has_rag_variant(n))

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        assert ctx.spec.data.rag is not None
        scheme = ctx.spec.evaluate.scheme if ctx.spec.evaluate else []
        return {
            "k": ctx.spec.data.rag.k,
            "datasets": dataset_digest(self.data_dir, self._sources()),
            "scheme": [content_digest(Path(p)) for p in scheme] or "built-in",
        }

    def complete(self, ctx: RunContext) -> bool:
        from coretech.data.dataset_info import read_dataset_info
        from coretech.ground import RAG_DIR, has_rag_variant, rag_variant

        if not (self.data_dir / RAG_DIR / "rag.json").is_file():
            return False
        info = read_dataset_info(self.data_dir)
        variants = [info.get(rag_variant(name)) for name in info if has_rag_variant(name)]
        return all(v and (self.data_dir / v.get("file_name", "")).is_file() for v in variants)

    def describe(self, ctx: RunContext) -> None:
        k = ctx.spec.data.rag.k if ctx.spec.data.rag else None
        print(f"--- {self.name}\nin-process: coretech prepare rag --k {k} → {self.data_dir}", flush=True)

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        from coretech.ground.rag import build_rag_datasets
        from coretech.ipc import SchemeError, load_scheme

        assert ctx.spec.data.rag is not None
        started = time.monotonic()
        try:  # the scheme the grounded rows answer from and the evaluation scores against
            scheme = load_scheme((ctx.spec.evaluate.scheme if ctx.spec.evaluate else None) or None)
        except SchemeError as exc:
            raise CoreTechError(str(exc)) from None
        report = build_rag_datasets(self.data_dir.resolve(), ctx.spec.data.rag.k, scheme)
        ctx.timings[self.name] = time.monotonic() - started
        recall = {name: [s.recall, s.subclass_recall] for name, s in report.datasets.items()}
        return {"seconds": round(ctx.timings[self.name], 1), "k": report.k, "recall": recall, "rag": report.markdown()}


class PredictStep(Step):
    """One model on one test set: ``generated_predictions.jsonl`` through ``coretech.infer.predict``."""

    kind = "predict"

    def __init__(self, ctx: RunContext, row: PredictModel, dataset: str, upstream: str, several: bool) -> None:
        self.row, self.dataset, self.upstream = row, dataset, upstream
        # a RAG row asks the same questions with retrieved candidates in them: scored with the plain test set
        self.source = row.asks(dataset)
        self.name = f"predict.{dataset}.{row.name}" if several else f"predict.{row.name}"
        folder = ctx.run_dir / "predict" / (Path(dataset) / row.name if several else Path(row.name))
        self.out_file = folder / "generated_predictions.jsonl"
        self.model, self.adapter = self._model(ctx, row.model)

    @property
    def label(self) -> str:
        return self.name

    @staticmethod
    def _model(ctx: RunContext, name: str) -> tuple[str, str | None]:
        if name == "base":
            return ctx.spec.base_model, None
        stage = next(s for s in ctx.stages if s.name == name)
        return stage.result_model, stage.result_adapter

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.spec.predict
        assert spec is not None
        data_dir = ctx.run_dir / "data"
        return {
            "model": ctx.fingerprints.get(self.upstream) if self.upstream else ctx.base_model_digest(),
            "recipe": load_yaml(spec.recipe),
            "settings": {
                "dataset": self.source,
                "backend": self.row.backend or spec.backend,
                "max_samples": spec.max_samples,
                "batch_size": spec.batch_size,
                "options": self.row.options,
            },
            "test set": dataset_digest(data_dir, [self.source]),
            # the retrieval baseline also answers from the training split's (subject → codes) pairs
            "training pairs": dataset_digest(data_dir, ["coretech_sft_train"])
            if self.row.backend == "retrieval"
            else "",
            "scheme": self._scheme_digests(ctx),
        }

    def _scheme_digests(self, ctx: RunContext) -> list[str]:
        """The scheme shapes the answers only for constrained decoding and retrieval."""
        grounded = self.row.backend == "retrieval" or self.row.options.get("constrain_codes")
        scheme = ctx.spec.evaluate.scheme if ctx.spec.evaluate else []
        return [content_digest(Path(p)) for p in scheme] if grounded else []

    def outputs(self) -> list[Path]:
        return [self.out_file]

    def complete(self, ctx: RunContext) -> bool:
        return self.out_file.is_file()

    def resumable(self, ctx: RunContext) -> bool:
        return self.out_file.is_file()  # the predictor continues a file of the same model and recipe

    def describe(self, ctx: RunContext) -> None:
        backend = self.row.backend or (ctx.spec.predict.backend if ctx.spec.predict else "auto")
        print(
            f"--- {self.name}\nin-process {backend} backend, model {self.model}, adapter {self.adapter} "
            f"→ {self.out_file}",
            flush=True,
        )

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        from coretech.infer.predict import run_prediction

        spec = ctx.spec.predict
        assert spec is not None
        log.info("%s: %s with %s → %s", self.name, self.source, self.row.model, self.out_file)
        # Constrained decoding and retrieval answer from the scheme the evaluate step scores against.
        options = {"scheme_files": ctx.spec.evaluate.scheme if ctx.spec.evaluate else None, **self.row.options}
        result = run_prediction(
            model=self.model,
            adapter=self.adapter,
            dataset_dir=(ctx.run_dir / "data").resolve(),
            dataset=self.source,
            out_file=self.out_file,
            recipe=spec.recipe,
            backend=self.row.backend or spec.backend,
            max_samples=spec.max_samples,
            batch_size=spec.batch_size,
            **options,
        )
        # the step's time includes loading the model (or building the index); generation alone is what
        # compares answering methods on the same model (constrained against plain decoding)
        ctx.timings[self.name] = result.load_seconds + result.seconds
        return {
            "file": str(self.out_file.relative_to(ctx.run_dir)),
            "backend": result.backend,
            "written": result.written,
            "total": result.total,
            "seconds": round(result.load_seconds + result.seconds, 1),
            "generation_seconds": round(result.seconds, 1),
        }

    def summary(self, entry: dict[str, Any]) -> str:
        return f"{entry.get('written')} answers written ({entry.get('total')} in the test set), {entry.get('backend')}"


class EvaluateStep(Step):
    """Scores every prediction file of one test set; ``<run>/eval`` and ``metrics.json``.

    Its outputs are recomputed in seconds from the predictions, so they are rewritten, not moved aside."""

    kind = "evaluate"

    def __init__(self, ctx: RunContext, dataset: str, predictions: dict[str, Path], several: bool) -> None:
        self.dataset, self.predictions, self.several = dataset, predictions, several
        self.name = f"evaluate.{dataset}" if several else "evaluate"
        self.out_dir = ctx.run_dir / "eval" / (dataset if several else "")
        self.metrics_file = self.out_dir / "metrics.json"

    def fingerprint_parts(self, ctx: RunContext) -> dict[str, Any]:
        spec = ctx.spec.evaluate
        return {
            "predictions": {name: content_digest(path) for name, path in self.predictions.items()},
            "settings": ctx.portable({"task": spec.task, "fuzzy": spec.fuzzy_threshold} if spec else None),
            "scheme": [content_digest(Path(p)) for p in spec.scheme] if spec else [],
        }

    def complete(self, ctx: RunContext) -> bool:
        return self.metrics_file.is_file()

    def describe(self, ctx: RunContext) -> None:
        print(f"--- {self.name}\nin-process: score {', '.join(self.predictions)} → {self.out_dir}", flush=True)

    def run(self, ctx: RunContext, fp: str) -> dict[str, Any]:
        from coretech.eval.report import evaluate_runs
        from coretech.ipc import SchemeError, load_scheme

        spec = ctx.spec.evaluate
        try:  # none configured: the built-in full scheme
            scheme = load_scheme(spec.scheme if spec else None)
        except SchemeError as exc:
            raise CoreTechError(str(exc)) from None
        started = time.monotonic()
        metrics = evaluate_runs(
            self.predictions,
            self.out_dir,
            task=spec.task if spec else "auto",
            scheme=scheme,
            fuzzy_threshold=spec.fuzzy_threshold if spec else None,
        )
        ctx.timings[self.name] = time.monotonic() - started
        return {"seconds": round(ctx.timings[self.name], 1), "models": list(metrics)}

    def after(self, ctx: RunContext, entry: dict[str, Any]) -> None:
        if ctx.dry_run or not self.metrics_file.is_file():
            return
        import json

        metrics = json.loads(self.metrics_file.read_text(encoding="utf-8"))
        ctx.metrics = ctx.metrics or {}
        if self.several:
            ctx.metrics[self.dataset] = metrics
        else:
            ctx.metrics = metrics
        write_json_atomic(ctx.run_dir / "metrics.json", ctx.metrics)


def build_steps(ctx: RunContext, stages: list[ResolvedStage]) -> list[Step]:
    """prepare → per stage train (and merge) → predict per model and test set → evaluate per test set."""
    ctx.stages = stages
    steps: list[Step] = [PrepareStep(ctx)]
    if ctx.spec.data.rag is not None:
        steps.append(RagStep(ctx))
    product: dict[str, str] = {}  # stage name → the step key of what it produced
    for stage in stages:
        start = stage.spec.start_from
        train = TrainStep(stage, "" if start == "base" else product[start])
        steps.append(train)
        product[stage.name] = train.key
        if stage.export_config is not None:
            merge = MergeStep(stage, train.key)
            steps.append(merge)
            product[stage.name] = merge.key
    spec = ctx.spec.predict
    if spec is None:
        return steps
    several = len(spec.datasets) > 1
    for dataset in spec.datasets:
        predictions: dict[str, Path] = {}
        for row in spec.entries:
            step = PredictStep(ctx, row, dataset, "" if row.model == "base" else product[row.model], several)
            steps.append(step)
            predictions[row.name] = step.out_file
        steps.append(EvaluateStep(ctx, dataset, predictions, several))
    return steps
