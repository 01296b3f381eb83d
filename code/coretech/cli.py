"""``coretech``: one command with a subcommand per pipeline step.

This module only parses arguments and calls one library function per subcommand; nothing else in
the package imports it. Heavy imports (torch, transformers, LLaMA-Factory) happen inside the
handlers so that ``coretech --help`` and ``coretech ipc extract`` stay instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coretech import __version__
from coretech.errors import CoreTechError

DEFAULT_PIPELINE = "configs/pipelines/demo.yaml"


# --- prepare ---------------------------------------------------------------------------------


def _add_prepare_parser(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="build the embedded model, the CPT corpus or the SFT datasets")
    what = prepare.add_subparsers(dest="what", required=True)

    model = what.add_parser("model", help="convert the embedded SmolLM2 GGUF into a Hugging Face folder (once)")
    model.add_argument("--out", type=Path, default=None, help="target folder (default models/smollm2-135m-instruct)")
    model.set_defaults(handler=_prepare_model)

    cpt = what.add_parser("cpt", help="build the continued-pretraining corpus and register it for LLaMA-Factory")
    cpt.add_argument(
        "--config",
        type=Path,
        required=True,
        help="corpus settings, e.g. configs/smollm2-135m/prepare_cpt.yaml",
    )
    cpt.add_argument("--out", type=Path, required=True, help="dataset directory (gets dataset_info.json)")
    cpt.add_argument("--strict", action="store_true", help="stop at the first malformed record instead of counting it")
    cpt.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: all cores)")
    cpt.set_defaults(handler=_prepare_cpt)

    sft = what.add_parser("sft", help="build IPC_TASK / TECH_TASK QA datasets, splits and curriculum stages")
    sft.add_argument(
        "--input",
        type=Path,
        action="append",
        default=None,
        help="a table or alpaca/sharegpt file (repeatable; replaces the config's inputs)",
    )
    sft.add_argument(
        "--config", type=Path, default=None, help="SFT settings, e.g. configs/smollm2-135m/prepare_sft.yaml"
    )
    sft.add_argument("--out", type=Path, required=True, help="dataset directory (gets dataset_info.json)")
    sft.add_argument("--strict", action="store_true", help="stop at the first malformed row instead of counting it")
    sft.set_defaults(handler=_prepare_sft)

    rag = what.add_parser(
        "rag", help="write <name>_rag variants of the prepared SFT datasets with retrieved candidate codes"
    )
    rag.add_argument("--dataset-dir", type=Path, required=True, help="the prepared folder (has dataset_info.json)")
    rag.add_argument("--k", type=int, default=10, help="candidate codes per IPC_TASK question (default 10)")
    rag.add_argument(
        "--scheme",
        type=Path,
        action="append",
        default=None,
        help="an IPC scheme file, repeatable (default: the built-in full WIPO scheme)",
    )
    rag.set_defaults(handler=_prepare_rag)


def _prepare_model(args: argparse.Namespace) -> int:
    from coretech.models import ensure_embedded_model

    print(ensure_embedded_model(args.out))
    return 0


def _prepare_cpt(args: argparse.Namespace) -> int:
    from coretech.data.cpt import build_cpt_corpus, load_cpt_config

    report = build_cpt_corpus(load_cpt_config(args.config), args.out, strict=args.strict, workers=args.workers)
    print(report.markdown())
    return 0


def _prepare_sft(args: argparse.Namespace) -> int:
    from coretech.data.sft import build_sft_datasets, load_sft_config

    config = load_sft_config(args.config, inputs=args.input)
    report = build_sft_datasets(config, args.out, strict=args.strict)
    print(report.markdown())
    return 0


def _prepare_rag(args: argparse.Namespace) -> int:
    from coretech.ground.rag import build_rag_datasets
    from coretech.infer.constrain import load_scheme

    report = build_rag_datasets(args.dataset_dir, args.k, load_scheme(args.scheme))
    print(report.markdown())
    return 0


# --- train / run -----------------------------------------------------------------------------


def _add_run_parsers(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a whole pipeline: prepare → CPT → SFT stages → predict → evaluate")
    run.add_argument(
        "pipeline", nargs="?", default=DEFAULT_PIPELINE, help=f"pipeline file (default {DEFAULT_PIPELINE})"
    )
    run.add_argument(
        "overrides",
        nargs="*",
        help="OmegaConf dotlist overrides: train.max_steps=2, sft_stage1.learning_rate=1e-4, predict.max_samples=6",
    )
    run.add_argument("--run-dir", type=Path, default=None, help="run folder (default runs/<pipeline name>)")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what a real run would do per step (skip, run, resume, rerun, and why) and each command; "
        "launch nothing",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="DELETE the manifest, data/, predict/, eval/ and every stage folder, then rerun everything "
        "(without it, changed steps move their old output to previous-<time>/)",
    )
    run.set_defaults(handler=_run)

    validate = sub.add_parser("validate", help="pre-flight check of a pipeline without launching anything")
    validate.add_argument("pipeline", nargs="?", default=DEFAULT_PIPELINE)
    validate.add_argument("overrides", nargs="*")
    validate.add_argument("--run-dir", type=Path, default=None)
    validate.set_defaults(handler=_validate)

    train = sub.add_parser("train", help="run one LLaMA-Factory training recipe through the same launcher")
    train.add_argument("recipe", type=Path, help="a LLaMA-Factory YAML, e.g. configs/qwen2.5-7b/cpt.yaml")
    train.add_argument("overrides", nargs="*", help="key=value overrides of recipe keys")
    train.add_argument("--nproc-per-node", type=int, default=None, help="processes per node (default: all GPUs)")
    train.add_argument(
        "--log-dir", type=Path, default=None, help="where command.txt and train.log go (default: output_dir)"
    )
    train.add_argument("--dry-run", action="store_true")
    train.set_defaults(handler=_train)


def _run(args: argparse.Namespace) -> int:
    from coretech.pipeline import run_pipeline

    return run_pipeline(args.pipeline, args.overrides, run_dir=args.run_dir, dry_run=args.dry_run, fresh=args.fresh)


def _validate(args: argparse.Namespace) -> int:
    from coretech.pipeline import validate_pipeline

    return validate_pipeline(args.pipeline, args.overrides, run_dir=args.run_dir)


def _train(args: argparse.Namespace) -> int:
    from coretech.pipeline import train_recipe

    return train_recipe(
        args.recipe,
        args.overrides,
        nproc_per_node=args.nproc_per_node,
        log_dir=args.log_dir,
        dry_run=args.dry_run,
    )


# --- predict / chat / api --------------------------------------------------------------------


def _add_infer_parsers(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", help="batch generation over a dataset into generated_predictions.jsonl")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a run folder: use its final model (or --stage)")
    source.add_argument("--model", help="a model folder or hub id")
    predict.add_argument("--stage", default=None, help="with --run: which stage's model (default: the last)")
    predict.add_argument("--adapter", default=None, help="a LoRA adapter folder on top of --model")
    predict.add_argument("--dataset", required=True, help="dataset name in dataset_info.json, e.g. coretech_sft_test")
    predict.add_argument(
        "--dataset-dir",
        type=Path,
        default=None,
        help="folder with dataset_info.json (default: the run's data/, else the recipe's dataset_dir)",
    )
    predict.add_argument(
        "--recipe",
        type=Path,
        default=None,
        help="predict recipe with template and decoding settings (default with --run: the configs/*/predict.yaml "
        "whose template is the run's)",
    )
    predict.add_argument(
        "--backend",
        choices=["auto", "hf", "vllm", "retrieval"],
        default="auto",
        help="auto (default): vllm when a CUDA GPU and vLLM are present, otherwise hf; retrieval: the BM25 "
        "baseline (top-k codes from the IPC scheme and the training split; the model only encodes prompts)",
    )
    predict.add_argument(
        "--constrain-codes",
        action="store_true",
        help="every IPC code the model writes is a code of the scheme (also the recipe key constrain_codes: true)",
    )
    predict.add_argument(
        "--scheme",
        type=Path,
        action="append",
        default=None,
        help="IPC scheme file(s) for --constrain-codes and --backend retrieval (default: data/samples' scheme)",
    )
    predict.add_argument(
        "--k", type=int, default=None, help="codes per retrieval answer (default: recipe's retrieval_k, else 5)"
    )
    predict.add_argument("--out", type=Path, required=True, help="output file (generated_predictions.jsonl)")
    predict.add_argument("--max-samples", type=int, default=None, help="the first N records (default: the recipe's)")
    predict.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="prompts per generate call (default: the recipe's per_device_eval_batch_size; vllm: 512)",
    )
    predict.add_argument(
        "--replace",
        action="store_true",
        help="an --out written by another model or config is moved aside (<out>.previous-<UTC time>), not refused",
    )
    predict.set_defaults(handler=_predict)

    for name, help_text in (
        ("chat", "chat in the terminal with a model through `llamafactory-cli chat`"),
        ("api", "serve a model through `llamafactory-cli api` (OpenAI-compatible)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        source = cmd.add_mutually_exclusive_group()
        source.add_argument("--run", type=Path, help="a run folder: use its final model (or --stage)")
        source.add_argument("--recipe", type=Path, help=f"a LLaMA-Factory {name} recipe")
        cmd.add_argument("--stage", default=None, help="with --run: which stage's model (default: the last)")
        cmd.add_argument("overrides", nargs="*", help="key=value overrides of recipe keys, e.g. max_new_tokens=128")
        cmd.set_defaults(handler=_chat if name == "chat" else _api)


def _predict(args: argparse.Namespace) -> int:
    from coretech.infer.predict import predict_from_cli

    return predict_from_cli(args)


def _chat(args: argparse.Namespace) -> int:
    from coretech.infer.serve import run_chat

    return run_chat(run=args.run, recipe=args.recipe, stage=args.stage, overrides=args.overrides)


def _api(args: argparse.Namespace) -> int:
    from coretech.infer.serve import run_api

    return run_api(run=args.run, recipe=args.recipe, stage=args.stage, overrides=args.overrides)


# --- evaluate / ipc --------------------------------------------------------------------------


def _add_eval_parsers(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser("evaluate", help="score IPC / key-technology predictions into a metrics table")
    evaluate.add_argument("--predictions", type=Path, action="append", required=True, help="JSONL file (repeatable)")
    evaluate.add_argument("--name", action="append", default=None, help="run name per --predictions (repeatable)")
    evaluate.add_argument("--task", choices=["ipc", "tech", "auto"], default="auto")
    evaluate.add_argument(
        "--scheme",
        type=Path,
        action="append",
        default=None,
        help="IPC scheme file(s) for the invalid-code rate (default: the built-in WIPO IPC 2019.01 scheme; "
        "title tables alone, e.g. Chinese titles, are added to it)",
    )
    evaluate.add_argument("--prediction-field", default="predict")
    evaluate.add_argument("--reference-field", default="label")
    evaluate.add_argument(
        "--fuzzy-threshold",
        type=float,
        default=None,
        help="key-technology fuzzy match threshold, rapidfuzz ratio 0-100 (default 80)",
    )
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.set_defaults(handler=_evaluate)

    ipc = sub.add_parser("ipc", help="IPC code tools")
    ipc_sub = ipc.add_subparsers(dest="ipc_command", required=True)
    extract = ipc_sub.add_parser("extract", help="print the canonical IPC codes found in standard input")
    extract.set_defaults(handler=_ipc_extract)
    show = ipc_sub.add_parser(
        "show",
        help="each code with its title under its ancestors' titles (exit 1: a code not in the scheme, 2: malformed)",
    )
    show.add_argument("codes", nargs="+", metavar="CODE", help="IPC codes in any common form, e.g. 'G06N 3/063'")
    show.add_argument(
        "--scheme",
        type=Path,
        action="append",
        default=None,
        help="scheme file(s): WIPO XML or title list replace the built-in WIPO IPC 2019.01 scheme; title tables "
        "alone (e.g. Chinese titles, code,title,language CSV) are added to it",
    )
    show.set_defaults(handler=_ipc_show)


def _evaluate(args: argparse.Namespace) -> int:
    from coretech.eval.report import evaluate_from_cli

    return evaluate_from_cli(args)


def _ipc_extract(args: argparse.Namespace) -> int:
    from coretech.ipc import extract_ipc_codes

    for code in extract_ipc_codes(sys.stdin.read()):
        print(code)
    return 0


def _ipc_show(args: argparse.Namespace) -> int:
    from coretech.ipc import InvalidIpcCode, SchemeError, UnknownIpcCode, load_scheme
    from coretech.ipc.show import render_lineage
    from coretech.log import get_logger

    log = get_logger(__name__)
    try:
        scheme = load_scheme(args.scheme)
    except SchemeError as exc:
        raise CoreTechError(str(exc)) from None
    print(f"IPC scheme: {scheme.source}")
    status = 0
    for text in args.codes:
        try:
            code = scheme.require(text)
        except InvalidIpcCode:
            log.error("%r: malformed IPC symbol", text)
            status = 2
            continue
        except UnknownIpcCode as exc:
            log.error("%s", exc)
            status = max(status, 1)
            continue
        print()
        print("\n".join(render_lineage(scheme, code)))
    return status


def _add_general_eval_parser(sub: argparse._SubParsersAction) -> None:
    general = sub.add_parser(
        "general-eval",
        help="CMMLU / C-Eval / MMLU multiple choice (lm-evaluation-harness, offline) to see what CPT cost",
    )
    general.add_argument("--config", type=Path, default=Path("configs/eval/general.yaml"), help="benchmarks and shots")
    general.add_argument(
        "--model", action="append", default=None, help="model folder (repeatable; the first is the baseline)"
    )
    general.add_argument("--name", action="append", default=None, help="run name per --model (repeatable)")
    general.add_argument(
        "--benchmark", action="append", default=None, help="NAME=FOLDER local copy, overrides the config"
    )
    general.add_argument("--num-fewshot", type=int, default=None)
    general.add_argument("--limit", type=int, default=None, help="questions per subject (for a quick check)")
    general.add_argument("--batch-size", type=int, default=None)
    general.add_argument("--device", default=None, help="cuda, cpu, ...")
    general.add_argument("--out", type=Path, required=True)
    general.set_defaults(handler=_general_eval)


def _general_eval(args: argparse.Namespace) -> int:
    from coretech.eval.general import general_eval_from_cli

    return general_eval_from_cli(args)


# --- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coretech",
        description="CoreTech-LLM: build a patent-domain LLM (IPC codes, key technologies).",
    )
    parser.add_argument("--version", action="version", version=f"coretech {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare_parser(sub)
    _add_run_parsers(sub)
    _add_infer_parsers(sub)
    _add_eval_parsers(sub)
    _add_general_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may come after options: `coretech run demo.yaml --dry-run train.max_steps=2`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in item and not item.startswith("-") for item in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.handler(args) or 0)
    except CoreTechError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
