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
