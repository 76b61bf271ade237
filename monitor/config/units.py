"""Human units in the config file: durations (``"5m"``) and sizes (``"64MiB"``), both ways."""

from __future__ import annotations

import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds in ``value``: ``"30s"``, ``"5m"``, ``"1h30m"``, ``"500ms"``, ``"1d"`` or a number of seconds.

    Raises:
        `ValueError`: not a non-negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(value)
        return float(value)
    if not isinstance(value, str):
        raise ValueError(value)
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError(value)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            raise ValueError(value)
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(value)
    return total


def parse_size(value: object) -> int:
    """Bytes in ``value``: ``"64MiB"``, ``"1GB"``, ``"512KiB"``, ``"100B"`` or a number of bytes.

    Raises:
        `ValueError`: not a non-negative size.
    """
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(value)
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(value)
    unit = (match.group(2) or "B").lower()
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    """Shortest exact spelling of ``seconds`` in the duration syntax (``300.0`` → ``"5m"``)."""
    if seconds == 0:
        return "0s"
    for unit in ("w", "d", "h", "m", "s"):
        n = seconds / _DURATION_UNITS[unit]
        if n >= 1 and float(n).is_integer():
            return f"{int(n)}{unit}"
    ms = seconds * 1000
    if float(ms).is_integer():
        return f"{int(ms)}ms"
    return f"{seconds:g}s"


def format_size(nbytes: int) -> str:
    """Shortest exact spelling of ``nbytes`` (``67108864`` → ``"64MiB"``)."""
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "KB"):
        factor = _SIZE_UNITS[unit.lower()]
        if nbytes >= factor and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return f"{nbytes}B"
