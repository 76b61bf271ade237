"""Repo trees: folder ids equal git's own tree ids, listing order, keyset paging over the order."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from monitor.localhub import write_repo
from monitor.localhub.repos import RepoIndex
from monitor.localhub.trees import (
    RepoTree,
    TreeCursorError,
    decode_tree_cursor,
    encode_tree_cursor,
    tree_order_key,
)

FILES = {"a.txt": "a", "a/x.txt": "x", "a/b/y.txt": "y", "a-b.txt": "ab", "b.md": "b", "z/deep/e.json": "{}"}


@pytest.fixture
def tree(tmp_path: Path) -> RepoTree:
    write_repo(tmp_path / "root", "acme/t", FILES)
    repo = RepoIndex(tmp_path / "root").repo("acme/t")
    assert repo is not None
    return RepoTree(repo)


def test_tree_ids_match_git(tree: RepoTree, tmp_path: Path) -> None:
    work = tmp_path / "git"
    work.mkdir()
    env = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    subprocess.run(["git", "init", "-q"], cwd=work, check=True, env=env)
    for rel, content in FILES.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(content)
    subprocess.run(["git", "add", "-A"], cwd=work, check=True, env=env)
    root_id = subprocess.run(
        ["git", "write-tree"], cwd=work, check=True, env=env, capture_output=True, text=True
    ).stdout.strip()
    assert tree.root_oid == root_id
    sub_id = subprocess.run(
        ["git", "rev-parse", f"{root_id}:a/b"], cwd=work, check=True, env=env, capture_output=True, text=True
    ).stdout.strip()
    assert tree.entry("a/b")["oid"] == sub_id
    blob_id = subprocess.run(
        ["git", "rev-parse", f"{root_id}:a-b.txt"],
        cwd=work,
        check=True,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert tree.entry("a-b.txt")["oid"] == blob_id


def test_git_order_and_recursion(tree: RepoTree) -> None:
    assert [e["path"] for e in tree.entries("", recursive=False)] == ["a-b.txt", "a.txt", "a", "b.md", "z"]
    recursive = tree.entries("", recursive=True)
    assert [e["path"] for e in recursive] == [
        "a-b.txt",
        "a.txt",
        "a",
        "a/b",
        "a/b/y.txt",
        "a/x.txt",
        "b.md",
        "z",
        "z/deep",
        "z/deep/e.json",
    ]
    keys = [tree_order_key(e["path"], is_dir=e["type"] == "directory") for e in recursive]
    assert keys == sorted(keys)  # the order is total, so a keyset cursor can page it
    assert [e["path"] for e in tree.entries("a", recursive=False)] == ["a/b", "a/x.txt"]
    with pytest.raises(KeyError):
        tree.entries("a.txt", recursive=False)
    assert tree.entry("missing") is None
    assert tree.entry("z")["type"] == "directory"


def test_tree_cursor_roundtrip(tree: RepoTree) -> None:
    entries = tree.entries("", recursive=True)
    after = decode_tree_cursor(encode_tree_cursor(entries[3]))
    rest = [e["path"] for e in entries if tree_order_key(e["path"], is_dir=e["type"] == "directory") > after]
    assert rest == [e["path"] for e in entries[4:]]
    for bad in ("!!", "e30=", "eyJhZnRlciI6IDF9"):
        with pytest.raises(TreeCursorError):
            decode_tree_cursor(bad)
