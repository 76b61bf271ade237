"""Fuzz the GGUF reader: magic, version, key/value metadata, strings, arrays, tensor table, quant blocks.

python -m fuzz.fuzz_gguf -atheris_runs=100000 fuzz/.corpus/gguf
"""

from __future__ import annotations

from fuzz.harness import instrumented, run

with instrumented():
    from monitor.formats.fuzz import exercise

__all__ = ["one"]


def one(data: bytes) -> None:
    """Parse as GGUF and decode rows (dequantising blocks); only `FormatError` may escape `exercise`."""
    exercise(data, "gguf")


if __name__ == "__main__":
    from fuzz.seeds import gguf_seeds

    run("gguf", one, seeds=gguf_seeds)
