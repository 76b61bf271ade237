"""Reference fingerprints on disk: one ``.npz`` per protected model, loaded without pickle.

The arrays of a `fingerprints.ReferenceFingerprint` (profiles of every MLP unit, the token block) are too big
for SQLite rows at 7B scale (hundreds of MiB), so they live in files beside the database; the database keeps
the path and the file's SHA-256, and a reference whose file no longer matches is refused instead of being
silently used. Files are written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from fingerprints import ReferenceFingerprint
from monitor.errors import StoreError
from monitor.remote.source import sha256_of_file

__all__ = ["load_reference", "reference_filename", "save_reference"]

_HEADER_KEY = "__header__"


def reference_filename(name: str) -> str:
    """A filesystem-safe, collision-free file name for a registry name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:60] or "model"
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{slug}-{digest}.npz"


def save_reference(ref: ReferenceFingerprint, directory: Path) -> tuple[Path, str]:
    """Write ``ref`` atomically; returns the path and the file's SHA-256."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / reference_filename(ref.name)
    arrays = ref.to_arrays()
    header = np.frombuffer(json.dumps(ref.header(), sort_keys=True).encode(), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{_HEADER_KEY: header}, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"could not write reference {path}: {exc}") from exc
    return path, sha256_of_file(path)


def load_reference(path: Path, *, sha256: str | None = None) -> ReferenceFingerprint:
    """Read a reference written by `save_reference`, verifying its digest when given."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"reference file {path} is unreadable: {exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(f"reference file {path} does not match its recorded SHA-256; re-register the model")
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        header = json.loads(bytes(z[_HEADER_KEY]).decode())
        arrays = {k: z[k] for k in z.files if k != _HEADER_KEY}
    return ReferenceFingerprint.from_parts(header, arrays)
