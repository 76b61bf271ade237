"""Shard indexes are validated against the shards they name (huggingface_hub issue #4725)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from monitor.errors import FormatError
from monitor.formats.canonical import ModelView
from monitor.formats.safetensors import open_safetensors
from monitor.formats.shards import check_shards, read_shard_index
from monitor.remote.source import LocalFileSet


def _repo(tmp_path, weight_map: dict[str, str], *, extra_shard_tensors: dict | None = None):
    save_file({"a": np.ones(2, np.float32)} | (extra_shard_tensors or {}), tmp_path / "s1.safetensors")
    save_file({"b": np.zeros(2, np.float32)}, tmp_path / "s2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 16}, "weight_map": weight_map})
    )
    return LocalFileSet(tmp_path)


def test_valid_index(tmp_path):
    fs = _repo(tmp_path, {"a": "s1.safetensors", "b": "s2.safetensors"})
    index = read_shard_index(fs, "model.safetensors.index.json")
    assert index.shards == ["s1.safetensors", "s2.safetensors"]
    assert index.metadata == {"total_size": 16}
    files = {p: open_safetensors(fs.open(p)) for p in index.shards}
    check_shards(index, files)
    assert ModelView.open(fs).selection.index == "model.safetensors.index.json"


def test_entry_missing_from_its_shard(tmp_path):
    fs = _repo(tmp_path, {"a": "s1.safetensors", "b": "s1.safetensors"})
    with pytest.raises(FormatError, match=r"puts 'b' in s1\.safetensors, which does not contain it"):
        ModelView.open(fs)


def test_tensor_in_two_shards(tmp_path):
    fs = _repo(
        tmp_path,
        {"a": "s1.safetensors", "b": "s2.safetensors"},
        extra_shard_tensors={"b": np.ones(1, np.float32)},
    )
    with pytest.raises(FormatError, match="in both"):
        ModelView.open(fs)


@pytest.mark.parametrize(
    ("weight_map", "message"),
    [
        ({"a": "s9.safetensors"}, "not in the repo"),
        ({"a": "../s1.safetensors"}, "unsafe path"),
        ({"a": "/etc/passwd"}, "unsafe path"),
        ({"a": 3}, "must be a file name"),
        ({}, "empty weight_map"),
    ],
)
def test_bad_index_entries(tmp_path, weight_map, message):
    fs = _repo(tmp_path, weight_map)
    with pytest.raises(FormatError, match=message):
        read_shard_index(fs, "model.safetensors.index.json")


def test_index_in_a_subfolder_resolves_relative_to_it(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    _repo(sub, {"a": "s1.safetensors", "b": "s2.safetensors"})
    fs = LocalFileSet(tmp_path)
    assert read_shard_index(fs, "sub/model.safetensors.index.json").shards == [
        "sub/s1.safetensors",
        "sub/s2.safetensors",
    ]
    view = ModelView.open(fs, weights="sub/model.safetensors.index.json")
    assert {wf.path for wf in view.weight_files} == {"sub/s1.safetensors", "sub/s2.safetensors"}


def test_not_an_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weights": {}}')
    save_file({"a": np.ones(1, np.float32)}, tmp_path / "s1.safetensors")
    with pytest.raises(FormatError, match="no 'weight_map'"):
        read_shard_index(LocalFileSet(tmp_path), "model.safetensors.index.json")
