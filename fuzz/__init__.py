"""Coverage-guided fuzzing (atheris) of every parser HubSentry runs on downloaded bytes.

One module per target (``python -m fuzz.<target> [libFuzzer flags] [CORPUS_DIR ...]``); `fuzz.harness` holds
the shared runner, `fuzz.seeds` the seed inputs, `fuzz.memfiles` an in-memory `FileSet`. Nothing here is
imported at package import time: each target must install atheris' coverage hooks *before* it imports the
parsers. See ``fuzz/README.md``.
"""
