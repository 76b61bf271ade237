"""Bytes and requests per verdict: what deciding on one upload costs, for a 22M BERT and 7B/70B Llama shapes.

For each shape a protected model is registered from disk and suspects are published on a `LocalHub` whose
every request (API, resolver, CDN) is delayed by ``--latency-ms``; each suspect is then scanned by the daemon's
own code (`monitor.pipeline.scan_snapshot`: snapshot, exact-file tier, structure, budgeted sample, tests) and
the hub's request log is broken down by purpose: weight headers, redirects, config/index, tokenizer,
embedding rows, MLP unit rows, norm gains, and the attention rows the confirmation tier reads for flagged
candidates.

* **bert**: the protected model is the real all-MiniLM-L6-v2 (`monitor.synth.assets`); the suspects are real
  files derived from it here: its int8 round trip saved as BF16 safetensors, a llama.cpp-layout GGUF Q4_K_M of
  that (with llama.cpp's fallbacks for 384-wide rows), and a GPTQ 4-bit g128 checkpoint of it.
* **7b**, **70b** (and **tiny**, for tests): virtual checkpoints generated from seeds
  (`monitor.localhub.virtual_*`): the protected base, a fine-tuned derivative (base + 5% noise) as BF16
  shards, the same derivative as GGUF Q4_K_M and as GPTQ 4-bit g128, and an independent model (other seed) as
  a control. Nothing is stored but specs; the hub generates the bytes it serves.

References are built once (reading the protected model in full: ~100 GB of generated values for 70B) and cached
under ``benchmarks/.cache/bytes/refs`` keyed by the model files, the secret and the sampling settings.

Usage::

    python -m benchmarks.bytes_bench --shapes bert,7b,70b --latency-ms 50

writes ``benchmarks/results/bytes-bench.json`` and the "Bytes per verdict" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os

# A 2-core machine shared with other jobs: OpenBLAS's own threads spin against each other and made one
# 768x256 SVD (per layer and unit kind, in every reference build) take 7.7 s instead of 0.04 s here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import hashlib
import json
import multiprocessing
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from benchmarks.bytes_models import SHAPES, Case, Suspect, prepare
from benchmarks.bytes_report import machine, render_markdown, update_docs
from fingerprints import ReferenceFingerprint, signature
from monitor.config.parse import parse_config
from monitor.findings import ALGO
from monitor.fingerprinting import add_attention, build_reference
from monitor.formats.canonical import ModelView
from monitor.pipeline import build_context, scan_snapshot
from monitor.references import load_reference, save_reference
from monitor.registry import settings_from_config
from monitor.remote.source import WEIGHT_SUFFIXES, LocalFileSet
from monitor.store import Store
from monitor.store.db import utc_now
from monitor.store.protected import ProtectedFile, ProtectedModel, add_protected

__all__ = ["SuspectResult", "breakdown", "hub_process", "main", "reference", "round_trips", "run"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "benchmarks" / ".cache" / "bytes"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "bytes-bench.json"
SECRET_ENV = "HUBSENTRY_BYTES_BENCH_SECRET"
SECRET = "hubsentry-bytes-bench: a public benchmark secret"
CATEGORIES = (
    "API",
    "redirects",
    "headers",
    "header read-ahead",
    "config/index",
    "tokenizer",
    "embeddings",
    "MLP units",
    "norm gains",
    "attention (confirmation)",
    "other tensors",
    "gaps",
    "other files",
)
_CONFIG_FILES = re.compile(r"(^|/)(config\.json|quantize_config\.json|quant_config\.json|.*\.index\.json)$")
_TOKENIZER_FILES = re.compile(r"(^|/)(tokenizer\.json|tokenizer\.model|vocab\.txt|tokenizer_config\.json)$")


# --------------------------------------------------------------------------------------------- references
def _reference_key(fileset: LocalFileSet, settings: Any) -> str:
    # What the reference depends on (the attention tier's head count only affects what suspects read).
    shaping = {k: v for k, v in asdict(settings).items() if k != "attention_heads"}
    h = hashlib.sha256(f"{ALGO}|{SECRET}|{json.dumps(shaping, sort_keys=True)}".encode())
    for path, entry in sorted(fileset.files.items()):
        digest = fileset.sha256(path) if path.endswith(WEIGHT_SUFFIXES) else entry.blob_id or ""
        h.update(f"\n{path}|{entry.size}|{digest}".encode())
    return h.hexdigest()[:16]


def reference(case: Case, cache: Path, settings: Any) -> tuple[ReferenceFingerprint, Path, dict[str, Any]]:
    """The protected model's reference, from the cache or built now (and cached).

    Returns:
        ``(reference, file, build record {seconds, bytes_read, built_at, sha256})``.
    """
    fileset = LocalFileSet(case.protected_dir)
    try:
        key = _reference_key(fileset, settings)
        folder = cache / "refs" / f"{case.shape}-{key}"
        record_path = folder / "build.json"
        if record_path.exists():
            record = json.loads(record_path.read_text())
            path = Path(record["path"])
            if path.exists():
                print(
                    f"[{case.shape}] reference cached ({record['seconds']:.0f} s to build on {record['built_at']})"
                )
                ref = load_reference(path, sha256=record["sha256"])
                if ref.attention:
                    return ref, path, record
                # Cached before the attention tier: complete it (reads q/k/v only, not the MLPs again).
                print(f"[{case.shape}] adding attention profiles to the cached reference...")
                t0 = time.monotonic()
                ref = add_attention(ref, ModelView.open(fileset))
                path, sha = save_reference(ref, folder)
                record |= {
                    "path": str(path),
                    "sha256": sha,
                    "attention_seconds": round(time.monotonic() - t0, 1),
                    "reference_bytes": path.stat().st_size,
                }
                record_path.write_text(json.dumps(record, indent=2) + "\n")
                return ref, path, record
        print(f"[{case.shape}] building the reference from {case.protected_dir} (reads the model in full)...")
        t0 = time.monotonic()
        view = ModelView.open(fileset)
        ref = build_reference(
            view, name=f"bench/{case.shape}", secret=SECRET.encode(), settings=settings,
            vocab_digest=view.tokenizer_digest,
        )  # fmt: skip
        seconds = time.monotonic() - t0
        path, sha = save_reference(ref, folder)
        record = {
            "path": str(path),
            "sha256": sha,
            "seconds": round(seconds, 1),
            "bytes_read": fileset.stats.bytes_read,
            "built_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "reference_bytes": path.stat().st_size,
        }
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"[{case.shape}] reference built in {seconds:.0f} s from {fileset.stats.bytes_read:,} bytes")
        return ref, path, record
    finally:
        fileset.close()


def _register(store: Store, case: Case, ref: ReferenceFingerprint, path: Path, sha: str) -> None:
    """Insert the protected model as `monitor.registry.add` would, reusing the cached reference."""
    fileset = LocalFileSet(case.protected_dir)
    files = tuple(
        ProtectedFile(p, e.size, fileset.sha256(p))
        for p, e in sorted(fileset.files.items())
        if p.endswith(WEIGHT_SUFFIXES)
    )
    fileset.close()
    model = ProtectedModel(
        name=ref.name,
        owner="bytes-bench",
        source=str(case.protected_dir),
        source_commit=None,
        algo=ALGO,
        arch_json=json.dumps(ref.arch, sort_keys=True, default=str),
        signature_json=json.dumps(signature(ref.arch).as_dict(), sort_keys=True),
        reference_path=str(path),
        reference_sha256=sha,
        created_at=utc_now(),
        notes="bytes benchmark",
        files=files,
    )
    store.write(lambda db: add_protected(db, model))


# --------------------------------------------------------------------------------------------- the hub
def _serve(root: str, latency_s: float, conn: Any) -> None:
    """Child process: a `LocalHub` over ``root`` with ``latency_s`` added to every request."""
    from monitor.localhub import FaultAction, FaultRule, LocalHub

    with LocalHub(Path(root)) as hub:
        if latency_s > 0:
            hub.faults.add(FaultRule(None, "", FaultAction.delay(latency_s), name="latency"))
        conn.send(hub.endpoint)
        while True:
            command = conn.recv()
            if command == "log":
                conn.send([asdict(r) for r in hub.log])
            elif command == "clear":
                hub.clear_log()
                conn.send(True)
            else:
                break


@contextmanager
def hub_process(root: Path, *, latency_ms: float) -> Iterator[tuple[str, Callable[[str], Any]]]:
    """A local hub in its own process (so generating virtual bytes does not share our GIL).

    Yields ``(endpoint, ask)`` where ``ask("log")`` returns the request log as dicts and ``ask("clear")``
    empties it.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(str(root), latency_ms / 1000.0, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(120):
            raise RuntimeError("the local hub did not start within 120 s")
        endpoint = parent.recv()

        def ask(command: str) -> Any:
            parent.send(command)
            return parent.recv()

        yield endpoint, ask
    finally:
        parent.send("stop")
        proc.join(30)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)


# --------------------------------------------------------------------------------------------- breakdown
@dataclass
class _Layout:
    data_start: int
    spans: list[tuple[int, int, str]]


def _category(key: str) -> str:
    if key == "embed":
        return "embeddings"
    if ".mlp." in key:
        return "MLP units"
    if ".attn." in key:
        return "attention (confirmation)"
    if key.endswith("_norm"):
        return "norm gains"
    return "other tensors"


def _layouts(repo_dir: Path) -> dict[str, _Layout]:
    """Where headers end and each tensor lies, per weight file (read locally, through the same parsers)."""
    fileset = LocalFileSet(repo_dir)
    try:
        view = ModelView.open(fileset)
        category = {src: _category(key) for key, info in view.tensors.items() for src in info.sources}
        out = {}
        for wf in view.weight_files:
            spans = sorted(
                (t.offset, t.offset + t.nbytes, category.get(n, "other tensors"))
                for n, t in wf.tensors.items()
            )
            out[wf.path] = _Layout(min((s for s, _, _ in spans), default=0), spans)
        return out
    finally:
        fileset.close()


def _split(start: int, end: int, layout: _Layout) -> dict[str, int]:
    """Bytes of ``[start, end)`` per category (header, tensors by kind, gaps between tensors)."""
    out: dict[str, int] = {}
    if start < layout.data_start:
        out["headers"] = min(end, layout.data_start) - start
    covered = sum(out.values())
    for s, e, cat in layout.spans:
        n = min(end, e) - max(start, s)
        if n > 0:
            out[cat] = out.get(cat, 0) + n
            covered += n
    if end - start > covered:
        out["gaps"] = end - start - covered
    return out


def _file_of(record: dict[str, Any], by_sha: dict[str, str]) -> str:
    path = str(record["path"])
    if path.startswith("/cdn/"):
        return by_sha.get(path.rsplit("/", 1)[-1], path)
    return unquote(path.split("/resolve/", 1)[1].split("/", 1)[1]) if "/resolve/" in path else path


def round_trips(times: Sequence[float], latency_s: float) -> int:
    """Rounds of requests in a log whose every request was delayed by ``latency_s``: requests sent in one
    round arrive together, and the next round cannot arrive before the previous one was answered, so
    arrivals more than half the latency apart belong to different rounds."""
    ordered = sorted(times)
    return (1 + sum(b - a > latency_s / 2 for a, b in pairwise(ordered))) if ordered else 0


def breakdown(
    records: Sequence[dict[str, Any]],
    files: dict[str, Any],
    layouts: dict[str, _Layout],
    *,
    latency_s: float = 0.0,
) -> dict[str, Any]:
    """Bytes and requests of one scan by purpose, from the hub's request log.

    A request counts once: as a header request if it touches a weight file's header (its bytes past the
    header are "header read-ahead"), else for the category holding most of its useful bytes (coalesced
    gap bytes are counted as bytes, never as a request's purpose). Also reported: per weight file read, what
    its header cost; how many weight files the model has (``weight_files``); the headers read for nothing
    (``lazy_shards``: redirect and header requests of shards nothing else was read from, which lazy shard
    headers should keep at zero); and, when every request was delayed by ``latency_s``, the sequential
    rounds of requests (``round_trips``, `round_trips`).
    """
    by_sha = {e.sha256: p for p, e in files.items() if e.sha256}
    cats = {c: {"bytes": 0, "requests": 0} for c in CATEGORIES}
    per_file: dict[str, dict[str, int]] = {
        p: {"header_bytes": 0, "header_requests": 0, "read_ahead": 0, "redirects": 0, "data_bytes": 0}
        for p in layouts
    }
    for r in records:
        if r["bucket"] == "api":
            cats["API"]["requests"] += 1
            continue
        path = _file_of(r, by_sha)
        if 300 <= r["status"] < 400:
            cats["redirects"]["requests"] += 1
            if path in per_file:
                per_file[path]["redirects"] += 1
            continue
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", r["range"] or "")
        start = int(m[1]) if m else 0
        end = start + int(r["bytes_sent"])
        layout = layouts.get(path)
        if layout is None:
            kind = "config/index" if _CONFIG_FILES.search(path) else None
            kind = kind or ("tokenizer" if _TOKENIZER_FILES.search(path) else "other files")
            parts = {kind: end - start}
            main = kind
        else:
            parts = _split(start, end, layout)
            f = per_file[path]
            if "headers" in parts:
                rest = sum(v for k, v in parts.items() if k != "headers")
                parts = {"headers": parts["headers"], **({"header read-ahead": rest} if rest else {})}
                f["header_bytes"] += parts["headers"]
                f["read_ahead"] += rest
                f["header_requests"] += 1
                main = "headers"
            else:
                f["data_bytes"] += end - start
                useful = [k for k in parts if k != "gaps"]  # gap bytes only ever ride along (coalescing)
                main = max(useful, key=parts.__getitem__) if useful else "gaps"
        for k, v in parts.items():
            cats[k]["bytes"] += v
        cats[main]["requests"] += 1
    read = {p: f for p, f in per_file.items() if f["header_requests"]}
    unused = [f for f in read.values() if not f["data_bytes"]]
    return {
        "categories": cats,
        "header_files": read,
        "weight_files": len(layouts),
        "round_trips": round_trips([r["t"] for r in records], latency_s) if latency_s > 0 else None,
        "lazy_shards": {
            "unused_files": len(unused),
            "requests": sum(f["header_requests"] + f["redirects"] for f in unused),
            "bytes": sum(f["header_bytes"] + f["read_ahead"] for f in unused),
        },
    }


# --------------------------------------------------------------------------------------------- scanning
@dataclass
class SuspectResult:
    """One row of the benchmark."""

    shape: str
    repo_id: str
    label: str
    derived: bool
    weight_format: str | None
    verdict: str
    log10_p: float | None
    transform: str
    bytes_read: int
    checkpoint_bytes: int
    requests: int
    seconds: float
    io_seconds: float
    notes: list[str] = field(default_factory=list)
    breakdown: dict[str, Any] = field(default_factory=dict)

    @property
    def pct(self) -> float:
        return 100.0 * self.bytes_read / self.checkpoint_bytes if self.checkpoint_bytes else 0.0


def _scan_case(
    case: Case, cache: Path, *, latency_ms: float, budget: int
) -> tuple[list[SuspectResult], dict[str, Any]]:
    settings_cfg = parse_config({"fingerprint": {"secret_env": SECRET_ENV}}, environ={SECRET_ENV: SECRET})
    ref, ref_path, record = reference(case, cache, settings_from_config(settings_cfg))
    db_path = cache / "db" / f"{case.shape}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    results = []
    hub_root = cache / "hub"
    with hub_process(hub_root, latency_ms=latency_ms) as (endpoint, ask):
        doc = {
            "store": {"path": str(db_path)},
            "hubs": [
                {
                    "name": "bench",
                    "endpoint": endpoint,
                    "budget_per_repo": budget,
                    "token_env": "HUBSENTRY_BENCH_NO_TOKEN",
                }
            ],
            "fingerprint": {"secret_env": SECRET_ENV},
        }
        config = parse_config(doc)
        with Store(db_path) as store:
            _register(store, case, ref, ref_path, record["sha256"])
        from monitor.scheduler import build_hub

        source = build_hub(config.hubs[0])
        try:
            ctx = build_context(config, hubs={"bench": source})
            ctx.registry.current()  # load the reference before timing (as a running daemon has it)
            for suspect in case.suspects:
                results.append(_scan_one(ctx, source, suspect, case, hub_root, ask, latency_ms=latency_ms))
                r = results[-1]
                print(
                    f"[{case.shape}] {suspect.label:38s} {r.verdict:12s} log10p={r.log10_p if r.log10_p is not None else '-'!s:>8} "
                    f"{r.bytes_read:>12,} B ({r.pct:.4f}%) {r.requests:3d} req {r.seconds:6.2f} s"
                )
        finally:
            close = getattr(source, "close", None)  # HubSource has no close(); HuggingFaceSource does
            if close is not None:
                close()
    return results, record


def _scan_one(
    ctx: Any,
    source: Any,
    suspect: Suspect,
    case: Case,
    hub_root: Path,
    ask: Callable[[str], Any],
    *,
    latency_ms: float,
) -> SuspectResult:
    ask("clear")
    t0 = time.monotonic()
    snap = source.snapshot(suspect.repo_id)
    outcome = scan_snapshot(ctx, source, snap)
    seconds = time.monotonic() - t0
    records = ask("log")
    layouts = _layouts(hub_root / suspect.repo_id)
    parts = breakdown(records, snap.files, layouts, latency_s=latency_ms / 1000.0)
    checkpoint = sum(e.size for p, e in snap.files.items() if p.endswith(WEIGHT_SUFFIXES))
    finding = outcome.findings[0] if outcome.findings else None
    times = sorted(r["t"] for r in records)
    io_seconds = (times[-1] - times[0] + latency_ms / 1000.0) if times else 0.0
    return SuspectResult(
        shape=case.shape,
        repo_id=suspect.repo_id,
        label=suspect.label,
        derived=suspect.derived,
        weight_format=outcome.weight_format,
        verdict=finding.verdict if finding else "—",
        log10_p=round(finding.log10_p, 1) if finding else None,
        transform=finding.transform if finding else "",
        bytes_read=outcome.bytes_read,
        checkpoint_bytes=checkpoint,
        requests=len(records),
        seconds=round(seconds, 2),
        io_seconds=round(io_seconds, 2),
        notes=list(outcome.notes),
        breakdown=parts,
    )


def run(
    shapes: Sequence[str],
    *,
    cache: Path = DEFAULT_CACHE,
    latency_ms: float = 50.0,
    budget: int = 64 * 1024 * 1024,
) -> dict[str, Any]:
    """Run the benchmark for ``shapes``; returns the results document (also what is written as JSON)."""
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known: {sorted(SHAPES)}")
    cache.mkdir(parents=True, exist_ok=True)
    rows: list[SuspectResult] = []
    refs: dict[str, Any] = {}
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = SECRET  # the daemon reads its secret from the environment
    try:
        for shape in shapes:
            case = prepare(shape, cache)
            results, record = _scan_case(case, cache, latency_ms=latency_ms, budget=budget)
            rows += results
            refs[shape] = {k: v for k, v in record.items() if k != "path"}
    finally:
        if previous is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = previous
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "latency_ms": latency_ms,
        "budget": budget,
        "shapes": list(shapes),
        "references": refs,
        "results": [{**asdict(r), "pct": round(r.pct, 5)} for r in rows],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with ``--render-only``, re-render the docs from saved results)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bytes_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--shapes", default="bert,7b,70b", help="comma-separated: " + ",".join(SHAPES))
    parser.add_argument("--latency-ms", type=float, default=50.0, help="added to every hub request")
    parser.add_argument("--budget", type=int, default=64 * 1024 * 1024, help="per-repo byte budget")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--render-only", action="store_true", help="re-render the docs from --results")
    args = parser.parse_args(argv)
    if args.render_only:
        doc = json.loads(args.results.read_text())
    else:
        shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
        doc = run(shapes, cache=args.cache, latency_ms=args.latency_ms, budget=args.budget)
        given = list(argv) if argv is not None else sys.argv[1:]
        doc["command"] = " ".join(["python -m benchmarks.bytes_bench", *given])
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(doc, indent=1) + "\n")
    if not args.no_docs:
        update_docs(render_markdown(doc), args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
