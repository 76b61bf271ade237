"""Log-space tails and combinations: checked against scipy where scipy is exact, and by simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from fingerprints.matching import increasing_run
from fingerprints.stats import (
    binomial_tail_log10,
    bonferroni_log10,
    cauchy_combine_log10,
    fisher_combine_log10,
    increasing_run_tail_log10,
    log10_comb,
    to_p,
)


@pytest.mark.parametrize("ps", [[0.5], [0.01, 0.2], [0.3, 0.3, 0.3, 0.9], [1e-5, 0.5, 0.7]])
def test_fisher_matches_scipy(ps):
    x = -2 * sum(math.log(p) for p in ps)
    expected = sps.chi2.sf(x, 2 * len(ps))
    assert fisher_combine_log10([math.log10(p) for p in ps]) == pytest.approx(math.log10(expected), abs=1e-9)


def test_fisher_far_tail_does_not_underflow():
    out = fisher_combine_log10([-3000.0, 0.0, 0.0])
    assert -3000 < out < -2990


def test_fisher_of_ones_is_one():
    assert fisher_combine_log10([0.0, 0.0, 0.0]) == 0.0


@pytest.mark.parametrize(("n", "k", "q"), [(64, 10, 0.05), (64, 40, 0.3), (20, 3, 0.01), (100, 0, 0.5)])
def test_binomial_tail_matches_scipy(n, k, q):
    expected = sps.binom.sf(k - 1, n, q)
    assert binomial_tail_log10(n, k, q) == pytest.approx(math.log10(expected), abs=1e-9)


def test_cauchy_single_p_is_identity():
    assert cauchy_combine_log10([math.log10(0.03)]) == pytest.approx(math.log10(0.03), abs=1e-6)
    assert cauchy_combine_log10([-500.0]) == pytest.approx(-500.0, abs=1e-6)


def test_cauchy_tail_is_dominated_by_smallest_p():
    out = cauchy_combine_log10([-200.0, -1.0, 0.0])
    assert -200.6 < out < -199.4


def test_bonferroni():
    assert bonferroni_log10(-10.0, 100) == pytest.approx(-8.0)
    assert bonferroni_log10(-1.0, 1000) == 0.0


def test_to_p_underflow():
    assert to_p(-400.0) == 0.0
    assert to_p(-2.0) == pytest.approx(0.01)


def test_increasing_run_bound_exact_endpoints():
    # A fully increasing arrangement of K distinct values happens with probability 1/K!.
    assert increasing_run_tail_log10(10, 10) == pytest.approx(-math.log10(math.factorial(10)))
    assert increasing_run_tail_log10(10, 1) == 0.0
    assert increasing_run_tail_log10(64, 64) == pytest.approx(
        log10_comb(64, 64) - math.lgamma(65) / math.log(10)
    )


@pytest.mark.parametrize("k_items", [12, 24])
def test_increasing_run_bound_is_valid_by_simulation(k_items):
    """The union bound must never be below the simulated tail of the LIS of a random permutation."""
    rng = np.random.default_rng(7)
    runs = np.array([len(increasing_run(rng.permutation(k_items))) for _ in range(20000)])
    for k in range(1, k_items + 1):
        empirical = float(np.mean(runs >= k))
        if empirical == 0:
            continue
        bound = 10 ** increasing_run_tail_log10(k_items, k)
        # allow Monte-Carlo noise (3 binomial standard errors)
        noise = 3 * math.sqrt(empirical * (1 - empirical) / len(runs))
        assert bound + noise >= empirical, (k, bound, empirical)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-1, max_value=30), max_size=40))
def test_increasing_run_is_a_longest_strictly_increasing_subsequence(values):
    pos = increasing_run(np.asarray(values))
    chosen = [values[i] for i in pos]
    assert all(v >= 0 for v in chosen)
    assert all(a < b for a, b in itertools.pairwise(chosen))
    assert list(pos) == sorted(pos)
    # dynamic-programming reference length
    best = [0] * len(values)
    for i, v in enumerate(values):
        if v < 0:
            continue
        best[i] = 1 + max([best[j] for j in range(i) if 0 <= values[j] < v] or [0])
    assert len(pos) == max(best or [0])


def test_converter_rewrites_keep_wordpiece_pieces_apart():
    from fingerprints.tokens import best_rewrite

    hf = ["[CLS]", "the", "##the", "ing", "##ing", "run"]
    gguf_vocab = {"[CLS]": 0, "▁the": 1, "the": 2, "▁ing": 3, "ing": 4, "▁run": 5}
    name, rewritten = best_rewrite(hf, gguf_vocab)
    assert name == "WordPiece→llama.cpp"
    assert rewritten == ["[CLS]", "▁the", "the", "▁ing", "ing", "▁run"]
    back, strings = best_rewrite(["▁the", "the"], {"the": 0, "##the": 1})
    assert back == "llama.cpp→WordPiece"
    assert strings == ["the", "##the"]
