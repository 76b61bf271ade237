"""Strict JSON for files we did not write: headers, shard indexes, configs, tokenizers.

`json.loads` silently keeps the last of two equal keys, accepts ``NaN``/``Infinity``, and raises
`RecursionError` or `ValueError` (for 5,000-digit integers) deep inside. A hostile safetensors header
can exploit the first (two readers disagreeing on which ``data_offsets`` is real) and the others
would leak exceptions that are not `FormatError`. Everything JSON in `monitor.formats` is decoded
here so the rules are the same everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from monitor.errors import FormatError

__all__ = ["MAX_JSON_DEPTH", "loads_strict"]

MAX_JSON_DEPTH = 64
"""Deepest nesting accepted; real headers, indexes and tokenizers stay below 10."""


class _DuplicateKey(ValueError):
    pass


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _depth(text: str) -> int:
    """Maximum bracket nesting outside strings (cheap pre-check that prevents `RecursionError`)."""
    depth = best = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def loads_strict(data: bytes | str, *, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Decode JSON, rejecting duplicate keys, NaN/Infinity, bad UTF-8 and deep nesting.

    Args:
        data (`bytes | str`): the document.
        what (`str`): names the document in error messages (``"model.safetensors: header"``).
        max_depth (`int`): deepest array/object nesting accepted.

    Returns:
        The decoded value.

    Raises:
        `FormatError`: the document is not strict, well-formed JSON.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{what}: not valid UTF-8 at byte {exc.start}") from None
    else:
        text = data
    # The bracket scan is linear and only needed when brackets could be deep at all.
    if text.count("[") + text.count("{") > max_depth and _depth(text) > max_depth:
        raise FormatError(f"{what}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_pairs_without_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as exc:
        raise FormatError(f"{what}: duplicate JSON key {str(exc)[:200]!r}") from None
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{what}: invalid JSON ({str(exc)[:200]})") from None
