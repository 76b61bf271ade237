"""Putting repos into a served folder: atomic writes, validation, copying folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from huggingface_hub.errors import HFValidationError

from monitor.localhub import copy_into_repo, write_repo


def test_write_repo_contents_and_sidecar(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"\1\2\3")
    os.utime(src, (1_000_000_000, 1_000_000_000))
    repo = write_repo(
        tmp_path / "root",
        "acme/m",
        {"a.bin": b"\0", "b.txt": "text", "c/d.json": {"k": 1}, "copied.bin": src},
        sidecar={"private": True},
    )
    assert (repo / "a.bin").read_bytes() == b"\0"
    assert (repo / "b.txt").read_text() == "text"
    assert json.loads((repo / "c" / "d.json").read_text()) == {"k": 1}
    assert (repo / "copied.bin").read_bytes() == b"\1\2\3"
    assert (repo / "copied.bin").stat().st_mtime > 1_000_000_000  # a copy looks new
    assert json.loads((repo / ".hub.json").read_text()) == {"private": True}
    assert not [p for p in repo.rglob("*localhub-tmp*")]


@pytest.mark.parametrize("path", ["../x", "/abs", ".hidden", "a/.git/config", "a\\b"])
def test_write_repo_refuses_bad_paths(tmp_path: Path, path: str) -> None:
    with pytest.raises(ValueError, match="invalid or hidden"):
        write_repo(tmp_path, "acme/m", {path: b""})


@pytest.mark.parametrize("repo_id", ["a--b/c", "only-name", "a/b/c"])
def test_write_repo_refuses_bad_ids(tmp_path: Path, repo_id: str) -> None:
    with pytest.raises((ValueError, HFValidationError)):
        write_repo(tmp_path, repo_id, {"x": b""})


def test_copy_into_repo_skips_dot_files(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"w")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("x")
    (src / ".gitattributes").write_text("x")
    repo = copy_into_repo(tmp_path / "root", "acme/m", src)
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()) == ["sub/w.bin"]
    single = copy_into_repo(tmp_path / "root", "acme/one", src / "sub" / "w.bin")
    assert (single / "w.bin").read_bytes() == b"w"
