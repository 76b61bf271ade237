"""Token strings from tokenizer.json (BPE/WordPiece/Unigram + added tokens) and vocab.txt."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models

from monitor.errors import FormatError
from monitor.formats.vocab import (
    MAX_TOKENIZER_BYTES,
    read_vocab,
    vocab_from_tokenizer_json,
    vocab_from_vocab_txt,
)
from monitor.remote.source import FileEntry, LocalFileSet


def _doc(model: dict, added: list | None = None) -> bytes:
    return json.dumps({"version": "1.0", "model": model, "added_tokens": added or []}).encode()


def test_bpe_written_by_the_tokenizers_library(tmp_path):
    tok = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
    tok.add_special_tokens(["<s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    assert vocab_from_tokenizer_json((tmp_path / "tokenizer.json").read_bytes()) == ["a", "b", "ab", "<s>"]


def test_unigram_written_by_the_tokenizers_library(tmp_path):
    tok = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁hi", -1.0), ("x", -2.0)], 0))
    tok.save(str(tmp_path / "tokenizer.json"))
    assert vocab_from_tokenizer_json((tmp_path / "tokenizer.json").read_bytes()) == ["<unk>", "▁hi", "x"]


def test_gaps_and_added_tokens_overriding():
    doc = _doc(
        {"type": "WordPiece", "vocab": {"a": 0, "c": 2}},
        [{"id": 3, "content": "[X]"}, {"id": 0, "content": "A"}],
    )
    assert vocab_from_tokenizer_json(doc) == ["A", "", "c", "[X]"]


def test_vocab_txt():
    assert vocab_from_vocab_txt(b"[PAD]\r\nhello\n##lo\n") == ["[PAD]", "hello", "##lo"]
    with pytest.raises(FormatError, match="UTF-8"):
        vocab_from_vocab_txt(b"\xff\n")


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"[]", "no 'model'"),
        (_doc({"type": "BPE", "vocab": {"a": -1}}), "token id"),
        (_doc({"type": "BPE", "vocab": {"a": True}}), "token id"),
        (_doc({"type": "BPE", "vocab": {"a": 1 << 30}}), "token id"),
        (_doc({"type": "Unigram", "vocab": [[1, 0.0]]}), "Unigram vocab entry"),
        (_doc({"type": "Weird"}), "neither an object nor a list"),
        (_doc({"type": "BPE", "vocab": {}}, [{"id": 1}]), "added_tokens"),
        (b'{"model": {"vocab": {"a": 0, "a": 1}}}', "duplicate JSON key"),
    ],
)
def test_malformed_tokenizers(doc, message):
    with pytest.raises(FormatError, match=message):
        vocab_from_tokenizer_json(doc)


def test_read_vocab_prefers_tokenizer_json_and_enforces_size(tmp_path):
    (tmp_path / "vocab.txt").write_text("x\ny\n")
    fs = LocalFileSet(tmp_path)
    assert read_vocab(fs) == ["x", "y"]
    (tmp_path / "tokenizer.json").write_bytes(_doc({"type": "BPE", "vocab": {"t": 0}}))
    fs = LocalFileSet(tmp_path)
    assert read_vocab(fs) == ["t"]
    fs.files["tokenizer.json"] = FileEntry("tokenizer.json", MAX_TOKENIZER_BYTES + 1)
    with pytest.raises(FormatError, match="tokenizer limit"):
        read_vocab(fs)
    assert read_vocab(LocalFileSet(tmp_path), folder="nowhere") is None
