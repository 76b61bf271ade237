"""Just enough ZIP to find entries of a remote archive with range reads (ZIP64 included).

`zipfile` wants a seekable file object and reads whatever it likes; a PyTorch checkpoint on a hub is
gigabytes behind HTTP. This module reads the End Of Central Directory from the tail of the file
(8 KiB first; the longest possible comment only when that misses), the ZIP64 end record when
present, the central directory (one read unless the tail holds it), and — only for the entries
the caller needs — the local headers, in one `read_many` call, because entry data starts after a
local "extra" field whose length the central directory does not give (PyTorch pads it so storages
start 64-byte aligned).

Sizes always come from the central directory: PyTorch sets the data-descriptor flag and leaves the
local sizes zero.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from monitor.errors import FormatError, UnsupportedFormat
from monitor.remote.source import ByteSource

__all__ = [
    "MAX_CENTRAL_DIRECTORY_BYTES",
    "MAX_ENTRIES",
    "ZipEntry",
    "locate_data",
    "read_central_directory",
    "read_small_entry",
]

MAX_CENTRAL_DIRECTORY_BYTES = 64 * 1024 * 1024
"""Largest central directory read (a 7B checkpoint's is ~30 KB)."""
MAX_ENTRIES = 200_000
"""Most entries accepted (one per storage plus a handful)."""
_EOCD_SIG = b"PK\x05\x06"
_EOCD64_SIG = b"PK\x06\x06"
_LOC64_SIG = b"PK\x06\x07"
_CEN_SIG = b"PK\x01\x02"
_LOC_SIG = b"PK\x03\x04"
_EOCD_LEN, _LOC64_LEN, _EOCD64_LEN, _CEN_LEN, _LOC_LEN = 22, 20, 56, 46, 30
_LOCAL_SLACK = 128  # local extra bytes fetched with the fixed header (PyTorch pads < 64 + 4)
_FIRST_TAIL = 8192  # first read from the end: end records plus, for small archives, the directory


@dataclass(frozen=True)
class ZipEntry:
    """One member as the central directory lists it.

    Attributes:
        name (`str`): member name.
        method (`int`): 0 stored, 8 deflated (others are not read).
        compressed_size (`int`), size (`int`): bytes in the archive / after decompression.
        header_offset (`int`): offset of the local header.
        flags (`int`): general purpose flags (bit 0: encrypted).
    """

    name: str
    method: int
    compressed_size: int
    size: int
    header_offset: int
    flags: int


def _find_eocd(tail: bytes, path: str) -> int:
    pos = len(tail) - _EOCD_LEN
    while pos >= 0:
        pos = tail.rfind(_EOCD_SIG, 0, pos + 4)
        if pos < 0:
            break
        if pos + _EOCD_LEN <= len(tail):
            (comment_len,) = struct.unpack_from("<H", tail, pos + 20)
            if pos + _EOCD_LEN + comment_len == len(tail):
                return pos
        pos -= 1
    raise FormatError(f"{path}: not a ZIP archive (no end-of-central-directory record)")


def _zip64_extra(extra: bytes, *, need: Sequence[str], path: str, name: str) -> dict[str, int]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + size]
        if tag == 0x0001:
            if len(body) < 8 * len(need):
                break
            return {field: struct.unpack_from("<Q", body, 8 * i)[0] for i, field in enumerate(need)}
        pos += 4 + size
    raise FormatError(f"{path}: entry {name!r} needs a ZIP64 extra field with {', '.join(need)}")


def read_central_directory(source: ByteSource) -> dict[str, ZipEntry]:
    """Parse the end records and central directory with two or three range reads.

    Raises:
        `FormatError`: not a ZIP archive, or its directory is inconsistent.
        `UnsupportedFormat`: multi-disk archives.
    """
    path, size = source.path, source.size
    if size < _EOCD_LEN:
        raise FormatError(f"{path}: {size} bytes is too short for a ZIP archive")
    # Archives rarely carry a comment: look in a short tail first, then in the longest possible one.
    tail_start = max(0, size - _FIRST_TAIL)
    tail = source.read(tail_start, size)
    try:
        eocd = _find_eocd(tail, path)
    except FormatError:
        full_start = max(0, size - (_EOCD_LEN + 0xFFFF + _LOC64_LEN + _EOCD64_LEN))
        if full_start >= tail_start:
            raise
        tail = source.read(full_start, tail_start) + tail
        tail_start = full_start
        eocd = _find_eocd(tail, path)
    disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = struct.unpack_from("<HHHHIIH", tail, eocd + 4)
    if 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        loc = eocd - _LOC64_LEN
        if loc < 0 or tail[loc : loc + 4] != _LOC64_SIG:
            raise FormatError(f"{path}: ZIP64 markers without a ZIP64 end-of-central-directory locator")
        _, eocd64_offset, _ = struct.unpack_from("<IQI", tail, loc + 4)
        if eocd64_offset + _EOCD64_LEN > size:
            raise FormatError(f"{path}: ZIP64 end record offset {eocd64_offset} lies outside the file")
        rec = (
            tail[eocd64_offset - tail_start : eocd64_offset - tail_start + _EOCD64_LEN]
            if eocd64_offset >= tail_start
            else source.read(eocd64_offset, eocd64_offset + _EOCD64_LEN)
        )
        if rec[:4] != _EOCD64_SIG or len(rec) < _EOCD64_LEN:
            raise FormatError(f"{path}: bad ZIP64 end-of-central-directory record")
        disk, cd_disk, n_disk, n_total, cd_size, cd_offset = struct.unpack_from("<IIQQQQ", rec, 16)
    if disk or cd_disk or n_disk != n_total:
        raise UnsupportedFormat(f"{path}: multi-disk ZIP archives are not read")
    if n_total > MAX_ENTRIES:
        raise FormatError(f"{path}: {n_total} ZIP entries exceed the limit of {MAX_ENTRIES}")
    if cd_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise FormatError(f"{path}: central directory of {cd_size} bytes exceeds the limit")
    if cd_offset + cd_size > size or cd_size < n_total * _CEN_LEN:
        raise FormatError(
            f"{path}: central directory [{cd_offset}, +{cd_size}) is inconsistent with "
            f"{n_total} entries in a {size}-byte file"
        )
    cd = (
        tail[cd_offset - tail_start : cd_offset - tail_start + cd_size]
        if cd_offset >= tail_start
        else source.read(cd_offset, cd_offset + cd_size)
    )
    entries: dict[str, ZipEntry] = {}
    pos = 0
    for _ in range(n_total):
        if pos + _CEN_LEN > len(cd) or cd[pos : pos + 4] != _CEN_SIG:
            raise FormatError(f"{path}: corrupt central directory at offset {cd_offset + pos}")
        (flags, method, csize, usize, n_len, e_len, c_len, disk_start, loc_off) = struct.unpack_from(
            "<8xHH8xIIHHHH6xI", cd, pos
        )
        end = pos + _CEN_LEN + n_len + e_len + c_len
        if end > len(cd):
            raise FormatError(f"{path}: central directory entry runs past its end")
        raw_name = cd[pos + _CEN_LEN : pos + _CEN_LEN + n_len]
        name = raw_name.decode("utf-8", errors="replace") if flags & 0x800 else raw_name.decode("cp437")
        extra = cd[pos + _CEN_LEN + n_len : pos + _CEN_LEN + n_len + e_len]
        need = [f for f, v in (("size", usize), ("csize", csize), ("offset", loc_off)) if v == 0xFFFFFFFF]
        if disk_start == 0xFFFF:
            need.append("disk")
        if need:
            z64 = _zip64_extra(extra, need=need, path=path, name=name)
            usize = z64.get("size", usize)
            csize = z64.get("csize", csize)
            loc_off = z64.get("offset", loc_off)
        if name in entries:
            raise FormatError(f"{path}: duplicate ZIP entry {name!r}")
        if loc_off + _LOC_LEN + csize > cd_offset:
            raise FormatError(f"{path}: entry {name!r} data overlaps the central directory")
        entries[name] = ZipEntry(name, method, csize, usize, loc_off, flags)
        pos = end
    return entries


def locate_data(source: ByteSource, entries: Sequence[ZipEntry]) -> dict[str, int]:
    """Absolute data offsets of ``entries``, from their local headers (one `read_many` call).

    Raises:
        `FormatError`: a local header is missing, names another file, or runs out of the archive.
    """
    path, size = source.path, source.size
    spans = []
    for e in entries:
        end = min(size, e.header_offset + _LOC_LEN + len(e.name.encode("utf-8")) + _LOCAL_SLACK)
        spans.append((e.header_offset, end))
    heads = source.read_many(spans) if spans else []
    out: dict[str, int] = {}
    retry: list[tuple[ZipEntry, int]] = []
    for e, head in zip(entries, heads, strict=True):
        if len(head) < _LOC_LEN or head[:4] != _LOC_SIG:
            raise FormatError(f"{path}: no local header for entry {e.name!r} at {e.header_offset}")
        n_len, e_len = struct.unpack_from("<HH", head, 26)
        start = e.header_offset + _LOC_LEN + n_len + e_len
        if start + e.compressed_size > size:
            raise FormatError(f"{path}: entry {e.name!r} data runs past the end of the file")
        name_end = _LOC_LEN + n_len
        if name_end <= len(head):
            local_name = head[_LOC_LEN:name_end]
            if (
                local_name.decode("utf-8", errors="replace") != e.name
                and local_name.decode("cp437") != e.name
            ):
                raise FormatError(
                    f"{path}: local header at {e.header_offset} names {local_name[:80]!r}, not {e.name!r}"
                )
        else:
            retry.append((e, n_len))
        out[e.name] = start
    if retry:
        names = source.read_many(
            [(e.header_offset + _LOC_LEN, e.header_offset + _LOC_LEN + n) for e, n in retry]
        )
        for (e, _), local_name in zip(retry, names, strict=True):
            if local_name.decode("utf-8", errors="replace") != e.name:
                raise FormatError(f"{path}: local header at {e.header_offset} does not name {e.name!r}")
    return out


def read_small_entry(source: ByteSource, entry: ZipEntry, data_offset: int, *, max_bytes: int) -> bytes:
    """The content of a small stored or deflated entry (``data.pkl``, ``byteorder``).

    Raises:
        `FormatError`: larger than ``max_bytes``, corrupt deflate stream, or size mismatch.
        `UnsupportedFormat`: encrypted, or a compression method other than stored/deflate.
    """
    path = source.path
    if entry.flags & 0x1:
        raise UnsupportedFormat(f"{path}: entry {entry.name!r} is encrypted")
    if entry.size > max_bytes or entry.compressed_size > max_bytes:
        raise FormatError(
            f"{path}: entry {entry.name!r} of {entry.size} bytes exceeds the limit of {max_bytes}"
        )
    raw = source.read(data_offset, data_offset + entry.compressed_size)
    if entry.method == 0:
        data = raw
    elif entry.method == 8:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(raw, max_bytes + 1)
        except zlib.error as exc:
            raise FormatError(f"{path}: entry {entry.name!r}: corrupt deflate stream ({exc})") from None
    else:
        raise UnsupportedFormat(f"{path}: entry {entry.name!r} uses ZIP compression method {entry.method}")
    if len(data) != entry.size:
        raise FormatError(
            f"{path}: entry {entry.name!r} holds {len(data)} bytes, directory says {entry.size}"
        )
    return data
