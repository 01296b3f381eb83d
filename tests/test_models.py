"""The embedded model: converted once from the pip-installed GGUF into a folder every tool accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from coretech.errors import CoreTechError
from coretech.models import (
    check_model_reference,
    embedded_gguf_path,
    is_complete,
    looks_like_local_path,
    require_local_model,
)


def test_the_gguf_ships_inside_the_installed_package():
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_converted_folder_is_a_normal_hf_model_with_consistent_special_tokens(embedded_model):
    config = AutoConfig.from_pretrained(embedded_model)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    assert config.model_type == "llama"
    assert tokenizer.eos_token_id == config.eos_token_id  # <|im_end|>, not the GGUF's <|im_start|>
    assert tokenizer.eos_token == "<|im_end|>"  # noqa: S105 - a token, not a password
    assert tokenizer.pad_token_id == config.pad_token_id
    assert is_complete(embedded_model)


def test_a_folder_without_the_marker_or_of_an_older_format_is_converted_again(tmp_path, embedded_model):
    (tmp_path / "config.json").write_text((embedded_model / "config.json").read_text())
    assert not is_complete(tmp_path)  # interrupted conversion: no marker
    (tmp_path / "coretech_model.json").write_text(json.dumps({"format": 1}))
    assert not is_complete(tmp_path)


# --- local model paths: a missing folder is one line at once, never a hub lookup -------------------

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("models/smollm2-135m-instruct", True),
        ("./models/x", True),
        ("../x", True),
        ("/abs/model", True),
        ("~/model", True),
        ("runs/demo/sft_stage3/merged", True),
        ("Qwen/Qwen2.5-7B-Instruct", False),
        ("gpt2", False),
    ],
)
def test_what_counts_as_a_local_path(name: str, local: bool) -> None:
    assert looks_like_local_path(name) is local


def test_a_missing_local_model_is_one_line_and_a_hub_id_passes(tmp_path: Path, embedded_model: Path) -> None:
    with pytest.raises(CoreTechError, match=r"^model path models/nope does not exist \(from .*\); a local path"):
        require_local_model("models/nope")
    with pytest.raises(CoreTechError, match=r"adapter path \./missing-adapter does not exist"):
        check_model_reference("./missing-adapter", "adapter path")
    check_model_reference("Qwen/Qwen2.5-7B-Instruct")  # a hub id: not checked here, not looked up
    assert require_local_model(embedded_model) == embedded_model


def _offline_unset_env() -> dict[str, str]:
    """The user's environment: no HF_HUB_OFFLINE, so a hub lookup would retry against the unreachable hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "code"), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "--model", "models/smollm2-135m-instruct", "--dataset", "d", "--dataset-dir", "data"],
        ["api", "--recipe", str(REPO / "configs/smollm2-135m/api.yaml")],
    ],
    ids=["predict", "api"],
)
def test_run_from_a_folder_without_models_fails_at_once_naming_the_path(argv: list[str], tmp_path: Path) -> None:
    if argv[0] == "predict":
        argv = [*argv, "--recipe", str(REPO / "configs/smollm2-135m/predict.yaml"), "--out", str(tmp_path / "p")]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "coretech", *argv],
        cwd=tmp_path,
        env=_offline_unset_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "models/smollm2-135m-instruct does not exist" in line and str(tmp_path) in line
    assert "Traceback" not in done.stderr and "huggingface.co" not in done.stderr
    assert seconds < 10, seconds  # measured 0.5-0.7 s; before: 53 s of hub retries (prepare cpt)
