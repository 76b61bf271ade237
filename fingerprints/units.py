"""Exact test on MLP unit labels, from a contiguous block of sampled units.

For a block of ``K`` consecutive units of one suspect layer, each unit's token profile (see
`fingerprints.reference.unit_profiles`) is matched to the most correlated unit of a protected layer. A
derivative keeps unit labels — a fine-tune, merge or quantisation in place, structured pruning with gaps,
layer drop or duplication in another layer — so the matched labels increase along the block. Under H0
(independent initialisation: i.i.d. init across the units of a layer, permutation-equivariant training) the
suspect's unit labels within a layer are exchangeable; conditional on the unordered set of sampled units the
matched labels are in uniformly random order, so ``P(longest increasing run >= k) <= C(K, k)/k!``. This
holds for any choice of block, any matching rule that uses content only, and any residual-stream
transformation, because profiles are invariant to those. Layers of the suspect carry independent labels, so
per-layer p-values combine with Fisher's method; choosing the best protected layer costs a Bonferroni factor.

When labels do not line up but unit contents match far better than chance, the units were permuted
(an obfuscation that also defeats every exact label test). `approximate_permuted_evidence` quantifies that
case against a within-model null and is reported as *approximate*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fingerprints.matching import Matches, best_matches, increasing_run, standardize_rows
from fingerprints.reference import LayerSample, unit_profiles
from fingerprints.stats import binomial_tail_log10, bonferroni_log10, increasing_run_tail_log10

__all__ = [
    "APPROX_NULL",
    "UNIT_NULL",
    "UnitLayerEvidence",
    "approximate_permuted_evidence",
    "unit_layer_test",
]

UNIT_NULL = (
    "independent initialisation; MLP units of each suspect layer are then exchangeable, so matched unit "
    "labels are in uniformly random order (P(increasing run >= k) <= C(K,k)/k!, Bonferroni over protected "
    "layers)"
)
APPROX_NULL = (
    "(approximate) units of an independent model match a protected layer no more often than they match the "
    "protected model's other layers (within-model null; not exact)"
)

STRONG = 0.5


@dataclass(frozen=True)
class UnitLayerEvidence:
    """Outcome of the unit-label test for one sampled suspect layer.

    Attributes:
        layer (`int`), kind (`str`), start (`int`), k_units (`int`): what was sampled.
        ref_layer (`int`): the protected layer that matched best.
        log10_p (`float`): exact bound, Bonferroni-adjusted for the protected layers examined.
        run (`int`): longest increasing run of matched labels.
        fixed (`int`): units matched to the same label in the same position.
        offset (`int`): median (matched label − position) along the run: 0 for in-place, else a shift.
        strong (`int`): units whose best correlation is at least 0.5.
        median_score (`float`): median best correlation (1.0 = identical profiles).
        layers_examined (`int`): protected layers compared.
        order (`str`): ``identity``, ``monotone`` (pruned/shifted), ``permuted`` or ``none``.
        scores_other (`np.ndarray`): best correlations of the block against the other protected layers,
            kept for the approximate permutation evidence.
    """

    layer: int
    kind: str
    start: int
    k_units: int
    ref_layer: int
    log10_p: float
    run: int
    fixed: int
    offset: int
    strong: int
    median_score: float
    layers_examined: int
    order: str
    scores_other: np.ndarray

    def record(self) -> dict[str, object]:
        return {
            "name": f"mlp-units[layer {self.layer} {self.kind}]",
            "exact": True,
            "null": UNIT_NULL,
            "log10_p": self.log10_p,
            "statistic": {
                "increasing_run": self.run,
                "units": self.k_units,
                "fixed": self.fixed,
                "strong": self.strong,
                "median_corr": round(self.median_score, 4),
                "ref_layer": self.ref_layer,
                "offset": self.offset,
                "start": self.start,
                "layers_examined": self.layers_examined,
            },
            "order": self.order,
        }


def _remove_common(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return x - (x @ basis) @ basis.T


def _score(sus_raw: np.ndarray, ref_raw: np.ndarray, basis: np.ndarray) -> tuple[float, Matches, np.ndarray]:
    """Match after projecting out the layer's common token directions (restricted to the shared tokens)."""
    q, _ = np.linalg.qr(basis)
    m = best_matches(
        standardize_rows(_remove_common(sus_raw, q)), standardize_rows(_remove_common(ref_raw, q))
    )
    run_pos = increasing_run(m.index)
    return increasing_run_tail_log10(len(m.index), len(run_pos)), m, run_pos


def unit_layer_test(
    sample: LayerSample,
    sus_embed: np.ndarray,
    ref_profiles: np.ndarray,
    ref_bases: np.ndarray,
    ref_cols: np.ndarray,
    *,
    preferred: Sequence[int] = (),
    stop_log10_p: float = -12.0,
) -> UnitLayerEvidence:
    """Test one sampled suspect layer against the protected model's layers.

    Args:
        sample (`LayerSample`): the suspect's unit block.
        sus_embed (`np.ndarray`): ``(n, d)`` suspect embedding rows of the shared tokens.
        ref_profiles (`np.ndarray`): ``(L, d_ff, T)`` protected raw profiles of this unit kind.
        ref_bases (`np.ndarray`): ``(L, T, r)`` the layers' common token directions (projected out of both
            sides before matching; they depend on the protected model only, so the test stays exact).
        ref_cols (`np.ndarray`): ``(n,)`` columns of ``ref_profiles`` for the shared tokens, in the order of
            ``sus_embed``'s rows.
        preferred (`Sequence[int]`): protected layers to try first (same relative depth); the search stops
            early once one reaches ``stop_log10_p`` after adjustment. The Bonferroni factor is always the
            full number of protected layers, so stopping early never inflates significance.
        stop_log10_p (`float`): early-stopping level.
    """
    n_ref_layers = ref_profiles.shape[0]
    sus = unit_profiles(sample.units, sus_embed, sample.gain if sample.kind != "down" else None)
    order = list(dict.fromkeys([p for p in preferred if 0 <= p < n_ref_layers] + list(range(n_ref_layers))))
    best: tuple[float, int, Matches, np.ndarray] | None = None
    best_scores: dict[int, np.ndarray] = {}
    examined = 0
    for la in order:
        ref = ref_profiles[la][:, ref_cols].astype(np.float32)
        raw, m, run_pos = _score(sus, ref, ref_bases[la][ref_cols])
        best_scores[la] = m.score
        examined += 1
        if (
            best is None
            or raw < best[0]
            or (raw == best[0] and np.median(m.score) > np.median(best[2].score))
        ):
            best = (raw, la, m, run_pos)
        if bonferroni_log10(best[0], n_ref_layers) <= stop_log10_p and la in preferred:
            break
    assert best is not None
    raw, la, m, run_pos = best
    k = len(m.index)
    positions = sample.start + np.arange(k)
    fixed = int(np.sum(m.index == positions))
    offset = int(np.median(m.index[run_pos] - positions[run_pos])) if len(run_pos) else 0
    strong = int(np.sum(m.score >= STRONG))
    if fixed >= 0.8 * k:
        order_kind = "identity"
    elif len(run_pos) >= 0.6 * k:
        order_kind = "monotone"
    elif strong >= 0.6 * k:
        order_kind = "permuted"
    else:
        order_kind = "none"
    others = [s for lb, s in best_scores.items() if lb != la and abs(lb - la) >= 2]
    return UnitLayerEvidence(
        layer=sample.layer,
        kind=sample.kind,
        start=sample.start,
        k_units=k,
        ref_layer=la,
        log10_p=bonferroni_log10(raw, n_ref_layers),
        run=len(run_pos),
        fixed=fixed,
        offset=offset,
        strong=strong,
        median_score=float(np.median(m.score)) if k else 0.0,
        layers_examined=examined,
        order=order_kind,
        scores_other=np.concatenate(others) if others else np.zeros(0),
    )


def approximate_permuted_evidence(
    layers: Sequence[UnitLayerEvidence], n_ref_layers: int
) -> dict[str, object]:
    """Evidence that unit *contents* match although their labels were permuted (approximate null).

    For each sampled layer, the number of units matching the best protected layer with correlation ≥ 0.5 is
    compared with the rate at which the same units reach 0.5 against protected layers at least two layers
    away (the within-model null rate, bounded above by its 95% Clopper–Pearson limit, and never below one in
    the number of comparisons). Binomial tails per layer, Bonferroni over protected layers and summed with
    Fisher across layers by the caller. Not exact: independent models trained on the same data can share
    some unit-level features, which this null only approximates.
    """
    per_layer = []
    for ev in layers:
        n_other = len(ev.scores_other)
        if n_other == 0:
            continue
        hits_other = int(np.sum(ev.scores_other >= STRONG))
        q = _clopper_pearson_upper(hits_other, n_other)
        lp = binomial_tail_log10(ev.k_units, ev.strong, q)
        per_layer.append(
            {
                "layer": ev.layer,
                "strong": ev.strong,
                "units": ev.k_units,
                "null_rate": q,
                "log10_p": bonferroni_log10(lp, n_ref_layers),
            }
        )
    return {"name": "mlp-units-permuted", "exact": False, "null": APPROX_NULL, "layers": per_layer}


def _clopper_pearson_upper(hits: int, n: int, *, level: float = 0.95) -> float:
    """One-sided upper confidence bound for a binomial rate (beta quantile via scipy)."""
    from scipy.stats import beta

    if hits >= n:
        return 1.0
    return float(max(beta.ppf(level, hits + 1, n - hits), 1.0 / (n + 1), math.ulp(1.0)))
