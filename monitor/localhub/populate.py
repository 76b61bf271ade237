"""Put repos into a served folder safely (demo setup, tests, fixtures).

A hub re-scans its folder on every request, so a file written in place can be seen half-written (and
hashed as such). `write_repo` writes each file to a dot-named temporary (invisible to the hub) and
renames it into place, and writes the sidecar last, so a scan sees either the old or the new file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub.utils import validate_repo_id

from monitor.localhub.repos import valid_repo_path
from monitor.localhub.sidecar import SIDECAR_NAME

__all__ = ["copy_into_repo", "write_repo"]


def _target(root: Path, repo_id: str) -> Path:
    validate_repo_id(repo_id)
    if repo_id.count("/") != 1:
        raise ValueError(f"repo id must be 'org/name', got {repo_id!r}")
    return Path(root) / repo_id


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.localhub-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_repo(
    root: str | os.PathLike[str],
    repo_id: str,
    files: Mapping[str, bytes | str | Mapping[str, Any] | Path],
    *,
    sidecar: Mapping[str, Any] | None = None,
) -> Path:
    """Create or update ``root/org/name`` with the given files.

    Args:
        root: the served folder.
        repo_id (`str`): ``org/name``.
        files: repo-relative path -> content: bytes, text, a dict (written as JSON), or a `Path` to copy.
        sidecar: the ``.hub.json`` content, if any (written after the files).

    Returns:
        The repo folder.
    """
    repo_dir = _target(Path(root), repo_id)
    for rel, content in files.items():
        if not valid_repo_path(rel) or any(part.startswith(".") for part in rel.split("/")):
            raise ValueError(f"invalid or hidden repo path {rel!r}")
        dest = repo_dir / rel
        if isinstance(content, Path):
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.localhub-tmp")
            shutil.copyfile(content, tmp)  # not copy2: a fresh mtime makes the repo look new
            os.replace(tmp, dest)
        elif isinstance(content, Mapping):
            _atomic_write(dest, (json.dumps(content, indent=2) + "\n").encode())
        elif isinstance(content, str):
            _atomic_write(dest, content.encode())
        else:
            _atomic_write(dest, bytes(content))
    repo_dir.mkdir(parents=True, exist_ok=True)
    if sidecar is not None:
        _atomic_write(repo_dir / SIDECAR_NAME, (json.dumps(dict(sidecar), indent=2) + "\n").encode())
    return repo_dir


def copy_into_repo(root: str | os.PathLike[str], repo_id: str, source: str | os.PathLike[str]) -> Path:
    """Copy a model folder (or one file) into ``root/org/name``, skipping dot-files."""
    src = Path(source)
    if src.is_file():
        return write_repo(root, repo_id, {src.name: src})
    files: dict[str, bytes | str | Mapping[str, Any] | Path] = {}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = path
    return write_repo(root, repo_id, files)
