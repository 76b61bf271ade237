"""Fuzz the symbolic pickle interpreter, alone and inside a well-formed torch checkpoint.

Random bytes rarely survive the ZIP layer, so this target mutates ``data.pkl`` itself: each input is
interpreted directly (`monitor.formats.pickleops.interpret`) and then wrapped in a valid torch zip
(`fuzz.seeds.torch_archive`) and opened as a checkpoint, which exercises storage references, offsets,
strides and dtypes against real stored members. Nothing named in a pickle may ever be imported or called:
the target also checks that interpreting imported no module.

    python -m fuzz.fuzz_pickle -atheris_runs=100000 fuzz/.corpus/pickle
"""

from __future__ import annotations

import contextlib
import sys

from fuzz.harness import instrumented, run

with instrumented():
    from monitor.errors import FormatError
    from monitor.formats.fuzz import exercise
    from monitor.formats.pickleops import interpret

from fuzz.seeds import torch_archive

__all__ = ["one"]


def one(data: bytes) -> None:
    """Interpret ``data`` as a pickle, then as the ``data.pkl`` of a torch checkpoint."""
    before = set(sys.modules)
    with contextlib.suppress(FormatError):
        interpret(data, path="fuzz/data.pkl")
    imported = set(sys.modules) - before
    if imported:
        raise AssertionError(f"interpreting a pickle imported modules: {sorted(imported)}")
    exercise(torch_archive(data), "torch")


if __name__ == "__main__":
    from fuzz.seeds import pickle_seeds

    run("pickle", one, seeds=pickle_seeds)
