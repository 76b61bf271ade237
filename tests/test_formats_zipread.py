"""ZIP directory reading over range reads, including ZIP64, checked against `zipfile`."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest

from monitor.errors import FormatError, UnsupportedFormat
from monitor.formats.fuzz import MemorySource
from monitor.formats.zipread import locate_data, read_central_directory, read_small_entry

MEMBERS = {"arch/data.pkl": b"\x80\x02}q\x00.", "arch/data/0": bytes(range(200)), "arch/version": b"3\n"}


def zip64_archive(members: dict[str, bytes], *, comment: bytes = b"") -> bytes:
    """A ZIP archive that uses ZIP64 everywhere it can: local and central extras, end records."""
    out = io.BytesIO()
    offsets = {}
    for name, data in members.items():
        offsets[name] = out.tell()
        raw = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, len(data), len(data))
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                45,
                0x800,
                0,
                0,
                0,
                zlib.crc32(data),
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(raw),
                len(extra),
            )
            + raw
            + extra
            + data
        )
    cd_start = out.tell()
    for name, data in members.items():
        raw = name.encode()
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offsets[name])
        out.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                45,
                45,
                0x800,
                0,
                0,
                0,
                zlib.crc32(data),
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(raw),
                len(extra),
                0,
                0,
                0,
                0,
                0xFFFFFFFF,
            )
            + raw
            + extra
        )
    cd_size = out.tell() - cd_start
    eocd64 = out.tell()
    out.write(
        struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, len(members), len(members), cd_size, cd_start
        )
    )
    out.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64, 1))
    out.write(
        struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, len(comment))
        + comment
    )
    return out.getvalue()


def plain_archive(
    members: dict[str, bytes], *, deflate: frozenset[str] = frozenset(), comment: bytes = b""
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.comment = comment
        for name, data in members.items():
            zf.writestr(
                name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            )
    return buf.getvalue()


def _contents(data: bytes) -> dict[str, bytes]:
    src = MemorySource(data, path="a.zip")
    entries = read_central_directory(src)
    offsets = locate_data(src, list(entries.values()))
    return {n: read_small_entry(src, e, offsets[n], max_bytes=1 << 20) for n, e in entries.items()}


@pytest.mark.parametrize("comment", [b"", b"PK\x05\x06 looks like an end record" * 3])
def test_plain_archive(comment):
    assert _contents(plain_archive(MEMBERS, comment=comment)) == MEMBERS


def test_zip64_archive_is_valid_and_read():
    data = zip64_archive(MEMBERS, comment=b"hi")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:  # the builder writes what zipfile accepts
        assert {n: zf.read(n) for n in zf.namelist()} == MEMBERS
    assert _contents(data) == MEMBERS


def test_deflated_small_entries_are_inflated():
    data = plain_archive(MEMBERS, deflate=frozenset({"arch/data/0"}))
    assert _contents(data) == MEMBERS


def test_range_reads_only(tmp_path):
    big = {"arch/data.pkl": b"x", "arch/data/0": b"\0" * 1_000_000}
    src = MemorySource(plain_archive(big), path="a.zip")
    entries = read_central_directory(src)
    locate_data(src, [entries["arch/data.pkl"]])
    assert src.stats.bytes_read < 8192 + 200  # an 8 KiB tail with the directory, one local header
    assert src.stats.requests == 2


def test_long_comment_needs_a_second_tail_read():
    data = plain_archive(MEMBERS, comment=b"c" * 20_000)
    src = MemorySource(data, path="a.zip")
    assert set(read_central_directory(src)) == set(MEMBERS)
    assert src.stats.requests == 2
    assert src.stats.bytes_read == len(data)


def _corrupt(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def test_malformed_archives():
    good = plain_archive(MEMBERS)
    eocd = good.rfind(b"PK\x05\x06")
    cd = struct.unpack_from("<I", good, eocd + 16)[0]
    cases = [
        (b"not a zip at all" * 4, "no end-of-central-directory"),
        (good[:10], "too short|no end"),
        (_corrupt(good, eocd + 16, struct.pack("<I", len(good))), "inconsistent"),
        (_corrupt(good, cd, b"XXXX"), "corrupt central directory"),
        (_corrupt(good, eocd + 10, struct.pack("<H", 9)), "multi-disk|inconsistent"),
        (_corrupt(good, eocd + 8, struct.pack("<HH", 0xFFFF, 0xFFFF)), "ZIP64 markers without"),
    ]
    for data, message in cases:
        with pytest.raises(FormatError, match=message):
            read_central_directory(MemorySource(data, path="a.zip"))


def test_local_header_must_match():
    good = plain_archive(MEMBERS)
    src = MemorySource(good, path="a.zip")
    entries = read_central_directory(src)
    bad = _corrupt(good, entries["arch/data/0"].header_offset, b"PK\x00\x00")
    with pytest.raises(FormatError, match="no local header"):
        locate_data(MemorySource(bad, path="a.zip"), [entries["arch/data/0"]])
    renamed = _corrupt(good, entries["arch/data/0"].header_offset + 30, b"arch/data/9")
    with pytest.raises(FormatError, match="names"):
        locate_data(MemorySource(renamed, path="a.zip"), [entries["arch/data/0"]])


def test_small_entry_limits_and_methods():
    src = MemorySource(plain_archive(MEMBERS, deflate=frozenset({"arch/data/0"})), path="a.zip")
    entries = read_central_directory(src)
    offsets = locate_data(src, list(entries.values()))
    with pytest.raises(FormatError, match="exceeds the limit"):
        read_small_entry(src, entries["arch/data/0"], offsets["arch/data/0"], max_bytes=10)
    bzip = plain_archive({"a": b"x" * 100})
    pos = bzip.find(b"PK\x01\x02") + 10
    bzip = _corrupt(bzip, pos, struct.pack("<H", 12))  # central directory says bzip2
    src = MemorySource(bzip, path="b.zip")
    e = read_central_directory(src)["a"]
    with pytest.raises(UnsupportedFormat, match="compression method 12"):
        read_small_entry(src, e, locate_data(src, [e])["a"], max_bytes=1000)


def test_zip64_pytorch_checkpoint():
    import torch

    from monitor.formats.torchzip import open_torch

    ref = torch.randn(4, 8)
    buf = io.BytesIO()
    torch.save({"w": ref}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    f = open_torch(MemorySource(zip64_archive(members), path="z.bin"))
    assert (f.read("w") == ref.numpy()).all()
