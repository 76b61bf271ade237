"""Virtual files: the generator against the safetensors library, specs, plug-ins, and serving 7B shapes."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file as load_torch

from monitor.errors import BudgetExceeded, FormatError
from monitor.localhub import (
    LLAMA_7B,
    LlamaShape,
    LocalHub,
    VirtualFile,
    VirtualFileSource,
    materialize,
    open_virtual,
    write_virtual_llama,
)
from monitor.localhub.virtual import canonical_spec_bytes, normal_values
from monitor.remote.source import ByteBudget, ReadStats

SPEC: dict[str, Any] = {
    "kind": "safetensors",
    "seed": 42,
    "tensors": [
        {"name": "embed.weight", "dtype": "BF16", "shape": [64, 33], "init": {"std": 0.02}},
        {"name": "norm.weight", "dtype": "F16", "shape": [33], "init": {"mean": 1.0, "std": 0.1}},
        {"name": "proj.weight", "dtype": "F32", "shape": [3, 5, 2]},
        {"name": "empty", "dtype": "F32", "shape": [0, 4]},
        {"name": "scalar", "dtype": "F32", "shape": []},
    ],
}
TINY = LlamaShape(d_model=64, n_layers=2, d_ff=176, n_heads=4, n_kv_heads=2, vocab=256)


@pytest.fixture(scope="module")
def vf() -> VirtualFile:
    return VirtualFile.from_spec(SPEC)


@pytest.fixture(scope="module")
def materialized(vf: VirtualFile, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v") / "v.safetensors"
    assert materialize(vf, path) == vf.size == path.stat().st_size
    return path


def test_materialized_file_loads_with_safetensors(vf: Any, materialized: Path) -> None:
    tensors = load_torch(materialized)
    assert {k: (str(t.dtype), tuple(t.shape)) for k, t in tensors.items()} == {
        "embed.weight": ("torch.bfloat16", (64, 33)),
        "norm.weight": ("torch.float16", (33,)),
        "proj.weight": ("torch.float32", (3, 5, 2)),
        "empty": ("torch.float32", (0, 4)),
        "scalar": ("torch.float32", ()),
    }
    for name, tensor in tensors.items():
        assert np.array_equal(vf.tensor(name), tensor.float().numpy()), name
    assert np.array_equal(
        vf.tensor("embed.weight", rows=[5, 0]), tensors["embed.weight"].float().numpy()[[5, 0]]
    )
    # BF16 rounding is round-to-nearest-even, as torch does it
    assert torch.equal(
        torch.tensor(vf.values("embed.weight"), dtype=torch.float32).to(torch.bfloat16),
        tensors["embed.weight"].flatten(),
    )
    f32 = {"kind": "safetensors", "seed": 1, "tensors": [{"name": "x", "dtype": "F32", "shape": [10]}]}
    path = materialized.with_name("f32.safetensors")
    materialize(VirtualFile.from_spec(f32), path)
    assert np.array_equal(load_numpy(path)["x"], VirtualFile.from_spec(f32).tensor("x"))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_range_equals_materialized_bytes(data: st.DataObject, materialized: Path) -> None:
    vf = VirtualFile.from_spec(SPEC)
    raw = materialized.read_bytes()  # the file the safetensors library loaded above
    start = data.draw(st.integers(0, vf.size))
    end = data.draw(st.integers(start, vf.size))
    assert vf.read(start, end) == raw[start:end]


def test_values_are_a_pure_function_of_seed_name_index() -> None:
    a = normal_values(7, "w", 0, 1000)
    assert np.array_equal(normal_values(7, "w", 500, 600), a[500:600])
    assert not np.array_equal(normal_values(7, "v", 0, 1000), a)
    assert not np.array_equal(normal_values(8, "w", 0, 1000), a)
    assert abs(a.mean()) < 0.15
    assert 0.9 < a.std() < 1.1
    reordered = dict(SPEC, tensors=list(reversed(SPEC["tensors"])))
    other = VirtualFile.from_spec(reordered)
    assert np.array_equal(other.tensor("embed.weight"), VirtualFile.from_spec(SPEC).tensor("embed.weight"))


def test_derivation_is_base_plus_relative_noise(vf: Any) -> None:
    spec = {k: v for k, v in SPEC.items() if k != "seed"}
    spec["derivation"] = {"base_seed": 42, "noise_seed": 9, "rel_noise": 0.05}
    derived = VirtualFile.from_spec(spec)
    base, new = vf.values("embed.weight"), derived.values("embed.weight")
    assert np.corrcoef(base, new)[0, 1] > 0.99
    assert 0.04 < np.std(new - base) / 0.02 < 0.06
    assert derived.sha256 != vf.sha256


def test_identity_is_the_canonical_spec_hash(vf: VirtualFile, tmp_path: Path) -> None:
    assert vf.sha256 == hashlib.sha256(canonical_spec_bytes(SPEC)).hexdigest()
    path = tmp_path / "x.safetensors.virtual.json"
    path.write_text(json.dumps(dict(reversed(list(SPEC.items()))), indent=4))
    assert open_virtual(path).sha256 == vf.sha256


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "nope"}, "unknown virtual file kind"),
        ({"tensors": []}, "non-empty"),
        ({"tensors": [{"name": "a", "dtype": "I8", "shape": [1]}]}, "dtype"),
        ({"tensors": [{"name": "a", "dtype": "F32", "shape": [1]}] * 2}, "duplicate"),
        ({"tensors": [{"name": "a", "dtype": "F16", "shape": [1], "init": {"mean": 70000}}]}, "overflow F16"),
        ({"tensors": [{"name": "a", "dtype": "F32", "shape": [-1]}]}, "shape"),
        ({"tensors": [{"name": "a", "dtype": "F32", "shape": [1 << 30, 1 << 30]}]}, "limit"),
        ({"seed": None}, "seed"),
        ({"extra": 1}, "unknown keys"),
    ],
)
def test_invalid_specs(change: dict[str, Any], match: str) -> None:
    spec = {k: v for k, v in (SPEC | change).items() if v is not None}
    with pytest.raises(FormatError, match=match):
        VirtualFile.from_spec(spec)


def test_spec_file_limits(tmp_path: Path) -> None:
    bad = tmp_path / "bad.virtual.json"
    bad.write_text("{nope")
    with pytest.raises(FormatError, match=r"bad\.virtual\.json: not valid JSON"):
        open_virtual(bad)


def test_virtual_file_source_counts_and_budgets(vf: VirtualFile) -> None:
    stats = ReadStats()
    src = VirtualFileSource(vf, path="v.safetensors", stats=stats, budget=ByteBudget(100))
    assert src.read_many([(0, 8), (8, 40)]) == [vf.read(0, 8), vf.read(8, 40)]
    assert (stats.bytes_read, stats.requests) == (40, 2)
    with pytest.raises(BudgetExceeded):
        src.read(0, 61)
    assert stats.bytes_read == 40


class PatternFile(VirtualFile):
    """A second kind, as another engineer would add one: bytes ``i % 251``."""

    kind = "test-pattern"

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.size = int(spec["size"])

    def read(self, start: int, end: int) -> bytes:
        self._check(start, end)
        return bytes(i % 251 for i in range(start, end))


def test_plugin_kind_is_one_class(tmp_path: Path) -> None:
    assert "test-pattern" in VirtualFile.kinds()
    assert "safetensors" in VirtualFile.kinds()
    with pytest.raises(TypeError, match="already registered"):
        type("Dup", (VirtualFile,), {"kind": "test-pattern", "read": lambda s, a, b: b""})
    repo = tmp_path / "acme" / "p"
    repo.mkdir(parents=True)
    (repo / "blob.onnx.virtual.json").write_text(json.dumps({"kind": "test-pattern", "size": 1000}))
    with LocalHub(tmp_path, cdn_redirect=False) as hub:
        r = httpx2.get(f"{hub.endpoint}/acme/p/resolve/main/blob.onnx", headers={"Range": "bytes=500-509"})
        assert r.status_code == 206
        assert r.content == bytes(i % 251 for i in range(500, 510))


def test_sharded_virtual_llama_through_the_client(tmp_path: Path) -> None:
    repo_dir = tmp_path / "acme" / "tiny-llama"
    written = write_virtual_llama(repo_dir, TINY, seed=3, max_shard_bytes=60_000)
    shards = sorted(p.name.removesuffix(".virtual.json") for p in written if p.name.endswith(".virtual.json"))
    assert len(shards) > 2
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((repo_dir / "model.safetensors.index.json").read_text())
    with LocalHub(tmp_path) as hub:
        api = HfApi(endpoint=hub.endpoint)
        meta = api.get_safetensors_metadata("acme/tiny-llama")
        assert meta.sharded
        assert meta.weight_map == index["weight_map"]
        n_params = sum(math.prod(t["shape"]) for t in _tensors(repo_dir))
        assert meta.parameter_count == {"BF16": n_params}
        fast = api.get_sharded_safetensors_metadata("acme/tiny-llama")
        assert fast.weight_map == meta.weight_map
        assert fast.metadata == index["metadata"]
        info = api.model_info("acme/tiny-llama", files_metadata=True)
        assert info.safetensors.total == n_params
        assert info.config["architectures"] == ["LlamaForCausalLM"]
        name = "model.layers.1.mlp.up_proj.weight"
        shard = index["weight_map"][name]
        sibling = next(s for s in info.siblings if s.rfilename == shard)
        spec_file = open_virtual(repo_dir / f"{shard}.virtual.json")
        assert (sibling.size, sibling.lfs.sha256) == (spec_file.size, spec_file.sha256)
        path = hf_hub_download("acme/tiny-llama", shard, endpoint=hub.endpoint, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == spec_file.read(0, spec_file.size)
        assert np.array_equal(load_torch(path)[name].float().numpy(), spec_file.tensor(name))


def _tensors(repo_dir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted(repo_dir.glob("*.virtual.json")):
        out += json.loads(p.read_text())["tensors"]
    return out


def test_llama_7b_is_served_without_disk(tmp_path: Path) -> None:
    write_virtual_llama(tmp_path / "acme" / "llama-7b", LLAMA_7B, seed=11)
    write_virtual_llama(
        tmp_path / "thief" / "llama-7b-ft",
        LLAMA_7B,
        derivation={"base_seed": 11, "noise_seed": 5, "rel_noise": 0.05},
    )
    disk = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    with LocalHub(tmp_path) as hub:
        api = HfApi(endpoint=hub.endpoint)
        models = {m.id: m for m in api.list_models(expand=["safetensors", "usedStorage"])}
        assert models["acme/llama-7b"].safetensors.total == 6_738_415_616  # Llama-2-7B
        assert models["acme/llama-7b"].used_storage > 13_000_000_000 > 1000 * disk
        meta = api.get_safetensors_metadata("thief/llama-7b-ft")
        shard = meta.weight_map["model.layers.31.mlp.down_proj.weight"]
        assert meta.files_metadata[shard].tensors["model.layers.31.mlp.down_proj.weight"].shape == [
            4096,
            11008,
        ]
        spec_ft = open_virtual(tmp_path / "thief" / "llama-7b-ft" / f"{shard}.virtual.json")
        spec_base = open_virtual(tmp_path / "acme" / "llama-7b" / f"{shard}.virtual.json")
        row = slice(3 * 11008 * 2, 4 * 11008 * 2)
        t_ft = spec_ft.tensor_info("model.layers.31.mlp.down_proj.weight")
        with httpx2.Client(follow_redirects=True) as client:
            url = f"{hub.endpoint}/thief/llama-7b-ft/resolve/main/{shard}"
            start = t_ft.offset + row.start
            r = client.get(url, headers={"Range": f"bytes={start}-{start + row.stop - row.start - 1}"})
        assert r.status_code == 206
        assert r.content == spec_ft.read(start, start + row.stop - row.start)
        ft_row = spec_ft.tensor("model.layers.31.mlp.down_proj.weight", rows=[3])[0]
        base_row = spec_base.tensor("model.layers.31.mlp.down_proj.weight", rows=[3])[0]
        assert np.corrcoef(ft_row, base_row)[0, 1] > 0.99
