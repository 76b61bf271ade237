"""Scan one (hub, repo, commit): exact copies, then structure, then a few MiB of weights, then the tests.

`process` is what the worker runs for every work item. It is a pure function of the item and the context
(no writes: the worker stores the returned `ScanOutcome` through the single writer), so a crash anywhere
only means the item is scanned again. The tiers, cheapest first:

1. **Exact files** — LFS SHA-256 digests from the hub listing against the registry: zero weight bytes.
2. **Structure** — weight headers (a few KiB per file) → canonical view → comparable protected models.
3. **Sample** — the union of the candidates' token blocks, plus MLP unit blocks chosen by the secret, read
   through the per-repo byte budget.
4. **Screen and test** — rank candidates (`fingerprints.ScreeningIndex`) and run the exact tests on the best
   ``max_candidates``.
5. **Confirm** — for flagged candidates only, one block of attention heads (`confirm_match`).

Problems with the upload itself (malformed file, unsupported format, budget exceeded, gated) end the scan
with a note and whatever was already found; hub problems (5xx, 429, resets) propagate so the worker retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fingerprints import (
    ComparePolicy,
    ScreeningIndex,
    comparable,
    compare,
    signature,
)
from monitor.config import Config
from monitor.errors import BudgetExceeded, CommitMoved, FormatError
from monitor.findings import ALGO, Finding, ScanOutcome
from monitor.fingerprinting import SamplingSettings, confirm_match, read_sample
from monitor.formats.canonical import ModelView
from monitor.hubs.base import HubSource, RepoSnapshot
from monitor.registry import (
    EXACT_LOG10_P,
    EXACT_NULL,
    LoadedReference,
    RegistryCache,
    deployment_secret,
    policy_from_config,
    settings_from_config,
)
from monitor.remote.source import WEIGHT_SUFFIXES
from monitor.store.queue import WorkItem

__all__ = ["PipelineContext", "build_context", "process", "scan_snapshot"]

log = logging.getLogger(__name__)


@dataclass
class PipelineContext:
    """Everything a scan needs, built once per worker process.

    Attributes:
        config (`Config`): validated configuration.
        hubs (`Mapping[str, HubSource]`): clients by configured hub name (shared limiters with the listing).
        registry (`RegistryCache`): protected models and references (reloaded when the registry changes).
        secret (`bytes`): deployment secret for sampling choices.
        settings (`SamplingSettings`), policy (`ComparePolicy`): sizes and decision levels.
        max_candidates (`int`): protected models tested per upload after screening.
    """

    config: Config
    hubs: Mapping[str, HubSource]
    registry: RegistryCache
    secret: bytes
    settings: SamplingSettings
    policy: ComparePolicy
    max_candidates: int
    budgets: dict[str, int | None] = field(default_factory=dict)


def build_context(config: Config, *, hubs: Mapping[str, HubSource] | None = None) -> PipelineContext:
    """The context for `process`; builds hub clients when the caller does not share its own."""
    if hubs is None:
        from monitor.scheduler import build_hub

        hubs = {h.name: build_hub(h) for h in config.hubs}
    return PipelineContext(
        config=config,
        hubs=hubs,
        registry=RegistryCache(Path(config.store.path), busy_timeout_s=config.store.busy_timeout_s),
        secret=deployment_secret(config),
        settings=settings_from_config(config),
        policy=policy_from_config(config),
        max_candidates=config.fingerprint.max_candidates,
        budgets={h.name: h.budget_per_repo for h in config.hubs},
    )


def _severity(verdict: str, exact: bool) -> str:
    if exact:
        return "critical"
    return {"derived": "high", "inconclusive": "medium"}.get(verdict, "low")


def _exact_findings(
    ctx: PipelineContext, snap: RepoSnapshot, refs: Sequence[LoadedReference]
) -> list[Finding]:
    digests = {p: e.sha256 for p, e in snap.files.items() if e.sha256 and p.endswith(WEIGHT_SUFFIXES)}
    owners = {lr.model.name: lr.model.owner for lr in refs}
    findings = []
    for name, pairs in sorted(ctx.registry.exact_matches(digests).items()):
        files = sorted({s for s, _ in pairs})
        findings.append(
            Finding(
                protected=name,
                owner=owners.get(name),
                verdict="derived",
                p_value=0.0,
                log10_p=EXACT_LOG10_P,
                null=EXACT_NULL,
                transform="exact copy",
                matched=f"{len(files)} weight file(s) byte-identical: "
                + ", ".join(f"{s} = {p}" for s, p in sorted(pairs)[:5]),
                tests=(
                    {
                        "name": "exact-file",
                        "exact": True,
                        "null": EXACT_NULL,
                        "log10_p": EXACT_LOG10_P,
                        "files": [list(p) for p in sorted(pairs)],
                    },
                ),
                exact_files=tuple(files),
                severity="critical",
            )
        )
    return findings


def _rank(
    candidates: list[LoadedReference], sample_tokens: Sequence[str], sample_embed, limit: int
) -> list[LoadedReference]:
    if len(candidates) <= limit:
        return candidates
    index = ScreeningIndex()
    for lr in candidates:
        index.add(lr.model.name, lr.ref.tokens, lr.ref.embed)
    ranked = index.query(sample_tokens, sample_embed, top=limit)
    by_name = {lr.model.name: lr for lr in candidates}
    chosen = [by_name[n] for n, _ in ranked]
    screened = {n for n, _ in ranked}
    # Candidates whose sketch tokens the suspect lacks cannot be screened; test them rather than drop them.
    chosen += [
        lr
        for lr in candidates
        if lr.model.name not in screened and not all(t in set(sample_tokens) for t in lr.ref.tokens[:64])
    ]
    return chosen


def scan_snapshot(ctx: PipelineContext, hub: HubSource, snap: RepoSnapshot) -> ScanOutcome:
    """Scan a pinned snapshot (the body of `process`, usable without a work item)."""
    t0 = time.monotonic()
    refs = ctx.registry.current()
    url = hub.commit_url(snap.repo_id, snap.commit)
    notes: list[str] = []
    findings = _exact_findings(ctx, snap, refs)
    exact_names = {f.protected for f in findings}
    weight_files = tuple(sorted(p for p in snap.files if p.endswith(WEIGHT_SUFFIXES)))
    base = {
        "hub": snap.hub,
        "repo_id": snap.repo_id,
        "commit": snap.commit,
        "url": url,
        "algo": ALGO,
        "weight_files": weight_files,
        "reproduce": f"hubsentry compare PROTECTED_SOURCE {snap.repo_id}@{snap.commit} --json",
    }
    remaining = [lr for lr in refs if lr.model.name not in exact_names]

    def outcome(fmt: str | None = None, stats: Mapping[str, object] | None = None) -> ScanOutcome:
        reproduce = base["reproduce"]
        if findings:
            src = next((lr.model.source for lr in refs if lr.model.name == findings[0].protected), None)
            if src:
                reproduce = f"hubsentry compare {src} {snap.repo_id}@{snap.commit} --json"
        return ScanOutcome(
            hub=snap.hub,
            repo_id=snap.repo_id,
            commit=snap.commit,
            url=url,
            weight_files=weight_files,
            weight_format=fmt,
            bytes_read=int((stats or {}).get("bytes_read", 0)),  # type: ignore[call-overload]
            requests=int((stats or {}).get("requests", 0)),  # type: ignore[call-overload]
            elapsed_s=round(time.monotonic() - t0, 3),
            findings=tuple(findings),
            notes=tuple(notes),
            algo=ALGO,
            reproduce=reproduce,
        )

    if not refs:
        notes.append("registry is empty: nothing to compare with")
        return outcome()
    if snap.gated or snap.private:
        notes.append("gated or private repo: file digests checked, weights not read")
        return outcome()
    if not weight_files:
        notes.append("no weight files")
        return outcome()
    if not remaining:
        return outcome()
    fileset = hub.open_files(snap, budget=ctx.budgets.get(snap.hub))
    fmt: str | None = None
    try:
        view = ModelView.open(fileset)
        fmt = view.arch.quantization or str(view.arch.extra.get("format", "")) or None
        sus_sig = signature(asdict(view.arch))
        candidates = []
        for lr in remaining:
            ok, why = comparable(signature(lr.ref.arch), sus_sig)
            if ok:
                candidates.append(lr)
            else:
                log.debug("%s: not comparable with %s: %s", snap.repo_id, lr.model.name, why)
        if not candidates:
            notes.append("no structurally comparable protected model")
            return outcome(fmt, fileset.stats.snapshot())
        tokens = list(dict.fromkeys(t for lr in candidates for t in lr.ref.tokens))
        suspect_key = f"{snap.hub}/{snap.repo_id}@{snap.commit}"
        sample = read_sample(
            view,
            tokens=tokens,
            refs=[lr.ref for lr in candidates],
            secret=ctx.secret,
            suspect_key=suspect_key,
            settings=ctx.settings,
        )
        unlisted = view.files.unlisted
        if unlisted:
            # Tensors hidden from the index are ignored by loaders that trust it; say so, they may matter.
            notes.append(
                f"{len(unlisted)} tensor(s) in the read shards are not listed in the index: "
                + ", ".join(sorted(unlisted)[:5])
            )
        for lr in _rank(candidates, sample.tokens, sample.embed, ctx.max_candidates):
            c = confirm_match(
                view,
                lr.ref,
                sample,
                compare(lr.ref, sample, ctx.policy),
                secret=ctx.secret,
                suspect_key=suspect_key,
                settings=ctx.settings,
                policy=ctx.policy,
            )
            findings.append(
                Finding(
                    protected=lr.model.name,
                    owner=lr.model.owner,
                    verdict=c.verdict,  # type: ignore[arg-type]
                    p_value=c.p_value,
                    log10_p=c.log10_p,
                    null=c.null,
                    transform=c.transform,
                    matched=c.matched,
                    tests=tuple(c.tests),
                    severity=_severity(c.verdict, False),  # type: ignore[arg-type]
                )
            )
    except BudgetExceeded as exc:
        notes.append(f"byte budget exceeded, scan stopped: {exc}")
        log.warning(
            "%s:%s@%s: byte budget exceeded, scan stopped: %s", snap.hub, snap.repo_id, snap.commit[:12], exc
        )
    except CommitMoved:
        raise
    except FormatError as exc:
        notes.append(f"weights not readable: {exc}")
        log.warning("%s:%s@%s: weights not readable: %s", snap.hub, snap.repo_id, snap.commit[:12], exc)
    return outcome(fmt, fileset.stats.snapshot())


def process(ctx: PipelineContext, item: WorkItem) -> ScanOutcome:
    """Scan one work item; hub errors propagate to the worker (which retries), file problems become notes."""
    hub = ctx.hubs[item.hub]
    snap = hub.snapshot(item.repo_id, revision=item.commit_sha)
    if snap.commit != item.commit_sha:
        raise CommitMoved(f"{item.repo_id}: asked for {item.commit_sha}, hub answered {snap.commit}")
    out = scan_snapshot(ctx, hub, snap)
    for f in out.findings:
        if f.reportable:
            log.warning(
                "MATCH %s ↔ %s@%s: %s p=10^%.1f (%s) %s",
                f.protected,
                out.repo_id,
                out.commit[:12],
                f.verdict,
                f.log10_p,
                f.transform,
                f.matched,
            )
    return out
