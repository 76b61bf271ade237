"""Reading what the fingerprints need: a full reference from a protected model, a few rows from a suspect.

This is the only module that knows both the canonical model view (`monitor.formats.canonical.ModelView`,
which turns byte ranges into arrays) and the statistics (`fingerprints`). Protected models are read in full
once; suspects are read through a byte budget, with the secret choosing which rows:

* one contiguous block of token-embedding rows per tokenizer (the rows every protected model sharing that
  vocabulary was profiled on),
* ``layers`` MLP layers spread over the depth, and in each a contiguous block of ``rows_per_layer`` units
  from whichever tensor stores units contiguously (``up`` rows for float checkpoints and GGUF, ``down``
  columns for GPTQ/AWQ), plus the norm gain feeding the MLP;
* and only for candidates those rows flag (`confirm_match`), one block of query heads with their key and
  value heads in the best-matching sampled layer (the attention tier: names head-level obfuscations and adds
  an exact test on value dimensions).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from fingerprints import (
    AttentionSample,
    ComparePolicy,
    Comparison,
    LayerSample,
    ReferenceBuilder,
    ReferenceFingerprint,
    SuspectSample,
    attention_layer_profiles,
    attention_target,
    choose_head_block,
    choose_layers,
    choose_token_block,
    choose_unit_block,
    confirm,
)
from fingerprints.tokens import best_rewrite, normalize_token
from monitor.errors import BudgetExceeded, FormatError, UnsupportedFormat
from monitor.findings import ALGO
from monitor.formats.canonical import ModelView

__all__ = [
    "SamplingSettings",
    "add_attention",
    "build_reference",
    "confirm_match",
    "read_attention",
    "read_sample",
    "vocab_key",
]


@dataclass(frozen=True)
class SamplingSettings:
    """How much to read (config section ``[fingerprint]``).

    Attributes:
        tokens (`int`): embedding rows in the token block.
        layers (`int`): MLP layers sampled per suspect.
        rows_per_layer (`int`): MLP units per sampled layer.
        attention_heads (`int`): query heads read by the attention tier (0: tier off).
    """

    tokens: int = 256
    layers: int = 4
    rows_per_layer: int = 64
    attention_heads: int = 1


ATTENTION_MAX_BYTES = 32 * 1024 * 1024
ATTENTION_MAX_OVERHEAD = 4
"""The attention tier is skipped (with a note) when its rows would cost more than `ATTENTION_MAX_BYTES`, or
more than `ATTENTION_MAX_OVERHEAD` times what they weigh in float16: GPTQ/AWQ pack query/key/value rows
across the whole tensor (measured on a 7B GPTQ: 24 MB for three heads' rows, eight times their size), which
is not worth paying to name a transformation of an upload already flagged."""


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


def _attention_gain_key(view: ModelView, layer: int) -> str | None:
    """Canonical key of the norm whose output feeds layer ``layer``'s query/key/value projections.

    Pre-norm models (Llama, GPT-2...) have ``attn_norm``; post-norm encoders (BERT) feed attention with the
    previous layer's output norm, or the embedding norm for layer 0.
    """
    for key in (
        f"layers.{layer}.attn_norm",
        "embed_norm" if layer == 0 else f"layers.{layer - 1}.out_norm",
    ):
        if _has(view, key):
            return key
    return None


def _has_attention(view: ModelView) -> bool:
    a = view.arch
    return bool(
        a.head_dim
        and a.n_heads
        and (a.n_kv_heads or a.n_heads)
        and a.n_heads % (a.n_kv_heads or a.n_heads) == 0
        and all(_has(view, f"layers.0.attn.{k}") for k in "qkv")
    )


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
    ref = builder.build(
        final_norm=final, meta={"vocab_key": vocab_key(vocab[:n_vocab]), "block": [int(start), int(end)]}
    )
    return add_attention(ref, view)


def add_attention(ref: ReferenceFingerprint, view: ModelView) -> ReferenceFingerprint:
    """``ref`` with the attention tier's profiles, read from the protected model ``view`` (q, k, v and the
    norm feeding them, every layer).

    `build_reference` ends with it; a reference built before the tier existed can be completed with it
    without re-reading the MLPs (about a tenth of a Llama's weights). Models without a known head layout
    get no attention profiles: their verdicts do not need them, only the naming of head-level changes.
    """
    if not _has_attention(view):
        return ref
    per_layer: dict[str, list[np.ndarray]] = {}
    for i in range(view.arch.n_layers):
        projections = {k: view.read(f"layers.{i}.attn.{k}") for k in "qkv"}
        gain_key = _attention_gain_key(view, i)
        gain = view.read(gain_key).reshape(-1) if gain_key else None
        for kind, arr in attention_layer_profiles(projections, ref.embed, gain).items():
            per_layer.setdefault(kind, []).append(arr)
    return replace(ref, attention={kind: np.stack(arrs) for kind, arrs in per_layer.items()})


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


def read_attention(
    view: ModelView,
    *,
    layer: int,
    ref_layer: int,
    secret: bytes,
    suspect_key: str,
    settings: SamplingSettings,
) -> AttentionSample:
    """Read a secret-chosen block of query heads of ``layer`` with their key/value heads (one batch).

    Raises:
        `UnsupportedFormat`: unknown head layout, missing projections, or rows too costly in this format.
        `BudgetExceeded`: the per-repo byte budget ran out.
    """
    arch = view.arch
    if not _has_attention(view):
        raise UnsupportedFormat("attention head layout unknown (head counts or projections missing)")
    hd, heads = int(arch.head_dim or 0), int(arch.n_heads or 0)
    kv_heads = int(arch.n_kv_heads or heads)
    group = heads // kv_heads
    q_key, k_key, v_key = (f"layers.{layer}.attn.{k}" for k in "qkv")
    view.prepare([q_key, k_key, v_key])
    for key, n in ((q_key, heads), (k_key, kv_heads), (v_key, kv_heads)):
        if key not in view.tensors or view.tensors[key].shape[0] != n * hd:
            raise UnsupportedFormat(f"{key}: not {n} heads of {hd} rows")
    h0, h1 = choose_head_block(
        secret, suspect_key=suspect_key, layer=layer, n_heads=heads, k=settings.attention_heads
    )
    kv0, kv1 = h0 // group, (h1 - 1) // group + 1
    q_rows, kv_rows = range(h0 * hd, h1 * hd), range(kv0 * hd, kv1 * hd)
    cost = view.cost(q_key, rows=q_rows) + view.cost(k_key, rows=kv_rows) + view.cost(v_key, rows=kv_rows)
    dense = (len(q_rows) + 2 * len(kv_rows)) * int(view.tensors[q_key].shape[1]) * 2
    limit = min(ATTENTION_MAX_BYTES, ATTENTION_MAX_OVERHEAD * dense)
    if cost > limit:
        raise UnsupportedFormat(
            f"attention rows would cost {cost:,} bytes in this format ({cost / dense:.1f}× their float16 "
            f"size; limit {limit:,})"
        )
    plan: list[tuple[str, Sequence[int] | None, Sequence[int] | None]] = [
        (q_key, q_rows, None),
        (k_key, kv_rows, None),
        (v_key, kv_rows, None),
    ]
    gain_key = _attention_gain_key(view, layer)
    if gain_key:
        plan.append((gain_key, None, None))
    arrays = view.read_batch(plan)
    return AttentionSample(
        layer=layer,
        ref_layer=ref_layer,
        head_start=h0,
        kv_start=kv0,
        q=arrays[0],
        k=arrays[1],
        v=arrays[2],
        gain=arrays[3].reshape(-1) if gain_key else None,
        head_dim=hd,
        n_heads=heads,
        n_kv_heads=kv_heads,
    )


def confirm_match(
    view: ModelView,
    ref: ReferenceFingerprint,
    sample: SuspectSample,
    first: Comparison,
    *,
    secret: bytes,
    suspect_key: str,
    settings: SamplingSettings,
    policy: ComparePolicy,
) -> Comparison:
    """The attention tier for a flagged candidate: read one head block, then `fingerprints.confirm`.

    Returns ``first`` unchanged for candidates that were not flagged, references without attention
    profiles and ``attention_heads = 0``; when the rows cannot be read (format, budget) the first-pass
    verdict stands and a ``skipped`` record says why — a confirmation tier never loses a finding.
    """
    target = attention_target(first)
    if target is None or not ref.attention or settings.attention_heads <= 0:
        return first
    try:
        att = read_attention(
            view,
            layer=target[0],
            ref_layer=target[1],
            secret=secret,
            suspect_key=suspect_key,
            settings=settings,
        )
    except (FormatError, BudgetExceeded) as exc:
        skipped = {"name": "attention-heads", "exact": False, "skipped": str(exc)}
        return replace(first, tests=[*first.tests, skipped])
    return confirm(ref, sample, first, att, policy)
