"""Exceptions raised by HubSentry's I/O layer.

Retry logic branches on these classes, never on message text::

    HubSentryError
    ├── ConfigError                      bad or missing configuration (names the key)
    ├── HubError                         anything that went wrong talking to a hub
    │   ├── RateLimited(retry_after_s)   429, or our own limiter refused to wait that long
    │   ├── TransientHubError            5xx, connection reset, timeout, truncated body: retry later
    │   ├── NotFound                     repo, revision or file is gone (404)
    │   ├── GatedRepo                    401/403 on a gated or private repo: metadata only
    │   ├── RangeIgnored                 the server answered 200 to a ranged request
    │   └── CommitMoved                  the repo changed between listing and reading
    ├── FormatError                      a weight file is malformed, hostile or unsupported
    │   └── UnsupportedFormat            well-formed, but not something we read (e.g. legacy pickle)
    ├── BudgetExceeded                   reading more would exceed the per-repo byte budget
    ├── StoreError                       the SQLite store failed (disk full, corrupt)
    └── NotifyError                      an alert sink failed
        ├── RetryableNotifyError         429, 5xx, network: try again later
        └── PermanentNotifyError         invalid channel, revoked token: operator must act

Every error carries a message that says what to do next where we know it.

Every error pickles and unpickles to an equal error (same class, message, attributes), so a scan that
fails on a remote Dask worker reaches the worker's classifier as the class it was raised as. Errors
whose ``__init__`` takes keyword-only arguments list them in ``_KEYWORDS``; `HubSentryError.__reduce__`
passes them back by keyword (Python's default reduction passes only ``args``, which fails for them).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BudgetExceeded",
    "CommitMoved",
    "ConfigError",
    "FormatError",
    "GatedRepo",
    "HubError",
    "HubSentryError",
    "NotFound",
    "NotifyError",
    "PermanentNotifyError",
    "RangeIgnored",
    "RateLimited",
    "RetryableNotifyError",
    "StoreError",
    "TransientHubError",
    "UnsupportedFormat",
]


def _rebuild(cls: type[HubSentryError], args: tuple[Any, ...], keywords: dict[str, Any]) -> HubSentryError:
    """Unpickling helper: call ``cls`` with its positional and keyword-only arguments."""
    return cls(*args, **keywords)


class HubSentryError(Exception):
    """Base class of every error HubSentry raises on purpose.

    Subclasses whose ``__init__`` has keyword-only arguments name them (as attribute names) in
    ``_KEYWORDS`` so that pickling keeps working.
    """

    _KEYWORDS: ClassVar[tuple[str, ...]] = ()

    def __reduce__(self) -> tuple[Any, ...]:
        """Rebuild with the keyword-only arguments too, and keep extra attributes (``reason``...)."""
        keywords = {name: getattr(self, name) for name in self._KEYWORDS}
        return (_rebuild, (type(self), self.args, keywords), self.__dict__ or None)


class ConfigError(HubSentryError):
    """The configuration is invalid; the message names the offending key."""


class HubError(HubSentryError):
    """A hub request failed."""


class RateLimited(HubError):
    """The hub answered 429, or our own limiter would have to wait too long.

    Attributes:
        retry_after_s (`float`): seconds to wait before the next request to that bucket.
    """

    _KEYWORDS = ("retry_after_s",)

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TransientHubError(HubError):
    """A failure that is expected to go away: 5xx, reset, timeout, short body."""


class NotFound(HubError):
    """The repo, revision or file does not exist (or no longer exists)."""


class GatedRepo(HubError):
    """The repo is gated or private; only its public metadata can be read."""


class RangeIgnored(HubError):
    """The server ignored a Range header and started sending the whole file."""


class CommitMoved(HubError):
    """The repo was rewritten between listing and reading; the pinned commit is gone."""


class FormatError(HubSentryError):
    """A weight file is malformed, truncated, hostile, or inconsistent with its header."""


class UnsupportedFormat(FormatError):
    """A file we recognise but deliberately do not read (legacy pickle, unknown quantisation)."""


class BudgetExceeded(HubSentryError):
    """Reading the requested bytes would exceed the per-repo byte budget.

    Attributes:
        budget (`int`): the per-repo byte budget.
        requested (`int`): bytes the refused read would have brought the total to.
    """

    _KEYWORDS = ("budget", "requested")

    def __init__(self, message: str, *, budget: int, requested: int) -> None:
        super().__init__(message)
        self.budget = budget
        self.requested = requested


class StoreError(HubSentryError):
    """The SQLite store could not complete a write (disk full, locked, corrupt)."""


class NotifyError(HubSentryError):
    """An alert sink failed to deliver a message."""


class RetryableNotifyError(NotifyError):
    """Delivery failed for a reason that may pass (429, 5xx, network).

    Attributes:
        retry_after_s (`float | None`): the sink's own hint, if it gave one.
    """

    _KEYWORDS = ("retry_after_s",)

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentNotifyError(NotifyError):
    """Delivery cannot succeed without operator action (bad channel, revoked token)."""
