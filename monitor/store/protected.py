"""The registry's rows: protected models and their files (``protected_models``, ``protected_files``).

The registry (`monitor.registry`) decides what a protected model's signature and reference arrays
are; this module only stores and finds them. Files are kept with their SHA-256 so an exact re-upload
is recognised from a hub listing's LFS digests without reading a byte (`find_files_by_sha256`).
Removing a model removes its files (``ON DELETE CASCADE``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from monitor.errors import HubSentryError
from monitor.store.db import from_iso, to_iso

__all__ = [
    "ProtectedExistsError",
    "ProtectedFile",
    "ProtectedModel",
    "add_protected",
    "find_files_by_sha256",
    "get_protected",
    "list_protected",
    "remove_protected",
]


class ProtectedExistsError(HubSentryError):
    """A protected model with that name is already registered."""


@dataclass(frozen=True, slots=True)
class ProtectedFile:
    """One file of a protected model."""

    path: str
    size: int
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class ProtectedModel:
    """One registry entry.

    Attributes:
        name (`str`): registry name (unique; appears in alerts).
        owner (`str | None`): owning team, for routing.
        source (`str`): where it was registered from (local path or ``hub:org/name``).
        source_commit (`str | None`): the pinned commit for hub sources.
        algo (`str`): fingerprint algorithm version of the stored signature.
        arch_json (`str`), signature_json (`str`): JSON documents owned by the registry.
        reference_path (`str | None`), reference_sha256 (`str | None`): reference array file and digest.
        created_at (`datetime`): registration time.
        files (`tuple[ProtectedFile, ...]`): the model's files.
    """

    name: str
    owner: str | None
    source: str
    source_commit: str | None
    algo: str
    arch_json: str
    signature_json: str
    reference_path: str | None
    reference_sha256: str | None
    created_at: datetime
    notes: str | None = None
    files: tuple[ProtectedFile, ...] = field(default=())

    @classmethod
    def from_row(cls, row: dict[str, Any], files: Iterable[ProtectedFile] = ()) -> ProtectedModel:
        created = from_iso(row["created_at"])
        assert created is not None
        return cls(
            name=row["name"],
            owner=row["owner"],
            source=row["source"],
            source_commit=row["source_commit"],
            algo=row["algo"],
            arch_json=row["arch_json"],
            signature_json=row["signature_json"],
            reference_path=row["reference_path"],
            reference_sha256=row["reference_sha256"],
            created_at=created,
            notes=row["notes"],
            files=tuple(files),
        )


def add_protected(db: Database, model: ProtectedModel, *, replace: bool = False) -> None:
    """Register a model and its files.

    Raises:
        `ProtectedExistsError`: the name is taken and ``replace`` is false.
    """
    exists = db.execute("SELECT 1 FROM protected_models WHERE name = ?", [model.name]).fetchone()
    if exists and not replace:
        raise ProtectedExistsError(f"a protected model named {model.name!r} already exists (remove it first)")
    if exists:
        db.execute("DELETE FROM protected_models WHERE name = ?", [model.name])
    db.execute(
        "INSERT INTO protected_models (name, owner, source, source_commit, algo, arch_json, signature_json, "
        "reference_path, reference_sha256, created_at, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            model.name,
            model.owner,
            model.source,
            model.source_commit,
            model.algo,
            model.arch_json,
            model.signature_json,
            model.reference_path,
            model.reference_sha256,
            to_iso(model.created_at),
            model.notes,
        ],
    )
    for file in model.files:
        db.execute(
            "INSERT INTO protected_files (name, path, size, sha256) VALUES (?, ?, ?, ?)",
            [model.name, file.path, file.size, file.sha256],
        )


def _files(db: Database, name: str) -> list[ProtectedFile]:
    return [
        ProtectedFile(row["path"], row["size"], row["sha256"])
        for row in db.query(
            "SELECT path, size, sha256 FROM protected_files WHERE name = ? ORDER BY path", [name]
        )
    ]


def get_protected(db: Database, name: str) -> ProtectedModel | None:
    rows = list(db.query("SELECT * FROM protected_models WHERE name = ?", [name]))
    return ProtectedModel.from_row(rows[0], _files(db, name)) if rows else None


def list_protected(db: Database) -> list[ProtectedModel]:
    """Every protected model with its files, by name."""
    return [
        ProtectedModel.from_row(row, _files(db, row["name"]))
        for row in db.query("SELECT * FROM protected_models ORDER BY name")
    ]


def remove_protected(db: Database, name: str) -> bool:
    """Unregister a model (its files go with it); False if there was none."""
    return db.execute("DELETE FROM protected_models WHERE name = ?", [name]).rowcount == 1


def find_files_by_sha256(db: Database, digests: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(protected name, path, sha256)`` of protected files whose SHA-256 is among ``digests``."""
    wanted = sorted({d.lower() for d in digests if d})
    if not wanted:
        return []
    found: list[tuple[str, str, str]] = []
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        rows = db.execute(
            f"SELECT name, path, sha256 FROM protected_files WHERE sha256 IN ({', '.join('?' * len(chunk))}) "  # noqa: S608
            "ORDER BY name, path",
            chunk,
        ).fetchall()
        found += [(r[0], r[1], r[2]) for r in rows]
    return found
