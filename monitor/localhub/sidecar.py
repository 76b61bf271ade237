"""The sidecar ``.hub.json``: hub-side facts about a repo that its files cannot express.

On the Hub, visibility, gating, counters and dates live in the Hub's database, not in the repo. A
local repo states them in an optional ``.hub.json`` at its top level (never served as a file)::

    {"private": false, "gated": "manual", "createdAt": "2023-01-01T00:00:00Z",
     "lastModified": "2026-11-01T12:00:00Z", "downloads": 1200, "likes": 4, "trendingScore": 2,
     "tags": ["llama", "gguf"], "pipeline_tag": "text-generation", "library_name": "transformers",
     "author": "acme", "cardData": {"base_model": "acme/llama-7b"}}

Every key is optional; unknown keys and wrong types are errors (a typo must not silently publish a
private repo), and a repo whose sidecar is invalid is withheld until it is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.errors import FormatError
from monitor.localhub.wire import parse_iso_ms

__all__ = ["MAX_SIDECAR_BYTES", "SIDECAR_NAME", "Sidecar", "parse_sidecar"]

SIDECAR_NAME = ".hub.json"
MAX_SIDECAR_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Sidecar:
    """Hub-side facts about a repo that files cannot express (``.hub.json``; every key optional).

    Attributes:
        created_at_ms (`int | None`), last_modified_ms (`int | None`): overrides (ISO-8601 in the file).
        private (`bool`), gated (`bool | str`): ``False``, ``"auto"`` or ``"manual"``.
        disabled (`bool`), downloads (`int`), likes (`int`), trending_score (`int`).
        tags (`list[str] | None`): replaces the computed tags.
        pipeline_tag (`str | None`), library_name (`str | None`), author (`str | None`).
        card_data (`dict | None`): replaces the README front matter (e.g. ``{"base_model": ...}``).
    """

    created_at_ms: int | None = None
    last_modified_ms: int | None = None
    private: bool = False
    gated: bool | str = False
    disabled: bool = False
    downloads: int = 0
    likes: int = 0
    trending_score: int = 0
    tags: list[str] | None = None
    pipeline_tag: str | None = None
    library_name: str | None = None
    author: str | None = None
    card_data: dict[str, Any] | None = None


_SIDECAR_KEYS = {
    "createdAt",
    "lastModified",
    "private",
    "gated",
    "disabled",
    "downloads",
    "likes",
    "trendingScore",
    "tags",
    "pipeline_tag",
    "library_name",
    "cardData",
    "author",
}


def parse_sidecar(data: Any) -> Sidecar:
    """Validate a parsed ``.hub.json``.

    Raises:
        `FormatError`: unknown key or wrong type; the message names the key.
    """
    if not isinstance(data, dict):
        raise FormatError(".hub.json must be a JSON object")
    unknown = set(data) - _SIDECAR_KEYS
    if unknown:
        raise FormatError(f".hub.json: unknown keys {sorted(unknown)}; allowed: {sorted(_SIDECAR_KEYS)}")

    def typed(key: str, types: type | tuple[type, ...], default: Any) -> Any:
        value = data.get(key, default)
        if value is default:
            return value
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
            raise FormatError(f".hub.json: {key!r} has the wrong type ({type(value).__name__})")
        return value

    def stamp(key: str) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        try:
            return parse_iso_ms(value)
        except ValueError as exc:
            raise FormatError(f".hub.json: {key!r} is not an ISO-8601 timestamp: {value!r}") from exc

    gated = data.get("gated", False)
    if gated not in (False, "auto", "manual"):
        raise FormatError('.hub.json: "gated" must be false, "auto" or "manual"')
    tags = typed("tags", list, None)
    if tags is not None and not all(isinstance(t, str) for t in tags):
        raise FormatError('.hub.json: "tags" must be a list of strings')
    counters = {k: typed(k, int, 0) for k in ("downloads", "likes", "trendingScore")}
    if any(v < 0 for v in counters.values()):
        raise FormatError(".hub.json: counters must be >= 0")
    return Sidecar(
        created_at_ms=stamp("createdAt"),
        last_modified_ms=stamp("lastModified"),
        private=typed("private", bool, False),
        gated=gated,
        disabled=typed("disabled", bool, False),
        downloads=counters["downloads"],
        likes=counters["likes"],
        trending_score=counters["trendingScore"],
        tags=tags,
        pipeline_tag=typed("pipeline_tag", str, None),
        library_name=typed("library_name", str, None),
        author=typed("author", str, None),
        card_data=typed("cardData", dict, None),
    )


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
