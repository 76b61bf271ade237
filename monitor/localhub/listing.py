"""``GET /api/models``: filtering, descending sort, and keyset pagination.

The Hub pages listings with an opaque ``cursor`` carried by a ``Link: <...>; rel="next"`` header whose
URL repeats every original parameter. Here the cursor is a *keyset*: base64 of the sort key, the last
item's sort value and its id. The next page holds the items strictly "after" that key in descending
``(value, id)`` order, so repos created while a client pages (newer, hence in front of the cursor) do not
shift later pages: no duplicates and no gaps, unlike offset paging.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from monitor.localhub.repos import Repo

__all__ = [
    "MAX_PAGE",
    "SORT_KEYS",
    "CursorError",
    "ListQuery",
    "decode_cursor",
    "encode_cursor",
    "list_page",
]

MAX_PAGE = 1000

SORT_KEYS: dict[str, Callable[[Repo], int]] = {
    "createdAt": lambda r: r.created_at_ms,
    "lastModified": lambda r: r.last_modified_ms,
    "downloads": lambda r: r.sidecar.downloads,
    "likes": lambda r: r.sidecar.likes,
    "trendingScore": lambda r: r.sidecar.trending_score,
}
"""Sort keys the API accepts (huggingface_hub maps ``created_at`` -> ``createdAt`` and so on)."""

DEFAULT_SORT = "createdAt"
"""Without ``sort`` the local hub lists newest first; the Hub's own default order is unspecified."""


class CursorError(ValueError):
    """A cursor that this server did not issue, or one issued for another sort order."""


def encode_cursor(sort: str, value: int, repo_id: str) -> str:
    raw = json.dumps({"s": sort, "v": value, "id": repo_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str, sort: str) -> tuple[int, str]:
    """Return ``(value, repo_id)`` of the last item of the previous page."""
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode() + b"=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise CursorError("invalid cursor") from exc
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("v"), int)
        or not isinstance(data.get("id"), str)
    ):
        raise CursorError("invalid cursor")
    if data.get("s") != sort:
        raise CursorError(f"cursor was issued for sort={data.get('s')!r}, not sort={sort!r}")
    return data["v"], data["id"]


@dataclass(frozen=True)
class ListQuery:
    """The filters of one listing request.

    Attributes:
        search (`str | None`): case-insensitive substring of the repo id.
        author (`str | None`): exact owner (case-insensitive).
        filters (`tuple[str, ...]`): every one must be among the repo's tags, library or pipeline tag.
        gated (`bool | None`): only gated (``True``) or only non-gated (``False``) repos.
        pipeline_tag (`str | None`): exact pipeline tag.
    """

    search: str | None = None
    author: str | None = None
    filters: tuple[str, ...] = ()
    gated: bool | None = None
    pipeline_tag: str | None = None


def list_page(
    repos: Sequence[Repo],
    *,
    query: ListQuery,
    labels: Callable[[Repo], set[str]],
    pipeline_tag: Callable[[Repo], str | None],
    sort: str,
    cursor: str | None,
    size: int,
) -> tuple[list[Repo], str | None]:
    """One page of matching repos, newest (largest) first, and the cursor of the next page.

    Args:
        repos: visible repos (private ones already removed for anonymous callers).
        labels: tags plus library name of a repo, for ``filter``.
        pipeline_tag: pipeline tag of a repo.
        sort: a `SORT_KEYS` key.
        cursor: from the previous page's ``Link``, or ``None`` for the first page.
        size: page size (1..`MAX_PAGE`).

    Raises:
        `CursorError`: the cursor is invalid.
    """
    key = SORT_KEYS[sort]
    after = decode_cursor(cursor, sort) if cursor else None
    search = query.search.lower() if query.search else None
    author = query.author.lower() if query.author else None
    selected = []
    for repo in repos:
        if search and search not in repo.repo_id.lower():
            continue
        if author and (repo.sidecar.author or repo.org).lower() != author and repo.org.lower() != author:
            continue
        if query.gated is not None and bool(repo.sidecar.gated) != query.gated:
            continue
        if query.pipeline_tag and pipeline_tag(repo) != query.pipeline_tag:
            continue
        if query.filters and not set(query.filters) <= labels(repo):
            continue
        item_key = (key(repo), repo.repo_id)
        if after is not None and not item_key < after:
            continue
        selected.append((item_key, repo))
    selected.sort(key=lambda kv: kv[0], reverse=True)
    page = [repo for _, repo in selected[:size]]
    next_cursor = None
    if len(selected) > size and page:
        last = page[-1]
        next_cursor = encode_cursor(sort, key(last), last.repo_id)
    return page, next_cursor
