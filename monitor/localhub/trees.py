"""Git-style trees of a repo commit: ``/tree``, ``/paths-info`` entries and folder ids.

Entries are what huggingface_hub parses into ``RepoFile``/``RepoFolder``::

    {"type": "file", "oid": <git blob sha1>, "size": 90868376, "path": "model.safetensors",
     "lfs": {"oid": <sha256>, "size": 90868376, "pointerSize": 134}}
    {"type": "directory", "oid": <git tree sha1>, "size": 0, "path": "1_Pooling"}

Folder ids are real git tree object ids computed from the served files (LFS files contribute their
pointer blob, as in git). Listing order is git's: siblings sorted by name with folders compared as
``name/``, each folder followed by its contents when recursive. That order is a total order on paths,
so ``/tree`` pages with a keyset cursor (the last path) like `monitor.localhub.listing`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from monitor.localhub.repos import Repo, RepoFile
from monitor.localhub.wire import iso_ms

__all__ = ["RepoTree", "TreeCursorError", "decode_tree_cursor", "encode_tree_cursor", "tree_order_key"]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class TreeCursorError(ValueError):
    """A tree cursor this server did not issue."""


def encode_tree_cursor(entry: dict[str, Any]) -> str:
    """Cursor pointing after ``entry`` (the last entry of a page)."""
    data = {"after": entry["path"], "dir": entry["type"] == "directory"}
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def decode_tree_cursor(cursor: str) -> tuple[bytes, ...]:
    """The `tree_order_key` entries of the next page must exceed."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode() + b"=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise TreeCursorError("invalid cursor") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("after"), str)
        or not isinstance(data.get("dir"), bool)
    ):
        raise TreeCursorError("invalid cursor")
    return tree_order_key(data["after"], is_dir=data["dir"])


@dataclass
class _Dir:
    files: dict[str, RepoFile] = field(default_factory=dict)
    dirs: dict[str, _Dir] = field(default_factory=dict)
    oid: str = ""


class RepoTree:
    """The folder structure of one repo commit.

    Args:
        repo (`Repo`): the repo at its current commit.
    """

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._root = _Dir()
        self._dirs: dict[str, _Dir] = {"": self._root}
        for path, f in repo.files.items():
            node = self._root
            parts = path.split("/")
            for i, part in enumerate(parts[:-1]):
                node = node.dirs.setdefault(part, _Dir())
                self._dirs.setdefault("/".join(parts[: i + 1]), node)
            node.files[parts[-1]] = f
        self._hash(self._root)

    def _hash(self, node: _Dir) -> str:
        entries: list[tuple[bytes, bytes]] = []
        for name, f in node.files.items():
            entries.append((name.encode(), b"100644 " + name.encode() + b"\0" + bytes.fromhex(f.blob_id)))
        for name, sub in node.dirs.items():
            sub_id = self._hash(sub)
            entries.append((name.encode() + b"/", b"40000 " + name.encode() + b"\0" + bytes.fromhex(sub_id)))
        body = b"".join(e for _, e in sorted(entries))
        node.oid = hashlib.sha1(b"tree %d\0" % len(body) + body, usedforsecurity=False).hexdigest()
        return node.oid

    @property
    def root_oid(self) -> str:
        return self._root.oid

    def is_dir(self, path: str) -> bool:
        return path in self._dirs

    def entry(self, path: str, *, expand: bool = False) -> dict[str, Any] | None:
        """The entry of one file or folder, or ``None`` if the path does not exist."""
        path = path.strip("/")
        if path in self.repo.files:
            return self._file_entry(self.repo.files[path], expand=expand)
        if path and path in self._dirs:
            return self._dir_entry(path, self._dirs[path], expand=expand)
        return None

    def entries(self, base: str, *, recursive: bool, expand: bool = False) -> list[dict[str, Any]]:
        """Entries below folder ``base`` ("" = root) in git order; ``KeyError`` if it is no folder."""
        base = base.strip("/")
        node = self._dirs[base]
        out: list[dict[str, Any]] = []
        self._collect(node, f"{base}/" if base else "", recursive, expand, out)
        return out

    def _collect(
        self, node: _Dir, prefix: str, recursive: bool, expand: bool, out: list[dict[str, Any]]
    ) -> None:
        children: list[tuple[bytes, str, Any]] = [(n.encode(), n, f) for n, f in node.files.items()]
        children += [(n.encode() + b"/", n, d) for n, d in node.dirs.items()]
        for _, name, child in sorted(children, key=lambda c: c[0]):
            path = prefix + name
            if isinstance(child, _Dir):
                out.append(self._dir_entry(path, child, expand=expand))
                if recursive:
                    self._collect(child, path + "/", recursive, expand, out)
            else:
                out.append(self._file_entry(child, expand=expand))

    def _last_commit(self) -> dict[str, Any]:
        return {
            "id": self.repo.commit,
            "title": "localhub snapshot",
            "date": iso_ms(self.repo.last_modified_ms),
        }

    def _file_entry(self, f: RepoFile, *, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
        if f.sha256 is not None:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": f.pointer_size}
        if expand:
            entry["lastCommit"] = self._last_commit()
            status = "unscanned" if f.path.lower().endswith(_PICKLE_SUFFIXES) else "safe"
            entry["securityFileStatus"] = {
                "status": status,
                "avScan": {"virusFound": False, "virusNames": None},
                "pickleImportScan": None,
            }
        return entry

    def _dir_entry(self, path: str, node: _Dir, *, expand: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "directory", "oid": node.oid, "size": 0, "path": path}
        if expand:
            entry["lastCommit"] = self._last_commit()
        return entry


def tree_order_key(path: str, *, is_dir: bool) -> tuple[bytes, ...]:
    """Sort key reproducing `RepoTree.entries` order for any path (used by the keyset cursor)."""
    parts = path.split("/")
    keys = [p.encode() + b"/" for p in parts[:-1]]
    keys.append(parts[-1].encode() + (b"/" if is_dir else b""))
    return tuple(keys)
