"""Fuzz the tokenizer readers and the strict JSON decoder they use (``tokenizer.json``, ``vocab.txt``).

python -m fuzz.fuzz_tokenizer -atheris_runs=100000 fuzz/.corpus/tokenizer
"""

from __future__ import annotations

import contextlib

from fuzz.harness import instrumented, run

with instrumented():
    from monitor.errors import FormatError
    from monitor.formats.jsonstrict import loads_strict
    from monitor.formats.vocab import vocab_from_tokenizer_json, vocab_from_vocab_txt

__all__ = ["one"]


def one(data: bytes) -> None:
    """Each reader returns a list of strings or raises `FormatError`; nothing else."""
    for read in (vocab_from_tokenizer_json, vocab_from_vocab_txt):
        with contextlib.suppress(FormatError):
            tokens = read(data)
            if not all(isinstance(t, str) for t in tokens):
                raise AssertionError(f"{read.__name__} returned a non-string token")
    with contextlib.suppress(FormatError):
        loads_strict(data, what="fuzz.json")


if __name__ == "__main__":
    from fuzz.seeds import tokenizer_seeds

    run("tokenizer", one, seeds=tokenizer_seeds)
