"""`HuggingFaceSource`: the Hugging Face Hub as a `HubSource`.

Listings and repo metadata go through the real `huggingface_hub.HfApi` (``list_models``,
``model_info(files_metadata=True)``); weight bytes go through our own `HubHttpClient` as pinned
range requests (`HubFileSet` / `HttpRangeSource`).

huggingface_hub sends its requests through one process-wide ``httpx2.Client``. Its paginated
listings retry 429/5xx *inside* the library (``http_backoff``: up to 5 retries, sleeping
``Retry-After + 1`` s however large that is), and ``model_info`` does not retry at all. To keep
every one of those requests inside our budget and every call bounded, this module installs (once,
through the public `set_client_factory`) the library's default client plus two event hooks that
act only inside a call made by a `HuggingFaceSource` (a `contextvars` scope; any other use of
huggingface_hub in the process is untouched):

* the request hook takes a slot from the hub's `HubRateLimiter` for every request, retries
  included, waiting at most until the call's deadline (interruptible by the stop event), and
  gives requests that have no timeout a finite one;
* the response hook feeds ``RateLimit`` headers and 429s to the limiter and aborts the call with
  `RateLimited` / `TransientHubError` when the hub asks for a wait beyond the deadline, instead of
  letting the library sleep.

``model_info`` is wrapped in a bounded retry (full-jitter backoff, `RetryPolicy`). Errors are
mapped to `monitor.errors` by `map_hf_error`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import httpx2
from huggingface_hub import HfApi
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import ExpandModelProperty_T
from huggingface_hub.utils import _http as _hf_http
from huggingface_hub.utils import get_session, httpx, set_client_factory

from monitor import __version__
from monitor.errors import CommitMoved, GatedRepo, HubError, NotFound, RateLimited, TransientHubError
from monitor.hubs.base import RepoEvent, RepoSnapshot, SortKey
from monitor.hubs.ratelimit import HubRateLimiter, bucket_for_url, retry_after_from_headers
from monitor.remote.hubfiles import HubFileSet
from monitor.remote.retry import sleep_unless_stopped
from monitor.remote.source import FileEntry
from monitor.remote.transport import DEFAULT_HTTP, HttpSettings, HubHttpClient
from monitor.validate import (
    RedirectPolicy,
    is_commit,
    normalize_endpoint,
    validate_commit,
    validate_model_repo_id,
    validate_repo_path,
    validate_revision,
)

__all__ = ["DEFAULT_API_TIMEOUT_S", "LIST_EXPAND", "HuggingFaceSource", "map_hf_error"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_API_TIMEOUT_S = 30.0
"""Connect/read timeout of one API request (listing page, model_info)."""

LIST_EXPAND: tuple[ExpandModelProperty_T, ...] = ("createdAt", "lastModified", "sha", "private", "gated")
"""Fields a listing asks for: enough to enqueue ``(repo, commit)`` without another call."""

_SORTS: dict[str, Any] = {"created": "created_at", "modified": "last_modified"}
_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
_SHA256_LEN = 64


# --------------------------------------------------------------------------------------------
# Scoped hooks on huggingface_hub's shared client
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    """The call huggingface_hub is currently making for us: whose limiter, until when."""

    name: str
    endpoint: str
    limiter: HubRateLimiter | None
    deadline: float
    stop: threading.Event | None
    timeout: dict[str, float]


_SCOPE: ContextVar[_Scope | None] = ContextVar("hubsentry_hf_scope", default=None)
_INSTALL_LOCK = threading.Lock()


def _on_request(request: httpx2.Request) -> None:
    scope = _SCOPE.get()
    if scope is None:
        return
    timeout = request.extensions.get("timeout")
    if not isinstance(timeout, dict) or all(v is None for v in timeout.values()):
        request.extensions["timeout"] = dict(scope.timeout)
    bucket = bucket_for_url(request.url, scope.endpoint)
    if bucket is not None and scope.limiter is not None:
        scope.limiter.acquire(bucket, max_wait_s=max(0.0, scope.deadline - time.monotonic()), stop=scope.stop)


def _on_response(response: httpx2.Response) -> None:
    scope = _SCOPE.get()
    if scope is None:
        return
    bucket = bucket_for_url(response.request.url, scope.endpoint)
    if bucket is None:
        return
    status = response.status_code
    if scope.limiter is not None:
        scope.limiter.observe(bucket, response.headers, status=status)
    if status not in _RETRY_STATUSES:
        return
    hint = retry_after_from_headers(response.headers)
    if hint is None or time.monotonic() + hint + 1.0 <= scope.deadline:
        return  # huggingface_hub's own bounded backoff may retry it
    message = (
        f"{scope.name}: hub answered {status} asking to wait {hint:.0f} s, longer than this call may wait"
    )
    if status == 429:
        raise RateLimited(message, retry_after_s=hint)
    raise TransientHubError(message)


def _client_factory() -> httpx2.Client:
    """huggingface_hub's default client (redirects, offline check, trace ids) plus our hooks."""
    client = _hf_http.default_client_factory()
    hooks = client.event_hooks
    client.event_hooks = {
        "request": [*hooks.get("request", []), _on_request],
        "response": [*hooks.get("response", []), _on_response],
    }
    return client


def _ensure_hooks() -> None:
    """Install the hooked client factory unless the live session already carries our hooks."""
    if _on_request in get_session().event_hooks["request"]:
        return
    with _INSTALL_LOCK:
        if _on_request not in get_session().event_hooks["request"]:
            set_client_factory(_client_factory)


# --------------------------------------------------------------------------------------------
# Error mapping
# --------------------------------------------------------------------------------------------


def map_hf_error(exc: BaseException, *, what: str, pinned_commit: str | None = None) -> HubError:
    """Translate a huggingface_hub / httpx2 error into the `monitor.errors` hierarchy.

    Args:
        exc: the exception raised by an `HfApi` call.
        what (`str`): the call, for the message (``"model_info acme/m"``).
        pinned_commit (`str | None`): the commit the call asked for, when it asked for one. The hub
            answers ``RevisionNotFound`` (not ``RepoNotFound``) when the repo exists but that commit does
            not any more (history rewritten, force-push): that is `CommitMoved`, so the worker scans the
            new head instead of recording the upload as gone.
    """
    if isinstance(exc, HubError):
        return exc
    text = " ".join(str(exc).split())[:500]
    if isinstance(exc, GatedRepoError):
        return GatedRepo(f"{what}: gated or private repo: {text}")
    if pinned_commit is not None and isinstance(exc, RevisionNotFoundError):
        return CommitMoved(
            f"{what}: commit {pinned_commit} is gone but the repo exists (history rewritten): {text}"
        )
    if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError | EntryNotFoundError):
        return NotFound(f"{what}: {text}")
    if isinstance(exc, DisabledRepoError):
        return NotFound(f"{what}: the repo is disabled: {text}")
    if isinstance(exc, HfHubHTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        if status == 429:
            wait = retry_after_from_headers(response.headers) if response is not None else None
            return RateLimited(f"{what}: {text}", retry_after_s=wait if wait is not None else 1.0)
        if status in (401, 403):
            return GatedRepo(f"{what}: access denied ({status}): {text}")
        if status == 404:
            return NotFound(f"{what}: {text}")
        if status == 408 or status >= 500:
            return TransientHubError(f"{what}: {text}")
        return HubError(f"{what}: HTTP {status}: {text}")
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return TransientHubError(f"{what}: {type(exc).__name__}: {text}")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"{what}: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)")
    if isinstance(exc, httpx.HTTPError):
        return HubError(f"{what}: {type(exc).__name__}: {text}")
    if isinstance(exc, KeyError | TypeError | ValueError):
        return HubError(f"{what}: malformed answer from the hub ({type(exc).__name__}: {text})")
    return HubError(f"{what}: {type(exc).__name__}: {text}")


_MAPPED = (HfHubHTTPError, httpx.HTTPError, OfflineModeIsEnabled, KeyError, TypeError, ValueError)


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


class HuggingFaceSource:
    """The Hugging Face Hub (or a compatible mirror such as `monitor.localhub`) as a `HubSource`.

    Args:
        name (`str`): the configured hub name (cursors, work items, alerts).
        endpoint (`str`): base URL, e.g. ``https://huggingface.co``.
        token (`str | None`): the resolved secret; ``None`` for anonymous access (the machine's
            cached token and ``HF_TOKEN`` are *not* used). Never logged or shown in `repr`.
        limiter (`HubRateLimiter`, *optional*): the hub's shared limiter; default: the Hub's
            documented limits for anonymous or token clients.
        http (`HttpSettings`): timeouts, concurrency, retries, coalescing of ranged reads.
        api_timeout_s (`float`): timeout of one API request.
        allowed_storage_hosts (`Sequence[str] | None`): restrict where LFS redirects may lead.
        stop (`threading.Event | None`): the daemon's stop event; interrupts waits and retries.

    Example:
        ```python
        hub = HuggingFaceSource("huggingface", "https://huggingface.co", token=os.environ["HF_TOKEN"])
        for event in hub.list_changes(sort="created", limit=100):
            snap = hub.snapshot(event.repo_id, event.commit)
            files = hub.open_files(snap, budget=64 << 20)
            header = files.open("model.safetensors").read(0, 8)
        ```
    """

    def __init__(
        self,
        name: str,
        endpoint: str,
        token: str | None,
        *,
        limiter: HubRateLimiter | None = None,
        http: HttpSettings = DEFAULT_HTTP,
        api_timeout_s: float = DEFAULT_API_TIMEOUT_S,
        allowed_storage_hosts: Sequence[str] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("hub name must be a non-empty string")
        if not api_timeout_s > 0:
            raise ValueError(f"api_timeout_s must be > 0, got {api_timeout_s!r}")
        self.name = name
        self.endpoint = normalize_endpoint(endpoint)
        self.limiter = limiter or HubRateLimiter.default(authenticated=bool(token), name=name)
        self.stop = stop
        self._retry = http.retry
        self._api_timeout_s = api_timeout_s
        self._api = HfApi(
            endpoint=self.endpoint,
            token=token or False,
            library_name="hubsentry",
            library_version=__version__,
        )
        self._http = HubHttpClient(
            self.endpoint,
            token=token,
            limiter=self.limiter,
            redirects=RedirectPolicy.for_endpoint(self.endpoint, allowed_storage_hosts=allowed_storage_hosts),
            settings=http,
            stop=stop,
        )
        _ensure_hooks()

    def __repr__(self) -> str:
        return (
            f"HuggingFaceSource({self.name!r}, {self.endpoint!r}, authenticated={self._http.authenticated})"
        )

    # -- scope -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _scope(self, deadline: float) -> Iterator[None]:
        _ensure_hooks()
        t = self._api_timeout_s
        scope = _Scope(
            self.name,
            self.endpoint,
            self.limiter,
            deadline,
            self.stop,
            {
                "connect": t,
                "read": t,
                "write": t,
                "pool": t,
            },
        )
        token = _SCOPE.set(scope)
        try:
            yield
        finally:
            _SCOPE.reset(token)

    def _call(self, fn: Callable[[], T], *, what: str, pinned_commit: str | None = None) -> T:
        """Run one non-retrying API call with the limiter, a deadline and bounded retries."""
        deadline = time.monotonic() + self._retry.max_wait_s
        attempt = 0
        while True:
            attempt += 1
            try:
                with self._scope(deadline):
                    return fn()
            except (HubError, *_MAPPED) as exc:
                error = map_hf_error(exc, what=what, pinned_commit=pinned_commit)
                if error is not exc:
                    error.__cause__ = exc
            retryable = isinstance(error, TransientHubError | RateLimited)
            if not retryable or attempt >= self._retry.max_attempts:
                raise error
            if isinstance(error, RateLimited):
                if time.monotonic() + error.retry_after_s > deadline:
                    raise error
                pause = 0.0  # the limiter now holds the bucket closed; the next request waits there
            else:
                pause = self._retry.delay(attempt)
            if sleep_unless_stopped(pause, self.stop):
                raise error

    # -- HubSource ---------------------------------------------------------------------------

    def list_changes(self, *, sort: SortKey, limit: int | None = None) -> Iterator[RepoEvent]:
        """Yield repos newest first by creation (``"created"``) or last commit (``"modified"``).

        Pages are fetched lazily: stop iterating and no further page is requested. Items whose
        repo id fails validation are skipped with a warning (one hostile entry must not block a
        scan); an unparseable page raises `HubError`.

        Raises:
            `ValueError`: unknown ``sort`` or ``limit < 1``.
            `RateLimited`, `TransientHubError`, `HubError`: while fetching a page.
        """
        if sort not in _SORTS:
            raise ValueError(f"sort must be 'created' or 'modified', got {sort!r}")
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        pages = iter(self._api.list_models(sort=_SORTS[sort], expand=list(LIST_EXPAND), limit=limit))
        what = f"{self.name}: list_models(sort={_SORTS[sort]})"
        while True:
            try:
                with self._scope(time.monotonic() + self._retry.max_wait_s):
                    info = next(pages)
            except StopIteration:
                return
            except (HubError, *_MAPPED) as exc:
                raise map_hf_error(exc, what=what) from exc
            event = self._event(info)
            if event is not None:
                yield event

    def _event(self, info: Any) -> RepoEvent | None:
        try:
            repo_id = validate_model_repo_id(info.id)
        except ValueError as exc:
            logger.warning("%s: skipping a listed repo with an invalid id: %s", self.name, exc)
            return None
        sha = info.sha if is_commit(info.sha) else None
        if info.sha is not None and sha is None:
            logger.warning(
                "%s: %s listed with an invalid sha %r; it will be resolved", self.name, repo_id, info.sha
            )
        return RepoEvent(
            hub=self.name,
            repo_id=repo_id,
            commit=sha,
            created_at=_as_datetime(info.created_at),
            last_modified=_as_datetime(info.last_modified),
        )

    def snapshot(self, repo_id: str, revision: str | None = None) -> RepoSnapshot:
        """Pin ``revision`` (default: the main branch) to a commit and list its files with sizes.

        Files whose metadata is malformed (bad path, missing size, bad digest) are left out of
        ``files`` and named in ``extra["skipped_files"]`` with the reason.

        Raises:
            `ValueError`: ``repo_id`` or ``revision`` is malformed (nothing was sent).
            `NotFound`, `GatedRepo`, `RateLimited`, `TransientHubError`, `HubError`.
            `CommitMoved`: a commit was asked for and the hub answered with another one, or the hub
                says that commit no longer exists in a repo that still does (history rewritten).
        """
        repo_id = validate_model_repo_id(repo_id)
        if revision is not None:
            revision = validate_revision(revision)
        what = f"{self.name}: model_info({repo_id}@{revision or 'main'})"
        info = self._call(
            lambda: self._api.model_info(
                repo_id, revision=revision, files_metadata=True, timeout=self._api_timeout_s
            ),
            what=what,
            pinned_commit=revision if revision is not None and is_commit(revision) else None,
        )
        try:
            commit = validate_commit(info.sha)
        except ValueError as exc:
            raise HubError(f"{what}: the hub returned no usable commit: {exc}") from None
        if revision is not None and is_commit(revision) and commit != revision:
            raise CommitMoved(f"{what}: asked for commit {revision}, the hub answered {commit}")
        if info.siblings is None:
            raise HubError(f"{what}: the hub returned no file list")
        files, skipped = _file_entries(info.siblings)
        if skipped:
            logger.warning(
                "%s: %s@%s: skipped %d malformed file entries", self.name, repo_id, commit, len(skipped)
            )
        extra: dict[str, object] = {
            key: value
            for key, value in (
                ("library_name", _short_str(info.library_name)),
                ("pipeline_tag", _short_str(info.pipeline_tag)),
                ("disabled", bool(info.disabled) if info.disabled is not None else None),
                ("safetensors_total", _safetensors_total(info)),
                ("gguf", _gguf_summary(info.gguf)),
            )
            if value is not None
        }
        if skipped:
            extra["skipped_files"] = skipped
        return RepoSnapshot(
            hub=self.name,
            repo_id=repo_id,
            commit=commit,
            files=files,
            created_at=_as_datetime(info.created_at),
            last_modified=_as_datetime(info.last_modified),
            gated=bool(info.gated),
            private=bool(info.private),
            tags=tuple(t for t in (info.tags or ()) if isinstance(t, str) and _short_str(t)),
            base_models=_base_models(info.card_data),
            url=self.commit_url(repo_id, commit),
            extra=extra,
        )

    def open_files(self, snapshot: RepoSnapshot, *, budget: int | None) -> HubFileSet:
        """A `HubFileSet` reading ``snapshot``'s files by range requests pinned to its commit."""
        if snapshot.hub != self.name:
            raise ValueError(f"snapshot of hub {snapshot.hub!r} cannot be read through hub {self.name!r}")
        validate_model_repo_id(snapshot.repo_id)
        validate_commit(snapshot.commit)
        return HubFileSet(snapshot, self._http, budget=budget)

    def commit_url(self, repo_id: str, commit: str) -> str:
        """``{endpoint}/{repo_id}/tree/{commit}``: the exact commit, for alert evidence."""
        return f"{self.endpoint}/{validate_model_repo_id(repo_id)}/tree/{validate_commit(commit)}"

    def close(self) -> None:
        """Close the ranged-read client and hand the limiter's share of a shared request history back
        (the shared huggingface_hub session stays open)."""
        self._http.close()
        self.limiter.close()

    def __enter__(self) -> HuggingFaceSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Parsing helpers (hub answers are untrusted)
# --------------------------------------------------------------------------------------------


def _file_entries(siblings: Sequence[Any]) -> tuple[dict[str, FileEntry], list[dict[str, str]]]:
    files: dict[str, FileEntry] = {}
    skipped: list[dict[str, str]] = []
    for sibling in siblings:
        name = getattr(sibling, "rfilename", None)
        try:
            path = validate_repo_path(name)
            size = sibling.size
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"size {size!r} is not a non-negative integer")
            sha256 = None
            if sibling.lfs is not None:
                sha256 = sibling.lfs.sha256
                if not (isinstance(sha256, str) and len(sha256) == _SHA256_LEN and _is_lower_hex(sha256)):
                    raise ValueError(f"LFS sha256 {sha256!r} is not 64 lowercase hex characters")
                if sibling.lfs.size != size:
                    raise ValueError(f"LFS size {sibling.lfs.size!r} differs from size {size}")
            blob_id = sibling.blob_id if is_commit(sibling.blob_id) else None
            if path in files:
                raise ValueError("listed twice")
        except (ValueError, AttributeError, TypeError) as exc:
            skipped.append({"path": repr(name)[:200], "reason": str(exc)[:200]})
            continue
        files[path] = FileEntry(path=path, size=size, sha256=sha256, blob_id=blob_id)
    return files, skipped


def _is_lower_hex(value: str) -> bool:
    return all(c in "0123456789abcdef" for c in value)


def _as_datetime(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _short_str(value: object, limit: int = 200) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > limit or not value.isprintable():
        return None
    return value


def _base_models(card_data: Any) -> tuple[str, ...]:
    declared = getattr(card_data, "base_model", None) if card_data is not None else None
    if isinstance(declared, str):
        declared = [declared]
    if not isinstance(declared, list):
        return ()
    out: list[str] = []
    for value in declared:
        text = _short_str(value)
        if text is not None and text not in out:
            out.append(text)
    return tuple(out)


def _safetensors_total(info: Any) -> int | None:
    total = getattr(info.safetensors, "total", None) if info.safetensors is not None else None
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def _gguf_summary(gguf: object) -> dict[str, object] | None:
    """Only the small, useful fields (the hub also sends chat templates of many KB)."""
    if not isinstance(gguf, dict):
        return None
    summary: dict[str, object] = {}
    for key in ("total", "architecture", "context_length"):
        value = gguf.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            summary[key] = value
        elif isinstance(value, str) and (text := _short_str(value)) is not None:
            summary[key] = text
    return summary or None
