"""The embedded model: converted once from the pip-installed GGUF into a folder every tool accepts."""

from __future__ import annotations

import json

from transformers import AutoConfig, AutoTokenizer

from coretech.models import embedded_gguf_path, is_complete


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
