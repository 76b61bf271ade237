"""Fuzz the PyTorch zip checkpoint reader on raw bytes: ZIP tail, central directory, local headers, pickle.

python -m fuzz.fuzz_torch -atheris_runs=100000 fuzz/.corpus/torch
"""

from __future__ import annotations

from fuzz.harness import instrumented, run

with instrumented():
    from monitor.formats.fuzz import exercise

__all__ = ["one"]


def one(data: bytes) -> None:
    """Parse as a torch zip checkpoint and decode rows; only `FormatError` may escape `exercise`."""
    exercise(data, "torch")


if __name__ == "__main__":
    from fuzz.seeds import torch_seeds

    run("torch", one, seeds=torch_seeds)
