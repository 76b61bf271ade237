"""Tail probabilities and p-value combination, all in log10 space.

Derived models reach p-values like 10^-3000, far below the smallest float64, and a monitor that makes
10^7 comparisons a day needs thresholds around 10^-9 and below; so every function here takes and returns
``log10`` p-values and never forms a probability that could underflow.

The bounds are *valid* (never smaller than the true tail), which is what a stated null needs: a
conservative p-value can only cost power, never produce a false alarm beyond the stated rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "LN10",
    "binomial_tail_log10",
    "bonferroni_log10",
    "cauchy_combine_log10",
    "fisher_combine_log10",
    "increasing_run_tail_log10",
    "log10_comb",
    "log10_factorial",
    "to_p",
]

LN10 = math.log(10.0)


def log10_factorial(n: int) -> float:
    """``log10(n!)`` via the log-gamma function."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return math.lgamma(n + 1) / LN10


def log10_comb(n: int, k: int) -> float:
    """``log10(C(n, k))``; ``-inf`` outside ``0 <= k <= n``."""
    if k < 0 or k > n:
        return -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / LN10


def to_p(log10_p: float) -> float:
    """Back to a probability (0.0 when it underflows; keep ``log10_p`` for reporting)."""
    return 0.0 if log10_p < -330 else min(1.0, 10.0**log10_p)


def increasing_run_tail_log10(n_items: int, run_length: int) -> float:
    """Bound on P(a uniformly random arrangement of ``n_items`` values has a strictly increasing
    subsequence of length ``>= run_length``).

    For any fixed set of ``run_length`` positions, a uniformly random arrangement puts their values in
    strictly increasing order with probability at most ``1/run_length!`` (exactly that for distinct
    values, less with ties). A union bound over the ``C(n, k)`` position sets gives
    ``P(LIS >= k) <= C(n, k) / k!``; it is the first-moment bound, tight in the far tail that matters
    for evidence (it equals ``1/n!`` at ``k = n``).
    """
    if run_length <= 1:
        return 0.0
    return min(0.0, log10_comb(n_items, run_length) - log10_factorial(run_length))


def binomial_tail_log10(n: int, k: int, q: float) -> float:
    """``log10 P(X >= k)`` for ``X ~ Binomial(n, q)``, summed in log space (no underflow)."""
    if k <= 0:
        return 0.0
    if k > n or q <= 0.0:
        return -math.inf
    if q >= 1.0:
        return 0.0
    j = np.arange(k, n + 1, dtype=np.float64)
    lg = np.vectorize(math.lgamma)
    terms = (lg(n + 1) - lg(j + 1) - lg(n - j + 1)) + j * math.log(q) + (n - j) * math.log1p(-q)
    top = float(terms.max())
    return min(0.0, (top + math.log(float(np.exp(terms - top).sum()))) / LN10)


def bonferroni_log10(log10_p: float, n_tests: int) -> float:
    """Bonferroni adjustment for having looked at ``n_tests`` hypotheses and kept the best."""
    if n_tests < 1:
        raise ValueError("n_tests must be >= 1")
    return min(0.0, log10_p + math.log10(n_tests))


def fisher_combine_log10(log10_ps: Sequence[float]) -> float:
    """Fisher's method for *independent* p-values, exactly, in log space.

    ``X = -2 Σ ln p_i`` is χ² with ``2L`` degrees of freedom under the null; for even degrees of freedom the
    survival function has the closed form ``exp(-x/2) Σ_{j<L} (x/2)^j / j!``, evaluated here with a
    log-sum-exp so that p-values of 10^-3000 combine without underflow. Conservative (valid) when the
    inputs are super-uniform, as discrete permutation p-values are.
    """
    vals = [min(0.0, float(v)) for v in log10_ps]
    if not vals:
        return 0.0
    if any(math.isinf(v) for v in vals):
        return -math.inf
    half_x = -sum(vals) * LN10  # x/2 = -Σ ln p
    if half_x <= 0.0:
        return 0.0
    j = np.arange(len(vals), dtype=np.float64)
    terms = j * math.log(half_x) - np.vectorize(math.lgamma)(j + 1)
    top = float(terms.max())
    log_sf = -half_x + top + math.log(float(np.exp(terms - top).sum()))
    return min(0.0, log_sf / LN10)


def cauchy_combine_log10(log10_ps: Sequence[float], weights: Sequence[float] | None = None) -> float:
    """Cauchy combination (Liu & Xie 2020) for *dependent* p-values, in log space.

    ``T = Σ w_i tan((1/2 - p_i) π)`` has approximately a standard Cauchy tail under arbitrary dependence;
    ``p = 1/2 - arctan(T / Σ w) / π``. For tiny ``p_i`` the terms are ``≈ 1/(π p_i)`` and the tail is
    ``≈ Σw / (π T)``, which we evaluate in log space. The result is never below ``min(p_i) / Σw``-scaled
    Bonferroni by more than the approximation allows, so extreme single tests dominate as they should.
    """
    vals = [min(0.0, float(v)) for v in log10_ps]
    if not vals:
        return 0.0
    w = np.ones(len(vals)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    lp = np.asarray(vals) * LN10  # natural log p
    if float(lp.min()) > math.log(1e-15):
        p = np.clip(np.exp(lp), 1e-300, 1.0 - 1e-12)  # tan diverges at p = 1
        t = float((w * np.tan((0.5 - p) * math.pi)).sum())
        return min(0.0, math.log10(max(0.5 - math.atan(t) / math.pi, 1e-300)))
    # Tail regime: T ≈ Σ w_i / (π p_i) is dominated by the small p_i; p ≈ 1 / (π T).
    log_terms = np.log(w) - lp - math.log(math.pi)
    top = float(log_terms.max())
    log_t = top + math.log(float(np.exp(log_terms - top).sum()))
    return min(0.0, (-log_t - math.log(math.pi)) / LN10)
