"""File bodies: ``/{repo}/resolve/{rev}/{path}`` and the CDN ``/cdn/{sha256}`` it redirects to.

``/resolve`` of an LFS file answers ``302`` to a signed URL on the CDN origin when redirects are on,
carrying ``X-Repo-Commit``, ``X-Linked-Size``, ``X-Linked-Etag`` and ``ETag`` *on the 302* (the client
reads metadata there and does not follow an off-Hub redirect on HEAD). Small files, and every file when
redirects are off, are served directly. ``X-Xet-Hash`` is never sent: it would switch the client to Xet.

Bodies honour one ``Range`` (see `monitor.localhub.ranges`), are never compressed, and are streamed in
chunks from an open file (or a virtual file's generator), so any size can be served.
"""

from __future__ import annotations

import contextlib
import mimetypes
from urllib.parse import quote

from monitor.localhub.ranges import RangeNotSatisfiableError, content_range, parse_range
from monitor.localhub.repos import RepoFile
from monitor.localhub.wire import BodyStream, Request, Response

__all__ = ["cdn_error", "file_response", "lfs_headers", "redirect_response"]

_TEXT_TYPES = {".json", ".txt", ".md", ".yaml", ".yml", ".py", ".jinja", ".model"}


def _content_type(path: str) -> str:
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix == ".json":
        return "application/json; charset=utf-8"
    if suffix in _TEXT_TYPES:
        return "text/plain; charset=utf-8"
    guessed, _ = mimetypes.guess_type(path)
    if guessed and guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return "application/octet-stream"


def _disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("\\", "_")
    return f"inline; filename*=UTF-8''{quote(name)}; filename=\"{ascii_name}\""


def lfs_headers(rf: RepoFile) -> list[tuple[str, str]]:
    """``X-Linked-Size``/``X-Linked-Etag``: the size and id of the linked LFS object."""
    if rf.sha256 is None:
        return []
    return [("X-Linked-Size", str(rf.size)), ("X-Linked-Etag", f'"{rf.sha256}"')]


def _never(start: int, end: int) -> bytes:
    raise AssertionError("HEAD responses have no body")


def file_response(
    rf: RepoFile,
    req: Request,
    *,
    head: bool,
    ignore_range: bool = False,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """200/206/416 for one file, with the body streamed from disk or generator.

    Raises:
        `monitor.localhub.repos.StaleFileError`: the file changed since the scan (the caller rescans).
    """
    base = [
        ("Content-Type", _content_type(rf.path)),
        ("Accept-Ranges", "bytes"),
        ("ETag", f'"{rf.etag}"'),
        ("Content-Disposition", _disposition(rf.path)),
        *(headers or []),
    ]
    try:
        rng = None if ignore_range else parse_range(req.headers.get("range"), rf.size)
    except RangeNotSatisfiableError as exc:
        return Response(
            416,
            [*base[1:], ("Content-Type", "application/json"), ("Content-Range", f"bytes */{exc.size}")],
            b'{"error":"Requested Range Not Satisfiable"}',
        )
    start, end = (rng.start, rng.end) if rng is not None else (0, rf.size)
    status = 206 if rng is not None else 200
    if rng is not None:
        base.append(("Content-Range", content_range(rng)))
    if head:
        return Response(status, base, stream=BodyStream(_never, start, end))
    stack = contextlib.ExitStack()
    read = stack.enter_context(rf.opened())
    return Response(status, base, stream=BodyStream(read, start, end, close=stack.close))


def redirect_response(rf: RepoFile, location: str, *, headers: list[tuple[str, str]]) -> Response:
    """The 302 of an LFS file to its signed CDN URL, carrying the file's metadata."""
    body = f"Found. Redirecting to {location}".encode()
    hdrs = [
        ("Location", location),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("ETag", f'"{rf.etag}"'),
        *lfs_headers(rf),
        *headers,
    ]
    return Response(302, hdrs, body)


def cdn_error(status: int, code: str, message: str) -> Response:
    """A storage-style (S3/CloudFront) XML error: the CDN is not the Hub API."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    return Response(status, [("Content-Type", "application/xml")], body)
