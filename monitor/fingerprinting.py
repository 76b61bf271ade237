"""Reading what the fingerprints need: a full reference from a protected model, a few rows from a suspect.

This is the only module that knows both the canonical model view (`monitor.formats.canonical.ModelView`,
which turns byte ranges into arrays) and the statistics (`fingerprints`). Protected models are read in full
once; suspects are read through a byte budget, with the secret choosing which rows:

* one contiguous block of token-embedding rows per tokenizer (the rows every protected model sharing that
  vocabulary was profiled on),
* ``layers`` MLP layers spread over the depth, and in each a contiguous block of ``rows_per_layer`` units
  from whichever tensor stores units contiguously (``up`` rows for float checkpoints and GGUF, ``down``
  columns for GPTQ/AWQ), plus the norm gain feeding the MLP.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fingerprints import (
    LayerSample,
    ReferenceBuilder,
    ReferenceFingerprint,
    SuspectSample,
    choose_layers,
    choose_token_block,
    choose_unit_block,
)
from fingerprints.tokens import best_rewrite, normalize_token
from monitor.errors import FormatError, UnsupportedFormat
from monitor.findings import ALGO
from monitor.formats.canonical import ModelView

__all__ = ["SamplingSettings", "build_reference", "read_sample", "vocab_key"]


@dataclass(frozen=True)
class SamplingSettings:
    """How much to read (config section ``[fingerprint]``).

    Attributes:
        tokens (`int`): embedding rows in the token block.
        layers (`int`): MLP layers sampled per suspect.
        rows_per_layer (`int`): MLP units per sampled layer.
    """

    tokens: int = 256
    layers: int = 4
    rows_per_layer: int = 64


def vocab_key(tokens: Sequence[str]) -> str:
    """Identity of a vocabulary by content (models sharing a tokenizer share their token block)."""
    h = hashlib.sha256()
    for t in tokens:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _skip_specials(vocab_size: int) -> int:
    """Leave out the first ids (special/control tokens, often untrained), at most 1% of the vocabulary."""
    return min(1000, vocab_size // 100)


def _arch_dict(view: ModelView) -> dict[str, object]:
    arch = asdict(view.arch)
    arch.pop("extra", None)
    return arch


def _has(view: ModelView, key: str) -> bool:
    return key in view.tensors


def _mlp_gain(view: ModelView, layer: int) -> np.ndarray | None:
    key = f"layers.{layer}.mlp_norm"
    return view.read(key).reshape(-1) if _has(view, key) else None


def build_reference(
    view: ModelView, *, name: str, secret: bytes, settings: SamplingSettings, vocab_digest: str | None = None
) -> ReferenceFingerprint:
    """Read a protected model in full (layer by layer) and build its reference fingerprint.

    Raises:
        `UnsupportedFormat`: the model has no tokenizer vocabulary or no MLP layers we can read.
    """
    vocab = view.vocab()
    if not vocab:
        raise UnsupportedFormat(
            f"{name}: no tokenizer vocabulary found (tokenizer.json, vocab.txt or GGUF tokens); "
            "protected models need one so uploads can be matched by token strings"
        )
    if not _has(view, "embed"):
        raise UnsupportedFormat(f"{name}: no token embedding tensor found")
    n_vocab = min(len(vocab), view.tensors["embed"].shape[0])
    start, end = choose_token_block(
        secret,
        vocab_key=vocab_key(vocab[:n_vocab]),
        vocab_size=n_vocab,
        n_tokens=settings.tokens,
        skip_first=_skip_specials(n_vocab),
    )
    ids = np.arange(start, end)
    embed = view.read_rows("embed", range(start, end))
    builder = ReferenceBuilder(
        name=name,
        algo=ALGO,
        arch=_arch_dict(view),
        tokens=[vocab[i] for i in ids],
        token_ids=ids,
        embed=embed,
        vocab_digest=vocab_digest,
    )
    n_layers = view.arch.n_layers
    if n_layers <= 0 or not _has(view, "layers.0.mlp.up"):
        raise UnsupportedFormat(f"{name}: no MLP layers found")
    for i in range(n_layers):
        units: dict[str, np.ndarray] = {"up": view.read(f"layers.{i}.mlp.up")}
        if _has(view, f"layers.{i}.mlp.gate"):
            units["gate"] = view.read(f"layers.{i}.mlp.gate")
        if _has(view, f"layers.{i}.mlp.down"):
            units["down"] = view.read(f"layers.{i}.mlp.down").T
        builder.add_layer(i, units, mlp_gain=_mlp_gain(view, i))
    final = view.read("final_norm").reshape(-1) if _has(view, "final_norm") else None
    return builder.build(
        final_norm=final, meta={"vocab_key": vocab_key(vocab[:n_vocab]), "block": [int(start), int(end)]}
    )


def _suspect_ids(
    view: ModelView, tokens: Sequence[str], refs: Iterable[ReferenceFingerprint]
) -> tuple[list[str], np.ndarray, str]:
    """Suspect ids of the wanted token strings (and the string rewrite that found them); zero bytes when
    the tokenizer file is a known one."""
    digest = view.tokenizer_digest
    wanted = list(dict.fromkeys(tokens))
    if digest:
        for ref in refs:
            if ref.vocab_digest == digest:
                by_token = dict(zip(ref.tokens, ref.token_ids.tolist(), strict=True))
                if all(t in by_token for t in wanted):
                    return wanted, np.asarray([by_token[t] for t in wanted], dtype=np.int64), "identity"
    vocab = view.vocab()
    if not vocab:
        raise UnsupportedFormat("suspect has no tokenizer vocabulary; cannot pair embedding rows with tokens")
    n_rows = view.tensors["embed"].shape[0]
    index = {t: i for i, t in enumerate(vocab) if i < n_rows}
    # Converters rewrite token strings (llama.cpp turns WordPiece ``##ing`` into ``ing`` and ``the`` into
    # ``▁the``): pick the exact rewrite that finds the most tokens, and return the *protected* strings for
    # the rows found, so the statistics pair them exactly.
    rewrite, rewritten = best_rewrite(wanted, index)
    pairs = [(t, index[r]) for t, r in zip(wanted, rewritten, strict=True) if r in index]
    if len(pairs) < len(wanted) // 2:
        # Unknown conversion: fall back to marker-stripped strings, keeping only unambiguous ones.
        counts = Counter(normalize_token(t) for t in index)
        norm_index = {normalize_token(t): i for t, i in index.items() if counts[normalize_token(t)] == 1}
        seen = {t for t, _ in pairs}
        pairs += [
            (t, norm_index[normalize_token(t)])
            for t in wanted
            if t not in seen and normalize_token(t) in norm_index
        ]
    return [t for t, _ in pairs], np.asarray([i for _, i in pairs], dtype=np.int64), rewrite


def _unit_source(view: ModelView, layer: int) -> tuple[str, str]:
    """``(kind, canonical key)`` of the cheapest contiguous unit vectors in a layer.

    Tensors are looked at in order of preference and only as far as needed: looking at one parses the
    header of the shard holding it, so ``down`` and ``gate`` are not touched when ``up`` will do.
    """
    t = view.tensors
    up, down, gate = (f"layers.{layer}.mlp.{k}" for k in ("up", "down", "gate"))
    if up in t and t[up].rows_contiguous:
        return "up", up
    if down in t and t[down].cols_contiguous:
        return "down", down
    if gate in t and t[gate].rows_contiguous:
        return "gate", gate
    if up in t:
        return "up", up
    raise UnsupportedFormat(f"layer {layer}: no MLP tensor found")


def _layer_files(view: ModelView, layer: int) -> set[str]:
    return set(view.files_of(f"layers.{layer}.mlp.up")) | set(view.files_of(f"layers.{layer}.mlp_norm"))


def _same_shard_pairs(view: ModelView, layers: list[int]) -> list[int]:
    """Move each consecutive pair ``(a, a+1)`` to the nearest pair whose tensors sit in one weight shard.

    `choose_layers` samples pairs of consecutive layers so that a pair costs one shard header; a pair
    straddling a shard boundary costs two. The shard layout is read from the index (no header is parsed);
    which layers are tested does not affect the tests' validity, and the secret still picks the region.
    """
    n = view.arch.n_layers
    out = list(layers)
    taken = set(out)
    for i in range(0, len(out) - 1):
        a, b = out[i], out[i + 1]
        if b != a + 1:
            continue
        here = _layer_files(view, a)
        if not here or len(here | _layer_files(view, b)) == 1:
            continue
        for x in (a - 1, a + 1, a - 2, a + 2):
            if x >= 0 and x + 1 < n and not ({x, x + 1} & (taken - {a, b})):
                files = _layer_files(view, x) | _layer_files(view, x + 1)
                if len(files) == 1:
                    taken -= {a, b}
                    taken |= {x, x + 1}
                    out[i], out[i + 1] = x, x + 1
                    break
    return sorted(out)


def read_sample(
    view: ModelView,
    *,
    tokens: Sequence[str],
    refs: Sequence[ReferenceFingerprint],
    secret: bytes,
    suspect_key: str,
    settings: SamplingSettings,
    costs: dict[str, int] | None = None,
) -> SuspectSample:
    """Read the suspect rows the candidate references need (a few MiB at 7B scale).

    All weight rows (the embedding block, every sampled unit block and its norm gain) are requested in one
    batch, so the byte source can coalesce neighbouring spans and fetch the rest concurrently.

    Args:
        view (`ModelView`): the suspect, over a budgeted `FileSet`.
        tokens (`Sequence[str]`): token strings of the candidates' token blocks (their union).
        refs: the candidate references (to recognise a known tokenizer without reading it).
        secret (`bytes`): deployment secret (chooses layers and unit blocks).
        suspect_key (`str`): identity of the suspect version (``hub/repo@commit``).
        settings (`SamplingSettings`): sizes.
        costs (`dict[str, int] | None`): if given, filled with bytes spent per phase (``vocab``, ``weights``).
    """
    if "embed" not in view.tensors:
        raise UnsupportedFormat("suspect has no token embedding tensor")
    stats = view.fileset.stats
    before_vocab = stats.bytes_read
    strings, ids, rewrite = _suspect_ids(view, tokens, refs)
    before_weights = stats.bytes_read
    plan: list[tuple[str, Sequence[int] | None, Sequence[int] | None]] = []
    order = np.argsort(ids)
    if len(ids):
        plan.append(("embed", ids[order].tolist(), None))
    picks: list[tuple[int, str, int, bool]] = []  # (layer, kind, start, has_gain)
    sampled_layers = _same_shard_pairs(
        view, choose_layers(secret, suspect_key=suspect_key, n_layers=view.arch.n_layers, k=settings.layers)
    )
    # One round trip for the shard headers of every sampled layer, instead of one per shard.
    view.prepare([f"layers.{i}.{k}" for i in sampled_layers for k in ("mlp.up", "mlp_norm")])
    for layer in sampled_layers:
        kind, key = _unit_source(view, layer)
        info = view.tensors[key]
        n_units = info.shape[1] if kind == "down" else info.shape[0]
        start, end = choose_unit_block(
            secret, suspect_key=suspect_key, layer=layer, n_units=n_units, k=settings.rows_per_layer
        )
        plan.append((key, None, range(start, end)) if kind == "down" else (key, range(start, end), None))
        has_gain = kind != "down" and _has(view, f"layers.{layer}.mlp_norm")
        if has_gain:
            plan.append((f"layers.{layer}.mlp_norm", None, None))
        picks.append((layer, kind, start, has_gain))
    arrays = iter(view.read_batch(plan))
    if len(ids):
        rows = next(arrays)
        embed = np.empty_like(rows)
        embed[order] = rows
    else:
        embed = np.zeros((0, view.tensors["embed"].shape[1]), dtype=np.float32)
    layers: list[LayerSample] = []
    for layer, kind, start, has_gain in picks:
        units = next(arrays)
        gain = next(arrays).reshape(-1) if has_gain else None
        if units.ndim != 2:
            raise FormatError(f"layer {layer} {kind}: expected a matrix, got shape {units.shape}")
        layers.append(LayerSample(layer=layer, kind=kind, start=start, units=units, gain=gain))  # type: ignore[arg-type]
    if costs is not None:
        costs["vocab"] = before_weights - before_vocab
        costs["weights"] = stats.bytes_read - before_weights
    return SuspectSample(
        arch=_arch_dict(view),
        tokens=tuple(strings),
        embed=embed,
        layers=tuple(layers),
        quantization=view.arch.quantization,
        token_ids=np.asarray(ids, dtype=np.int64),
        token_rewrite=None if rewrite == "identity" else rewrite,
    )
