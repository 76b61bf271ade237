"""The registry of protected models: register, list, remove, load for matching, and compare two models.

Registering reads the protected model in full (from a local folder or file, or a hub repo pinned to a commit),
builds its reference fingerprint (`monitor.fingerprinting.build_reference`), writes the arrays beside the
database (`monitor.references`) and records the model and the SHA-256 of every weight file in SQLite, so exact
re-uploads are recognised from a hub listing with zero bytes read.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fingerprints import ComparePolicy, ReferenceFingerprint, signature
from fingerprints import compare as compare_arrays
from monitor.config import Config
from monitor.errors import ConfigError, NotFound, StoreError
from monitor.findings import ALGO
from monitor.fingerprinting import SamplingSettings, build_reference, confirm_match, read_sample
from monitor.formats.canonical import ModelView
from monitor.references import load_reference, save_reference
from monitor.remote.source import WEIGHT_SUFFIXES, FileSet, LocalFileSet
from monitor.secrets import resolve_secret
from monitor.store import Store
from monitor.store.db import connect, utc_now
from monitor.store.protected import (
    ProtectedFile,
    ProtectedModel,
    add_protected,
    find_files_by_sha256,
    get_protected,
    list_protected,
    remove_protected,
)

__all__ = [
    "EXACT_LOG10_P",
    "EXACT_NULL",
    "CompareResult",
    "LoadedReference",
    "RegistryCache",
    "add",
    "compare",
    "deployment_secret",
    "open_model",
    "policy_from_config",
    "remove",
    "settings_from_config",
]

log = logging.getLogger(__name__)

EXACT_LOG10_P = -77.06
"""log10 of 2^-256: the chance that a different file has the same SHA-256 digest."""
EXACT_NULL = "byte identity: a different file has the same SHA-256 digest with probability 2^-256"
PUBLIC_COMPARE_SECRET = b"hubsentry-public-compare"


# --------------------------------------------------------------------------------------------- settings
def settings_from_config(config: Config) -> SamplingSettings:
    fp = config.fingerprint
    return SamplingSettings(
        tokens=fp.tokens,
        layers=fp.layers,
        rows_per_layer=fp.rows_per_layer,
        attention_heads=fp.attention_heads,
    )


def policy_from_config(config: Config) -> ComparePolicy:
    return ComparePolicy(alpha=config.fingerprint.per_comparison_alpha)


def deployment_secret(config: Config) -> bytes:
    """The secret that chooses what is read (``[fingerprint] secret_env`` / ``secret_file``).

    Every run of one deployment must make the same choices (alerts stay reproducible) while uploaders cannot
    predict them, so the daemon refuses to start without it.

    Raises:
        `ConfigError`: no secret is configured or the variable/file is empty.
    """
    secret = resolve_secret(config.fingerprint.secret)
    if secret is None:
        raise ConfigError("[fingerprint] secret is not set (secret_env or secret_file)")
    return secret.reveal().encode()


# --------------------------------------------------------------------------------------------- sources
@dataclass
class OpenedModel:
    """A model opened for reading: its files, view, and where it came from."""

    fileset: FileSet
    view: ModelView
    source: str
    commit: str | None
    hub: str | None = None
    repo_id: str | None = None
    close_hooks: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for hook in self.close_hooks:
            hook()


def _split_spec(spec: str) -> tuple[str, str | None]:
    repo, _, rev = spec.partition("@")
    return repo, rev or None


@contextmanager
def open_model(spec: str, *, config: Config, budget: int | None) -> Iterator[OpenedModel]:
    """Open a local path, or a hub repo ``ORG/NAME[@REV]`` (first configured hub), for reading.

    Local paths win when both could apply. Hub repos are pinned to the commit ``REV`` resolves to.
    """
    path = Path(spec).expanduser()
    if path.exists():
        fs = LocalFileSet(path, budget=budget)
        try:
            yield OpenedModel(fs, ModelView.open(fs), str(path.resolve()), None, close_hooks=[fs.close])
        finally:
            fs.close()
        return
    from monitor.scheduler import build_hub
    from monitor.validate import validate_model_repo_id

    repo_id, rev = _split_spec(spec)
    try:
        validate_model_repo_id(repo_id)
    except ValueError as exc:
        raise NotFound(f"{spec!r} is neither an existing local path nor a hub repo id ({exc})") from exc
    if not config.hubs:
        raise ConfigError("no [[hubs]] configured to read hub repos from")
    hub_cfg = config.hubs[0]
    hub = build_hub(hub_cfg)
    try:
        snap = hub.snapshot(repo_id, revision=rev)
        fs = hub.open_files(snap, budget=budget)
        yield OpenedModel(
            fs, ModelView.open(fs), f"{repo_id}@{snap.commit}", snap.commit, hub=hub_cfg.name, repo_id=repo_id
        )
    finally:
        close = getattr(hub, "close", None)
        if close is not None:
            close()


def _tokenizer_digest(opened: OpenedModel) -> str | None:
    return opened.view.tokenizer_digest


# --------------------------------------------------------------------------------------------- registry
def add(store: Store, source: str, *, name: str, owner: str | None, config: Config) -> ProtectedModel:
    """Register ``source`` as protected model ``name`` (reads it in full; nothing is budgeted)."""
    secret = deployment_secret(config)
    with store.read() as db:
        if get_protected(db, name) is not None:
            raise StoreError(f"a protected model named {name!r} already exists (remove it first)")
    with open_model(source, config=config, budget=None) as opened:
        ref = build_reference(
            opened.view,
            name=name,
            secret=secret,
            settings=settings_from_config(config),
            vocab_digest=_tokenizer_digest(opened),
        )
        files = []
        for path, entry in sorted(opened.fileset.files.items()):
            if not path.endswith(WEIGHT_SUFFIXES):
                continue
            digest = entry.sha256
            if digest is None and isinstance(opened.fileset, LocalFileSet):
                digest = opened.fileset.sha256(path)
            files.append(ProtectedFile(path=path, size=entry.size, sha256=digest))
        ref_path, ref_sha = save_reference(ref, Path(config.store.refs_dir))
        model = ProtectedModel(
            name=name,
            owner=owner,
            source=opened.source,
            source_commit=opened.commit,
            algo=ALGO,
            arch_json=json.dumps(ref.arch, sort_keys=True, default=str),
            signature_json=json.dumps(signature(ref.arch).as_dict(), sort_keys=True),
            reference_path=str(ref_path),
            reference_sha256=ref_sha,
            created_at=utc_now(),
            notes=f"{len(ref.tokens)} block tokens, {ref.n_layers} layers, kinds {sorted(ref.profiles)}",
            files=tuple(files),
        )
    store.write(lambda db: add_protected(db, model))
    log.info("protected %s from %s (%d weight files)", name, model.source, len(files))
    return model


def remove(store: Store, name: str, *, config: Config) -> bool:
    """Stop protecting ``name``; deletes its reference file. Returns False if it was not registered."""
    with store.read() as db:
        model = get_protected(db, name)
    if model is None:
        return False
    store.write(lambda db: remove_protected(db, name))
    if model.reference_path:
        Path(model.reference_path).unlink(missing_ok=True)
    return True


@dataclass(frozen=True)
class LoadedReference:
    model: ProtectedModel
    ref: ReferenceFingerprint


class RegistryCache:
    """Protected models and their references, reloaded only when the registry changes.

    Readers open their own short-lived, read-only connection (the store's writer thread is the only writer).
    """

    def __init__(self, db_path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self._db_path = db_path
        self._busy = busy_timeout_s
        self._lock = threading.Lock()
        self._key: tuple[tuple[str, str | None], ...] | None = None
        self._loaded: list[LoadedReference] = []

    def _connect(self):  # type: ignore[no-untyped-def]
        return connect(self._db_path, busy_timeout_s=self._busy, readonly=True)

    def current(self) -> list[LoadedReference]:
        db = self._connect()
        try:
            models = list_protected(db)
        finally:
            db.close()
        key = tuple((m.name, m.reference_sha256) for m in models)
        with self._lock:
            if key != self._key:
                loaded = []
                for m in models:
                    if not m.reference_path:
                        continue
                    try:
                        loaded.append(
                            LoadedReference(
                                m, load_reference(Path(m.reference_path), sha256=m.reference_sha256)
                            )
                        )
                    except StoreError as exc:
                        log.error("protected model %s skipped: %s", m.name, exc)
                self._loaded, self._key = loaded, key
            return list(self._loaded)

    def exact_matches(self, digests: Mapping[str, str]) -> dict[str, list[tuple[str, str]]]:
        """Protected name → [(suspect path, protected path)] of suspect files byte-identical to its files."""
        by_digest: dict[str, list[str]] = {}
        for path, digest in digests.items():
            by_digest.setdefault(digest.lower(), []).append(path)
        if not by_digest:
            return {}
        db = self._connect()
        try:
            hits = find_files_by_sha256(db, list(by_digest))
        finally:
            db.close()
        out: dict[str, list[tuple[str, str]]] = {}
        for name, ppath, digest in hits:
            for spath in by_digest.get(digest, []):
                out.setdefault(name, []).append((spath, ppath))
        return out


# --------------------------------------------------------------------------------------------- compare
@dataclass(frozen=True)
class CompareResult:
    """``hubsentry compare A B`` output; ``bytes_read`` counts the suspect (B) only."""

    a: str
    b: str
    verdict: str
    p_value: float
    log10_p: float
    null: str
    transform: str
    matched: str
    bytes_read: int
    requests: int
    tests: list[dict[str, Any]]
    effects: dict[str, Any]
    exact_files: list[tuple[str, str]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "p_value": self.p_value,
            "log10_p": round(self.log10_p, 3),
            "null": self.null,
            "transform": self.transform,
            "matched": self.matched,
            "bytes_read": self.bytes_read,
            "requests": self.requests,
            "a": self.a,
            "b": self.b,
            "exact_files": [list(p) for p in self.exact_files],
            "tests": self.tests,
            "effects": self.effects,
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [
            f"{self.b}  vs  {self.a}",
            f"verdict:   {self.verdict}",
            f"p-value:   10^{self.log10_p:.1f}" if self.log10_p < -300 else f"p-value:   {self.p_value:.3g}",
            f"null:      {self.null}",
            f"transform: {self.transform}",
            f"matched:   {self.matched}",
            f"read:      {self.bytes_read} bytes of B in {self.requests} requests",
        ]
        for t in self.tests:
            lines.append(
                f"  - {t.get('name')}: log10 p = {float(t.get('log10_p', 0.0)):.1f}"
                f"{'' if t.get('exact', True) else ' (approximate)'}"
            )
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _exact_pairs(a: OpenedModel, b: OpenedModel) -> list[tuple[str, str]]:
    def digests(m: OpenedModel) -> dict[str, str]:
        out = {}
        for path, entry in m.fileset.files.items():
            if not path.endswith(WEIGHT_SUFFIXES):
                continue
            d = entry.sha256
            if d is None and isinstance(m.fileset, LocalFileSet):
                d = m.fileset.sha256(path)
            if d:
                out[path] = d
        return out

    da, db_ = digests(a), digests(b)
    inv = {v: k for k, v in da.items()}
    return [(pb, inv[d]) for pb, d in db_.items() if d in inv]


def compare(a: str, b: str, *, config: Config, budget: int | None = None) -> CompareResult:
    """Compare suspect ``b`` with ``a`` as if ``a`` were protected — the daemon's code path, for one pair.

    ``a`` is read in full; ``b`` through the per-repo byte budget of the first hub (default 64 MiB).
    """
    notes: list[str] = []
    try:
        secret = deployment_secret(config)
    except ConfigError:
        secret = PUBLIC_COMPARE_SECRET
        notes.append(
            "no deployment secret configured: sampling choices are predictable (fine for one-off "
            "comparisons; the daemon requires a secret)"
        )
    settings = settings_from_config(config)
    if budget is None:
        budget = config.hubs[0].budget_per_repo if config.hubs else 64 * 1024 * 1024
    with open_model(a, config=config, budget=None) as ma:
        ref = build_reference(
            ma.view, name=a, secret=secret, settings=settings, vocab_digest=_tokenizer_digest(ma)
        )
        with open_model(b, config=config, budget=budget) as mb:
            exact = _exact_pairs(ma, mb)
            sample = read_sample(
                mb.view,
                tokens=ref.tokens,
                refs=[ref],
                secret=secret,
                suspect_key=mb.source,
                settings=settings,
            )
            policy = policy_from_config(config)
            result = confirm_match(
                mb.view,
                ref,
                sample,
                compare_arrays(ref, sample, policy),
                secret=secret,
                suspect_key=mb.source,
                settings=settings,
                policy=policy,
            )
            stats = mb.fileset.stats.snapshot()
    if exact:
        verdict, log10_p, null, transform = "derived", EXACT_LOG10_P, EXACT_NULL, "exact copy"
        matched = f"{len(exact)} weight file(s) byte-identical; " + result.matched
        tests = [
            {
                "name": "exact-file",
                "exact": True,
                "null": EXACT_NULL,
                "log10_p": EXACT_LOG10_P,
                "files": [list(p) for p in exact],
            },
            *result.tests,
        ]
    else:
        verdict, log10_p, null = result.verdict, result.log10_p, result.null
        transform, matched, tests = result.transform, result.matched, result.tests
    return CompareResult(
        a=ma.source,
        b=mb.source,
        verdict=verdict,
        p_value=float(10**log10_p) if log10_p > -300 else 0.0,
        log10_p=float(log10_p),
        null=null,
        transform=transform,
        matched=matched,
        bytes_read=int(stats["bytes_read"]),
        requests=int(stats["requests"]),
        tests=_jsonable(tests),
        effects=_jsonable(result.effects),
        exact_files=exact,
        notes=notes,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def references_for(loaded: Sequence[LoadedReference]) -> list[ReferenceFingerprint]:
    return [lr.ref for lr in loaded]
