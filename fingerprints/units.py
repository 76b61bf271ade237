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
    "unit_layer_tests",
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


class _LayerMatcher:
    """Protected layers prepared for matching against one suspect's shared tokens.

    With the full token block (the common case) the stored profiles are used as they are; with a subset of
    tokens (vocabulary changes) both sides are re-projected on the subset and re-standardised.
    """

    def __init__(self, ref_profiles: np.ndarray, ref_bases: np.ndarray, cols: np.ndarray) -> None:
        self.profiles, self.bases, self.cols = ref_profiles, ref_bases, cols
        t = ref_profiles.shape[2]
        self.full = len(cols) == t and bool(np.array_equal(cols, np.arange(t)))

    def score_many(
        self, sus_raw: Sequence[np.ndarray], layer: int
    ) -> list[tuple[float, Matches, np.ndarray]]:
        """Match several suspect blocks against one protected layer (prepared once)."""
        if self.full:
            basis = self.bases[layer]
            ref = self.profiles[layer].astype(np.float32)
        else:
            basis, _ = np.linalg.qr(self.bases[layer][self.cols])
            ref = standardize_rows(
                _remove_common(self.profiles[layer][:, self.cols].astype(np.float32), basis)
            )
        stacked = standardize_rows(_remove_common(np.concatenate(list(sus_raw)), basis))
        every = best_matches(stacked, ref)
        out = []
        pos = 0
        for block in sus_raw:
            sl = slice(pos, pos + block.shape[0])
            pos += block.shape[0]
            m = Matches(every.index[sl], every.score[sl], every.runner_up[sl], every.sign[sl])
            run_pos = increasing_run(m.index)
            out.append((increasing_run_tail_log10(len(m.index), len(run_pos)), m, run_pos))
        return out


@dataclass
class _Search:
    """Search state of one sampled suspect layer across protected layers."""

    sample: LayerSample
    profiles: np.ndarray
    order: list[int]
    preferred: set[int]
    best: tuple[float, int, Matches, np.ndarray] | None = None
    scores: dict[int, np.ndarray] | None = None
    examined: int = 0
    done: bool = False


def unit_layer_tests(
    samples: Sequence[LayerSample],
    sus_embed: np.ndarray,
    ref_profiles: np.ndarray,
    ref_bases: np.ndarray,
    ref_cols: np.ndarray,
    *,
    preferred: Sequence[Sequence[int]] | None = None,
    window: int | None = None,
    stop_log10_p: float = -12.0,
) -> list[UnitLayerEvidence]:
    """Test sampled suspect layers (of one unit kind) against the protected model's layers.

    Each protected layer is prepared once and matched against every suspect block still searching, so the
    cost is one pass over the protected layers whatever the number of sampled layers.

    Args:
        samples (`Sequence[LayerSample]`): the suspect's unit blocks, all of the same kind.
        sus_embed (`np.ndarray`): ``(n, d)`` suspect embedding rows of the shared tokens.
        ref_profiles (`np.ndarray`): ``(L, d_ff, T)`` protected profiles of this unit kind (cleaned and
            standardised, see `fingerprints.reference.ReferenceFingerprint`).
        ref_bases (`np.ndarray`): ``(L, T, r)`` the layers' common token directions (projected out of both
            sides before matching; they depend on the protected model only, so the test stays exact).
        ref_cols (`np.ndarray`): ``(n,)`` columns of ``ref_profiles`` for the shared tokens, in the order of
            ``sus_embed``'s rows.
        preferred (`Sequence[Sequence[int]]`): per sample, protected layers to try first (same relative
            depth); a sample's search stops once one of them reaches ``stop_log10_p`` after adjustment. The
            Bonferroni factor is always the full number of protected layers, so stopping early never
            inflates significance.
        window (`int | None`): examine only protected layers within this distance of a sample's preferred
            layers (``None``: every layer). Looking at fewer layers can only raise p-values — the
            Bonferroni factor stays the full layer count — so a narrow first pass is safe; callers widen it
            when the depth differs or other evidence points at a derivative.
        stop_log10_p (`float`): early-stopping level.
    """
    n_ref_layers = ref_profiles.shape[0]
    matcher = _LayerMatcher(ref_profiles, ref_bases, np.asarray(ref_cols))
    searches = []
    for i, sample in enumerate(samples):
        pref = [p for p in (preferred[i] if preferred else ()) if 0 <= p < n_ref_layers]
        allowed = list(range(n_ref_layers))
        if window is not None and pref:
            allowed = [la for la in allowed if min(abs(la - p) for p in pref) <= window]
        searches.append(
            _Search(
                sample=sample,
                profiles=unit_profiles(
                    sample.units, sus_embed, sample.gain if sample.kind != "down" else None
                ),
                order=list(dict.fromkeys(pref + allowed)),
                preferred=set(pref),
                scores={},
            )
        )
    for step in range(n_ref_layers):
        active = [s for s in searches if not s.done and step < len(s.order)]
        if not active:
            break
        by_layer: dict[int, list[_Search]] = {}
        for s in active:
            by_layer.setdefault(s.order[step], []).append(s)
        for la, group in by_layer.items():
            for s, (raw, m, run_pos) in zip(
                group, matcher.score_many([g.profiles for g in group], la), strict=True
            ):
                assert s.scores is not None
                s.scores[la] = m.score
                s.examined += 1
                if (
                    s.best is None
                    or raw < s.best[0]
                    or (raw == s.best[0] and np.median(m.score) > np.median(s.best[2].score))
                ):
                    s.best = (raw, la, m, run_pos)
                if bonferroni_log10(s.best[0], n_ref_layers) <= stop_log10_p and la in s.preferred:
                    s.done = True
    return [_evidence(s, n_ref_layers) for s in searches]


def _evidence(s: _Search, n_ref_layers: int) -> UnitLayerEvidence:
    assert s.best is not None
    assert s.scores is not None
    raw, la, m, run_pos = s.best
    sample = s.sample
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
    others = [v for lb, v in s.scores.items() if lb != la and abs(lb - la) >= 2]
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
        layers_examined=s.examined,
        order=order_kind,
        scores_other=np.concatenate(others) if others else np.zeros(0),
    )


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
    """`unit_layer_tests` for a single sampled layer."""
    return unit_layer_tests(
        [sample],
        sus_embed,
        ref_profiles,
        ref_bases,
        ref_cols,
        preferred=[preferred],
        stop_log10_p=stop_log10_p,
    )[0]


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
