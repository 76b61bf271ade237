"""PyTorch zip checkpoints (``torch.save`` since 1.6: ``.bin``/``.pt``/``.pth``) read without unpickling.

A checkpoint is a ZIP archive ``<archive>/data.pkl`` + ``<archive>/data/<key>`` (one stored member
per storage, 64-byte aligned) + ``version``/``byteorder``. Opening one costs: the ZIP tail and
central directory (`monitor.formats.zipread`), the local headers of ``data.pkl`` and of every
storage (one `read_many`), and ``data.pkl`` itself, which `monitor.formats.pickleops` interprets
symbolically — nothing named in the pickle is imported or called.

Tensor names are the dotted paths of the pickled dicts. A wrapper such as ``{"state_dict": {...},
"epoch": 3}`` or ``{"model": {...}}`` is unwrapped (see `STATE_DICT_KEYS`). Non-contiguous
tensors (a saved ``w.t()``) and tensors in compressed members are listed in ``unsupported``; legacy
(pre-1.6) pickle and tar checkpoints raise `UnsupportedFormat`.
"""

from __future__ import annotations

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.base import TensorInfo
from monitor.formats.dtypes import DENSE_DTYPES
from monitor.formats.pickleops import MAX_PICKLE_BYTES, StorageRef, TensorRef, interpret
from monitor.formats.rows import RowFile
from monitor.formats.zipread import ZipEntry, locate_data, read_central_directory, read_small_entry
from monitor.remote.source import ByteSource

__all__ = ["MAX_NESTING", "STATE_DICT_KEYS", "TorchZipFile", "open_torch"]

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network")
"""Keys whose dict value is taken as the state dict when the top level wraps one."""
MAX_NESTING = 32
"""Deepest dict/list nesting walked when collecting tensors."""
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class TorchZipFile(RowFile):
    """One parsed PyTorch zip checkpoint (`WeightFile`).

    Attributes:
        archive (`str`): the archive folder inside the zip (``archive``, ``pytorch_model``...).
        unsupported (`dict[str, str]`): tensors present but not readable, with the reason.
    """

    format = "torch"

    def __init__(
        self, source: ByteSource, *, archive: str, tensors: dict[str, TensorInfo], unsupported: dict[str, str]
    ) -> None:
        super().__init__(source, tensors=tensors, metadata={"archive": archive}, unsupported=unsupported)
        self.archive = archive


def _is_legacy(source: ByteSource) -> str | None:
    head = source.read(0, min(source.size, 512))
    if head[:1] == b"\x80" and _LEGACY_MAGIC in head[:32]:
        return "legacy pickle with the torch magic number"
    if head[:1] == b"\x80":
        return "a bare pickle"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "a tar archive"
    return None


def _has_tensor(obj: object, depth: int = 0) -> bool:
    if isinstance(obj, TensorRef):
        return True
    if depth > MAX_NESTING:
        return False
    if isinstance(obj, dict):
        return any(_has_tensor(v, depth + 1) for v in obj.values())
    if isinstance(obj, list | tuple):
        return any(_has_tensor(v, depth + 1) for v in obj)
    return False


def _state_dict_root(obj: object) -> object:
    root = obj
    for _ in range(4):
        if not isinstance(root, dict):
            break
        for key in STATE_DICT_KEYS:
            sub = root.get(key)
            if isinstance(sub, dict) and _has_tensor(sub):
                root = sub
                break
        else:
            break
    return root


def _flatten(obj: object, prefix: str, out: dict[str, TensorRef], path: str, depth: int = 0) -> None:
    if depth > MAX_NESTING:
        raise FormatError(f"{path}: checkpoint nested deeper than {MAX_NESTING} levels")
    if isinstance(obj, TensorRef):
        if prefix in out:
            raise FormatError(f"{path}: two tensors are both named {prefix!r}")
        out[prefix] = obj
        return
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items() if isinstance(k, str | int) and not isinstance(k, bool)]
    elif isinstance(obj, list | tuple):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        return
    for key, value in items:
        _flatten(value, f"{prefix}.{key}" if prefix else key, out, path, depth + 1)


def _contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, st in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


def _find_archive(entries: dict[str, ZipEntry], path: str) -> str:
    roots = [n[: -len("/data.pkl")] for n in entries if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(roots) != 1:
        raise FormatError(
            f"{path}: ZIP archive with {len(roots)} '<archive>/data.pkl' members is not a PyTorch checkpoint"
        )
    return roots[0]


def _tensor_info(
    name: str, ref: TensorRef, *, path: str, entry: ZipEntry | None, data_offset: int | None
) -> TensorInfo | str:
    """A `TensorInfo`, or the reason the tensor cannot be read."""
    st: StorageRef = ref.storage
    if st.dtype is None:
        return f"storage type {st.type_name} is not supported"
    if entry is None or data_offset is None:
        raise FormatError(f"{path}: tensor {name!r} refers to missing storage data/{st.key}")
    if entry.method != 0:
        return f"storage data/{st.key} is compressed (method {entry.method}); it cannot be range-read"
    if not _contiguous(ref.size, ref.stride):
        return f"non-contiguous (size {ref.size}, stride {ref.stride}); save it with .contiguous()"
    itemsize = DENSE_DTYPES[st.dtype].itemsize
    numel = 1
    for n in ref.size:
        numel *= n
    end = (ref.offset + numel) * itemsize
    if numel and end > entry.size:
        raise FormatError(
            f"{path}: tensor {name!r} ({numel} elements at offset {ref.offset}) runs past its "
            f"{entry.size}-byte storage data/{st.key}"
        )
    return TensorInfo(name, st.dtype, ref.size, path, data_offset + ref.offset * itemsize, numel * itemsize)


def open_torch(source: ByteSource) -> TorchZipFile:
    """Parse a PyTorch zip checkpoint without executing its pickle.

    Returns:
        `TorchZipFile`; no tensor data has been read.

    Raises:
        `UnsupportedFormat`: legacy (pre-1.6) checkpoints, big-endian data, or a pickle naming a
            global outside the allow-list (the message names it).
        `FormatError`: a malformed archive or pickle.
    """
    path = source.path
    try:
        entries = read_central_directory(source)
    except FormatError as exc:
        if isinstance(exc, UnsupportedFormat):
            raise
        legacy = _is_legacy(source)
        if legacy:
            raise UnsupportedFormat(
                f"legacy (pre-1.6) PyTorch pickle checkpoint is not read: {path} is "
                f"{legacy}; unpickling it would execute code. Ask for safetensors, "
                "or convert it in a sandbox."
            ) from None
        raise
    archive = _find_archive(entries, path)
    small = [entries[f"{archive}/data.pkl"]]
    if f"{archive}/byteorder" in entries:
        small.append(entries[f"{archive}/byteorder"])
    offsets = locate_data(source, small)
    pkl = read_small_entry(source, small[0], offsets[small[0].name], max_bytes=MAX_PICKLE_BYTES)
    if len(small) > 1:
        order = read_small_entry(source, small[1], offsets[small[1].name], max_bytes=16).strip()
        if order != b"little":
            raise UnsupportedFormat(f"{path}: byte order {order[:16]!r} checkpoints are not read")
    refs: dict[str, TensorRef] = {}
    _flatten(_state_dict_root(interpret(pkl, path=f"{path}: {archive}/data.pkl")), "", refs, path)
    if not refs:
        raise FormatError(f"{path}: checkpoint holds no tensors")
    keys = sorted({r.storage.key for r in refs.values()})
    storage_entries = {k: entries.get(f"{archive}/data/{k}") for k in keys}
    data_offsets = locate_data(source, [e for e in storage_entries.values() if e is not None])
    tensors: dict[str, TensorInfo] = {}
    unsupported: dict[str, str] = {}
    for name, ref in refs.items():
        entry = storage_entries[ref.storage.key]
        result = _tensor_info(
            name, ref, path=path, entry=entry, data_offset=data_offsets.get(entry.name) if entry else None
        )
        if isinstance(result, str):
            unsupported[name] = result
        else:
            tensors[name] = result
    return TorchZipFile(source, archive=archive, tensors=tensors, unsupported=unsupported)
