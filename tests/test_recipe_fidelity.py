"""The 7B recipes keep the reference run's hyperparameters (configs/qwen2.5-7b/README.md has the table)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parent.parent / "configs" / "qwen2.5-7b"
SFT_STAGES = ["sft_stage1.yaml", "sft_stage2.yaml", "sft_stage3.yaml"]
REFERENCE_GPUS = 4


def _load(name: str) -> dict:
    return yaml.safe_load((RECIPES / name).read_text(encoding="utf-8"))


def test_cpt_matches_the_reference() -> None:
    cpt = _load("cpt.yaml")
    batch = cpt["per_device_train_batch_size"] * cpt["gradient_accumulation_steps"] * REFERENCE_GPUS
    assert batch == 272
    assert (cpt["flash_attn"], cpt["val_size"], cpt["eval_strategy"]) == ("fa2", 0.02, "steps")
    assert (cpt["save_steps"], cpt["eval_steps"]) == (1000, 1000)
    assert cpt["deepspeed"] == "configs/deepspeed/ds_z3_config.json"


@pytest.mark.parametrize("name", [*SFT_STAGES, "sft_shuffled.yaml"])
def test_sft_matches_the_reference(name: str) -> None:
    sft = _load(name)
    assert sft["gradient_accumulation_steps"] == 2
    assert "deepspeed" not in sft  # plain DDP
    assert (sft["template"], sft["val_size"], sft["eval_strategy"]) == ("default", 0.01, "steps")
    assert (sft["save_steps"], sft["logging_steps"]) == (20, 10)
    assert sft["num_train_epochs"] == 15.0


def test_curriculum_sees_every_record_as_often_as_the_reference() -> None:
    """Disjoint stages: each record is in one stage, so epochs per stage = epochs over all the data."""
    prepare = _load("prepare_sft.yaml")
    assert prepare["curriculum"]["mode"] == "disjoint"
    assert {_load(name)["num_train_epochs"] for name in SFT_STAGES} == {15.0}


def test_every_runtime_recipe_uses_the_training_template() -> None:
    for name in ("predict.yaml", "chat.yaml", "api.yaml", "merge_cpt.yaml"):
        assert _load(name)["template"] == "default", name


def test_api_is_greedy_on_llamafactorys_vllm_engine() -> None:
    """LLaMA-Factory's vLLM engine ignores do_sample and samples at the recipe's temperature."""
    from llamafactory.hparams import GeneratingArguments

    api = _load("api.yaml")
    args = GeneratingArguments(**{k: api[k] for k in ("do_sample", "temperature", "top_p", "max_new_tokens")})
    assert args.to_dict()["temperature"] == 0.0
