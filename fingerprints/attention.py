"""Attention confirmation: which heads matched, what was done to them, and an exact test on value dims.

The cheap tiers (embedding block, MLP units) decide most verdicts but cannot see attention-only
obfuscations: head permutation, Q/K and V/O rescaling, per-head rotations. This tier runs only for
candidates those tiers flagged, reads one layer's worth of attention rows (a block of query heads and their
key/value heads) and compares them with the protected layer that the MLP test matched.

Everything is measured on *token profiles* (rows · diag(norm gain) · embeddingᵀ over a block of shared
tokens, see `fingerprints.reference.unit_profiles`), so residual-stream rotations, permutations and norm
folding need no alignment. Per head:

* the **QK form** ``Pqᵀ Pk`` (token × token attention logits, without positions) is unchanged by any
  function-preserving per-head transformation of queries and keys (rotation, sign flip, Q·c with K/c), so
  it says *which* protected head a sampled head is, whatever was done inside the head;
* the **V Gram** ``Pvᵀ Pv`` is unchanged by rotations of the value space of a head (with the matching
  inverse on the output projection) and, after standardising, by rescaling;
* row-by-row correlations and Frobenius-norm ratios then say whether rows were rotated, sign-flipped or
  rescaled.

The exact part: value dimensions within a head are exchangeable under H0 (initialisation is i.i.d. across
them and permuting V rows together with the matching columns of the output projection preserves the
function), so each sampled suspect V row is matched to its most correlated row of the matched protected head
and ``P(longest increasing run of matched labels >= k) <= C(hd, k)/k!``. The protected head is chosen with
the V Gram, which does not depend on the order of the suspect's rows; the Bonferroni factor over the
layer's KV heads is applied anyway. Value dimensions are a symmetry group of their own, independent of the
residual dimensions and MLP units under H0, so the p-value combines with the other exact tests by Fisher's
method. A per-head V/O rotation defeats this test (it is the group's continuous extension) and is reported
as such.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fingerprints.matching import best_matches, increasing_run, standardize_rows
from fingerprints.reference import ATTENTION_TOKENS, common_directions, unit_profiles
from fingerprints.stats import bonferroni_log10, fisher_combine_log10, increasing_run_tail_log10

__all__ = [
    "ATTENTION_NULL",
    "ATTENTION_TOKENS",
    "AttentionEvidence",
    "AttentionSample",
    "attention_test",
]

ATTENTION_NULL = (
    "independent initialisation; the value dimensions within an attention head are then exchangeable "
    "(V rows permute with the output projection's columns), so matched V-row labels are in uniformly random "
    "order (P(increasing run >= k) <= C(head_dim,k)/k!, Bonferroni over the layer's KV heads)"
)

MIN_TOKENS = 32
"""Fewer shared tokens in the attention block and the tier is skipped (profiles too short to match)."""
MATCH = 0.5
"""Head-level correlation from which a head counts as identified (descriptive, never evidence)."""
ROTATED = 0.8
"""A head whose QK form / V Gram matches at least this well, while its rows match clearly worse (by
`ROW_GAP`), had its rows mixed: a rotation. Permutations and sign flips keep rows as similar as the head."""
ROW_GAP = 0.15
GAIN, MIXED = 0.85, 0.5
"""A query head was rotated when the best rotation removes 85% of what the identity leaves and moves at
least half of the head's energy (see `_rotation_fit`). Measured on SmolLM2 (64-dim heads): random
RoPE-compatible rotations 1.00 / 0.54–0.88; 70% magnitude pruning 0.55–0.72 / up to 0.89."""
SCALE_TOLERANCE = math.log(1.25)
"""Per-head norm ratios beyond ×/÷1.25 are reported as rescaling (fine-tunes move them a few percent)."""


@dataclass(frozen=True)
class AttentionSample:
    """Attention rows read from one suspect layer.

    Attributes:
        layer (`int`): suspect layer.
        ref_layer (`int`): protected layer it corresponds to (found by the MLP unit test).
        head_start (`int`): first sampled query head (heads ``head_start .. head_start+m-1``).
        kv_start (`int`): first key/value head read (the KV heads of the sampled query heads).
        q (`np.ndarray`): ``(m·head_dim, d)`` query rows.
        k (`np.ndarray`), v (`np.ndarray`): ``(m_kv·head_dim, d)`` key and value rows.
        gain (`np.ndarray | None`): gain of the norm feeding the attention (``None`` when there is none).
        head_dim (`int`), n_heads (`int`), n_kv_heads (`int`): the suspect's attention shape.
    """

    layer: int
    ref_layer: int
    head_start: int
    kv_start: int
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    gain: np.ndarray | None
    head_dim: int
    n_heads: int
    n_kv_heads: int


@dataclass(frozen=True)
class AttentionEvidence:
    """Outcome of the attention tier.

    Attributes:
        layer (`int`), ref_layer (`int`): suspect layer and the protected layer compared.
        log10_p (`float`): exact V-row bound (Fisher over the sampled KV heads), 0.0 if none ran.
        heads (`list[dict]`): per sampled query head: matched protected head, QK-form correlation,
            rotation fit (see `_rotation_fit`), rows with negative correlation and the Q/K scale ratio.
        kv_heads (`list[dict]`): per sampled KV head: matched protected KV head, V-Gram correlation,
            V-row run, fixed rows, sign flips, median row correlation and the V/O scale ratio, and its bound.
        findings (`tuple[str, ...]`): transformations recognised (``attention heads permuted``...).
        n_tokens (`int`): shared tokens the profiles were computed over.
    """

    layer: int
    ref_layer: int
    log10_p: float
    heads: list[dict[str, Any]] = field(default_factory=list)
    kv_heads: list[dict[str, Any]] = field(default_factory=list)
    findings: tuple[str, ...] = ()
    n_tokens: int = 0

    def records(self) -> list[dict[str, Any]]:
        """The exact V-row test and the descriptive head matching, as compare records."""
        return [
            {
                "name": f"attention-v-rows[layer {self.layer}]",
                "exact": True,
                "null": ATTENTION_NULL,
                "log10_p": self.log10_p,
                "statistic": {
                    "ref_layer": self.ref_layer,
                    "kv_heads": [
                        {k: h[k] for k in ("kv_head", "ref_kv_head", "run", "rows", "fixed", "log10_p")}
                        for h in self.kv_heads
                    ],
                    "tokens": self.n_tokens,
                },
            },
            {
                "name": f"attention-heads[layer {self.layer}]",
                "exact": False,
                "null": "descriptive: names the per-head transformation; not evidence",
                "ref_layer": self.ref_layer,
                "heads": self.heads,
                "kv_heads": self.kv_heads,
                "findings": list(self.findings),
            },
        ]


def _ref_layer_profiles(
    attention: Mapping[str, np.ndarray], kind: str, layer: int, cols: np.ndarray
) -> np.ndarray:
    unit = attention[kind][layer][:, cols].astype(np.float32)
    return unit * attention[f"{kind}_norm"][layer].astype(np.float32)[:, None]


def _standardized_flat(mats: list[np.ndarray]) -> np.ndarray:
    return standardize_rows(np.stack([m.ravel() for m in mats]))


def _heads_of(x: np.ndarray, hd: int) -> list[np.ndarray]:
    return [x[i * hd : (i + 1) * hd] for i in range(x.shape[0] // hd)]


def _norm_ratio(a: np.ndarray, b: np.ndarray) -> float:
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a)) / nb if nb > 0 else math.nan


def _rotation_fit(sus: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """How much a per-head rotation explains, and how much it moves: ``(gain, mixing)``.

    The best orthogonal map ``R`` (with a scale) from ``ref`` rows to ``sus`` rows over the shared tokens
    (Procrustes) is compared with the identity (with a scale): ``gain`` is the share of the identity's
    residual that ``R`` removes — near 1 after a rotation, and only what fitting ``hd²/2`` free parameters
    to noise removes after a fine-tune or pruning (about ``hd / 2n``). ``mixing`` is the share of the
    head's energy in dimensions that ``R`` moves (``|R_ii| < 0.9``): sign flips fit as well as a rotation
    but move nothing. Descriptive only — it is fitted, so it is never evidence.
    """
    a, b = np.asarray(sus, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    m = a @ b.T
    u, sv, vt = np.linalg.svd(m)
    energy_a, energy_b = float(np.sum(a**2)), float(np.sum(b**2))
    if energy_b <= 0:
        return 0.0, 0.0
    resid_identity = energy_a - float(np.trace(m)) ** 2 / energy_b
    resid_rotation = energy_a - float(np.sum(sv)) ** 2 / energy_b
    gain = 1.0 - resid_rotation / resid_identity if resid_identity > 1e-12 * energy_a else 0.0
    moved = np.abs(np.diag(u @ vt)) < 0.9
    mixing = float(np.sum(np.sum(b**2, axis=1) * moved) / energy_b)
    return max(0.0, gain), mixing


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(standardize_rows(a) * standardize_rows(b), axis=1)


def attention_test(
    attention: Mapping[str, np.ndarray],
    arch: Mapping[str, Any],
    sample: AttentionSample,
    sus_embed: np.ndarray,
    ref_cols: np.ndarray,
) -> AttentionEvidence | None:
    """Compare sampled attention heads with the protected layer ``sample.ref_layer``.

    Args:
        attention (`Mapping[str, np.ndarray]`): the reference's attention profiles (``q``, ``k``, ``v``:
            ``(L, rows, T_a)`` unit rows; ``q_norm``... ``(L, rows)`` their norms).
        arch (`Mapping[str, Any]`): the protected model's `ArchInfo` fields (head counts).
        sample (`AttentionSample`): the suspect's rows.
        sus_embed (`np.ndarray`): ``(n, d)`` suspect embedding rows of the shared tokens that fall in the
            attention block, in the order of ``ref_cols``.
        ref_cols (`np.ndarray`): ``(n,)`` their positions in the protected attention block.

    Returns:
        `AttentionEvidence`, or ``None`` when too few tokens are shared or the shapes do not fit.
    """
    hd = sample.head_dim
    ref_heads = int(arch.get("n_heads") or 0)
    ref_kv = int(arch.get("n_kv_heads") or ref_heads)
    ref_hd = int(arch.get("head_dim") or 0)
    n = len(ref_cols)
    if n < MIN_TOKENS or hd != ref_hd or ref_heads <= 0 or ref_kv <= 0 or ref_heads % ref_kv:
        return None
    if not 0 <= sample.ref_layer < attention["q"].shape[0] or sample.n_kv_heads <= 0:
        return None
    group, ref_group = sample.n_heads // sample.n_kv_heads, ref_heads // ref_kv
    cols = np.asarray(ref_cols)
    pq, pk, pv = (_ref_layer_profiles(attention, k, sample.ref_layer, cols) for k in ("q", "k", "v"))
    embed = np.asarray(sus_embed, dtype=np.float32)
    sq = unit_profiles(sample.q, embed, sample.gain)
    sk = unit_profiles(sample.k, embed, sample.gain)
    sv = unit_profiles(sample.v, embed, sample.gain)
    pq_h, pk_h, pv_h = _heads_of(pq, hd), _heads_of(pk, hd), _heads_of(pv, hd)
    sq_h, sk_h, sv_h = _heads_of(sq, hd), _heads_of(sk, hd), _heads_of(sv, hd)
    if not sq_h or not sk_h or not sv_h:
        return None

    # --- which protected head is each sampled head (QK forms; invariant inside the head) ---------------
    ref_forms = _standardized_flat([pq_h[h].T @ pk_h[h // ref_group] for h in range(len(pq_h))])
    # Local index of each sampled query head's KV head (clamped: a malformed sample must not index out).
    kv_of = [
        min(max((sample.head_start + i) // group - sample.kv_start, 0), len(sk_h) - 1)
        for i in range(len(sq_h))
    ]
    sus_forms = _standardized_flat([sq_h[i].T @ sk_h[kv] for i, kv in enumerate(kv_of)])
    form_match = best_matches(sus_forms, ref_forms)

    # --- which protected KV head is each sampled KV head (V Grams; invariant to V/O rotation) ----------
    ref_grams = _standardized_flat([h.T @ h for h in pv_h])
    sus_grams = _standardized_flat([h.T @ h for h in sv_h])
    gram_match = best_matches(sus_grams, ref_grams)

    heads: list[dict[str, Any]] = []
    scale_of_kv: dict[
        int, float
    ] = {}  # overall profile scale (embedding drift, global rescaling) per KV head
    for i in range(len(sq_h)):
        ref_h = int(form_match.index[i])
        kv_local = kv_of[i]
        row = {
            "head": sample.head_start + i,
            "ref_head": ref_h,
            "form_corr": round(float(form_match.score[i]), 4),
        }
        if ref_h >= 0:
            cq = _norm_ratio(sq_h[i], pq_h[ref_h])
            ck = _norm_ratio(sk_h[kv_local], pk_h[ref_h // ref_group])
            q_rows = _rowwise_corr(sq_h[i], pq_h[ref_h])
            gain, mixing = _rotation_fit(sq_h[i], pq_h[ref_h])
            row |= {
                "q_rotation_gain": round(gain, 4),
                "q_mixing": round(mixing, 4),
                "q_row_negative": int(np.sum(q_rows <= -MATCH)),
                "qk_scale": round(math.sqrt(cq / ck), 4) if ck > 0 else None,
            }
            scale_of_kv.setdefault(kv_local, math.sqrt(cq * ck))
        heads.append(row)

    basis = common_directions(pv)
    kv_heads: list[dict[str, Any]] = []
    exact: list[float] = []
    for g in range(len(sv_h)):
        ref_g = int(gram_match.index[g])
        row = {
            "kv_head": sample.kv_start + g,
            "ref_kv_head": ref_g,
            "gram_corr": round(float(gram_match.score[g]), 4),
            "rows": hd,
            "run": 0,
            "fixed": 0,
            "log10_p": 0.0,
        }
        if ref_g >= 0:
            sus_rows = standardize_rows(sv_h[g] - (sv_h[g] @ basis) @ basis.T)
            ref_rows = standardize_rows(pv_h[ref_g] - (pv_h[ref_g] @ basis) @ basis.T)
            m = best_matches(sus_rows, ref_rows, absolute=True)
            run = len(increasing_run(m.index))
            lp = bonferroni_log10(increasing_run_tail_log10(hd, run), len(pv_h))
            exact.append(lp)
            strong = m.score >= MATCH
            cv = _norm_ratio(sv_h[g], pv_h[ref_g])
            scale = scale_of_kv.get(g, 0.0)
            row |= {
                "run": run,
                "fixed": int(np.sum(m.index == np.arange(hd))),
                "strong": int(strong.sum()),
                "sign_flips": int(np.sum(strong & (m.sign < 0))),
                "v_row_corr": round(float(np.median(m.score)), 4),
                "vo_scale": round(cv / scale, 4) if scale > 0 else None,
                "log10_p": lp,
            }
        kv_heads.append(row)
    return AttentionEvidence(
        layer=sample.layer,
        ref_layer=sample.ref_layer,
        log10_p=fisher_combine_log10(exact) if exact else 0.0,
        heads=heads,
        kv_heads=kv_heads,
        findings=_findings(heads, kv_heads, group, ref_group),
        n_tokens=n,
    )


def _rotated(head_corr: float, row_corr: float | None) -> bool:
    return row_corr is not None and head_corr >= ROTATED and row_corr < head_corr - ROW_GAP


def _off_scale(x: float | None) -> bool:
    return x is not None and x > 0 and abs(math.log(x)) > SCALE_TOLERANCE


def _findings(
    heads: list[dict[str, Any]], kv_heads: list[dict[str, Any]], group: int, ref_group: int
) -> tuple[str, ...]:
    """Name what was done to the matched heads (only heads identified with correlation >= 0.5)."""
    out: list[str] = []
    q_ok = [h for h in heads if h["form_corr"] >= MATCH and h["ref_head"] >= 0]
    v_ok = [h for h in kv_heads if h["gram_corr"] >= MATCH and h["ref_kv_head"] >= 0]
    moved = [h for h in q_ok if h["ref_head"] != h["head"]] + [
        h for h in v_ok if h["ref_kv_head"] != h["kv_head"]
    ]
    if moved and group == ref_group:
        out.append("attention heads permuted")
    # What was done *inside* a head is described only for heads that are clearly the same head.
    q_same = [h for h in q_ok if h["form_corr"] >= ROTATED]
    v_same = [h for h in v_ok if h["gram_corr"] >= ROTATED]
    if any(h.get("q_rotation_gain", 0.0) >= GAIN and h.get("q_mixing", 0.0) >= MIXED for h in q_same):
        out.append("per-head Q/K rotation")
    elif any(h.get("q_row_negative", 0) for h in q_same):
        out.append("Q/K sign flips")
    if any(_off_scale(h.get("qk_scale")) for h in q_same):
        out.append("Q/K rescaled")
    if any(_rotated(h["gram_corr"], h.get("v_row_corr")) for h in v_same):
        out.append("per-head V/O rotation")
    else:
        if any(h.get("strong", 0) >= 0.6 * h["rows"] and h["fixed"] < 0.8 * h["rows"] for h in v_same):
            out.append("value dims permuted")
        if any(h.get("sign_flips", 0) for h in v_same):
            out.append("V/O sign flips")
    if any(_off_scale(h.get("vo_scale")) for h in v_same):
        out.append("V/O rescaled")
    return tuple(out)
