"""Signed, expiring CDN URLs, like the storage URLs the Hub redirects LFS downloads to.

``/resolve`` answers an LFS file with 302 to ``{cdn_origin}/cdn/{sha256}?exp=<epoch s>&sig=<hex>``.
The signature is an HMAC-SHA256 over the blob id and the expiry with a per-server secret, so a URL
cannot be forged or extended, and it stops working after ``exp`` (403, as CloudFront/S3 do). A client
must therefore go back to ``/resolve`` for a fresh URL instead of caching storage URLs forever.
The CDN needs no ``Authorization`` header: the signature is the authorisation.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable

__all__ = ["DEFAULT_CDN_TTL_S", "UrlSigner"]

DEFAULT_CDN_TTL_S = 3600.0
"""Lifetime of a signed URL; the Hub's are of the order of an hour."""


class UrlSigner:
    """Creates and checks ``exp``/``sig`` query parameters for blob URLs.

    Args:
        secret (`bytes | None`): HMAC key; a random one per server when ``None`` (URLs then die
            with the server, like a rotated CDN key).
        ttl_s (`float`): default lifetime of a signed URL in seconds.
        clock (`Callable[[], float]`): wall-clock seconds; injectable for tests.
    """

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        ttl_s: float = DEFAULT_CDN_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self._clock = clock

    def _sig(self, blob: str, exp: int) -> str:
        return hmac.new(self._secret, f"{blob}\n{exp}".encode(), hashlib.sha256).hexdigest()

    def sign(self, blob: str, *, ttl_s: float | None = None) -> str:
        """Query string ``exp=...&sig=...`` granting access to ``blob`` for ``ttl_s`` seconds.

        A negative ``ttl_s`` yields an already expired URL (tests use it).
        """
        ttl = self.ttl_s if ttl_s is None else ttl_s
        exp = math.ceil(self._clock() + ttl)  # never shorter than asked
        return f"exp={exp}&sig={self._sig(blob, exp)}"

    def check(self, blob: str, exp: str | None, sig: str | None) -> str | None:
        """Return ``None`` if the URL is valid now, else the reason it is refused."""
        if not exp or not sig:
            return "Missing signature: the URL must carry exp and sig"
        if not exp.isdigit() or len(exp) > 12:
            return "Invalid expiry"
        if not hmac.compare_digest(self._sig(blob, int(exp)), sig):
            return "Signature does not match"
        if int(exp) < self._clock():
            return "Request has expired"
        return None
