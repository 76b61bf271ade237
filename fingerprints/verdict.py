"""Compare a suspect sample with a protected reference: tests, combined p-value, verdict, transform.

Tiers, cheapest first (bytes are the cost; the caller already did the zero-byte exact-file check):

1. Token alignment by string → the shared token rows.
2. Residual-basis test on the embedding block (exact; see `fingerprints.residual`).
3. Unit-label test on each sampled MLP layer (exact; see `fingerprints.units`).
4. If no exact test fires but unit contents match strongly, the permutation evidence (approximate).
5. Only for flagged candidates (`confirm`): the attention tier on one layer — the exact V-row test and the
   per-head transformation (see `fingerprints.attention`); the caller reads those rows after `compare`.

Exact tests use disjoint exchangeable groups (residual dimensions; the units of each layer), which are
independent under H0, so they combine with Fisher's method. The verdict is ``derived`` when the combined exact
p-value is at most the per-comparison level ``alpha`` (the daemon sets it from a daily family-wise budget);
``inconclusive`` when only weaker or approximate evidence exists; ``independent`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fingerprints.attention import MATCH, AttentionEvidence, AttentionSample, attention_test
from fingerprints.reference import LayerSample, ReferenceFingerprint, SuspectSample
from fingerprints.residual import ResidualEvidence, residual_test
from fingerprints.stats import fisher_combine_log10, to_p
from fingerprints.tokens import TokenAlignment, align_tokens
from fingerprints.units import UnitLayerEvidence, approximate_permuted_evidence, unit_layer_tests

__all__ = ["COMBINED_NULL", "ComparePolicy", "Comparison", "attention_target", "compare", "confirm"]

WINDOW = 2
"""First-pass search radius (protected layers around the corresponding depth)."""
WIDEN_LOG10_P = -3.0
"""Any exact test at or below this level widens the unit search to every protected layer."""

COMBINED_NULL = (
    "the suspect's weights come from an initialisation independent of the protected model "
    "(hidden units exchangeable). Not covered: same-seed runs, shared public initialisations; distillation "
    "students trained from scratch are independent under H0"
)


@dataclass(frozen=True)
class ComparePolicy:
    """Decision levels.

    Attributes:
        alpha (`float`): per-comparison level for ``derived`` (daily family-wise budget / comparisons).
        inconclusive_alpha (`float`): exact evidence below this but above ``alpha`` → ``inconclusive``.
        approx_alpha (`float`): approximate (permutation) evidence below this → ``inconclusive``.
        min_tokens (`int`): fewer shared tokens than this and the embedding-based tests are skipped.
    """

    alpha: float = 1e-9
    inconclusive_alpha: float = 1e-4
    approx_alpha: float = 1e-12
    min_tokens: int = 48


@dataclass(frozen=True)
class Comparison:
    """Result of `compare`.

    Attributes:
        verdict (`str`): ``derived``, ``inconclusive`` or ``independent``.
        log10_p (`float`): combined exact log10 p-value (0.0 when no exact test could run).
        p_value (`float`): the same as a float (0.0 on underflow).
        null (`str`): the stated null hypothesis.
        transform (`str`): the transformation found.
        matched (`str`): one-line summary of what matched.
        tests (`list[dict]`): per-test records.
        effects (`dict`): effect sizes (shared tokens, unit correlations, layer map...).
        evidence: the cheap tiers' intermediate results (for `confirm`; not serialised).
    """

    verdict: str
    log10_p: float
    p_value: float
    null: str
    transform: str
    matched: str
    tests: list[dict[str, Any]] = field(default_factory=list)
    effects: dict[str, Any] = field(default_factory=dict)
    evidence: _Evidence | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "p_value": self.p_value,
            "log10_p": self.log10_p,
            "null": self.null,
            "transform": self.transform,
            "matched": self.matched,
            "tests": self.tests,
            "effects": self.effects,
        }


def _preferred_layers(sus_layer: int, sus_layers: int, ref_layers: int) -> list[int]:
    centre = 0 if sus_layers <= 1 else round(sus_layer * (ref_layers - 1) / (sus_layers - 1))
    return [c for c in (sus_layer, centre, centre - 1, centre + 1) if 0 <= c < ref_layers]


def _reordered(ref: ReferenceFingerprint, sample: SuspectSample) -> bool:
    """Whether the shared tokens sit at other ids in the suspect (a reordered or rebuilt vocabulary)."""
    if sample.token_ids is None:
        return False
    ref_ids = dict(zip(ref.tokens, ref.token_ids.tolist(), strict=True))
    pairs = [
        (ref_ids[t], i) for t, i in zip(sample.tokens, sample.token_ids.tolist(), strict=True) if t in ref_ids
    ]
    return bool(pairs) and sum(a != b for a, b in pairs) > 0.1 * len(pairs)


def _transform(
    res: ResidualEvidence | None,
    units: list[UnitLayerEvidence],
    sample: SuspectSample,
    ref: ReferenceFingerprint,
    alignment_mode: str,
    shared: int,
    att: AttentionEvidence | None = None,
) -> str:
    parts: list[str] = []
    # Columns that match nothing one-to-one while unit profiles (rotation-invariant) match well: a rotation.
    rotated = any(u.order in ("identity", "monotone", "permuted") and u.median_score >= 0.5 for u in units)
    if res is not None:
        parts.append(
            {
                "identity": "same residual basis",
                "sign-flips": "residual sign flips",
                "width-pruned": "residual width pruned",
                "shifted": "residual basis shifted",
                "permuted": "residual permutation",
                "permuted+sign-flips": "residual permutation + sign flips",
                "drifted": "same residual basis (embeddings drifted)",
                "no one-to-one match": "residual rotation" if rotated else "residual basis not matched",
            }.get(res.basis, res.basis)
        )
    if units:
        orders = {u.order for u in units}
        if orders <= {"identity"}:
            pass
        elif "permuted" in orders and not orders & {"identity", "monotone"}:
            parts.append("MLP unit permutation")
        elif "monotone" in orders:
            widths = sample.arch.get("d_ff"), ref.arch.get("d_ff")
            parts.append(
                "MLP pruning" if widths[0] and widths[1] and widths[0] < widths[1] else "MLP units shifted"
            )
        layer_map = {u.layer: u.ref_layer for u in units if u.order != "none"}
        if any(s != r for s, r in layer_map.items()):
            parts.append("layers remapped " + ", ".join(f"{s}→{r}" for s, r in sorted(layer_map.items())))
        gains = [u for u in units if u.kind != "down"]
        if gains and ref.mlp_norms is not None:
            sampled = [s.gain for s in sample.layers if s.gain is not None]
            if (
                sampled
                and all(np.allclose(g, 1.0, atol=1e-4) for g in sampled)
                and not np.allclose(ref.mlp_norms, 1.0, atol=1e-4)
            ):
                parts.append("norm gains folded")
        medians = [u.median_score for u in units if u.order != "none"]
        if medians:
            med = float(np.median(medians))
            if med < 0.995:
                parts.append(f"weights changed (median unit corr {med:.3f})")
            elif med < 0.9999:
                parts.append(f"weights slightly changed (median unit corr {med:.4f})")
        unmatched = sum(u.order == "none" for u in units)
        if unmatched:
            parts.append(f"MLP units unmatched in {unmatched}/{len(units)} sampled layers (heavily changed)")
    if att is not None:
        parts.extend(att.findings)
    vocab_b = sample.arch.get("vocab_size")
    vocab_a = ref.arch.get("vocab_size")
    if vocab_a and vocab_b and vocab_a != vocab_b:
        parts.append(f"vocabulary {vocab_a}→{vocab_b}")
    if sample.token_rewrite:
        parts.append(f"token strings rewritten ({sample.token_rewrite})")
    elif alignment_mode != "exact":
        parts.append("token strings rewritten")
    if _reordered(ref, sample):
        parts.append("token ids reordered")
    if sample.quantization:
        parts.append(sample.quantization)
    if not parts or parts == ["same residual basis"]:
        return "identity (copy)" if not sample.quantization else f"identity + {sample.quantization}"
    return " + ".join(parts)


@dataclass(frozen=True)
class _Evidence:
    """The cheap tiers' results, kept on a `Comparison` so the confirmation tier does not redo them."""

    res: ResidualEvidence
    units: list[UnitLayerEvidence]
    align: TokenAlignment
    sus_rows: np.ndarray
    tests: list[dict[str, Any]]
    exact_log10: list[float]
    effects: dict[str, Any]
    same_depth: bool


def compare(
    ref: ReferenceFingerprint, sample: SuspectSample, policy: ComparePolicy | None = None
) -> Comparison:
    """Test whether ``sample`` comes from a model derived from ``ref``; see the module docstring."""
    policy = policy or ComparePolicy()
    tests: list[dict[str, Any]] = []
    effects: dict[str, Any] = {}
    align = align_tokens(ref.tokens, sample.tokens)
    effects["shared_tokens"] = len(align)
    effects["alignment_mode"] = align.mode
    if len(align) < policy.min_tokens:
        return Comparison(
            verdict="inconclusive" if len(align) else "independent",
            log10_p=0.0,
            p_value=1.0,
            null=COMBINED_NULL,
            transform="vocabulary not shared",
            matched=f"only {len(align)} of {len(ref.tokens)} block tokens present in the suspect vocabulary",
            tests=tests,
            effects=effects,
        )
    ref_rows = ref.embed[align.ref_index]
    sus_rows = sample.embed[align.sus_index]
    res = residual_test(ref_rows, sus_rows)
    tests.append(res.record())
    exact_log10 = [res.log10_p]
    unit_ev: list[UnitLayerEvidence] = []
    sus_layers = int(sample.arch.get("n_layers") or 1)
    by_kind: dict[str, list[LayerSample]] = {}
    for ls in sample.layers:
        if ls.kind in ref.profiles:
            by_kind.setdefault(ls.kind, []).append(ls)
    same_depth = sus_layers == ref.n_layers
    for kind, group in by_kind.items():
        profiles = ref.profiles[kind]
        prefs = [_preferred_layers(ls.layer, sus_layers, profiles.shape[0]) for ls in group]
        # Same depth: look near the corresponding layers first (a fraction of the cost for the many
        # unrelated uploads); widen to every layer when the depth differs or anything looks related.
        evs = unit_layer_tests(
            group,
            sus_rows,
            profiles,
            ref.bases[kind],
            align.ref_index,
            preferred=prefs,
            window=WINDOW if same_depth else None,
        )
        related = (
            res.log10_p <= WIDEN_LOG10_P
            or any(e.log10_p <= WIDEN_LOG10_P for e in evs)
            or any(e.order == "permuted" for e in evs)
        )
        if same_depth and related and any(e.log10_p > np.log10(policy.alpha) for e in evs):
            evs = unit_layer_tests(
                group, sus_rows, profiles, ref.bases[kind], align.ref_index, preferred=prefs
            )
        for ev in evs:
            unit_ev.append(ev)
            tests.append(ev.record())
            exact_log10.append(ev.log10_p)
    effects["residual"] = {"basis": res.basis, "strong": res.strong, "dims": res.n_dims}
    effects["units"] = [
        {
            "layer": u.layer,
            "ref_layer": u.ref_layer,
            "median_corr": round(u.median_score, 4),
            "strong": u.strong,
            "run": u.run,
            "k": u.k_units,
        }
        for u in unit_ev
    ]
    evidence = _Evidence(res, unit_ev, align, sus_rows, tests, exact_log10, effects, same_depth)
    return _decide(ref, sample, policy, evidence, None)


def attention_target(first: Comparison) -> tuple[int, int] | None:
    """``(suspect layer, protected layer)`` for the attention tier, or ``None`` when it should not run.

    It runs only for candidates the cheap tiers flagged (``derived`` or ``inconclusive``), on the sampled
    layer whose unit test matched best — the MLP test already found which protected layer that is (layer
    drop and duplication included), and that layer's shard header has already been read. When no unit
    block matched (heavy fine-tunes) and the depths agree, the first sampled layer is compared with the
    protected layer of the same index.
    """
    ev = first.evidence
    if ev is None or first.verdict == "independent" or not ev.units:
        return None
    matched = [u for u in ev.units if u.order != "none"]
    if matched:
        best = min(matched, key=lambda u: (u.log10_p, -u.median_score))
        return best.layer, best.ref_layer
    if ev.same_depth:
        return ev.units[0].layer, ev.units[0].layer
    return None


def confirm(
    ref: ReferenceFingerprint,
    sample: SuspectSample,
    first: Comparison,
    attention: AttentionSample,
    policy: ComparePolicy | None = None,
) -> Comparison:
    """Add the attention tier to a first-pass `Comparison` (same tests, plus the exact V-row test and the
    per-head transformation); returns ``first`` unchanged when the reference has no attention profiles or
    the tier cannot run."""
    policy = policy or ComparePolicy()
    ev = first.evidence
    if ev is None or not ref.attention:
        return first
    t_a = ref.attention["q"].shape[2]
    keep = ev.align.ref_index < t_a
    att = attention_test(
        ref.attention,
        ref.arch,
        attention,
        ev.sus_rows[keep],
        ev.align.ref_index[keep],
    )
    if att is None:
        return first
    return _decide(ref, sample, policy, ev, att)


def _decide(
    ref: ReferenceFingerprint,
    sample: SuspectSample,
    policy: ComparePolicy,
    ev: _Evidence,
    att: AttentionEvidence | None,
) -> Comparison:
    tests = list(ev.tests)
    exact_log10 = list(ev.exact_log10)
    effects = dict(ev.effects)
    if att is not None:
        tests.extend(att.records())
        exact_log10.append(att.log10_p)
        effects["attention"] = {
            "layer": att.layer,
            "ref_layer": att.ref_layer,
            "heads": {h["head"]: h["ref_head"] for h in att.heads},
            "findings": list(att.findings),
        }
    res, unit_ev = ev.res, ev.units
    combined = fisher_combine_log10(exact_log10)
    approx_log10 = 0.0
    if unit_ev and combined > np.log10(policy.alpha):
        approx = approximate_permuted_evidence(unit_ev, next(iter(ref.profiles.values())).shape[0])
        if approx["layers"]:
            approx_log10 = fisher_combine_log10([lay["log10_p"] for lay in approx["layers"]])
            approx["log10_p"] = approx_log10
            tests.append(approx)
    if combined <= np.log10(policy.alpha):
        verdict = "derived"
    elif combined <= np.log10(policy.inconclusive_alpha) or approx_log10 <= np.log10(policy.approx_alpha):
        verdict = "inconclusive"
    else:
        verdict = "independent"
    n_units = sum(u.k_units for u in unit_ev)
    matched_units = sum(max(u.run, u.strong) for u in unit_ev if u.order != "none")
    matched = (
        f"{matched_units}/{n_units} sampled MLP units in {len(unit_ev)} layers; "
        f"{res.strong}/{res.n_dims} residual dims over {res.n_tokens} shared tokens"
    )
    if att is not None:
        heads = sum(h["form_corr"] >= MATCH for h in att.heads)
        matched += f"; {heads}/{len(att.heads)} attention heads in layer {att.layer}"
    transform = (
        _transform(res, unit_ev, sample, ref, ev.align.mode, len(ev.align), att)
        if verdict != "independent"
        else "none"
    )
    return Comparison(
        verdict=verdict,
        log10_p=combined,
        p_value=to_p(combined),
        null=COMBINED_NULL,
        transform=transform,
        matched=matched,
        tests=tests,
        effects=effects,
        evidence=ev,
    )
