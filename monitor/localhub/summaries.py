"""Server-side metadata the Hub computes from file contents: ``safetensors``, ``gguf``, ``config``, cardData.

The Hub answers ``expand=safetensors`` (parameter counts per dtype), ``expand=gguf`` (total parameters,
architecture, context length) and ``config`` without the client reading a byte of the weights. The local
hub computes the same from the headers, through a ``read(start, end)`` callable so that real and
virtual files are treated alike. Everything here reads hostile input: every length is bounded before
anything is allocated, and malformed input raises `monitor.errors.FormatError` with the reason.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from monitor.errors import FormatError

__all__ = [
    "MAX_GGUF_HEADER_BYTES",
    "MAX_SAFETENSORS_HEADER_BYTES",
    "card_data_from_readme",
    "config_summary",
    "gguf_summary",
    "read_safetensors_header",
    "safetensors_parameters",
]

Reader = Callable[[int, int], bytes]

MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
"""The ``safetensors`` library's own limit on the JSON header."""
MAX_GGUF_HEADER_BYTES = 256 * 1024 * 1024
"""KV metadata plus tensor infos; tokenizer arrays of big vocabularies take 5-16 MB, so this is generous."""
MAX_README_BYTES = 1024 * 1024
_GGUF_MAGIC = b"GGUF"
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_INT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_GGUF_MAX_COUNT = 1 << 32
_GGUF_MAX_NDIM = 8
_GGUF_MAX_STRING = 64 * 1024 * 1024
_GGUF_MAX_TOKENS = 4_000_000
_GGUF_GROW = 2 * 1024 * 1024


# -- safetensors -----------------------------------------------------------------------------------


def read_safetensors_header(read: Reader, size: int) -> dict[str, Any]:
    """Parse and validate the JSON header of a safetensors file.

    Returns:
        The header dict: ``{name: {dtype, shape, data_offsets}, "__metadata__": {...}?}``.

    Raises:
        `FormatError`: truncated file, oversized or non-JSON header, malformed entries, or offsets
            outside the file.
    """
    if size < 8:
        raise FormatError(f"safetensors file of {size} bytes has no header length")
    (n,) = struct.unpack("<Q", read(0, 8))
    if n > MAX_SAFETENSORS_HEADER_BYTES:
        raise FormatError(f"safetensors header of {n} bytes exceeds {MAX_SAFETENSORS_HEADER_BYTES}")
    if 8 + n > size:
        raise FormatError(f"safetensors header of {n} bytes runs past the end of a {size}-byte file")
    try:
        header = json.loads(read(8, 8 + n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError("safetensors header is not a JSON object")
    data_size = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict):
                raise FormatError("safetensors __metadata__ is not an object")
            continue
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
            raise FormatError(f"safetensors entry {name!r} has no dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_nonneg_int(d) for d in shape):
            raise FormatError(f"safetensors entry {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_nonneg_int(o) for o in offsets)
            or offsets[0] > offsets[1]
            or offsets[1] > data_size
        ):
            raise FormatError(f"safetensors entry {name!r} has invalid data_offsets {offsets!r}")
    return header


def _is_nonneg_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def safetensors_parameters(header: Mapping[str, Any]) -> dict[str, int]:
    """Parameter count per dtype, as the Hub's ``safetensors.parameters``."""
    counts: dict[str, int] = {}
    for name, info in header.items():
        if name != "__metadata__":
            counts[info["dtype"]] = counts.get(info["dtype"], 0) + math.prod(info["shape"])
    return counts


# -- gguf ------------------------------------------------------------------------------------------


class _GGUFCursor:
    """Sequential little-endian reader over a growing prefix of a file."""

    def __init__(self, read: Reader, size: int) -> None:
        self._read = read
        self._size = size
        self._buf = b""
        self.pos = 0

    def _need(self, n: int) -> None:
        end = self.pos + n
        if end > self._size:
            raise FormatError(f"GGUF header runs past the end of the file ({self._size} bytes)")
        if end > MAX_GGUF_HEADER_BYTES:
            raise FormatError(f"GGUF header exceeds {MAX_GGUF_HEADER_BYTES} bytes")
        if end > len(self._buf):
            target = min(self._size, MAX_GGUF_HEADER_BYTES, max(end, 2 * len(self._buf), _GGUF_GROW))
            self._buf += self._read(len(self._buf), target)

    def take(self, n: int) -> bytes:
        self._need(n)
        out = self._buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self._need(size)
        (value,) = struct.unpack_from(fmt, self._buf, self.pos)
        self.pos += size
        return value

    def count(self, what: str, limit: int) -> int:
        value = int(self.unpack("<Q"))
        if value > limit:
            raise FormatError(f"GGUF {what} {value} exceeds the limit {limit}")
        return value

    def string(self, *, keep: bool = True) -> str | None:
        n = self.count("string length", _GGUF_MAX_STRING)
        if not keep:
            self.skip(n)
            return None
        return self.take(n).decode("utf-8", errors="replace")


def _gguf_value(cur: _GGUFCursor, vtype: int, *, keep: bool, depth: int = 0) -> Any:
    if vtype in _GGUF_INT:
        return cur.unpack(_GGUF_INT[vtype])
    if vtype == 6:
        return cur.unpack("<f")
    if vtype == 12:
        return cur.unpack("<d")
    if vtype == 7:
        return bool(cur.unpack("<B"))
    if vtype == _GGUF_STRING:
        return cur.string(keep=keep)
    if vtype == _GGUF_ARRAY:
        if depth >= 4:
            raise FormatError("GGUF arrays nested too deeply")
        etype = cur.unpack("<I")
        n = cur.count("array length", _GGUF_MAX_COUNT)
        if etype in _GGUF_FIXED:
            cur.skip(n * _GGUF_FIXED[etype])
            return None
        if etype == _GGUF_STRING and keep:
            if n > _GGUF_MAX_TOKENS:
                raise FormatError(f"GGUF string array of {n} entries exceeds {_GGUF_MAX_TOKENS}")
            return [cur.string() for _ in range(n)]
        for _ in range(n):
            _gguf_value(cur, etype, keep=False, depth=depth + 1)
        return None
    raise FormatError(f"unknown GGUF value type {vtype}")


def gguf_summary(read: Reader, size: int) -> dict[str, Any]:
    """Parse a GGUF header into what the Hub's ``expand=gguf`` shows.

    Returns:
        ``{"total": parameters, "architecture": str?, "context_length": int?, "chat_template": str?,
        "bos_token": str?, "eos_token": str?}`` (optional keys only when present in the file).

    Raises:
        `FormatError`: not GGUF, unsupported version, or a malformed/oversized header.
    """
    cur = _GGUFCursor(read, size)
    if cur.take(4) != _GGUF_MAGIC:
        raise FormatError("not a GGUF file (bad magic)")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise FormatError(f"unsupported GGUF version {version} (only little-endian v2/v3)")
    n_tensors = cur.count("tensor count", 1 << 24)
    n_kv = cur.count("metadata count", 1 << 20)
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string() or ""
        vtype = cur.unpack("<I")
        keep = key in {"general.architecture", "tokenizer.chat_template", "tokenizer.ggml.tokens"} or (
            vtype != _GGUF_ARRAY and vtype != _GGUF_STRING
        )
        kv[key] = _gguf_value(cur, vtype, keep=keep)
    total = 0
    for _ in range(n_tensors):
        cur.string(keep=False)
        ndim = cur.unpack("<I")
        if ndim > _GGUF_MAX_NDIM:
            raise FormatError(f"GGUF tensor with {ndim} dimensions")
        dims = [cur.unpack("<Q") for _ in range(ndim)]
        cur.skip(4 + 8)  # type, offset
        total += math.prod(dims)
    out: dict[str, Any] = {"total": total}
    arch = kv.get("general.architecture")
    if isinstance(arch, str):
        out["architecture"] = arch
        ctx = kv.get(f"{arch}.context_length")
        if isinstance(ctx, int):
            out["context_length"] = ctx
    if isinstance(kv.get("tokenizer.chat_template"), str):
        out["chat_template"] = kv["tokenizer.chat_template"]
    tokens = kv.get("tokenizer.ggml.tokens")
    for which in ("bos", "eos"):
        tid = kv.get(f"tokenizer.ggml.{which}_token_id")
        if isinstance(tokens, list) and isinstance(tid, int) and 0 <= tid < len(tokens):
            out[f"{which}_token"] = tokens[tid]
    return out


# -- config and model card -------------------------------------------------------------------------

_CONFIG_KEYS = ("architectures", "model_type", "auto_map", "quantization_config", "task_specific_params")
_TOKENIZER_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "chat_template")


def config_summary(config: Any, tokenizer_config: Any = None) -> dict[str, Any]:
    """The subset of ``config.json`` (and ``tokenizer_config.json``) the Hub returns as ``config``.

    The Hub does not return the whole file; a client that needs layer sizes must read ``config.json``.
    """
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        out.update({k: config[k] for k in _CONFIG_KEYS if k in config})
    if isinstance(tokenizer_config, dict):
        tok = {k: tokenizer_config[k] for k in _TOKENIZER_KEYS if k in tokenizer_config}
        if tok:
            out["tokenizer_config"] = tok
    return out


def card_data_from_readme(text: str) -> dict[str, Any] | None:
    """The YAML front matter of a model card (``---`` fenced), as the Hub's ``cardData``.

    Returns ``None`` when there is no front matter; raises `FormatError` when it is not a YAML mapping.
    """
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    if lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            block = "\n".join(lines[1:i])
            break
    else:
        return None
    try:
        data = yaml.safe_load(block) if block.strip() else {}
    except yaml.YAMLError as exc:
        raise FormatError(f"model card front matter is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise FormatError("model card front matter is not a mapping")
    card: dict[str, Any] = _json_safe(data)
    return card


def _json_safe(value: Any) -> Any:
    """YAML may yield dates and other non-JSON scalars; render them as strings."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    return str(value)
