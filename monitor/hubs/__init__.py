"""Model hubs: what changed, what a repo holds at a commit, and how to read its files.

`HubSource` (in `base`) is the contract; `HuggingFaceSource` implements it for the Hugging Face
Hub and compatible mirrors; `HubRateLimiter` keeps one hub's request rate inside its budget.
`HuggingFaceSource` is imported on first use, so importing this package stays cheap and free of
import cycles with `monitor.remote`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monitor.hubs.base import HubSource, RepoEvent, RepoSnapshot, SortKey
from monitor.hubs.ratelimit import BucketPolicy, HubRateLimiter

if TYPE_CHECKING:
    from monitor.hubs.huggingface import HuggingFaceSource

__all__ = [
    "BucketPolicy",
    "HubRateLimiter",
    "HubSource",
    "HuggingFaceSource",
    "RepoEvent",
    "RepoSnapshot",
    "SortKey",
]


def __getattr__(name: str) -> Any:
    if name == "HuggingFaceSource":
        from monitor.hubs.huggingface import HuggingFaceSource

        return HuggingFaceSource
    raise AttributeError(f"module 'monitor.hubs' has no attribute {name!r}")
