"""The ``.hub.json`` sidecar: accepted values and the errors for everything else."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from monitor.errors import FormatError
from monitor.localhub.sidecar import parse_sidecar


def test_sidecar_validation() -> None:
    sc = parse_sidecar(
        {
            "createdAt": "2024-05-01T10:00:00Z",
            "gated": "auto",
            "private": True,
            "likes": 3,
            "cardData": {"base_model": "a/b"},
            "tags": ["x"],
        }
    )
    assert sc.created_at_ms == int(datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp() * 1000)
    assert (sc.gated, sc.private, sc.likes, sc.tags) == ("auto", True, 3, ["x"])
    for bad, match in [
        ({"nope": 1}, "unknown keys"),
        ({"private": "yes"}, "private"),
        ({"gated": True}, "gated"),
        ({"createdAt": "yesterday"}, "createdAt"),
        ({"likes": -1}, "counters"),
        ({"tags": [1]}, "tags"),
        ({"downloads": True}, "downloads"),
        ([], "object"),
    ]:
        with pytest.raises(FormatError, match=match):
            parse_sidecar(bad)
