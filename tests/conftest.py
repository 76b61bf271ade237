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
