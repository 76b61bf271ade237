"""Exact test on the residual-stream basis, from a block of embedding rows.

Each residual dimension of the suspect is matched to the protected model's dimension whose embedding column
(over a shared block of tokens) correlates best in absolute value. A copy, a fine-tune or a quantised copy
keeps the basis, so the matched labels increase along the suspect's dimensions; width pruning keeps them
increasing with gaps. Under H0 (independent initialisation: i.i.d. init across residual dimensions and
permutation-equivariant training) the suspect's dimension labels are exchangeable, so conditional on the set
of columns the matched labels are in uniformly random order, and the length ``k`` of their longest increasing
run has ``P(k) <= C(d, k) / k!`` — no alignment is fitted, so nothing is tested on data it was fitted to.

The same matching also says *how* the basis was changed (identity, permutation, sign flips, or no one-to-one
match at all, which is what a rotation after norm folding leaves), which the verdict reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fingerprints.matching import best_matches, increasing_run, standardize_rows
from fingerprints.stats import increasing_run_tail_log10

__all__ = ["RESIDUAL_NULL", "ResidualEvidence", "residual_test"]

RESIDUAL_NULL = (
    "independent initialisation; the suspect's residual dimensions are then exchangeable, so matched "
    "embedding-column labels are in uniformly random order (P(increasing run >= k) <= C(d,k)/k!)"
)

STRONG = 0.5


@dataclass(frozen=True)
class ResidualEvidence:
    """Outcome of the residual-basis test.

    Attributes:
        log10_p (`float`): exact bound on the p-value.
        run (`int`): longest increasing run of matched labels.
        n_dims (`int`): suspect residual width ``d``.
        ref_dims (`int`): protected residual width.
        fixed (`int`): dimensions matched to the same label.
        strong (`int`): dimensions whose best |corr| is at least 0.5.
        sign_flips (`int`): strong matches with negative correlation.
        median_abs_corr (`float`): median best |corr|.
        basis (`str`): ``identity``, ``sign-flips``, ``width-pruned``, ``drifted`` (same basis, embeddings
            changed a lot), ``permuted``, ``permuted+sign-flips``, ``no one-to-one match`` (rotated, heavily
            changed, or unrelated).
        n_tokens (`int`): token rows the correlations were computed over.
    """

    log10_p: float
    run: int
    n_dims: int
    ref_dims: int
    fixed: int
    strong: int
    sign_flips: int
    median_abs_corr: float
    basis: str
    n_tokens: int

    def record(self) -> dict[str, object]:
        return {
            "name": "residual-basis",
            "exact": True,
            "null": RESIDUAL_NULL,
            "log10_p": self.log10_p,
            "statistic": {
                "increasing_run": self.run,
                "dims": self.n_dims,
                "ref_dims": self.ref_dims,
                "fixed": self.fixed,
                "strong": self.strong,
                "sign_flips": self.sign_flips,
                "median_abs_corr": round(self.median_abs_corr, 4),
                "tokens": self.n_tokens,
            },
            "basis": self.basis,
        }


def residual_test(ref_embed: np.ndarray, sus_embed: np.ndarray) -> ResidualEvidence:
    """Match residual dimensions through embedding columns over the same tokens (rows paired).

    Args:
        ref_embed (`np.ndarray`): ``(n, d_ref)`` protected embedding rows.
        sus_embed (`np.ndarray`): ``(n, d)`` suspect embedding rows for the same tokens, same order.
    """
    if ref_embed.shape[0] != sus_embed.shape[0]:
        raise ValueError("embedding blocks must have the same token rows")
    n, d = sus_embed.shape
    a_cols = standardize_rows(np.asarray(ref_embed, dtype=np.float32).T)
    b_cols = standardize_rows(np.asarray(sus_embed, dtype=np.float32).T)
    m = best_matches(b_cols, a_cols, absolute=True)
    run = len(increasing_run(m.index))
    log10_p = increasing_run_tail_log10(d, run)
    strong_mask = m.score >= STRONG
    fixed = int(np.sum(m.index == np.arange(d)))
    strong = int(strong_mask.sum())
    flips = int(np.sum(strong_mask & (m.sign < 0)))
    if fixed >= 0.9 * d:
        basis = "sign-flips" if flips >= 0.1 * max(1, strong) else "identity"
    elif run >= 0.9 * d:
        basis = "width-pruned" if d < ref_embed.shape[1] else "shifted"
    elif fixed >= 0.25 * d:
        basis = "drifted"
    elif strong >= 0.6 * d:
        basis = "permuted+sign-flips" if flips >= 0.1 * strong else "permuted"
    else:
        basis = "no one-to-one match"
    return ResidualEvidence(
        log10_p=log10_p,
        run=run,
        n_dims=d,
        ref_dims=int(ref_embed.shape[1]),
        fixed=fixed,
        strong=strong,
        sign_flips=flips,
        median_abs_corr=float(np.median(m.score)) if d else 0.0,
        basis=basis,
        n_tokens=n,
    )
