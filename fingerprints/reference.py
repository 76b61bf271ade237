"""What the registry keeps about a protected model, and what is read from a suspect.

The protected model is read in full once, at registration; the suspect is read a few MiB at a time, for
every upload, forever. So the reference stores precomputed, read-optimised material: for every layer, the
*token profile* of every MLP unit (its response to a secret block of token embeddings — invariant to
rotations, permutations, sign flips and norm-gain folding of the residual stream), plus the token block
itself. The suspect side (`SuspectSample`) holds only the rows that were actually fetched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fingerprints.matching import standardize_rows

__all__ = [
    "ATTENTION_TOKENS",
    "UNIT_KINDS",
    "LayerSample",
    "ReferenceBuilder",
    "ReferenceFingerprint",
    "SuspectSample",
    "UnitKind",
    "attention_layer_profiles",
    "common_directions",
    "unit_profiles",
]

UnitKind = Literal["up", "gate", "down"]
UNIT_KINDS: tuple[UnitKind, ...] = ("up", "gate", "down")

ATTENTION_TOKENS = 128
"""Token-block prefix the attention profiles are stored over (enough to identify heads; a 7B reference
grows by about 50–100 MiB, against 540 MiB of MLP profiles)."""

COMMON_RANK = 4
"""Token-space directions shared by most units of a layer (frequency, norm and similar token effects).
They make profiles of *unrelated* units correlate (median best match ≈ 0.45 between independently trained
models), so both sides project them out before matching (measured: independent ≈ 0.25, heavy
fine-tune ≈ 0.5)."""


def common_directions(profiles: np.ndarray, rank: int = COMMON_RANK) -> np.ndarray:
    """``(T, rank)`` orthonormal token-space directions of largest variance across a layer's units."""
    centred = np.asarray(profiles, dtype=np.float32)
    centred = centred - centred.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:rank].T.astype(np.float32)


def unit_profiles(units: np.ndarray, embed: np.ndarray, gain: np.ndarray | None = None) -> np.ndarray:
    """Token profiles of MLP units: ``units · diag(gain) · embedᵀ``.

    Args:
        units (`np.ndarray`): ``(K, d)`` unit vectors in residual space — rows of ``mlp.up``/``mlp.gate``
            (input side) or columns of ``mlp.down`` (output side).
        embed (`np.ndarray`): ``(T, d)`` token embedding rows.
        gain (`np.ndarray | None`): ``(d,)`` the gain of the norm feeding the units (input side only).
            Applying it makes the profile invariant to folding the gain into the weights.

    Returns:
        ``(K, T)`` float32. If the suspect's residual stream was rotated (``E' = E Rᵀ``, ``W' = W Rᵀ``) or
        permuted, the product is unchanged, which is why profiles can be compared without any alignment.
    """
    u = np.asarray(units, dtype=np.float32)
    if gain is not None:
        u = u * np.asarray(gain, dtype=np.float32)[None, :]
    return u @ np.asarray(embed, dtype=np.float32).T


def attention_layer_profiles(
    projections: Mapping[str, np.ndarray], embed: np.ndarray, gain: np.ndarray | None
) -> dict[str, np.ndarray]:
    """One layer's attention profiles as `ReferenceFingerprint.attention` stores them.

    Args:
        projections (`Mapping[str, np.ndarray]`): ``q``, ``k``, ``v`` projection matrices ``(rows, d)``.
        embed (`np.ndarray`): the reference's token-block embedding rows (the first `ATTENTION_TOKENS`
            are used).
        gain (`np.ndarray | None`): gain of the norm feeding the attention.

    Returns:
        ``{"q": unit rows float16, "q_norm": row norms float32, ...}`` for q, k and v.
    """
    if set(projections) != {"q", "k", "v"}:
        raise ValueError("attention needs exactly q, k and v")
    block = np.asarray(embed, dtype=np.float32)[:ATTENTION_TOKENS]
    out: dict[str, np.ndarray] = {}
    for kind, mat in projections.items():
        prof = unit_profiles(mat, block, gain)
        norms = np.linalg.norm(prof, axis=1)
        out[kind] = np.divide(prof, norms[:, None], out=np.zeros_like(prof), where=norms[:, None] > 0).astype(
            np.float16
        )
        out[f"{kind}_norm"] = norms.astype(np.float32)
    return out


@dataclass(frozen=True)
class ReferenceFingerprint:
    """Everything later matching needs about one protected model.

    Attributes:
        name (`str`): registry name.
        algo (`str`): algorithm version that built it.
        arch (`dict`): `ArchInfo` fields (family, n_layers, d_model, d_ff, vocab_size, gated_mlp, norm...).
        token_ids (`np.ndarray`): ``(T,)`` ids of the secret token block in the protected vocabulary.
        tokens (`tuple[str, ...]`): the block's token strings (suspects are mapped by string, not id).
        embed (`np.ndarray`): ``(T, d)`` embedding rows of the block.
        profiles (`dict[str, np.ndarray]`): per unit kind, ``(L, d_ff, T)`` float16 token profiles of
            every unit of every layer, with the layer's common directions projected out and each row
            standardised (matching one suspect block against a whole layer is then one matrix product).
        bases (`dict[str, np.ndarray]`): per unit kind, ``(L, T, r)`` common token directions per layer
            (see `common_directions`).
        mlp_norms (`np.ndarray | None`): ``(L, d)`` gains of the norms feeding the MLPs.
        final_norm (`np.ndarray | None`): ``(d,)``.
        vocab_digest (`str | None`): digest of the tokenizer file (zero-byte vocabulary identity).
        attention (`dict[str, np.ndarray]`): token profiles of every query, key and value row of every
            layer over the first `ATTENTION_TOKENS` tokens of the block, for the attention confirmation
            tier: ``q``/``k``/``v`` ``(L, rows, T_a)`` float16 unit rows and ``q_norm``/``k_norm``/
            ``v_norm`` ``(L, rows)`` float32 their norms (unit rows keep float16 in range whatever the
            model's scale). Empty for references built before the tier existed.
    """

    name: str
    algo: str
    arch: dict[str, Any]
    token_ids: np.ndarray
    tokens: tuple[str, ...]
    embed: np.ndarray
    profiles: dict[str, np.ndarray]
    bases: dict[str, np.ndarray]
    mlp_norms: np.ndarray | None = None
    final_norm: np.ndarray | None = None
    vocab_digest: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    attention: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return next(iter(self.profiles.values())).shape[0] if self.profiles else 0

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat name → array mapping (no objects, so it can be stored without pickle)."""
        out: dict[str, np.ndarray] = {
            "token_ids": np.asarray(self.token_ids, dtype=np.int64),
            "embed": np.asarray(self.embed, dtype=np.float32),
        }
        for kind, arr in self.profiles.items():
            out[f"profiles.{kind}"] = np.asarray(arr, dtype=np.float16)
        for kind, arr in self.bases.items():
            out[f"bases.{kind}"] = np.asarray(arr, dtype=np.float32)
        if self.mlp_norms is not None:
            out["mlp_norms"] = np.asarray(self.mlp_norms, dtype=np.float32)
        if self.final_norm is not None:
            out["final_norm"] = np.asarray(self.final_norm, dtype=np.float32)
        for kind, arr in self.attention.items():
            out[f"attn.{kind}"] = np.asarray(arr, dtype=np.float32 if kind.endswith("_norm") else np.float16)
        return out

    def header(self) -> dict[str, Any]:
        """The JSON-serialisable part (stored beside `to_arrays`)."""
        return {
            "name": self.name,
            "algo": self.algo,
            "arch": self.arch,
            "tokens": list(self.tokens),
            "vocab_digest": self.vocab_digest,
            "meta": self.meta,
        }

    @classmethod
    def from_parts(cls, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> ReferenceFingerprint:
        profiles = {k.split(".", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith("profiles.")}
        bases = {k.split(".", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith("bases.")}
        attention = {k.split(".", 1)[1]: np.asarray(v) for k, v in arrays.items() if k.startswith("attn.")}
        return cls(
            name=str(header["name"]),
            algo=str(header["algo"]),
            arch=dict(header["arch"]),
            token_ids=np.asarray(arrays["token_ids"]),
            tokens=tuple(header["tokens"]),
            embed=np.asarray(arrays["embed"], dtype=np.float32),
            profiles=profiles,
            bases=bases,
            mlp_norms=arrays.get("mlp_norms"),
            final_norm=arrays.get("final_norm"),
            vocab_digest=header.get("vocab_digest"),
            meta=dict(header.get("meta", {})),
            attention=attention,
        )


class ReferenceBuilder:
    """Builds a `ReferenceFingerprint` one layer at a time (a 7B model never sits in memory whole).

    Usage::

        b = ReferenceBuilder(name="acme/guard", algo=ALGO, arch=arch, tokens=strings, token_ids=ids,
                             embed=embed_rows)
        for i in range(n_layers):
            b.add_layer(i, {"up": up_i, "gate": gate_i, "down": down_i.T}, mlp_gain=g_i,
                        attention={"q": q_i, "k": k_i, "v": v_i}, attn_gain=a_i)
        ref = b.build(final_norm=g_final)
    """

    def __init__(
        self,
        *,
        name: str,
        algo: str,
        arch: Mapping[str, Any],
        tokens: Sequence[str],
        token_ids: np.ndarray,
        embed: np.ndarray,
        vocab_digest: str | None = None,
    ) -> None:
        if len(tokens) != len(token_ids) or len(tokens) != embed.shape[0]:
            raise ValueError("tokens, token_ids and embed rows must have the same length")
        self.name, self.algo, self.arch = name, algo, dict(arch)
        self.tokens, self.token_ids = tuple(tokens), np.asarray(token_ids)
        self.embed = np.asarray(embed, dtype=np.float32)
        self.vocab_digest = vocab_digest
        self._profiles: dict[str, dict[int, np.ndarray]] = {}
        self._bases: dict[str, dict[int, np.ndarray]] = {}
        self._gains: dict[int, np.ndarray] = {}
        self._attention: dict[str, dict[int, np.ndarray]] = {}

    def add_layer(
        self,
        index: int,
        units: Mapping[str, np.ndarray],
        *,
        mlp_gain: np.ndarray | None,
        attention: Mapping[str, np.ndarray] | None = None,
        attn_gain: np.ndarray | None = None,
    ) -> None:
        """Add one layer's MLP units (``kind -> (d_ff, d)`` unit vectors; ``down`` already transposed) and,
        when given, its query/key/value projections (``(rows, d)``) with the gain of the norm feeding them."""
        for kind, mat in units.items():
            if kind not in UNIT_KINDS:
                raise ValueError(f"unknown unit kind {kind!r}")
            gain = mlp_gain if kind != "down" else None
            prof = unit_profiles(mat, self.embed, gain)
            basis = common_directions(prof)
            cleaned = standardize_rows(prof - (prof @ basis) @ basis.T)
            self._profiles.setdefault(kind, {})[index] = cleaned.astype(np.float16)
            self._bases.setdefault(kind, {})[index] = basis
        if mlp_gain is not None:
            self._gains[index] = np.asarray(mlp_gain, dtype=np.float32)
        if attention:
            for kind, arr in attention_layer_profiles(attention, self.embed, attn_gain).items():
                self._attention.setdefault(kind, {})[index] = arr

    def build(
        self, *, final_norm: np.ndarray | None = None, meta: Mapping[str, Any] | None = None
    ) -> ReferenceFingerprint:
        profiles: dict[str, np.ndarray] = {}
        for kind, by_layer in self._profiles.items():
            layers = sorted(by_layer)
            if layers != list(range(len(layers))):
                raise ValueError(f"{kind}: layers {layers} are not 0..L-1")
            profiles[kind] = np.stack([by_layer[i] for i in layers])
        bases = {kind: np.stack([b[i] for i in sorted(b)]) for kind, b in self._bases.items()}
        gains = np.stack([self._gains[i] for i in sorted(self._gains)]) if self._gains else None
        attention: dict[str, np.ndarray] = {}
        depth = next(iter(profiles.values())).shape[0] if profiles else 0
        if self._attention and all(sorted(by) == list(range(depth)) for by in self._attention.values()):
            attention = {kind: np.stack([by[i] for i in sorted(by)]) for kind, by in self._attention.items()}
        return ReferenceFingerprint(
            name=self.name,
            algo=self.algo,
            arch=self.arch,
            token_ids=self.token_ids,
            tokens=self.tokens,
            embed=self.embed,
            profiles=profiles,
            bases=bases,
            mlp_norms=gains,
            final_norm=None if final_norm is None else np.asarray(final_norm, dtype=np.float32),
            vocab_digest=self.vocab_digest,
            meta=dict(meta or {}),
            attention=attention,
        )


@dataclass(frozen=True)
class LayerSample:
    """A block of MLP units read from one suspect layer.

    Attributes:
        layer (`int`): suspect layer index.
        kind (`UnitKind`): which tensor the unit vectors come from.
        start (`int`): position of the first unit (units are ``start .. start+K-1``, contiguous).
        units (`np.ndarray`): ``(K, d)`` unit vectors (rows of up/gate, columns of down).
        gain (`np.ndarray | None`): the MLP-input norm gain of that layer (input-side kinds).
    """

    layer: int
    kind: UnitKind
    start: int
    units: np.ndarray
    gain: np.ndarray | None = None


@dataclass(frozen=True)
class SuspectSample:
    """The few rows read from a suspect model.

    Attributes:
        arch (`dict`): the suspect's `ArchInfo` fields.
        tokens (`tuple[str, ...]`): token strings of the embedding rows read.
        embed (`np.ndarray`): ``(T, d)`` those rows.
        layers (`tuple[LayerSample, ...]`): sampled MLP unit blocks.
        quantization (`str | None`): declared storage quantisation (``gguf:Q4_K``, ``gptq:4bit``...).
        token_ids (`np.ndarray | None`): the suspect's ids of ``tokens`` (reveals vocabulary reordering).
        token_rewrite (`str | None`): the converter rewrite of token strings that paired them, if any.
    """

    arch: dict[str, Any]
    tokens: tuple[str, ...]
    embed: np.ndarray
    layers: tuple[LayerSample, ...]
    quantization: str | None = None
    token_ids: np.ndarray | None = None
    token_rewrite: str | None = None
