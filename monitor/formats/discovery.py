"""Which files of a repo hold the model's weights, decided from the file list alone (0 bytes read).

Order of preference:

1. **safetensors**: a root ``*.safetensors.index.json`` (``model.safetensors.index.json`` first), else
   root ``model.safetensors``, else a complete root shard series ``<name>-0000k-of-0000n.safetensors``,
   else the remaining root ``*.safetensors``. Adapters (``adapter_model*``) and sub-module folders
   (``1_Pooling/``, ``onnx/``, ``text_encoder/``) are ignored; Mistral's ``consolidated*`` duplicate is
   used only when nothing else is there.
2. **GGUF**: repos often hold a dozen quantisations of one model. One file (or one complete shard
   series) is chosen by the quantisation in its name, in `GGUF_PREFERENCE` order: ``Q8_0`` first
   (≈0.4% RMS error at half the bytes per row of F16), then ``Q6_K``, ``F16``/``BF16`` (exact, 2 bytes
   per value), then decreasing precision. Vision projectors (``mmproj``) and imatrix files are skipped.
3. **PyTorch**: ``pytorch_model.bin.index.json``, ``pytorch_model.bin``, a ``pytorch_model`` shard
   series, else a single root ``*.bin``/``*.pt``/``*.pth`` that is not training state.

Callers override all of this with an explicit file or list of files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from monitor.errors import FormatError, UnsupportedFormat
from monitor.remote.source import FileEntry

__all__ = ["GGUF_PREFERENCE", "WeightSelection", "gguf_quant_label", "select_weights"]

GGUF_PREFERENCE = (
    "Q8_0",
    "Q6_K",
    "F16",
    "BF16",
    "Q5_K_M",
    "Q5_K_L",
    "Q5_K_S",
    "Q5_K",
    "Q5_1",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_L",
    "Q4_K_S",
    "Q4_K",
    "Q4_1",
    "Q4_0",
    "IQ4_XS",
    "IQ4_NL",
    "MXFP4",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q3_K",
    "IQ3_M",
    "IQ3_S",
    "IQ3_XS",
    "IQ3_XXS",
    "Q2_K_S",
    "Q2_K",
    "IQ2_M",
    "IQ2_S",
    "IQ2_XS",
    "IQ2_XXS",
    "IQ1_M",
    "IQ1_S",
    "TQ2_0",
    "TQ1_0",
    "F32",
)
"""GGUF quantisation labels, most preferred first (F32 last: 4 bytes per value for no gain)."""

_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.(?P<ext>safetensors|gguf|bin)$")
_LABEL = re.compile(
    r"(?<![A-Z0-9])("
    + "|".join(sorted(map(re.escape, GGUF_PREFERENCE), key=len, reverse=True))
    + r")(?![A-Z0-9])"
)
_TRAINING_STATE = re.compile(
    r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|rng_state.*\.pth|"
    r"adapter_model\.bin|.*\.index\.json)$"
)


@dataclass(frozen=True)
class WeightSelection:
    """The weight files chosen for a model.

    Attributes:
        format (`str`): ``safetensors``, ``gguf`` or ``torch``.
        files (`tuple[str, ...]`): repo-relative paths of the weight files.
        index (`str | None`): the shard index file, when there is one.
    """

    format: str
    files: tuple[str, ...]
    index: str | None = None


def gguf_quant_label(path: str) -> str | None:
    """The quantisation label in a GGUF file name (``Q4_K_M``...), if any."""
    found = _LABEL.findall(path.rsplit("/", 1)[-1].upper().replace("-", "_").replace(".", "_"))
    return found[-1] if found else None


def _format_of(path: str) -> str:
    if path.endswith(".safetensors") or path.endswith(".safetensors.index.json"):
        return "safetensors"
    if path.endswith(".gguf"):
        return "gguf"
    if path.endswith((".bin", ".pt", ".pth", ".bin.index.json")):
        return "torch"
    raise UnsupportedFormat(f"{path}: not a weight file we read (safetensors, GGUF, PyTorch zip)")


def _complete_series(paths: Sequence[str]) -> dict[tuple[str, str, int], list[str]]:
    series: dict[tuple[str, str, int], dict[int, str]] = {}
    for p in paths:
        m = _SHARD.match(p)
        if m:
            key = (m["stem"], m["ext"], int(m["n"]))
            series.setdefault(key, {})[int(m["i"])] = p
    return {k: [v[i] for i in sorted(v)] for k, v in series.items() if sorted(v) == list(range(1, k[2] + 1))}


def _explicit(files: Mapping[str, FileEntry], weights: Sequence[str]) -> WeightSelection:
    for w in weights:
        if w not in files:
            raise FormatError(f"weight file {w!r} is not in the repo")
    formats = {_format_of(w) for w in weights}
    if len(formats) != 1:
        raise FormatError(f"weight files {list(weights)} mix formats {sorted(formats)}")
    fmt = formats.pop()
    if len(weights) == 1 and weights[0].endswith(".index.json"):
        return WeightSelection(fmt, (), weights[0])
    return WeightSelection(fmt, tuple(weights))


def _safetensors(root: list[str]) -> WeightSelection | None:
    indexes = sorted(p for p in root if p.endswith(".safetensors.index.json") and not p.startswith("adapter"))
    if indexes:
        preferred = (
            [p for p in indexes if p == "model.safetensors.index.json"]
            or [p for p in indexes if not p.startswith("consolidated")]
            or indexes
        )
        return WeightSelection("safetensors", (), preferred[0])
    tensors = sorted(p for p in root if p.endswith(".safetensors") and not p.startswith("adapter"))
    if not tensors:
        return None
    if "model.safetensors" in tensors:
        return WeightSelection("safetensors", ("model.safetensors",))
    non_consolidated = [p for p in tensors if not p.startswith("consolidated")] or tensors
    series = _complete_series(non_consolidated)
    if series:
        key = min(series, key=lambda k: (k[0] != "model", k[0]))
        return WeightSelection("safetensors", tuple(series[key]))
    return WeightSelection("safetensors", tuple(non_consolidated))


def _gguf(paths: list[str]) -> WeightSelection | None:
    ggufs = [p for p in paths if p.endswith(".gguf") and not re.search(r"mmproj|imatrix", p, re.IGNORECASE)]
    if not ggufs:
        return None
    series = _complete_series(ggufs)
    in_series = {p for ps in series.values() for p in ps}
    candidates = [(p,) for p in ggufs if not _SHARD.match(p)] + [tuple(ps) for ps in series.values()]
    if not candidates:
        raise FormatError(f"GGUF shards without a complete series: {sorted(set(ggufs) - in_series)[:5]}")

    def rank(files: tuple[str, ...]) -> tuple[int, str]:
        label = gguf_quant_label(files[0])
        return (GGUF_PREFERENCE.index(label) if label else len(GGUF_PREFERENCE), files[0])

    return WeightSelection("gguf", min(candidates, key=rank))


def _torch(root: list[str]) -> WeightSelection | None:
    if "pytorch_model.bin.index.json" in root:
        return WeightSelection("torch", (), "pytorch_model.bin.index.json")
    if "pytorch_model.bin" in root:
        return WeightSelection("torch", ("pytorch_model.bin",))
    series = _complete_series([p for p in root if p.startswith("pytorch_model")])
    if series:
        return WeightSelection("torch", tuple(series[min(series)]))
    candidates = sorted(
        p for p in root if p.endswith((".bin", ".pt", ".pth")) and not _TRAINING_STATE.match(p)
    )
    if len(candidates) == 1:
        return WeightSelection("torch", (candidates[0],))
    if candidates:
        raise FormatError(f"several PyTorch checkpoints {candidates[:5]}; name the one to read")
    return None


def select_weights(
    files: Mapping[str, FileEntry], *, weights: str | Sequence[str] | None = None
) -> WeightSelection:
    """Choose the weight files of a repo (see the module docstring for the rules).

    Args:
        files (`Mapping[str, FileEntry]`): the repo's files.
        weights (`str | Sequence[str] | None`): explicit weight file(s) or shard index.

    Raises:
        `UnsupportedFormat`: no weight file in a supported format.
        `FormatError`: an explicit file is missing, formats are mixed, or the choice is ambiguous.
    """
    if weights is not None:
        return _explicit(files, [weights] if isinstance(weights, str) else list(weights))
    paths = sorted(files)
    root = [p for p in paths if "/" not in p]
    for choose in (lambda: _safetensors(root), lambda: _gguf(paths), lambda: _torch(root)):
        selection = choose()
        if selection is not None:
            return selection
    raise UnsupportedFormat(
        "no weight files found (looked for *.safetensors, *.gguf, pytorch_model*.bin, *.pt, *.pth)"
    )
