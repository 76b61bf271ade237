"""Strict JSON decoding for untrusted documents."""

from __future__ import annotations

import pytest

from monitor.errors import FormatError
from monitor.formats.jsonstrict import loads_strict


def test_accepts_ordinary_json_and_brackets_inside_strings():
    assert loads_strict(b'{"a": [1, {"b": "[[[[{{{{"}]}', what="x") == {"a": [1, {"b": "[[[[{{{{"}]}
    assert loads_strict('"\\"[[["', what="x", max_depth=1) == '"[[['


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b'{"a": {"b": 1, "b": 2}}', "duplicate JSON key 'b'"),
        (b'{"a": Infinity}', "non-standard JSON constant"),
        (b"[-NaN]", "invalid JSON"),
        (b"\xc3\x28", "not valid UTF-8 at byte 0"),
        (b"[" * 70 + b"]" * 70, "nested deeper than 64"),
        (b'{"a": 1', "invalid JSON"),
        (b"1" * 5000, "invalid JSON"),
    ],
)
def test_rejections(doc, message):
    with pytest.raises(FormatError, match=message):
        loads_strict(doc, what="doc.json")
