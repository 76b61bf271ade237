"""The scan pipeline and the registry end to end: local hub, real client, real files, real SQLite.

A small protected model is trained here; suspects (fine-tune, GGUF, exact copy, independent, broken files)
are published on the local hub and scanned with the daemon's own code.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from monitor.cli import cli
from monitor.config import load_config
from monitor.localhub import LocalHub
from monitor.pipeline import build_context, scan_snapshot
from monitor.registry import add as protect
from monitor.registry import compare as compare_models
from monitor.registry import remove as unprotect
from monitor.scheduler import build_hub, build_services, pipeline_processor, run_cycle
from monitor.store import Store
from monitor.store.alerts import list_alerts
from monitor.synth import transforms as T
from monitor.synth.export import save_gguf, save_hf_repo
from monitor.synth.models import LlamaConfig
from monitor.synth.train import TrainSpec, shared_vocab, train

CFG = LlamaConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    max_position_embeddings=64,
)
SPEC = {"batch": 8, "seq_len": 32}


@pytest.fixture(scope="module")
def models():
    base, _ = train(CFG, TrainSpec(seed=1, steps=60, **SPEC))
    other, _ = train(CFG, TrainSpec(seed=2, steps=60, **SPEC))
    tuned, _ = train(CFG, TrainSpec(seed=3, split="n-z", steps=30, lr=1e-3, **SPEC), init_state=base)
    return {"base": base, "other": other, "tuned": tuned, "vocab": shared_vocab(CFG.vocab_size)}


@pytest.fixture(scope="module")
def world(tmp_path_factory, models):
    """A protected folder, a hub with suspects, and a config pointing at them (shared by the module; the
    test that removes the protected model runs last)."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    vocab = models["vocab"]
    protected = save_hf_repo(tmp_path / "protected", models["base"], CFG, vocab)
    hub = tmp_path / "hub"
    save_hf_repo(hub / "org" / "tuned", models["tuned"], CFG, vocab, dtype="bfloat16")
    save_gguf(hub / "org" / "gguf" / "m.Q8_0.gguf", models["base"], CFG, vocab, qtype="Q8_0")
    shutil.copytree(protected, hub / "org" / "copy")
    save_hf_repo(hub / "org" / "other", models["other"], CFG, vocab)
    save_hf_repo(
        hub / "org" / "sharded",
        T.permute_residual(models["base"], np.random.default_rng(1)),
        CFG,
        vocab,
        max_shard_bytes=400_000,
    )
    broken = save_hf_repo(hub / "org" / "broken", models["base"], CFG, vocab)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[8:40] = b"{not json at all, just garbage!!"
    (broken / "model.safetensors").write_bytes(bytes(data))
    missing = save_hf_repo(hub / "org" / "missing-shard", models["base"], CFG, vocab, max_shard_bytes=400_000)
    next(missing.glob("model-00002-*.safetensors")).unlink()
    with LocalHub(hub) as lh:
        cfg_path = tmp_path / "hubsentry.toml"
        cfg_path.write_text(f"""
[store]
path = "{tmp_path / "hs.db"}"
[[hubs]]
name = "local"
endpoint = "{lh.endpoint}"
token_env = "HUBSENTRY_TEST_NO_TOKEN"
budget_per_repo = "8MiB"
[alerts.log]
enabled = true
[fingerprint]
secret_env = "HUBSENTRY_TEST_SECRET"
[server]
listen = ""
""")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HUBSENTRY_TEST_SECRET", "pipeline-test-secret")
            config = load_config(cfg_path)
            with Store(config.store.path) as store:
                protect(store, str(protected), name="acme/protected", owner="ip", config=config)
            yield {"config": config, "hub": lh, "protected": protected, "tmp": tmp_path}


def _scan(world, repo_id):
    config = world["config"]
    hub = build_hub(config.hubs[0])
    ctx = build_context(config, hubs={"local": hub})
    return scan_snapshot(ctx, hub, hub.snapshot(repo_id))


def test_registry_records_model_files_and_reference(world):
    with Store(world["config"].store.path) as store, store.read() as db:
        rows = list(db.query("SELECT name, owner, reference_path, reference_sha256 FROM protected_models"))
        files = list(db.query("SELECT path, sha256 FROM protected_files"))
    assert rows[0]["name"] == "acme/protected"
    assert Path(rows[0]["reference_path"]).exists()
    assert [f["path"] for f in files] == ["model.safetensors"]
    assert len(files[0]["sha256"]) == 64


@pytest.mark.parametrize(
    ("repo", "verdict", "transform"),
    [
        ("org/tuned", "derived", "weights changed"),
        ("org/gguf", "derived", "gguf:Q8_0"),
        ("org/sharded", "derived", "residual permutation"),
        ("org/other", "independent", "none"),
    ],
)
def test_statistical_verdicts(world, repo, verdict, transform):
    out = _scan(world, repo)
    (f,) = out.findings
    assert f.verdict == verdict, f
    assert transform in f.transform
    assert 0 < out.bytes_read < 2_000_000
    if verdict == "derived":
        assert f.log10_p < -12
        assert "acme/protected" in out.reproduce or "compare" in out.reproduce


def test_exact_copy_costs_zero_bytes(world):
    out = _scan(world, "org/copy")
    (f,) = out.findings
    assert f.transform == "exact copy"
    assert f.severity == "critical"
    assert out.bytes_read == 0
    assert out.requests == 0


@pytest.mark.parametrize("repo", ["org/broken", "org/missing-shard"])
def test_unreadable_repos_end_with_a_note(world, repo):
    out = _scan(world, repo)
    assert out.findings == ()
    assert any("not readable" in n for n in out.notes), out.notes


def test_full_cycle_alerts_once_and_survives_a_restart(world):
    config = world["config"]
    for _ in range(2):  # the second cycle is a "restart": same database, nothing new may be sent
        services = build_services(
            config, processor_factory=pipeline_processor, stop=threading.Event(), sinks={}
        )
        try:
            run_cycle(services)
        finally:
            services.close()
    with Store(config.store.path) as store, store.read() as db:
        alerts = list_alerts(db, limit=100)
        done = list(db.query("SELECT repo_id, state FROM work_items ORDER BY repo_id"))
    assert sorted(a["repo_id"] for a in alerts) == ["org/copy", "org/gguf", "org/sharded", "org/tuned"]
    assert {d["state"] for d in done} == {"done"}
    assert len(done) == 7
    evidence = json.loads(next(a for a in alerts if a["repo_id"] == "org/tuned")["evidence_json"])
    assert evidence["commit"]
    assert evidence["bytes_read"] > 0
    assert evidence["finding"]["null"]


def test_compare_command_json(world, monkeypatch):
    monkeypatch.chdir(world["tmp"])
    res = CliRunner().invoke(
        cli,
        [
            "--config",
            str(world["tmp"] / "hubsentry.toml"),
            "compare",
            str(world["protected"]),
            "org/tuned",
            "--json",
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["verdict"] == "derived"
    assert data["p_value"] == 0.0 or data["p_value"] < 1e-12
    assert data["bytes_read"] > 0
    assert {"verdict", "p_value", "transform", "bytes_read", "tests"} <= set(data)


def test_compare_local_paths(world, models):
    other = save_hf_repo(world["tmp"] / "other-local", models["other"], CFG, models["vocab"])
    res = compare_models(str(world["protected"]), str(other), config=world["config"])
    assert res.verdict == "independent"
    same = compare_models(str(world["protected"]), str(world["protected"]), config=world["config"])
    assert same.transform == "exact copy"
    assert same.exact_files == [("model.safetensors", "model.safetensors")]


def test_remove_deletes_the_reference(world):
    config = world["config"]
    with Store(config.store.path) as store:
        with store.read() as db:
            path = Path(next(db.query("SELECT reference_path FROM protected_models"))["reference_path"])
        assert unprotect(store, "acme/protected", config=config)
        assert not unprotect(store, "acme/protected", config=config)
    assert not path.exists()
