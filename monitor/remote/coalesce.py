"""Planning ranged reads: merge nearby spans into few requests, split big ones, reassemble.

A fingerprint asks for many small spans of one file (a header, then sampled rows of several
tensors). Each HTTP request costs a round trip and, on the Hub, possibly a rate-limited resolver
call, while each byte read costs egress and counts against the per-repo `ByteBudget`. The plan
trades the two explicitly:

* overlapping and adjacent spans are always merged (reading them together costs nothing extra);
* two spans separated by a gap are merged when the gap is at most ``max_gap`` bytes *and* at most
  ``gap_ratio`` times the bytes of the two spans it separates, so the gap bytes read stay in
  proportion to the useful bytes (with ``gap_ratio=1`` at most twice the useful bytes in the
  worst case, usually far less);
* a merge never creates a request larger than ``max_request`` bytes, and a single span larger
  than that is split into equal consecutive requests (cheaper retries, parallel transfer).

Gap bytes are real bytes on the wire: the plan reports them (`ReadPlan.gap_bytes`) so callers
can charge the budget for what is actually read, and re-plan without gaps when the budget is
tight (`CoalescePolicy.without_gaps`).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from monitor.remote.source import Span

__all__ = ["DEFAULT_COALESCE", "CoalescePolicy", "ReadPlan", "plan_reads"]


@dataclass(frozen=True)
class CoalescePolicy:
    """Knobs of `plan_reads`.

    Attributes:
        max_gap (`int`): largest gap in bytes that may be read to save a request (0: never).
        gap_ratio (`float`): largest gap relative to the sizes of the two spans it separates.
        max_request (`int`): largest single request in bytes (>= 1).
    """

    max_gap: int = 64 * 1024
    gap_ratio: float = 1.0
    max_request: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {self.max_gap}")
        if not (self.gap_ratio >= 0 and math.isfinite(self.gap_ratio)):
            raise ValueError(f"gap_ratio must be a finite number >= 0, got {self.gap_ratio}")
        if self.max_request < 1:
            raise ValueError(f"max_request must be >= 1, got {self.max_request}")

    def without_gaps(self) -> CoalescePolicy:
        """The same policy, but reading no byte that was not asked for."""
        return replace(self, max_gap=0)


DEFAULT_COALESCE = CoalescePolicy()
"""Gaps up to 64 KiB (and at most the size of their neighbours), requests up to 8 MiB."""


@dataclass(frozen=True)
class ReadPlan:
    """The requests that cover a list of spans, and how to cut the spans back out.

    Attributes:
        spans (`tuple[Span, ...]`): the spans asked for, in the caller's order.
        requests (`tuple[Span, ...]`): disjoint half-open requests, sorted by offset.
        useful_bytes (`int`): bytes covered by at least one span (overlaps counted once).
    """

    spans: tuple[Span, ...]
    requests: tuple[Span, ...]
    useful_bytes: int

    @property
    def total_bytes(self) -> int:
        """Bytes the requests will transfer."""
        return sum(end - start for start, end in self.requests)

    @property
    def gap_bytes(self) -> int:
        """Bytes read only to save requests."""
        return self.total_bytes - self.useful_bytes

    def assemble(self, bodies: Sequence[bytes]) -> list[bytes]:
        """Cut every span out of the request bodies (``bodies[i]`` answers ``requests[i]``).

        Raises:
            `ValueError`: a body has the wrong length (a bug upstream: sources verify lengths).
        """
        if len(bodies) != len(self.requests):
            raise ValueError(f"expected {len(self.requests)} bodies, got {len(bodies)}")
        for (start, end), body in zip(self.requests, bodies, strict=True):
            if len(body) != end - start:
                raise ValueError(f"body for [{start}, {end}) has {len(body)} bytes")
        starts = [start for start, _ in self.requests]
        out: list[bytes] = []
        for start, end in self.spans:
            if start == end:
                out.append(b"")
                continue
            i = bisect.bisect_right(starts, start) - 1
            pieces: list[bytes] = []
            pos = start
            while pos < end:
                req_start, req_end = self.requests[i]
                if not req_start <= pos < req_end:
                    raise ValueError(f"span [{start}, {end}) is not covered by the plan")
                take = min(end, req_end)
                pieces.append(bodies[i][pos - req_start : take - req_start])
                pos = take
                i += 1
            out.append(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return out


def plan_reads(spans: Sequence[Span], policy: CoalescePolicy = DEFAULT_COALESCE) -> ReadPlan:
    """Plan the requests that read ``spans`` (half-open; empty spans need no request).

    Spans must already be validated against the file size (`check_span`); this function only
    requires ``0 <= start <= end``.

    Example:
        ```python
        plan = plan_reads([(0, 8), (8, 1000), (5000, 5100)])
        plan.requests   # ((0, 1000), (5000, 5100)): the gap of 4000 B exceeds 1 x (992 + 100) B
        ```
    """
    spans = tuple((int(s), int(e)) for s, e in spans)
    for start, end in spans:
        if start < 0 or end < start:
            raise ValueError(f"invalid span [{start}, {end})")
    ordered = sorted((s, e) for s, e in spans if e > s)
    groups: list[list[int]] = []
    useful = 0
    prev_len = 0
    for start, end in ordered:
        if groups:
            group = groups[-1]
            gap = start - group[1]
            if gap <= 0:
                useful += max(0, end - group[1])
                group[1] = max(group[1], end)
                prev_len = end - start
                continue
            limit = min(policy.max_gap, policy.gap_ratio * (prev_len + end - start))
            if gap <= limit and end - group[0] <= policy.max_request:
                group[1] = end
                useful += end - start
                prev_len = end - start
                continue
        groups.append([start, end])
        useful += end - start
        prev_len = end - start
    requests: list[Span] = []
    for start, end in groups:
        count = math.ceil((end - start) / policy.max_request)
        step = math.ceil((end - start) / count)
        requests.extend((pos, min(end, pos + step)) for pos in range(start, end, step))
    return ReadPlan(spans=spans, requests=tuple(requests), useful_bytes=useful)
