"""Fuzz a whole model as the daemon opens it: weight file plus hostile ``config.json`` and ``tokenizer.json``.

Each input is framed by `fuzz.seeds.frame_model` (format byte, config, tokenizer, weights) and opened with
`monitor.formats.canonical.ModelView` — discovery, the format reader, config and quantisation parsing, name
mapping, canonical tensors, the vocabulary and a read of every canonical tensor — through an in-memory
fileset with a 16 MiB byte budget, as a hub repo has. Allowed outcomes: success, `FormatError`,
`BudgetExceeded` (the pipeline turns both into a note on the item).

    python -m fuzz.fuzz_modelview -atheris_runs=100000 fuzz/.corpus/modelview
"""

from __future__ import annotations

from fuzz.harness import instrumented, run

with instrumented():
    from monitor.errors import BudgetExceeded, FormatError
    from monitor.formats.canonical import ModelView

from fuzz.memfiles import MemoryFileSet
from fuzz.seeds import unframe_model

__all__ = ["BUDGET", "one"]

BUDGET = 16 * 1024 * 1024


def one(data: bytes) -> None:
    """Open, read the vocabulary and every canonical tensor of the framed model."""
    files = unframe_model(data)
    if not files:
        return
    try:
        view = ModelView.open(MemoryFileSet(files, budget=BUDGET))
        view.vocab()
        for key in view.tensors:
            view.read(key)
    except (FormatError, BudgetExceeded):
        pass


if __name__ == "__main__":
    from fuzz.seeds import modelview_seeds

    run("modelview", one, seeds=modelview_seeds)
