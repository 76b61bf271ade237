"""Test-wide setup: hermetic Hugging Face client settings, temp homes, loopback only."""

from __future__ import annotations

import os
import tempfile

# huggingface_hub reads these at import time; set them before any test module imports it.
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hubsentry-hf-home-"))
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_ENDPOINT", None)

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder with the real all-MiniLM-L6-v2 files (model.safetensors, vocab.txt, config.json)."""
    from monitor.synth.assets import asset_path

    return asset_path("minilm")


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF file written by llama.cpp."""
    from monitor.synth.assets import ASSETS, asset_path

    return asset_path("smollm2-q4_1") / ASSETS["smollm2-q4_1"].main_file
