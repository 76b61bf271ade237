"""The shared atheris runner: coverage hooks, seed corpora, libFuzzer flags with safe defaults.

Every target module does the same three things, in this order::

    from fuzz.harness import instrumented, run
    with instrumented():                       # coverage hooks on monitor.* before it is imported
        from monitor.formats.fuzz import exercise
    def one(data: bytes) -> None: exercise(data, "safetensors")
    if __name__ == "__main__":
        run("safetensors", one)

`run` gives libFuzzer a per-input timeout and a memory ceiling unless the command line sets them (a hang or
a blow-up is a finding, exactly like an exception), creates each corpus folder named on the command line
and, when it is empty, fills it with the target's seeds (`fuzz.seeds`), so a campaign starts from real files
rather than from nothing. Without a corpus folder it uses a fresh temporary one.

The contract under test (`monitor.formats.fuzz`): for any input a parser returns a parsed file whose reads
succeed, or raises `FormatError`. Any other exception, a hang or an out-of-memory is reported by libFuzzer
with the input saved as ``crash-*``/``timeout-*``/``oom-*`` under ``-artifact_prefix``.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["DEFAULT_FLAGS", "INSTRUMENTED_PACKAGES", "instrumented", "prepare_argv", "run"]

INSTRUMENTED_PACKAGES = ("monitor.formats", "monitor.remote.source", "monitor.errors")
"""Modules whose code gets coverage hooks: the parsers and what they call."""

DEFAULT_FLAGS = {
    "-timeout": "10",  # seconds per input: a parser must never take longer on a few KiB
    "-rss_limit_mb": "2048",  # a few KiB of input must never make the process grow past this
    "-max_len": "65536",  # headers, pickles and tokenizers; larger inputs only slow the search
}
"""libFuzzer flags applied unless the command line gives its own value."""


@contextlib.contextmanager
def instrumented() -> Iterator[None]:
    """Import the code under test inside this block so atheris can trace its branches."""
    import atheris

    with atheris.instrument_imports(include=list(INSTRUMENTED_PACKAGES)):
        yield


def prepare_argv(argv: Sequence[str], *, target: str, seeds: Callable[[], dict[str, bytes]]) -> list[str]:
    """libFuzzer argv with default flags added and every corpus folder created and seeded.

    Args:
        argv (`Sequence[str]`): ``sys.argv`` (program name first).
        target (`str`): the target's name, for the temporary corpus folder.
        seeds (`Callable[[], dict[str, bytes]]`): file name -> seed input; called only when a folder is empty.

    Returns:
        The argument list to hand to ``atheris.Setup``.
    """
    program, *rest = list(argv)
    flags = [a for a in rest if a.startswith("-")]
    folders = [a for a in rest if not a.startswith("-")]
    given = {flag.split("=", 1)[0] for flag in flags}
    runs_only = any(Path(f).is_file() for f in folders)  # reproducing crash files: no corpus to seed
    for name, value in DEFAULT_FLAGS.items():
        if name not in given:
            flags.append(f"{name}={value}")
    if not folders:
        folders = [tempfile.mkdtemp(prefix=f"hubsentry-fuzz-{target}-")]
    if not runs_only:
        for folder in folders:
            path = Path(folder)
            path.mkdir(parents=True, exist_ok=True)
            if not any(path.iterdir()):
                for file_name, data in seeds().items():
                    (path / file_name).write_bytes(data)
    return [program, *flags, *folders]


def run(target: str, one: Callable[[bytes], None], *, seeds: Callable[[], dict[str, bytes]]) -> None:
    """Fuzz ``one`` until libFuzzer stops (``-atheris_runs``, ``-max_total_time``) or finds a bug."""
    import atheris

    atheris.Setup(prepare_argv(sys.argv, target=target, seeds=seeds), one)
    atheris.Fuzz()
