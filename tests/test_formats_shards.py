"""Shard indexes are validated against the shards they name (huggingface_hub issue #4725)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from monitor.errors import FormatError
from monitor.formats.canonical import ModelView
from monitor.formats.safetensors import open_safetensors
from monitor.formats.shards import WeightFiles, check_shard, check_shards, read_shard_index
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
    """Checked when the shard is first parsed (lazy shard headers), not when the index is read."""
    fs = _repo(tmp_path, {"a": "s1.safetensors", "b": "s1.safetensors"})
    view = ModelView.open(fs)  # 'a' and 'b' have no canonical key: no shard is needed to open
    assert view.files.parsed == ()
    for _ in range(2):  # the same error each time, without reading the shard again
        with pytest.raises(FormatError, match=r"puts 'b' in s1\.safetensors, which does not contain it"):
            assert view.weight_files  # parses every shard
    index = read_shard_index(fs, "model.safetensors.index.json")
    with pytest.raises(FormatError, match="which does not contain it"):
        check_shard(index, "s1.safetensors", open_safetensors(fs.open("s1.safetensors")))


def test_tensor_in_two_shards(tmp_path):
    fs = _repo(
        tmp_path,
        {"a": "s1.safetensors", "b": "s2.safetensors"},
        extra_shard_tensors={"b": np.ones(1, np.float32)},
    )
    index = read_shard_index(fs, "model.safetensors.index.json")
    files = {p: open_safetensors(fs.open(p)) for p in index.shards}
    with pytest.raises(FormatError, match="in both"):
        check_shards(index, files)
    with pytest.raises(FormatError, match=r"'b' is in both s1\.safetensors and, by the index, s2"):
        WeightFiles(fs, open_safetensors, index=index).file("s1.safetensors")
    assert WeightFiles(fs, open_safetensors, index=index).file("s2.safetensors").path == "s2.safetensors"
    with pytest.raises(FormatError, match="in both"):
        assert ModelView.open(fs).weight_files


def test_tensors_the_index_does_not_list_are_reported_not_used(tmp_path):
    fs = _repo(
        tmp_path, {"a": "s1.safetensors", "b": "s2.safetensors"}, extra_shard_tensors={"c": np.ones(1)}
    )
    view = ModelView.open(fs)
    assert len(view.weight_files) == 2
    assert view.files.unlisted == {"c": "s1.safetensors"}
    assert "c" not in view.files.names


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
