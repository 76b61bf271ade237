"""The detection benchmark's CI slice: tiny models trained here, every transform family, trained nulls."""

from __future__ import annotations

import math

from benchmarks.detection_bench import run


def test_ci_slice(tmp_path):
    summary = run("ci", tmp_path)
    results = summary["results"]
    derived = [r for r in results if r["kind"] == "derived"]
    nulls = [r for r in results if r["kind"] == "null"]
    limits = [r for r in results if r["kind"] == "limit"]
    assert len(derived) >= 40
    assert len(nulls) >= 20
    missed = [(r["case"], r["verdict"], r["log10_p"]) for r in derived if r["verdict"] != "derived"]
    assert missed == []
    assert max(r["log10_p"] for r in derived) <= -12
    # calibration: never more than alpha of the nulls below alpha, and no null ever called derived
    for alpha in (1e-3, 1e-2, 0.05):
        assert summary[f"null_frac_p_le_{alpha:g}"] <= alpha
    assert all(r["verdict"] == "independent" for r in nulls)
    # the theoretical limit (every exchangeable group relabelled) is never called derived
    assert limits
    assert all(r["verdict"] != "derived" for r in limits)
    assert summary["auc"] == 1.0
    assert not math.isnan(summary["speed_7b"]["same_depth"]["cpu_s"])
