"""Fuzz the safetensors reader: header length, JSON header, dtypes, shapes, offsets, row reads.

python -m fuzz.fuzz_safetensors -atheris_runs=100000 fuzz/.corpus/safetensors
"""

from __future__ import annotations

from fuzz.harness import instrumented, run

with instrumented():
    from monitor.formats.fuzz import exercise

__all__ = ["one"]


def one(data: bytes) -> None:
    """Parse as safetensors and decode rows; only `FormatError` may escape `exercise`."""
    exercise(data, "safetensors")


if __name__ == "__main__":
    from fuzz.seeds import safetensors_seeds

    run("safetensors", one, seeds=safetensors_seeds)
