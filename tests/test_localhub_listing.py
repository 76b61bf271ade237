"""Listing internals: keyset cursors, filters, ordering with ties."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.localhub import write_repo
from monitor.localhub.listing import CursorError, ListQuery, decode_cursor, encode_cursor, list_page
from monitor.localhub.repos import Repo, RepoIndex


def test_cursor_roundtrip_and_errors() -> None:
    cursor = encode_cursor("likes", 5, "a/b")
    assert decode_cursor(cursor, "likes") == (5, "a/b")
    with pytest.raises(CursorError, match="sort='likes'"):
        decode_cursor(cursor, "createdAt")
    for bad in ("%%%", "bm90IGpzb24", "eyJzIjogImxpa2VzIn0"):
        with pytest.raises(CursorError):
            decode_cursor(bad, "likes")


@pytest.fixture
def repos(tmp_path: Path) -> list[Repo]:
    for name, likes, gated in [("a", 3, False), ("b", 3, "auto"), ("c", 1, False), ("d", 9, False)]:
        write_repo(tmp_path, f"org/{name}", {"config.json": "{}"}, sidecar={"likes": likes, "gated": gated})
    write_repo(tmp_path, "other/e", {"config.json": "{}"}, sidecar={"likes": 3, "tags": ["x"]})
    return RepoIndex(tmp_path).scan()


def _page(
    repos: list[Repo], query: ListQuery | None = None, cursor: str | None = None, size: int = 2
) -> tuple[list[str], str | None]:
    page, nxt = list_page(
        repos,
        query=query or ListQuery(),
        labels=lambda r: set(r.sidecar.tags or []),
        pipeline_tag=lambda r: None,
        sort="likes",
        cursor=cursor,
        size=size,
    )
    return [r.repo_id for r in page], nxt


def test_ties_are_ordered_by_id_and_paged_without_loss(repos: list[Repo]) -> None:
    seen, cursor = [], None
    while True:
        ids, cursor = _page(repos, cursor=cursor)
        seen += ids
        if cursor is None:
            break
    assert seen == ["org/d", "other/e", "org/b", "org/a", "org/c"]


def test_filters(repos: list[Repo]) -> None:
    assert _page(repos, ListQuery(author="ORG"), size=10)[0] == ["org/d", "org/b", "org/a", "org/c"]
    assert _page(repos, ListQuery(gated=True), size=10)[0] == ["org/b"]
    assert _page(repos, ListQuery(filters=("x",)), size=10)[0] == ["other/e"]
    assert _page(repos, ListQuery(search="G/A"), size=10)[0] == ["org/a"]
