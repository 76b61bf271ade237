"""Lazy shard headers: an indexed checkpoint is known from its index, a shard is parsed when first needed.

Real 4-shard safetensors and PyTorch checkpoints on disk (one decoder layer per shard, the embedding in the
first), the same model as one file for reference, and the same shards served by `LocalHub` with a delay on
every request to count round trips.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.canonical import ModelView
from monitor.hubs.huggingface import HuggingFaceSource
from monitor.localhub import FaultAction, FaultRule, LocalHub
from monitor.localhub.virtual_gptq import gptq_tensors, quantize_config_json
from monitor.remote.retry import RetryPolicy
from monitor.remote.source import LocalFileSet
from monitor.remote.transport import HttpSettings

D, FF, HEADS, KV, LAYERS, VOCAB = 64, 128, 4, 2, 4, 96
HD = D // HEADS
SHARDS = [f"model-{i + 1:05d}-of-{LAYERS:05d}.safetensors" for i in range(LAYERS)]
CONFIG = {
    "model_type": "llama",
    "hidden_size": D,
    "intermediate_size": FF,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV,
    "vocab_size": VOCAB,
}


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, D))}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t |= {
            p + "input_layernorm.weight": rng.random(D),
            p + "self_attn.q_proj.weight": rng.standard_normal((HEADS * HD, D)),
            p + "self_attn.k_proj.weight": rng.standard_normal((KV * HD, D)),
            p + "self_attn.v_proj.weight": rng.standard_normal((KV * HD, D)),
            p + "self_attn.o_proj.weight": rng.standard_normal((D, HEADS * HD)),
            p + "post_attention_layernorm.weight": rng.random(D),
            p + "mlp.gate_proj.weight": rng.standard_normal((FF, D)),
            p + "mlp.up_proj.weight": rng.standard_normal((FF, D)),
            p + "mlp.down_proj.weight": rng.standard_normal((D, FF)),
        }
    t |= {"model.norm.weight": rng.random(D), "lm_head.weight": rng.standard_normal((VOCAB, D))}
    return {k: v.astype(np.float32) for k, v in t.items()}


def _shard_of(name: str) -> int:
    """Layer ``i`` in shard ``i``; the embedding in the first, the final norm and head in the last."""
    if name.startswith("model.layers."):
        return int(name.split(".")[2])
    return 0 if "embed" in name else LAYERS - 1


def _write_sharded(root: Path, weights: dict[str, np.ndarray], *, drop: str | None = None) -> Path:
    """A ``save_pretrained``-style 4-shard checkpoint; ``drop`` leaves one tensor out of its shard
    while the index still lists it (huggingface_hub issue #4725)."""
    root.mkdir(parents=True)
    parts: list[dict[str, np.ndarray]] = [{} for _ in SHARDS]
    for name, arr in weights.items():
        if name != drop:
            parts[_shard_of(name)][name] = arr
    for shard, part in zip(SHARDS, parts, strict=True):
        save_file(part, root / shard, metadata={"format": "pt"})
    weight_map = {name: SHARDS[_shard_of(name)] for name in weights}
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(CONFIG))
    return root


def _write_single(root: Path, weights: dict[str, np.ndarray]) -> Path:
    root.mkdir(parents=True)
    save_file(weights, root / "model.safetensors", metadata={"format": "pt"})
    (root / "config.json").write_text(json.dumps(CONFIG))
    return root


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lazy")
    weights = _weights()
    return {
        "sharded": _write_sharded(root / "acme" / "sharded", weights),
        "single": _write_single(root / "single", weights),
        "lying": _write_sharded(root / "acme" / "lying", weights, drop="model.layers.3.mlp.up_proj.weight"),
    }


def test_opening_reads_the_index_config_and_only_the_embedding_shard(repos):
    fs = LocalFileSet(repos["sharded"])
    view = ModelView.open(fs)
    assert view.selection.index == "model.safetensors.index.json"
    assert view.files.parsed == (SHARDS[0],)  # arch.vocab_size is the embedding's row count
    opened = {"model.safetensors.index.json", "config.json", SHARDS[0]}
    assert set(fs.stats.by_file) == opened
    before = fs.stats.snapshot()
    assert "layers.3.mlp.up" in view.tensors
    assert "layers.9.mlp.up" not in view.tensors
    assert len(view.tensors) == len(list(view.tensors)) == 3 + 9 * LAYERS
    assert [k for k in view.tensors if k.endswith(".mlp.up")] == [f"layers.{i}.mlp.up" for i in range(LAYERS)]
    assert "model.layers.2.mlp.up_proj.weight" in view.logical
    assert fs.stats.snapshot() == before  # membership, keys and iteration read nothing
    assert view.tensors["layers.2.mlp.up"].shape == (FF, D)
    assert view.files.parsed == (SHARDS[0], SHARDS[2])  # that tensor's shard only


def test_the_sharded_view_is_the_single_file_view(repos):
    ref = ModelView.open(LocalFileSet(repos["single"]))
    view = ModelView.open(LocalFileSet(repos["sharded"]))
    assert view.arch == ref.arch
    assert list(view.tensors) == list(ref.tensors)
    assert view.tensors["layers.1.attn.k"] == replace(ref.tensors["layers.1.attn.k"], files=(SHARDS[1],))
    for key in view.tensors:
        np.testing.assert_array_equal(view.read(key), ref.read(key), err_msg=key)
    assert view.files.parsed == tuple(SHARDS)
    assert not view.unmapped
    assert not view.unsupported
    assert not view.files.unlisted


def test_a_sample_read_touches_only_the_shards_it_needs(repos):
    fs = LocalFileSet(repos["sharded"])
    view = ModelView.open(fs)
    embed, up, gain = view.read_batch(
        [
            ("embed", [3, 4, 5], None),
            ("layers.2.mlp.up", range(8, 16), None),
            ("layers.2.mlp_norm", None, None),
        ]
    )
    ref = _weights()
    np.testing.assert_array_equal(embed, ref["model.embed_tokens.weight"][3:6])
    np.testing.assert_array_equal(up, ref["model.layers.2.mlp.up_proj.weight"][8:16])
    np.testing.assert_array_equal(gain, ref["model.layers.2.post_attention_layernorm.weight"])
    assert view.files.parsed == (SHARDS[0], SHARDS[2])
    assert {p for p in fs.stats.by_file if p.endswith(".safetensors")} == {SHARDS[0], SHARDS[2]}


def test_a_tensor_missing_from_its_shard_fails_clearly_when_used(repos):
    fs = LocalFileSet(repos["lying"])
    view = ModelView.open(fs)  # the lie is in the last shard, which opening does not need
    assert "layers.3.mlp.up" in view.tensors
    message = r"weight_map puts 'model\.layers\.3\.mlp\.up_proj\.weight' in model-00004-of-00004\.safetensors"
    with pytest.raises(FormatError, match=message):
        view.read_rows("layers.3.mlp.up", [0])
    read = fs.stats.bytes_read
    for use in (lambda: view.tensors["layers.3.mlp.gate"], lambda: view.read("final_norm")):
        with pytest.raises(FormatError, match=message):  # every tensor of that shard, every time
            use()
    assert fs.stats.bytes_read == read  # the bad shard is not read again
    np.testing.assert_array_equal(  # the other shards are fine
        view.read("layers.2.mlp_norm"), _weights()["model.layers.2.post_attention_layernorm.weight"]
    )


def test_sharded_pytorch_bin_is_lazy_too(tmp_path):
    weights = _weights(1)
    root = tmp_path / "bin"
    root.mkdir()
    shards = [f"pytorch_model-{i + 1:05d}-of-{LAYERS:05d}.bin" for i in range(LAYERS)]
    parts: list[dict[str, torch.Tensor]] = [{} for _ in shards]
    for name, arr in weights.items():
        parts[_shard_of(name)][name] = torch.from_numpy(arr)
    for shard, part in zip(shards, parts, strict=True):
        torch.save(part, root / shard)
    weight_map = {name: shards[_shard_of(name)] for name in weights}
    (root / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps(CONFIG))
    view = ModelView.open(LocalFileSet(root))
    assert view.format == "torch"
    assert view.files.parsed == (shards[0],)
    np.testing.assert_array_equal(
        view.read_cols("layers.1.mlp.down", [2, 7]),
        weights["model.layers.1.mlp.down_proj.weight"][:, [2, 7]].T,
    )
    assert view.files.parsed == (shards[0], shards[1])


def test_without_config_d_ff_comes_from_one_shard(repos, tmp_path):
    root = tmp_path / "noconfig"
    _write_sharded(root, _weights())
    (root / "config.json").unlink()
    view = ModelView.open(LocalFileSet(root))
    assert view.arch.d_ff == FF
    assert view.arch.family == "llama"  # from the index's names
    assert view.files.parsed == (SHARDS[0],)  # layer 0's up projection is in the embedding's shard


def test_sharded_gptq_scheme_from_one_group(tmp_path):
    weights = {k: v for k, v in _weights(2).items() if "layers." not in k or "mlp." in k or "norm" in k}
    stored: dict[str, np.ndarray] = {}
    for name, arr in weights.items():
        if ".mlp." in name:
            stored |= gptq_tensors(name.removesuffix(".weight"), arr, bits=4, group_size=32)
        else:
            stored[name] = arr.astype(np.float16)
    root = tmp_path / "gptq"
    root.mkdir()
    shard_names = [f"model-{i + 1:05d}-of-{LAYERS:05d}.safetensors" for i in range(LAYERS)]
    parts: list[dict[str, np.ndarray]] = [{} for _ in shard_names]
    for name, arr in stored.items():
        parts[_shard_of(name)][name] = arr
    for shard, part in zip(shard_names, parts, strict=True):
        save_file(part, root / shard)
    weight_map = {name: shard_names[_shard_of(name)] for name in stored}
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(
        json.dumps({**CONFIG, "quantization_config": quantize_config_json(bits=4, group_size=32)})
    )
    view = ModelView.open(LocalFileSet(root))
    assert view.arch.quantization == "gptq:4bit-g32"
    assert view.files.parsed == (shard_names[0],)  # layer 0's MLP shares the embedding's shard
    info = view.tensors["layers.3.mlp.down"]
    assert info.cols_contiguous
    assert info.dtype == "gptq-int4"
    assert view.files.parsed == (shard_names[0], shard_names[3])
    assert view.logical["model.layers.3.mlp.down_proj.weight"].shape == (D, FF)


def _rewrite_last_shard(
    root: Path, weights: dict[str, np.ndarray], drop: str, add: dict[str, np.ndarray]
) -> None:
    """Replace tensors starting with ``drop`` in the last shard (and the index) by ``add``."""
    last = {k: v for k, v in weights.items() if _shard_of(k) == LAYERS - 1 and not k.startswith(drop)}
    save_file(last | add, root / SHARDS[-1])
    index = json.loads((root / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith(drop)}
    index["weight_map"] |= dict.fromkeys(add, SHARDS[-1])
    (root / "model.safetensors.index.json").write_text(json.dumps(index))


def test_a_tensor_that_turns_out_unreadable_on_use_is_dropped_with_the_reason(tmp_path):
    weights = _weights(3)
    root = _write_sharded(tmp_path / "fused", weights)
    # a fused qkv of 100 rows cannot be split with 4 heads of 16 and 2 KV heads: only its shape says so
    qkv = np.ones((100, D), np.float32)
    _rewrite_last_shard(
        root, weights, "model.layers.3.self_attn.", {"model.layers.3.self_attn.qkv_proj.weight": qkv}
    )
    view = ModelView.open(LocalFileSet(root))
    assert "layers.3.attn.q" in view.tensors
    assert view.files.parsed == (SHARDS[0],)
    with pytest.raises(UnsupportedFormat, match="cannot split fused qkv of 100 rows"):
        view.tensors["layers.3.attn.k"]
    assert "layers.3.attn.q" not in view.tensors
    assert view.tensors.get("layers.3.attn.v") is None
    assert "cannot split" in view.unmapped["model.layers.3.self_attn.qkv_proj.weight"]
    np.testing.assert_array_equal(view.read("layers.3.mlp.up"), weights["model.layers.3.mlp.up_proj.weight"])


def test_the_quantisation_label_reads_one_group_which_may_turn_out_unreadable(tmp_path):
    weights = _weights(4)
    root = _write_sharded(tmp_path / "awq", weights)
    prefix = "model.layers.3.mlp.gate_proj"
    awq = {  # an AWQ GEMV layer: well formed, not read
        f"{prefix}.qweight": np.zeros((D, FF // 8), np.int32),
        f"{prefix}.qzeros": np.zeros((D // 32, FF // 8), np.int32),
        f"{prefix}.scales": np.ones((D // 32, FF), np.float16),
    }
    _rewrite_last_shard(root, weights, prefix, awq)
    (root / "quant_config.json").write_text(
        json.dumps({"quant_method": "awq", "version": "gemv", "w_bit": 4})
    )
    view = ModelView.open(LocalFileSet(root))
    assert view.files.parsed == (SHARDS[0], SHARDS[-1])  # the embedding, and the one quantised group
    assert view.arch.quantization is None
    assert "GEMM only" in view.unsupported[f"{prefix}.weight"]
    assert "layers.3.mlp.gate" not in view.tensors
    np.testing.assert_array_equal(view.read("layers.3.mlp.up"), weights["model.layers.3.mlp.up_proj.weight"])


# -- round trips over HTTP ---------------------------------------------------------------------------------

DELAY_S = 0.25
TOKEN = "hf_lazy_token"
FAST = HttpSettings(retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.05, max_wait_s=10.0))


def _waves(times: list[float]) -> int:
    """Rounds of requests: arrivals more than half the delay apart belong to different rounds."""
    times = sorted(times)
    return 1 + sum(b - a > DELAY_S / 2 for a, b in pairwise(times)) if times else 0


@pytest.fixture
def slow_hub(repos) -> Iterator[LocalHub]:
    with LocalHub(repos["sharded"].parent.parent, token=TOKEN) as hub:
        hub.faults.add(FaultRule(None, "", FaultAction.delay(DELAY_S), name="latency"))
        yield hub


def test_shard_headers_and_rows_cost_one_round_trip_each_across_shards(slow_hub):
    with HuggingFaceSource("hf", slow_hub.endpoint, TOKEN, http=FAST) as src:
        files = src.open_files(src.snapshot("acme/sharded"), budget=None)
        view = ModelView.open(files)
        assert view.files.parsed == (SHARDS[0],)
        batch = [(f"layers.{i}.mlp.up", range(4, 12), None) for i in (1, 2, 3)]
        slow_hub.clear_log()
        view.prepare([key for key, _, _ in batch])
        assert view.files.parsed == tuple(SHARDS)
        # three shards: resolve (302) then header from the CDN, the three shards side by side
        assert sorted(r.status for r in slow_hub.log) == [206] * 3 + [302] * 3
        assert _waves([r.t for r in slow_hub.log]) == 2
        slow_hub.clear_log()
        rows = view.read_batch(batch)
        data = list(slow_hub.log)
    assert len(data) == 3
    assert all(r.status == 206 for r in data)  # storage URLs are remembered
    assert _waves([r.t for r in data]) == 1  # one round trip, not one per shard
    ref = _weights()
    for (key, _, _), got in zip(batch, rows, strict=True):
        layer = key.split(".")[1]
        np.testing.assert_array_equal(got, ref[f"model.layers.{layer}.mlp.up_proj.weight"][4:12])
