"""Token strings by id, from ``tokenizer.json``, ``vocab.txt`` or a GGUF token list.

Fingerprints match embedding rows of two models by token *string*, because fine-tunes add, drop and
reorder ids. ``tokenizer.json`` (the ``tokenizers`` format) keeps the vocabulary in ``model.vocab``:
a ``{token: id}`` object for BPE, WordPiece and WordLevel, a ``[[piece, score], ...]`` list for
Unigram; ``added_tokens`` entries (``{"id", "content"}``) come on top. Files are read through the
fileset so their bytes are counted, and are capped at `MAX_TOKENIZER_BYTES`.
"""

from __future__ import annotations

from monitor.errors import FormatError
from monitor.formats.jsonstrict import loads_strict
from monitor.remote.source import FileSet

__all__ = [
    "MAX_TOKENIZER_BYTES",
    "MAX_VOCAB",
    "TOKENIZER_FILES",
    "read_vocab",
    "vocab_from_tokenizer_json",
    "vocab_from_vocab_txt",
]

MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
"""Largest tokenizer file read (Gemma's tokenizer.json is ~34 MB)."""
MAX_VOCAB = 1 << 22
"""Largest token id + 1 accepted (vocabularies reach 262k)."""
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
"""Files `read_vocab` looks for, in order of preference."""


def _id(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_VOCAB:
        raise FormatError(f"{where}: token id {value!r} is not an integer in [0, {MAX_VOCAB})")
    return value


def vocab_from_tokenizer_json(data: bytes, *, path: str = "tokenizer.json") -> list[str]:
    """Token strings by id from a ``tokenizer.json`` document; ids without a token are ``""``.

    Raises:
        `FormatError`: malformed JSON, an unknown model layout, or bad ids.
    """
    doc = loads_strict(data, what=path)
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise FormatError(f"{path}: no 'model' object")
    by_id: dict[int, str] = {}
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        for token, tid in vocab.items():
            by_id[_id(tid, path)] = token
    elif isinstance(vocab, list):
        for i, item in enumerate(vocab):
            if not isinstance(item, list) or not item or not isinstance(item[0], str):
                raise FormatError(f"{path}: Unigram vocab entry {i} is not [piece, score]")
            by_id[_id(i, path)] = item[0]
    else:
        raise FormatError(
            f"{path}: model.vocab is neither an object nor a list (model type {model.get('type')!r})"
        )
    added = doc.get("added_tokens") or []
    if not isinstance(added, list):
        raise FormatError(f"{path}: added_tokens must be a list")
    for item in added:
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise FormatError(f"{path}: added_tokens entries need 'id' and 'content'")
        by_id[_id(item.get("id"), path)] = item["content"]
    if not by_id:
        return []
    out = [""] * (max(by_id) + 1)
    for tid, token in by_id.items():
        out[tid] = token
    return out


def vocab_from_vocab_txt(data: bytes, *, path: str = "vocab.txt") -> list[str]:
    """Token strings of a WordPiece ``vocab.txt`` (one token per line, id = line number)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_VOCAB:
        raise FormatError(f"{path}: {len(lines)} tokens exceed the limit of {MAX_VOCAB}")
    return [line.removesuffix("\r") for line in lines]


def read_vocab(fileset: FileSet, *, folder: str = "") -> list[str] | None:
    """Read the first tokenizer file of `TOKENIZER_FILES` present in ``folder``; ``None`` if none.

    Raises:
        `FormatError`: the file is too large or malformed.
    """
    for name in TOKENIZER_FILES:
        path = f"{folder}/{name}" if folder else name
        entry = fileset.files.get(path)
        if entry is None:
            continue
        if entry.size > MAX_TOKENIZER_BYTES:
            raise FormatError(
                f"{path}: {entry.size} bytes exceeds the tokenizer limit of {MAX_TOKENIZER_BYTES}"
            )
        src = fileset.open(path)
        data = src.read(0, src.size)
        if name == "tokenizer.json":
            return vocab_from_tokenizer_json(data, path=path)
        return vocab_from_vocab_txt(data, path=path)
    return None
