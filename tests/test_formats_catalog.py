"""The catalog's building blocks: layer-order keys and a mapping whose membership costs nothing.

The catalog itself (keys from an index, entries resolved from shard headers on use) is exercised through
`ModelView` in ``tests/test_canonical_lazy.py``.
"""

from __future__ import annotations

import pytest

from monitor.errors import UnsupportedFormat
from monitor.formats.catalog import LazyMapping, natural_key


def test_natural_order_puts_layer_2_before_layer_10():
    keys = ["layers.10.mlp.up", "embed", "layers.2.mlp.up", "layers.2.attn.q", "final_norm"]
    assert sorted(keys, key=natural_key) == [
        "embed",
        "final_norm",
        "layers.2.attn.q",
        "layers.2.mlp.up",
        "layers.10.mlp.up",
    ]


def test_lazy_mapping_resolves_only_values():
    resolved: list[str] = []
    keys = ["a", "b", "bad"]

    def get(key: str) -> int:
        resolved.append(key)
        if key == "bad":
            raise UnsupportedFormat("bad: not readable")
        return ord(key)

    m = LazyMapping(lambda: list(keys), keys.__contains__, get)
    assert "a" in m
    assert "z" not in m
    assert 3 not in m  # type: ignore[operator]
    assert list(m) == keys
    assert len(m) == 3
    assert resolved == []  # membership, iteration and length resolve nothing
    assert m["b"] == 98
    assert m.get("z") is None
    with pytest.raises(KeyError):
        m["z"]
    with pytest.raises(UnsupportedFormat, match="not readable"):
        m.get("bad")  # an unreadable value is an error, not a silent None
    assert resolved == ["b", "bad"]
