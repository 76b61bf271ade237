"""What scanning one repo commit produced: the contract between the pipeline, the store and the alerts.

The pipeline (`monitor.pipeline`) turns one work item into a `ScanOutcome`; the worker stores it and turns
every reportable `Finding` into an alert row plus outbox rows in the same transaction; sinks render alerts
from the stored evidence only. Everything here is plain, JSON-serialisable data, so a crash between any
two steps can be replayed from the database.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["ALGO", "Finding", "ScanOutcome", "Severity", "Verdict", "alert_key"]

ALGO = "hubsentry-fp-v1"
"""Version of everything that decides a verdict (reads, statistics, thresholds). Bumping it means
re-fingerprinting, never silent drift; it is part of every alert key."""

Verdict = Literal["derived", "inconclusive", "independent"]
Severity = Literal["critical", "high", "medium", "low"]


@dataclass(frozen=True)
class Finding:
    """The result of testing one suspect commit against one protected model.

    Attributes:
        protected (`str`): registry name of the protected model.
        owner (`str | None`): owning team from the registry (for routing and @-mentions).
        verdict (`Verdict`): ``derived`` (H0 rejected at the configured family-wise level),
            ``inconclusive`` (some evidence, not enough) or ``independent``.
        p_value (`float`): combined p-value (may underflow to 0.0; see ``log10_p``).
        log10_p (`float`): log10 of the combined p-value, exact even when ``p_value`` underflows.
        null (`str`): the stated null hypothesis the p-value is computed under.
        transform (`str`): the transformation found, e.g. ``"identity + GGUF Q4_K"``,
            ``"residual permutation + int8"``, ``"exact copy"``.
        matched (`str`): one line saying what matched (``"model.safetensors byte-identical"``,
            ``"61/64 sampled MLP units in 4 layers, 384/384 residual dims"``).
        tests (`tuple[dict, ...]`): one record per statistical test (name, statistic, p_value, log10_p,
            null, exact, details).
        exact_files (`tuple[str, ...]`): suspect files byte-identical to protected files.
        severity (`Severity`): business impact derived from the registry entry and the evidence kind.
    """

    protected: str
    owner: str | None
    verdict: Verdict
    p_value: float
    log10_p: float
    null: str
    transform: str
    matched: str
    tests: tuple[dict[str, Any], ...] = ()
    exact_files: tuple[str, ...] = ()
    severity: Severity = "high"

    @property
    def reportable(self) -> bool:
        return self.verdict != "independent"


@dataclass(frozen=True)
class ScanOutcome:
    """Everything learned about one (hub, repo, commit).

    Attributes:
        hub (`str`), repo_id (`str`), commit (`str`): identity of the scanned version.
        url (`str`): link to that exact commit.
        weight_files (`tuple[str, ...]`): files the fingerprint was computed from.
        weight_format (`str | None`): ``safetensors``, ``gguf:Q4_K_M``, ``gptq:4bit``... or None.
        bytes_read (`int`), requests (`int`): what reading the suspect cost.
        elapsed_s (`float`): wall time of the scan.
        findings (`tuple[Finding, ...]`): one per protected model that was tested.
        notes (`tuple[str, ...]`): what was skipped and why (gated, no weights, budget exceeded...).
        algo (`str`): `ALGO` at scan time.
        reproduce (`str`): a command that recomputes the verdict from public data.
    """

    hub: str
    repo_id: str
    commit: str
    url: str
    weight_files: tuple[str, ...] = ()
    weight_format: str | None = None
    bytes_read: int = 0
    requests: int = 0
    elapsed_s: float = 0.0
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()
    algo: str = ALGO
    reproduce: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alert_key(*, protected: str, hub: str, repo_id: str, commit: str, algo: str = ALGO) -> str:
    """Deduplication key of an alert: one per protected model, repo commit and algorithm version."""
    raw = "\x1f".join((protected, hub, repo_id, commit, algo)).encode()
    return hashlib.sha256(raw).hexdigest()
