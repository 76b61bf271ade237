"""Fault injection for reliability tests: make chosen requests fail the way real networks and hubs do.

A `FaultRule` matches requests by method and a regular expression searched in the *decoded* URL path
(``/acme/m/resolve/main/model.safetensors``, ``/api/models``, ``/cdn/<sha256>``) and applies a
`FaultAction`:

================================  ===========================================================================
action                            effect
================================  ===========================================================================
``status(code, headers, body)``   answer ``code`` at once (500/502/503/404/429...), nothing else happens
``rate_limited(reset_s, ...)``    a 429 with ``RateLimit``, ``RateLimit-Policy`` and ``Retry-After``
``delay(seconds)``                sleep, then go on with the next rules and the normal answer
``reset()``                       close the connection without answering (TCP RST)
``truncate(n_bytes)``             send the normal headers, then only ``n_bytes`` of the body, then close
``wrong_content_range(shift)``    a 206 whose ``Content-Range`` is shifted by ``shift`` bytes
``ignore_range()``                answer 200 with the whole file although a Range was asked for
``commit_moved(sha)``             ``X-Repo-Commit`` names a different commit than the one served
================================  ===========================================================================

Rules are tried in order. A matching rule *fires* unless it is exhausted (``times``), still skipping
(``skip``) or loses its coin flip (``probability``, drawn from its own ``random.Random(seed)`` so runs
are reproducible). A fired ``delay`` lets later rules fire too; any other fired action ends the search.
Counters (`FaultRule.matched`, `FaultRule.fired`) let tests assert exactly what happened.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal

__all__ = ["FaultAction", "FaultDecision", "FaultRule", "FaultSet"]

FaultKind = Literal[
    "status", "delay", "reset", "truncate", "wrong_content_range", "ignore_range", "commit_moved"
]


@dataclass(frozen=True)
class FaultAction:
    """What a fired rule does; build one with the class methods (``FaultAction.reset()``...)."""

    kind: FaultKind
    code: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    seconds: float = 0.0
    n_bytes: int = 0
    shift: int = 0
    sha: str | None = None

    @classmethod
    def status(
        cls,
        code: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
    ) -> FaultAction:
        """Answer ``code`` immediately. ``body`` may be bytes, text, or a dict sent as JSON.

        Without a body, a JSON ``{"error": ...}`` naming the injected fault is sent.
        """
        if not 100 <= code <= 599:
            raise ValueError(f"HTTP status must be 100..599, got {code}")
        if isinstance(body, Mapping):
            body = json.dumps(dict(body)).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        elif isinstance(body, str):
            body = body.encode()
        return cls("status", code=code, headers=tuple((headers or {}).items()), body=body)

    @classmethod
    def rate_limited(
        cls,
        reset_s: int = 1,
        *,
        bucket: str = "api",
        quota: int = 1000,
        window_s: int = 300,
        retry_after: bool = True,
    ) -> FaultAction:
        """A Hub-style 429: window exhausted (``r=0``), resets in ``reset_s`` seconds."""
        headers = {
            "RateLimit": f'"{bucket}";r=0;t={reset_s}',
            "RateLimit-Policy": f'"fixed window";"{bucket}";q={quota};w={window_s}',
        }
        if retry_after:
            headers["Retry-After"] = str(reset_s)
        message = f"You have exceeded our hourly quotas for action '{bucket}'. (injected fault)"
        return cls.status(429, headers=headers, body={"error": message})

    @classmethod
    def delay(cls, seconds: float) -> FaultAction:
        """Wait ``seconds`` before answering (the answer itself is unchanged)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        return cls("delay", seconds=seconds)

    @classmethod
    def reset(cls) -> FaultAction:
        """Close the connection without sending a byte (the client sees a reset)."""
        return cls("reset")

    @classmethod
    def truncate(cls, n_bytes: int) -> FaultAction:
        """Send full headers but only the first ``n_bytes`` of the body, then close."""
        if n_bytes < 0:
            raise ValueError("n_bytes must be >= 0")
        return cls("truncate", n_bytes=n_bytes)

    @classmethod
    def wrong_content_range(cls, shift: int = 1) -> FaultAction:
        """On a 206, announce a ``Content-Range`` shifted by ``shift`` bytes (body unchanged)."""
        if shift == 0:
            raise ValueError("shift must be non-zero")
        return cls("wrong_content_range", shift=shift)

    @classmethod
    def ignore_range(cls) -> FaultAction:
        """Answer a ranged request with 200 and the whole file."""
        return cls("ignore_range")

    @classmethod
    def commit_moved(cls, sha: str | None = None) -> FaultAction:
        """Send ``X-Repo-Commit: sha`` (default: a fixed sha that no repo has) instead of the real one."""
        if sha is not None and not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise ValueError("sha must be 40 lowercase hex characters")
        return cls("commit_moved", sha=sha or "0" * 39 + "1")


@dataclass
class FaultRule:
    """A request pattern and what to do to matching requests.

    Args:
        match_method (`str | None`): HTTP method to match (``"GET"``, ``"HEAD"``...); ``None`` = any.
        match_path (`str`): regular expression searched (``re.search``) in the decoded URL path.
        action (`FaultAction`): what to do when the rule fires.
        times (`int | None`): fire at most this often; ``None`` = unlimited.
        probability (`float`): chance that a matching request fires the rule.
        seed (`int`): seed of the rule's own random generator, for reproducible flaky runs.
        skip (`int`): let the first ``skip`` matching requests through untouched ("fail the 3rd read").
        match_range (`bool | None`): only requests with (``True``) or without (``False``) a Range header.
        name (`str | None`): label recorded in the request log (default: the action kind).

    Attributes:
        matched (`int`): requests that matched method, path and range condition.
        fired (`int`): times the action was applied.
    """

    match_method: str | None
    match_path: str
    action: FaultAction
    _: KW_ONLY
    times: int | None = None
    probability: float = 1.0
    seed: int = 0
    skip: int = 0
    match_range: bool | None = None
    name: str | None = None
    matched: int = field(default=0, init=False)
    fired: int = field(default=0, init=False)
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")
        if self.skip < 0:
            raise ValueError("skip must be >= 0")
        self._regex = re.compile(self.match_path)
        self._rng = random.Random(self.seed)
        self.name = self.name or self.action.kind

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.fired >= self.times

    def _matches(self, method: str, path: str, has_range: bool) -> bool:
        if self.match_method is not None and self.match_method.upper() != method:
            return False
        if self.match_range is not None and self.match_range != has_range:
            return False
        return self._regex.search(path) is not None

    def _consider(self, method: str, path: str, has_range: bool) -> bool:
        """Count a request and decide whether the rule fires (caller holds the set's lock)."""
        if not self._matches(method, path, has_range):
            return False
        self.matched += 1
        if self.matched <= self.skip or self.exhausted:
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


@dataclass(frozen=True)
class FaultDecision:
    """The faults to apply to one request.

    Attributes:
        delays (`tuple[float, ...]`): seconds to sleep before answering, in rule order.
        action (`FaultAction | None`): the one non-delay action, if any fired.
        names (`tuple[str, ...]`): names of every fired rule, for the request log.
    """

    delays: tuple[float, ...] = ()
    action: FaultAction | None = None
    names: tuple[str, ...] = ()


class FaultSet:
    """The ordered, thread-safe list of rules of one hub (``hub.faults``)."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, rule: FaultRule) -> FaultRule:
        """Append a rule (it is tried after the existing ones) and return it for its counters."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def decide(self, method: str, path: str, *, has_range: bool) -> FaultDecision:
        """Run one request through the rules and return what to do to it."""
        delays: list[float] = []
        names: list[str] = []
        with self._lock:
            for rule in self._rules:
                if not rule._consider(method, path, has_range):
                    continue
                names.append(rule.name or rule.action.kind)
                if rule.action.kind == "delay":
                    delays.append(rule.action.seconds)
                    continue
                return FaultDecision(tuple(delays), rule.action, tuple(names))
        return FaultDecision(tuple(delays), None, tuple(names))
