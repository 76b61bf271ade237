"""The alert as every sink sees it: one stored row, parsed once, immutable.

Sinks render alerts from the stored evidence only (never from live pipeline objects), so a message sent
after a crash, a restart or an hour-long outage says exactly what the first attempt would have said.
`Alert.from_row` is the single place that knows how an ``alerts`` row and its ``evidence_json`` are laid out;
`Alert.from_scan` builds the same object straight from a `ScanOutcome` for ``hubsentry notify test`` and the
demo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from monitor.findings import ALGO, Finding, ScanOutcome, Severity, Verdict, alert_key

__all__ = ["SEVERITIES", "VERDICTS", "Alert", "AlertDataError", "parse_time"]

SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low")
VERDICTS: tuple[Verdict, ...] = ("derived", "inconclusive", "independent")


class AlertDataError(ValueError):
    """A stored alert row cannot be turned into an `Alert` (bad JSON, missing column, unknown verdict).

    Delivery treats this as permanent for that row: re-reading the same bytes will not fix them.
    """


def parse_time(value: object) -> datetime:
    """Parse a stored timestamp (ISO-8601 text or epoch seconds) into an aware UTC datetime.

    Naive ISO strings are taken as UTC, because the store writes UTC everywhere.

    Raises:
        `AlertDataError`: the value is neither ISO-8601 text nor a number.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(float(value), tz=UTC)
    elif isinstance(value, str) and value:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as exc:
            raise AlertDataError(f"timestamp {value!r} is not ISO-8601") from exc
    else:
        raise AlertDataError(f"timestamp {value!r} is neither ISO-8601 text nor epoch seconds")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert, ready to render: the finding plus where it was found and what finding it cost.

    Attributes:
        alert_key (`str`): deduplication key (`monitor.findings.alert_key`); also the idempotency key sinks
            attach to every message so a delivered message can be found again.
        seq (`int`): monotonic order of alerts; delivery keeps this order per sink.
        finding (`Finding`): the verdict, p-value, stated null, transform and evidence.
        hub (`str`), repo_id (`str`), commit (`str`): identity of the suspect version.
        url (`str`): link to that exact commit.
        created_at (`datetime`): when the alert was first recorded (UTC).
        weight_files (`tuple[str, ...]`), weight_format (`str | None`): what was fingerprinted.
        bytes_read (`int`), requests (`int`): what reading the suspect cost.
        reproduce (`str`): command that recomputes the verdict from public data.
        algo (`str`): algorithm version that produced the verdict.
        state (`str`): ``new``, ``acked`` or ``resolved`` at the time the row was read.
        notes (`tuple[str, ...]`): what the scan skipped and why.
    """

    alert_key: str
    seq: int
    finding: Finding
    hub: str
    repo_id: str
    commit: str
    url: str
    created_at: datetime
    weight_files: tuple[str, ...] = ()
    weight_format: str | None = None
    bytes_read: int = 0
    requests: int = 0
    reproduce: str = ""
    algo: str = ALGO
    state: str = "new"
    notes: tuple[str, ...] = ()

    @property
    def severity(self) -> Severity:
        return self.finding.severity

    @property
    def protected(self) -> str:
        return self.finding.protected

    @classmethod
    def from_scan(
        cls,
        outcome: ScanOutcome,
        finding: Finding,
        *,
        seq: int,
        created_at: datetime,
        state: str = "new",
    ) -> Alert:
        """Build the alert a stored (outcome, finding) pair would produce, without a database.

        Used by ``hubsentry notify test`` and the offline demo; the store path goes through `from_row`.
        """
        return cls(
            alert_key=alert_key(
                protected=finding.protected,
                hub=outcome.hub,
                repo_id=outcome.repo_id,
                commit=outcome.commit,
                algo=outcome.algo,
            ),
            seq=seq,
            finding=finding,
            hub=outcome.hub,
            repo_id=outcome.repo_id,
            commit=outcome.commit,
            url=outcome.url,
            created_at=parse_time(created_at),
            weight_files=tuple(outcome.weight_files),
            weight_format=outcome.weight_format,
            bytes_read=int(outcome.bytes_read),
            requests=int(outcome.requests),
            reproduce=outcome.reproduce,
            algo=outcome.algo,
            state=state,
            notes=tuple(outcome.notes),
        )

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Alert:
        """Parse one ``alerts`` row (columns plus ``evidence_json``).

        Identity and verdict come from the row's columns (what the store indexed and the operator sees in
        ``alerts list``); the narrative evidence comes from ``evidence_json``, which holds the serialised
        `Finding` either flat or under a ``"finding"`` key, next to the `ScanOutcome` fields.

        Raises:
            `AlertDataError`: a required column is missing or the evidence is not a JSON object.
        """
        try:
            raw_evidence = row["evidence_json"]
            evidence = json.loads(raw_evidence) if isinstance(raw_evidence, str | bytes) else raw_evidence
        except (KeyError, ValueError) as exc:
            raise AlertDataError(
                f"alert {row.get('alert_key')!r}: evidence_json is missing or not JSON"
            ) from exc
        if not isinstance(evidence, Mapping):
            raise AlertDataError(f"alert {row.get('alert_key')!r}: evidence_json is not a JSON object")
        nested = evidence.get("finding")
        finding_src: Mapping[str, Any] = nested if isinstance(nested, Mapping) else evidence
        try:
            key = str(row["alert_key"])
            verdict = str(row.get("verdict") or finding_src["verdict"])
            severity = str(row.get("severity") or finding_src.get("severity") or "high")
            if verdict not in VERDICTS:
                raise AlertDataError(f"alert {key!r}: unknown verdict {verdict!r}")
            if severity not in SEVERITIES:
                raise AlertDataError(f"alert {key!r}: unknown severity {severity!r}")
            finding = Finding(
                protected=str(row.get("protected") or finding_src["protected"]),
                owner=_opt_str(row.get("owner", finding_src.get("owner"))),
                verdict=cast(Verdict, verdict),
                p_value=_float(row.get("p_value"), finding_src.get("p_value")),
                log10_p=_float(row.get("log10_p"), finding_src.get("log10_p")),
                null=str(finding_src.get("null") or ""),
                transform=str(row.get("transform") or finding_src.get("transform") or ""),
                matched=str(finding_src.get("matched") or ""),
                tests=tuple(dict(t) for t in finding_src.get("tests") or () if isinstance(t, Mapping)),
                exact_files=tuple(str(f) for f in finding_src.get("exact_files") or ()),
                severity=cast(Severity, severity),
            )
            return cls(
                alert_key=key,
                seq=int(row["seq"]),
                finding=finding,
                hub=str(row.get("hub") or evidence["hub"]),
                repo_id=str(row.get("repo_id") or evidence["repo_id"]),
                commit=str(row.get("commit_sha") or evidence.get("commit") or ""),
                url=str(evidence.get("url") or ""),
                created_at=parse_time(row.get("created_at") or evidence.get("created_at")),
                weight_files=tuple(str(f) for f in evidence.get("weight_files") or ()),
                weight_format=_opt_str(evidence.get("weight_format")),
                bytes_read=int(evidence.get("bytes_read") or 0),
                requests=int(evidence.get("requests") or 0),
                reproduce=str(evidence.get("reproduce") or ""),
                algo=str(evidence.get("algo") or finding_src.get("algo") or ALGO),
                state=str(row.get("state") or "new"),
                notes=tuple(str(n) for n in evidence.get("notes") or ()),
            )
        except AlertDataError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise AlertDataError(f"alert {row.get('alert_key')!r}: malformed row ({exc!r})") from exc


def _opt_str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _float(*candidates: object) -> float:
    """First candidate that is a number; NaN when none is (rendering then says "unknown")."""
    for value in candidates:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return math.nan
