"""Batch prediction: LLaMA-Factory-identical prompts, the real hf backend on the embedded model,
resuming, backend choice and the vLLM engine arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from coretech.cli import main
from coretech.config import ConfigError, load_yaml
from coretech.data.records import SkipLog
from coretech.errors import CoreTechError
from coretech.infer.identity import claim_output, meta_path, prediction_identity
from coretech.infer.predict import choose_backend, read_complete_lines, run_prediction
from coretech.infer.prompts import dataset_files, encode_records, load_tokenizer_and_template, read_records
from coretech.infer.recipe import load_predict_recipe
from coretech.infer.vllm import build_engine_kwargs, build_sampling_kwargs, vllm_available

QUESTIONS = [
    ("Which IPC codes does this technical field involve?", "Lithium-ion battery electrodes", "H01M4/00", "ipc"),
    ("Which key technologies does this field contain?", "Autonomous driving", "lidar; path planning", "tech"),
    ("这个技术领域涉及哪些IPC分类号？", "手术机器人", "A61B34/30", "ipc"),
    ("Which key technologies does this field contain?", "Smart grids", "power forecasting", "tech"),
    ("Which IPC codes does this technical field involve?", "Image recognition", "G06V10/00", "ipc"),
]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The suite runs on 2 cores shared with other jobs, where one torch thread decodes several times
    faster than one per core (docs/benchmarks.md, Inference); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    """An alpaca test set with trace fields, a sharegpt set and one unusable record of each kind."""
    folder = tmp_path / "data"
    folder.mkdir()
    alpaca = [
        {"instruction": q, "input": i, "output": o, "task": t, "domain": i, "source": "fixture"}
        for q, i, o, t in QUESTIONS
    ]
    alpaca.insert(2, {"instruction": "", "input": "", "output": "nothing was asked", "task": "ipc"})
    (folder / "test.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in alpaca), encoding="utf-8"
    )
    sharegpt = [
        {
            "conversations": [
                {"from": "human", "value": "Name one IPC section."},
                {"from": "gpt", "value": "H"},
                {"from": "human", "value": "Which IPC codes does battery cooling involve?"},
                {"from": "gpt", "value": "H01M10/60"},
            ],
            "system": "You are a patent examiner.",
        },
        {"conversations": [{"from": "gpt", "value": "an answer without a question"}]},
    ]
    (folder / "chat.json").write_text(json.dumps(sharegpt), encoding="utf-8")
    info = {
        "demo_test": {"file_name": "test.jsonl"},
        "demo_chat": {
            "file_name": "chat.json",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
        },
    }
    (folder / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


@pytest.fixture
def quick_recipe(repo_root: Path, tmp_path: Path) -> Path:
    """The demo predict recipe with answers cut to 16 tokens so the real model runs in seconds."""
    values = load_yaml(repo_root / "configs/smollm2-135m/predict.yaml")
    values["max_new_tokens"] = 16
    path = tmp_path / "predict.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def _claim_as_base(out: Path, recipe: Path, model: Path) -> None:
    """The sidecar a run of the base model with ``recipe`` writes, for hand-written earlier lines."""
    settings = load_predict_recipe(recipe)
    generation = json.loads(json.dumps(settings.generating_args().to_dict(), default=str))
    identity = prediction_identity(
        model=str(model),
        adapter=None,
        generation=generation,
        dataset="demo_test",
        template=settings.template,
        answering={"constrain_codes": False},
    )
    claim_output(out, identity)


def _encode(recipe: Path, model: Path, dataset_dir: Path, name: str):
    settings = load_predict_recipe(recipe)
    data_args = settings.data_args()
    tokenizer, template = load_tokenizer_and_template(settings.model_args(str(model), None), data_args)
    skips = SkipLog()
    attr, files = dataset_files(dataset_dir, name)
    encoded = encode_records(read_records(files, skips), attr, tokenizer, template, data_args, skips)
    return encoded, skips, tokenizer


@pytest.mark.parametrize("name", ["demo_test", "demo_chat"])
def test_prompts_are_token_identical_to_llamafactory_predict(
    name: str, dataset_dir: Path, quick_recipe: Path, embedded_model: Path, tmp_path: Path
) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    encoded, skips, _ = _encode(quick_recipe, embedded_model, dataset_dir, name)
    values = load_yaml(quick_recipe)
    values.update(
        model_name_or_path=str(embedded_model),
        dataset_dir=str(dataset_dir),
        eval_dataset=name,
        output_dir=str(tmp_path / "lf"),
        preprocessing_num_workers=None,
    )
    model_args, data_args, training_args, _, _ = get_train_args(values)
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    reference = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["eval_dataset"]

    rows = list(reference)
    if name == "demo_test":
        # LLaMA-Factory encodes the record with an empty question; we count it as skipped instead.
        empty = rows.pop(2)
        assert "<|im_start|>user\n<|im_end|>" in module["tokenizer"].decode(empty["input_ids"])
    # (The broken conversation LLaMA-Factory drops itself, with a warning and no count.)
    assert [e.prompt_ids for e in encoded] == [list(r["input_ids"]) for r in rows]
    decoded_labels = [module["tokenizer"].decode(r["labels"], skip_special_tokens=True) for r in rows]
    assert [e.label for e in encoded] == decoded_labels
    assert skips.total == 1
    (reason,) = skips.counts
    assert reason == ("empty question" if name == "demo_test" else "invalid conversation (LLaMA-Factory drops it)")
    assert next(iter(skips.examples.values()))[0].startswith(str(dataset_dir))  # file and line or record


def test_sharegpt_history_and_system_reach_the_prompt(
    dataset_dir: Path, quick_recipe: Path, embedded_model: Path
) -> None:
    (item,), _, _ = _encode(quick_recipe, embedded_model, dataset_dir, "demo_chat")
    assert item.prompt.startswith("<|im_start|>system\nYou are a patent examiner.<|im_end|>")
    assert "Name one IPC section.<|im_end|>\n<|im_start|>assistant\nH<|im_end|>" in item.prompt
    assert item.prompt.endswith("battery cooling involve?<|im_end|>\n<|im_start|>assistant\n")
    assert item.label.strip() == "H01M10/60"


def test_hf_backend_predicts_then_resumes_after_a_kill(
    dataset_dir: Path, quick_recipe: Path, embedded_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    encoded, _, _ = _encode(quick_recipe, embedded_model, dataset_dir, "demo_test")
    out = tmp_path / "predict" / "generated_predictions.jsonl"
    out.parent.mkdir()
    # Two lines from an earlier run, then the start of a third cut off by a kill mid-write.
    earlier = [{"prompt": e.prompt, "predict": f"EARLIER-{i}", "label": e.label} for i, e in enumerate(encoded[:2])]
    _claim_as_base(out, quick_recipe, embedded_model)
    out.write_text("".join(json.dumps(x) + "\n" for x in earlier) + '{"prompt": "<|im_st', encoding="utf-8")

    result = run_prediction(
        model=str(embedded_model),
        adapter=None,
        dataset_dir=dataset_dir,
        dataset="demo_test",
        out_file=out,
        recipe=quick_recipe,
        backend="auto",
        max_samples=5,  # raw records: 4 usable (the empty one is counted and skipped)
        batch_size=2,
    )
    assert "backend: hf (auto: no CUDA GPU)" in capsys.readouterr().err
    assert (result.backend, result.total, result.skipped_existing, result.written) == ("hf", 4, 2, 2)
    assert result.items_per_second > 0
    assert result.skipped_records["by_reason"] == {"empty question": 1}

    lines = [json.loads(raw) for raw in out.read_text(encoding="utf-8").splitlines()]
    assert [x["predict"] for x in lines[:2]] == ["EARLIER-0", "EARLIER-1"]  # kept, not regenerated
    assert [x["prompt"] for x in lines] == [e.prompt for e in encoded[:4]]  # in order, none twice
    for line, item in zip(lines[2:], encoded[2:4], strict=True):
        assert set(line) == {"prompt", "predict", "label", "task", "domain", "source"}
        assert isinstance(line["predict"], str) and line["predict"].strip()
        assert line["task"] == item.trace["task"] and line["label"] == item.label

    again = run_prediction(
        model=str(embedded_model),
        adapter=None,
        dataset_dir=dataset_dir,
        dataset="demo_test",
        out_file=out,
        recipe=quick_recipe,
        backend="hf",
        max_samples=5,
    )
    assert (again.written, again.skipped_existing, again.load_seconds) == (0, 4, 0.0)  # no model loaded
    assert out.read_text(encoding="utf-8").count("\n") == 4


def test_resume_refuses_predictions_of_other_prompts(
    dataset_dir: Path, quick_recipe: Path, embedded_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "generated_predictions.jsonl"
    _claim_as_base(out, quick_recipe, embedded_model)
    out.write_text(json.dumps({"prompt": "another question", "predict": "x", "label": "y"}) + "\n")
    with pytest.raises(CoreTechError, match=r"generated_predictions\.jsonl:1: was written for another prompt"):
        run_prediction(
            model=str(embedded_model),
            adapter=None,
            dataset_dir=dataset_dir,
            dataset="demo_test",
            out_file=out,
            recipe=quick_recipe,
            backend="hf",
        )


def test_complete_lines_truncates_only_the_partial_tail(tmp_path: Path) -> None:
    out = tmp_path / "p.jsonl"
    out.write_bytes(b'{"predict": "a"}\n{"predict": "b"}\n{"predi')
    assert [x["predict"] for x in read_complete_lines(out)] == ["a", "b"]
    assert out.read_bytes() == b'{"predict": "a"}\n{"predict": "b"}\n'
    out.write_bytes(b'{"predict": "a"}\nnot json\n')
    with pytest.raises(CoreTechError, match=r"p\.jsonl:2: not a prediction line"):
        read_complete_lines(out)


def test_predict_with_run_uses_the_manifest_model_and_run_data(
    dataset_dir: Path, quick_recipe: Path, embedded_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    dataset_dir.rename(run / "data")
    manifest = {
        "stages": {
            "sft_stage1": {"status": "done", "model": str(embedded_model), "adapter": None, "template": "smollm2"}
        },
        "order": ["sft_stage1"],
        "final_stage": "sft_stage1",
    }
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    out = run / "predict" / "generated_predictions.jsonl"
    argv = ["predict", "--run", str(run), "--recipe", str(quick_recipe), "--dataset", "demo_test"]
    status = main([*argv, "--backend", "hf", "--out", str(out), "--max-samples", "1"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"dataset: demo_test in {run / 'data'}" in captured.err
    assert "1 written, 0 already there, 1 in total (hf" in captured.out
    (line,) = [json.loads(raw) for raw in out.read_text(encoding="utf-8").splitlines()]
    assert line["predict"].strip() and line["domain"] == QUESTIONS[0][1]


def test_backend_choice_says_what_and_why() -> None:
    import torch

    chosen, reason = choose_backend("auto")
    if not torch.cuda.is_available():
        assert (chosen, reason) == ("hf", "auto: no CUDA GPU")
    elif not vllm_available():
        assert chosen == "hf" and "pip install -r requirements-gpu.txt" in reason
    else:
        assert chosen == "vllm"
    assert choose_backend("hf") == ("hf", "requested")
    with pytest.raises(CoreTechError, match="unknown backend"):
        choose_backend("sglang")


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
def test_vllm_backend_without_vllm_is_one_line_with_the_install_command(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["predict", "--model", "m", "--dataset", "demo_test", "--dataset-dir", str(dataset_dir)]
    argv += ["--recipe", "configs/smollm2-135m/predict.yaml", "--backend", "vllm", "--out", str(tmp_path / "p")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith("error: the vllm backend needs vLLM")
    assert "`pip install -r requirements-gpu.txt`" in line
    assert "Traceback" not in err and err.rstrip().endswith(line)
    assert not (tmp_path / "p").exists()


def test_vllm_engine_arguments_from_the_qwen_recipe(repo_root: Path) -> None:
    recipe = load_predict_recipe(repo_root / "configs/qwen2.5-7b/predict.yaml")
    kwargs = build_engine_kwargs(recipe.model_args("runs/x/final", None), device_count=8)
    assert kwargs["model"] == "runs/x/final"
    assert kwargs["tensor_parallel_size"] == 4  # the recipe's vllm_config wins over the visible GPUs
    assert (kwargs["max_model_len"], kwargs["gpu_memory_utilization"], kwargs["dtype"]) == (4096, 0.9, "bfloat16")
    assert kwargs["enable_lora"] is False and "max_lora_rank" not in kwargs
    assert kwargs["enforce_eager"] is False and kwargs["trust_remote_code"] is False

    with_adapter = build_engine_kwargs(recipe.model_args("Qwen/Qwen2.5-7B-Instruct", "saves/lora"), 4)
    assert with_adapter["enable_lora"] is True and with_adapter["max_lora_rank"] == 32

    sampling = build_sampling_kwargs(recipe.generating_args(), stop_token_ids=[151645, 151643])
    assert sampling["temperature"] == 0.0 and sampling["top_p"] == 1.0  # do_sample: false → greedy
    assert sampling["max_tokens"] == 512 and sampling["stop_token_ids"] == [151645, 151643]

    with pytest.raises(CoreTechError, match="one LoRA adapter"):
        build_engine_kwargs(recipe.model_args("m", "a,b"), 4)


def test_vllm_engine_follows_the_visible_gpus_without_vllm_config(repo_root: Path) -> None:
    recipe = load_predict_recipe(repo_root / "configs/qwen2.5-7b/predict.yaml", {"vllm_config": None})
    assert build_engine_kwargs(recipe.model_args("m", None), device_count=2)["tensor_parallel_size"] == 2
    assert build_engine_kwargs(recipe.model_args("m", None), device_count=0)["tensor_parallel_size"] == 1


def test_recipe_typo_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "predict.yaml"
    path.write_text("template: smollm2\nmax_new_token: 16\n")
    with pytest.raises(ConfigError, match=r"predict\.yaml: unknown key 'max_new_token'"):
        load_predict_recipe(path)


def test_unknown_dataset_names_the_dataset_info_file(dataset_dir: Path) -> None:
    with pytest.raises(CoreTechError, match=r"dataset_info\.json: no dataset named 'nope' \(registered: demo_chat"):
        dataset_files(dataset_dir, "nope")


def test_a_test_set_without_usable_records_is_an_error(
    tmp_path: Path, quick_recipe: Path, embedded_model: Path
) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "t.jsonl").write_text(json.dumps({"instruction": " ", "input": "", "output": "x"}) + "\n")
    (folder / "dataset_info.json").write_text(json.dumps({"t": {"file_name": "t.jsonl"}}))
    with pytest.raises(CoreTechError, match=r"t\.jsonl: dataset 't' has no usable records \(1 empty question\)"):
        run_prediction(
            model=str(embedded_model),
            adapter=None,
            dataset_dir=folder,
            dataset="t",
            out_file=tmp_path / "p.jsonl",
            recipe=quick_recipe,
            backend="hf",
        )


def _lora_adapter(model: Path, folder: Path) -> Path:
    """A real (freshly initialised) LoRA adapter on the embedded model, saved as PEFT writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(folder)
    return folder


def test_predict_into_an_out_of_another_model_is_refused_or_moved_aside(
    dataset_dir: Path, quick_recipe: Path, embedded_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "predict" / "generated_predictions.jsonl"
    common = ["predict", "--dataset", "demo_test", "--dataset-dir", str(dataset_dir), "--recipe", str(quick_recipe)]
    common += ["--backend", "hf", "--out", str(out)]
    assert main([*common, "--model", str(embedded_model), "--max-samples", "1"]) == 0
    base_lines = out.read_text(encoding="utf-8")
    assert json.loads(meta_path(out).read_text(encoding="utf-8"))["adapter"] is None
    capsys.readouterr()

    adapter = _lora_adapter(embedded_model, tmp_path / "adapter")
    with_adapter = [*common, "--model", str(embedded_model), "--adapter", str(adapter), "--max-samples", "2"]
    assert main(with_adapter) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: {out}: holds answers of another model or config (adapter: None (None) → {adapter}")
    assert "--replace" in line and "Traceback" not in err
    assert out.read_text(encoding="utf-8") == base_lines  # nothing appended by the other model

    other_recipe = tmp_path / "longer.yaml"
    other_recipe.write_text(quick_recipe.read_text(encoding="utf-8").replace("max_new_tokens: 16", "max_new_tokens: 8"))
    other = [*common, "--model", str(embedded_model), "--max-samples", "2"]
    other[other.index(str(quick_recipe))] = str(other_recipe)
    assert main(other) == 2
    assert "(generation setting max_new_tokens: 16 → 8)" in capsys.readouterr().err

    assert main([*with_adapter, "--replace"]) == 0
    captured = capsys.readouterr()
    assert "2 written, 0 already there" in captured.out
    (aside,) = out.parent.glob("generated_predictions.jsonl.previous-*Z")
    assert f"moved aside to {aside}" in captured.err
    assert aside.read_text(encoding="utf-8") == base_lines
    assert meta_path(aside).is_file() and json.loads(meta_path(aside).read_text())["adapter"] is None
    assert json.loads(meta_path(out).read_text(encoding="utf-8"))["paths"]["adapter"] == str(adapter)
    assert out.read_text(encoding="utf-8").count("\n") == 2

    # The same model and settings again: resume as before (one more line, none regenerated).
    before = out.read_text(encoding="utf-8")
    assert main([*with_adapter[:-2], "--max-samples", "4"]) == 0  # record 3 is the empty question
    assert "1 written, 2 already there" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8").startswith(before)


def test_model_fingerprint_follows_content_not_location(tmp_path: Path) -> None:
    import os
    import shutil

    from coretech.infer.identity import model_fingerprint

    first = tmp_path / "a" / "model"
    first.mkdir(parents=True)
    (first / "config.json").write_text('{"model_type": "llama"}')
    weights = bytearray(os.urandom(3 << 20))
    (first / "model.safetensors").write_bytes(weights)
    (first / "optimizer.pt.log").write_text("not part of the model")
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(first, moved)
    assert model_fingerprint(str(first)) == model_fingerprint(str(moved))  # a moved run folder still resumes
    weights[len(weights) // 2] ^= 0xFF  # another checkpoint of the same shape: differs in the middle
    (moved / "model.safetensors").write_bytes(weights)
    assert model_fingerprint(str(first)) != model_fingerprint(str(moved))
    assert model_fingerprint("Qwen/Qwen2.5-7B-Instruct") == "hub:Qwen/Qwen2.5-7B-Instruct"
