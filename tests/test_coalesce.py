"""Read planning: merging rules, splitting, reassembly, and the bytes/requests trade-off."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.remote.coalesce import DEFAULT_COALESCE, CoalescePolicy, plan_reads

KIB = 1024


@pytest.mark.parametrize(
    ("spans", "policy", "requests"),
    [
        # overlapping, duplicate and adjacent spans always merge
        ([(0, 10), (5, 20), (20, 30), (0, 10)], CoalescePolicy(max_gap=0), [(0, 30)]),
        # a gap within both bounds merges; the gap ratio compares with the two neighbours
        ([(0, 100), (150, 250)], CoalescePolicy(max_gap=KIB, gap_ratio=1.0), [(0, 250)]),
        ([(0, 100), (350, 450)], CoalescePolicy(max_gap=KIB, gap_ratio=1.0), [(0, 100), (350, 450)]),
        ([(0, 100), (250, 350)], CoalescePolicy(max_gap=KIB, gap_ratio=0.5), [(0, 100), (250, 350)]),
        # the absolute cap wins over the ratio
        (
            [(0, 10 * KIB), (11 * KIB, 21 * KIB)],
            CoalescePolicy(max_gap=512, gap_ratio=1.0),
            [(0, 10 * KIB), (11 * KIB, 21 * KIB)],
        ),
        # max_gap=0 never reads a byte that was not asked for
        ([(0, 100), (101, 200)], CoalescePolicy(max_gap=0), [(0, 100), (101, 200)]),
        # the order of the input does not matter
        ([(500, 600), (0, 100), (120, 200)], CoalescePolicy(max_gap=KIB), [(0, 200), (500, 600)]),
        # a merge never creates a request above max_request ...
        ([(0, 60), (70, 130)], CoalescePolicy(max_gap=KIB, max_request=100), [(0, 60), (70, 130)]),
        # ... and a big span is split into equal consecutive requests
        ([(0, 250)], CoalescePolicy(max_request=100), [(0, 84), (84, 168), (168, 250)]),
        # empty spans need no request
        ([(7, 7), (3, 3)], DEFAULT_COALESCE, []),
    ],
)
def test_plans(spans, policy, requests):
    assert list(plan_reads(spans, policy).requests) == requests


def test_sampled_rows_of_a_matrix():
    """64 rows of 1536 B out of every 3rd row: each gap (3072 B) equals its two neighbours -> 1 request."""
    row = 1536
    spans = [(1000 + 3 * i * row, 1000 + 3 * i * row + row) for i in range(64)]
    plan = plan_reads(spans)
    assert len(plan.requests) == 1
    assert plan.useful_bytes == 64 * row
    assert plan.gap_bytes == 63 * 2 * row
    sparse = [(1000 + 30 * i * row, 1000 + 30 * i * row + row) for i in range(64)]
    plan = plan_reads(sparse)
    assert len(plan.requests) == 64
    assert plan.gap_bytes == 0


def test_without_gaps_keeps_other_settings():
    policy = CoalescePolicy(max_gap=KIB, gap_ratio=2.0, max_request=77)
    assert policy.without_gaps() == CoalescePolicy(max_gap=0, gap_ratio=2.0, max_request=77)


@pytest.mark.parametrize(
    "kwargs", [{"max_gap": -1}, {"gap_ratio": -0.1}, {"gap_ratio": float("nan")}, {"max_request": 0}]
)
def test_bad_policies(kwargs):
    with pytest.raises(ValueError, match="must be"):
        CoalescePolicy(**kwargs)


@pytest.mark.parametrize("span", [(-1, 5), (5, 4)])
def test_bad_spans(span):
    with pytest.raises(ValueError, match="invalid span"):
        plan_reads([span])


def test_assemble_checks_bodies():
    plan = plan_reads([(0, 10), (20, 30)], CoalescePolicy(max_gap=0))
    with pytest.raises(ValueError, match="expected 2 bodies"):
        plan.assemble([b"x" * 10])
    with pytest.raises(ValueError, match="has 9 bytes"):
        plan.assemble([b"x" * 9, b"y" * 10])


FILE = bytes(range(256)) * 64  # 16 KiB whose every byte depends on its offset


@settings(max_examples=200, deadline=None)
@given(
    spans=st.lists(
        st.tuples(st.integers(0, len(FILE)), st.integers(0, 3000)).map(
            lambda t: (t[0], min(len(FILE), t[0] + t[1]))
        ),
        max_size=40,
    ),
    max_gap=st.sampled_from([0, 16, 1024, 64 * KIB]),
    gap_ratio=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    max_request=st.sampled_from([1, 100, 4096, 1 << 20]),
)
def test_plan_properties(spans, max_gap, gap_ratio, max_request):
    policy = CoalescePolicy(max_gap=max_gap, gap_ratio=gap_ratio, max_request=max_request)
    plan = plan_reads(spans, policy)
    # requests are sorted, disjoint, non-empty and within the size cap
    for (_s1, e1), (s2, _e2) in zip(plan.requests, plan.requests[1:], strict=False):
        assert e1 <= s2
    assert all(0 < e - s <= max_request for s, e in plan.requests)
    # reassembly returns exactly the asked-for bytes, in the caller's order
    bodies = [FILE[s:e] for s, e in plan.requests]
    assert plan.assemble(bodies) == [FILE[s:e] for s, e in spans]
    # useful bytes = size of the union of the spans; gap bytes are bounded by the policy
    union = set()
    for s, e in spans:
        union.update(range(s, e))
    assert plan.useful_bytes == len(union)
    assert 0 <= plan.gap_bytes <= 2 * gap_ratio * plan.useful_bytes + 1e-9
    if max_gap == 0:
        assert plan.gap_bytes == 0
    # never more requests than without coalescing (after splitting by max_request)
    alone = plan_reads(spans, policy.without_gaps())
    assert len(plan.requests) <= len(alone.requests)
