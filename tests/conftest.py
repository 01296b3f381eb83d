"""Shared fixtures: the repository root, the sample inputs and the real embedded model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "data" / "samples"

# Tests never reach a model hub: the embedded model is converted from the pip-installed GGUF.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def samples() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """The real SmolLM2-135M-Instruct as a Hugging Face folder (converted once, then reused)."""
    from coretech.models import ensure_embedded_model

    return ensure_embedded_model(REPO_ROOT / "models" / "smollm2-135m-instruct").resolve()


@pytest.fixture(scope="session")
def prepared_demo_data(tmp_path_factory, embedded_model) -> Path:
    """The demo's datasets built for real from data/samples with the demo's prepare settings."""
    from coretech.data.cpt import build_cpt_corpus, load_cpt_config
    from coretech.data.sft import build_sft_datasets, load_sft_config

    out = tmp_path_factory.mktemp("prepared")
    cwd = Path.cwd()
    os.chdir(REPO_ROOT)  # the settings name repository-relative inputs
    try:
        build_cpt_corpus(load_cpt_config(Path("configs/smollm2-135m/prepare_cpt.yaml")), out)
        build_sft_datasets(load_sft_config(Path("configs/smollm2-135m/prepare_sft.yaml")), out)
    finally:
        os.chdir(cwd)
    return out
