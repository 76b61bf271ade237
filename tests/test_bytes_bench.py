"""The bytes benchmark's code path on a tiny shape, its request-log breakdown, its docs section, and
virtual protected models registered and compared from disk."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bytes_bench import _Layout, breakdown, main, reference, round_trips
from benchmarks.bytes_models import TINY, prepare
from benchmarks.bytes_report import DOC_END, DOC_START, render_markdown, update_docs
from monitor.config.parse import parse_config
from monitor.localhub import LocalHub
from monitor.localhub.virtual_gguf import write_virtual_gguf
from monitor.localhub.virtual_llama import write_virtual_llama
from monitor.registry import RegistryCache, add, compare, settings_from_config
from monitor.remote.source import FileEntry
from monitor.store import Store

SECRET_ENV = "HUBSENTRY_TEST_BYTES_SECRET"


def test_tiny_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        f"# Benchmarks\n\n## Other\n\nkeep me\n\n## Bytes per verdict\n\n{DOC_START}\nold\n{DOC_END}\n"
    )
    args = ["--shapes", "tiny", "--latency-ms", "5", "--cache", str(tmp_path / "cache")]
    assert main([*args, "--results", str(tmp_path / "r.json"), "--docs", str(docs)]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    rows = {r["label"]: r for r in doc["results"]}
    assert {label: r["verdict"] for label, r in rows.items()} == {
        "fine-tune, BF16 safetensors": "derived",
        "fine-tune, GGUF Q4_K_M": "derived",
        "fine-tune, GPTQ 4-bit g128": "derived",
        "independent (other seed), BF16": "independent",
    }
    for r in doc["results"]:
        cats = r["breakdown"]["categories"]
        # the hub's log accounts for every byte the client counted, and for every request
        assert sum(c["bytes"] for c in cats.values()) == r["bytes_read"]
        assert sum(c["requests"] for c in cats.values()) == r["requests"]
        assert cats["API"]["requests"] == 1
        assert 0 < r["pct"] < 100
        assert cats["MLP units"]["bytes"] > 0
        assert cats["embeddings"]["bytes"] > 0
        assert all(h["header_requests"] <= 2 for h in r["breakdown"]["header_files"].values())
        assert r["breakdown"]["lazy_shards"]["requests"] == 0  # no header read for nothing
        assert r["breakdown"]["weight_files"] == 1
        assert 1 <= r["breakdown"]["round_trips"] <= r["requests"]
    assert (
        rows["fine-tune, BF16 safetensors"]["breakdown"]["categories"]["tokenizer"]["bytes"] == 0
    )  # digest known
    gguf = rows["fine-tune, GGUF Q4_K_M"]
    assert gguf["weight_format"] == "gguf:Q4_K_M"
    assert gguf["breakdown"]["categories"]["header read-ahead"]["bytes"] > 0  # the 2 MiB GGUF prefetch
    assert rows["fine-tune, GPTQ 4-bit g128"]["weight_format"] == "gptq:4bit-g128"
    text = docs.read_text()
    assert "keep me" in text
    assert "stale section" not in text
    assert "| tiny | fine-tune, GGUF Q4_K_M (" in text
    assert "≤ 20 requests per repo" in text
    assert "[tiny] fine-tune, GPTQ" in capsys.readouterr().out
    # the reference is cached: asking again reads nothing and returns the recorded build
    case = prepare("tiny", tmp_path / "cache")
    config = parse_config({"fingerprint": {"secret_env": SECRET_ENV}}, environ={SECRET_ENV: "x"})
    _, path, record = reference(case, tmp_path / "cache", settings_from_config(config))
    assert record["built_at"] == doc["references"]["tiny"]["built_at"]
    assert path.exists()


def _record(
    path: str, status: int, start: int | None = None, n: int = 0, bucket: str = "cdn"
) -> dict[str, Any]:
    rng = None if start is None else f"bytes={start}-{start + n - 1}"
    return {"path": path, "status": status, "range": rng, "bytes_sent": n, "bucket": bucket}


def test_breakdown_classifies_every_request() -> None:
    files = {
        "a.safetensors": FileEntry("a.safetensors", 10_000, sha256="a" * 64),
        "b.safetensors": FileEntry("b.safetensors", 10_000, sha256="b" * 64),
        "config.json": FileEntry("config.json", 100, blob_id="c" * 40),
        "tokenizer.json": FileEntry("tokenizer.json", 500, blob_id="d" * 40),
    }
    layouts = {
        "a.safetensors": _Layout(
            100, [(100, 1100, "embeddings"), (1100, 2100, "MLP units"), (3000, 3100, "norm gains")]
        ),
        "b.safetensors": _Layout(200, [(200, 9000, "MLP units")]),
    }
    resolve = "/o/m/resolve/" + "f" * 40
    records = [
        _record("/api/models/o/m", 200, bucket="api"),
        _record(f"{resolve}/a.safetensors", 302, bucket="resolvers"),
        _record("/cdn/" + "a" * 64, 206, 0, 600),  # header 100 B + 500 B read-ahead into the embeddings
        _record("/cdn/" + "a" * 64, 206, 1500, 1600),  # 600 B of MLP rows, 900 B gap, 100 B of a norm
        _record(f"{resolve}/b.safetensors", 302, bucket="resolvers"),
        _record("/cdn/" + "b" * 64, 206, 0, 300),  # a shard whose header was read for nothing
        _record(f"{resolve}/config.json", 206, 0, 100, bucket="resolvers"),
        _record(f"{resolve}/tokenizer.json", 206, 0, 500, bucket="resolvers"),
    ]
    out = breakdown(records, files, layouts)
    cats = {
        k: (v["bytes"], v["requests"]) for k, v in out["categories"].items() if v["bytes"] or v["requests"]
    }
    assert cats == {
        "API": (0, 1),
        "redirects": (0, 2),
        "headers": (300, 2),
        "header read-ahead": (600, 0),
        "MLP units": (600, 1),
        "gaps": (900, 0),
        "norm gains": (100, 0),
        "config/index": (100, 1),
        "tokenizer": (500, 1),
    }
    assert out["header_files"]["a.safetensors"]["data_bytes"] == 1600
    assert out["lazy_shards"] == {"unused_files": 1, "requests": 2, "bytes": 300}
    assert out["weight_files"] == 2
    assert out["round_trips"] is None  # no latency given: rounds are not told apart


def test_round_trips_count_rounds_of_delayed_requests() -> None:
    # three requests sent together, then one, then two: 50 ms added to each
    times = [10.000, 10.002, 10.001, 10.061, 10.140, 10.139]
    assert round_trips(times, 0.05) == 3
    assert round_trips(times[:3], 0.05) == 1
    assert round_trips([], 0.05) == 0


def test_update_docs_owns_only_its_section(tmp_path: Path) -> None:
    docs = tmp_path / "b.md"
    update_docs("first", docs)  # absent file: created with the section
    assert DOC_START in docs.read_text()
    docs.write_text(docs.read_text() + "\n## Later\n\ntheirs\n")
    update_docs("second", docs)
    update_docs("second", docs)
    text = docs.read_text()
    assert text.count(DOC_START) == 1
    assert "second" in text
    assert "first" not in text
    assert text.rstrip().endswith("theirs")
    body = render_markdown(
        {
            "date": "d",
            "machine": "m",
            "latency_ms": 50,
            "budget": 1 << 26,
            "references": {},
            "results": [],
        },
        command="c",
    )
    assert "`c`" in body


def test_virtual_protected_model_registered_and_compared_from_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "protected" / "base"
    write_virtual_llama(base, TINY, seed=5, max_shard_bytes=2_000_000)
    hub_root = tmp_path / "hub"
    shutil.copytree(base, hub_root / "mirror" / "base")  # a re-upload: byte-identical virtual shards
    derivation = {"base_seed": 5, "noise_seed": 6, "rel_noise": 0.05}
    write_virtual_gguf(hub_root / "quant" / "base-GGUF", TINY, seed=None, derivation=derivation, stem="base")
    monkeypatch.setenv(SECRET_ENV, "test-secret")
    with LocalHub(hub_root) as hub:
        config = parse_config(
            {
                "store": {"path": str(tmp_path / "db.db")},
                "hubs": [{"name": "local", "endpoint": hub.endpoint, "token_env": "HUBSENTRY_TEST_NO_TOKEN"}],
                "fingerprint": {"secret_env": SECRET_ENV},
            }
        )
        result = compare(str(base), "quant/base-GGUF", config=config)
        assert result.verdict == "derived"
        assert "gguf:Q4_K_M" in result.transform
        assert 0 < result.bytes_read < 4_000_000
        with Store(config.store.path) as store:
            model = add(store, str(base), name="acme/base", owner=None, config=config)
        shards = sorted(f.path for f in model.files)
        assert len(shards) > 1
        assert all(f.sha256 for f in model.files)  # spec digests, as the hub lists them
        from huggingface_hub import HfApi

        listed = HfApi(endpoint=hub.endpoint).model_info("mirror/base", files_metadata=True).siblings
        digests = {s.rfilename: s.lfs.sha256 for s in listed if s.lfs}
        hits = RegistryCache(Path(config.store.path)).exact_matches(digests)
        assert sorted(p for p, _ in hits["acme/base"]) == shards  # an exact re-upload costs zero weight bytes
