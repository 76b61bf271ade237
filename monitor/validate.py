"""Validation of everything a hub (or an operator) hands us before it reaches a URL, a log or a disk.

Hub listings and file lists are untrusted input: a repo id, a path or a redirect target goes into
URLs we fetch, file names other modules may write, and alert text a human reads. Each check here
is strict, cheap and raises `ValueError` with a message that names the bad value (quoted with
`repr` so control characters are visible), so callers can decide whether bad input is a
configuration error (`ConfigError`), a hostile hub answer (`HubError`) or an item to skip.

Redirect rules: credentials only ever go to the configured hub endpoint; storage hosts are only
reached through a redirect the hub itself issued; only ``http``/``https`` are followed, never a
downgrade from ``https`` to ``http``; an optional allow-list restricts storage hosts. Without an
allow-list, a cross-origin redirect is refused unless *every* address its host resolves to is a public
one: no private (RFC 1918, unique-local), link-local (cloud metadata endpoints), loopback (unless the hub
itself is on loopback, as a local test hub is), CGNAT, multicast, reserved or unspecified address — so a
compromised or hostile hub cannot make the daemon fetch from inside its network, not even through a DNS
name. The HTTP client checks the address it actually connected to as well (`address_refusal`), which
closes the gap of a DNS answer that changes between the check and the connection.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx2
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

__all__ = [
    "MAX_PATH_LENGTH",
    "MAX_REVISION_LENGTH",
    "RedirectPolicy",
    "Resolver",
    "address_refusal",
    "is_commit",
    "normalize_endpoint",
    "origin_of",
    "redact_url",
    "resolve_host",
    "validate_commit",
    "validate_model_repo_id",
    "validate_repo_path",
    "validate_revision",
]

MAX_PATH_LENGTH = 1024
"""Longest repo-relative path we accept; longer ones are hostile or broken (git allows 4096)."""

MAX_REVISION_LENGTH = 255
"""Longest branch/tag name we accept (git's limit for one ref component)."""

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_REVISION_RE = re.compile(r"[A-Za-z0-9._/\-]+")


def validate_model_repo_id(repo_id: object) -> str:
    """Return ``repo_id`` if it is a valid Hugging Face *model* repo id ``namespace/name``.

    The rules are `huggingface_hub.utils.validate_repo_id`'s (``[\\w\\-.]``, at most 96 characters
    per part, no ``--`` or ``..``, no ``.git`` suffix) plus: ASCII only (Python's ``\\w`` accepts
    any Unicode letter, the Hub does not, and look-alike letters would make alerts misleading) and
    exactly one ``/`` (a bare ``name`` is a legacy canonical id that HubSentry does not watch).

    Raises:
        `ValueError`: naming the rejected id.
    """
    if not isinstance(repo_id, str):
        raise ValueError(f"repo id must be a string, got {type(repo_id).__name__}")
    if not repo_id.isascii():
        raise ValueError(f"repo id {repo_id!r} contains non-ASCII characters")
    if _CONTROL_RE.search(repo_id):  # before huggingface_hub's check: its message quotes the id raw
        raise ValueError(f"invalid repo id {repo_id!r}: contains control characters")
    if repo_id.count("/") != 1:
        raise ValueError(f"model repo id {repo_id!r} must have the form 'namespace/name' (exactly one '/')")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(f"invalid repo id {repo_id!r}: {exc}") from None
    return repo_id


def is_commit(value: object) -> bool:
    """True if ``value`` is a full commit id: 40 lowercase hexadecimal characters."""
    return isinstance(value, str) and _COMMIT_RE.fullmatch(value) is not None


def validate_commit(commit: object) -> str:
    """Return ``commit`` if it is 40 lowercase hex characters (what the Hub returns as ``sha``).

    Uppercase is rejected rather than normalised: the Hub never sends it, so it signals a broken
    or hostile answer, and silently lower-casing would hide that.

    Raises:
        `ValueError`: naming the rejected value.
    """
    if not is_commit(commit):
        raise ValueError(f"commit must be 40 lowercase hex characters, got {commit!r}")
    assert isinstance(commit, str)
    return commit


def validate_revision(revision: object) -> str:
    """Return ``revision`` if it is a commit id or a plausible branch/tag/PR ref (``refs/pr/1``).

    Allowed: ``[A-Za-z0-9._/-]``, at most 255 characters, no ``..``, no empty, ``.``-leading or
    ``.lock``-ending component, no leading or trailing ``/`` (a subset of git's ref rules that
    covers every ref the Hub creates).

    Raises:
        `ValueError`: naming the rejected value.
    """
    if not isinstance(revision, str):
        raise ValueError(f"revision must be a string, got {type(revision).__name__}")
    if not revision or len(revision) > MAX_REVISION_LENGTH:
        raise ValueError(f"revision must be 1 to {MAX_REVISION_LENGTH} characters, got {revision!r}")
    if _REVISION_RE.fullmatch(revision) is None:
        raise ValueError(f"revision {revision!r} may only contain letters, digits, '.', '_', '/' and '-'")
    parts = revision.split("/")
    if ".." in revision or any(p == "" or p.startswith(".") or p.endswith(".lock") for p in parts):
        raise ValueError(f"revision {revision!r} is not a valid git ref name")
    return revision


def validate_repo_path(path: object) -> str:
    """Return ``path`` if it is a safe repo-relative file path with forward slashes.

    Rejected: empty, longer than `MAX_PATH_LENGTH`, absolute (``/x``), Windows drive or UNC
    forms, backslashes, control characters (including NUL and newlines, which would forge log
    lines), empty components (``a//b``, trailing ``/``) and ``.``/``..`` components.

    Raises:
        `ValueError`: naming the rejected path.
    """
    if not isinstance(path, str):
        raise ValueError(f"path must be a string, got {type(path).__name__}")
    if not path:
        raise ValueError("path must not be empty")
    if len(path) > MAX_PATH_LENGTH:
        raise ValueError(
            f"path is {len(path)} characters long, the limit is {MAX_PATH_LENGTH}: {path[:80]!r}…"
        )
    if _CONTROL_RE.search(path):
        raise ValueError(f"path {path!r} contains control characters")
    if "\\" in path:
        raise ValueError(f"path {path!r} contains a backslash")
    if path.startswith("/"):
        raise ValueError(f"path {path!r} is absolute")
    if re.match(r"[A-Za-z]:", path):
        raise ValueError(f"path {path!r} starts with a drive letter")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path {path!r} has an empty, '.' or '..' component")
    return path


def normalize_endpoint(endpoint: object) -> str:
    """Return a hub endpoint as ``scheme://host[:port][/prefix]`` without a trailing slash.

    Raises:
        `ValueError`: not http(s), no host, credentials in the URL, or a query/fragment.
    """
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f"hub endpoint must be a non-empty string, got {endpoint!r}")
    if _CONTROL_RE.search(endpoint):
        raise ValueError(f"hub endpoint {endpoint!r} contains control characters")
    try:
        url = httpx2.URL(endpoint)
    except httpx2.InvalidURL as exc:
        raise ValueError(f"hub endpoint {endpoint!r} is not a valid URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"hub endpoint {endpoint!r} must be an absolute http(s) URL")
    if url.userinfo:
        raise ValueError(
            "hub endpoint must not embed credentials; configure the token via token_env/token_file"
        )
    if url.query or url.fragment:
        raise ValueError(f"hub endpoint {endpoint!r} must not have a query or fragment")
    return str(url).rstrip("/")


def origin_of(url: str | httpx2.URL) -> tuple[str, str, int]:
    """The ``(scheme, host, port)`` triple that decides where credentials may go.

    Default ports are made explicit so ``https://h`` and ``https://h:443`` are the same origin;
    host names are compared lower-case (httpx already normalises them).
    """
    parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme, 0)
    return (parsed.scheme, parsed.host.lower(), port)


Resolver = Callable[[str, int], Sequence[str]]
"""``resolve(host, port) -> addresses``: how a host name becomes IP addresses (tests inject one)."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``, TCP), in resolver order; an IP literal is itself.

    Raises:
        `ValueError`: the name does not resolve (the message names it).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"cannot resolve storage host {host!r}: {exc}") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ValueError(f"cannot resolve storage host {host!r}: no addresses")
    return addresses


def address_refusal(address: str, *, loopback_ok: bool) -> str | None:
    """Why a storage request must not go to ``address`` (None: it is a public address, or loopback while
    ``loopback_ok``). IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None if loopback_ok else "a loopback address (the hub is not on loopback)"
    if ip.is_link_local:
        return "a link-local address (cloud metadata endpoints live there)"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address (RFC 1918 / unique-local / reserved for special use)"
    if not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class RedirectPolicy:
    """Decides whether a ``Location`` the hub sent may be followed, and with which credentials.

    Attributes:
        endpoint (`str`): the configured hub endpoint; the only origin that ever sees the token.
        allowed_storage_hosts (`tuple[str, ...] | None`): if set, cross-origin redirects may only
            go to these hosts; an entry starting with ``.`` matches any subdomain (``.hf.co``). The
            operator vouches for these hosts, so their addresses are not checked (an on-premises
            mirror may keep its storage on a private network). ``None``: any host whose addresses are
            all public (see the module docstring).
        allow_downgrade (`bool`): follow an ``https`` → ``http`` redirect (off by default; only a
            plain-http test hub needs it, and then both sides are http anyway).
        resolve (`Resolver`): host name → addresses (default: the system resolver).
    """

    endpoint: str
    allowed_storage_hosts: tuple[str, ...] | None = None
    allow_downgrade: bool = False
    resolve: Resolver = field(default=resolve_host, compare=False, repr=False)

    @classmethod
    def for_endpoint(
        cls,
        endpoint: str,
        *,
        allowed_storage_hosts: Iterable[str] | None = None,
        allow_downgrade: bool = False,
        resolve: Resolver = resolve_host,
    ) -> RedirectPolicy:
        """Build a policy with a normalised endpoint and a lower-cased allow-list."""
        hosts = None
        if allowed_storage_hosts is not None:
            hosts = tuple(h.strip().lower() for h in allowed_storage_hosts if h.strip())
        return cls(normalize_endpoint(endpoint), hosts, allow_downgrade, resolve)

    @functools.cached_property
    def hub_on_loopback(self) -> bool:
        """Whether every address of the hub's host is loopback (a local hub may use loopback storage)."""
        url = httpx2.URL(self.endpoint)
        try:
            addresses = self.resolve(url.host, origin_of(url)[2])
        except ValueError:
            return False
        return bool(addresses) and all(_is_loopback(a) for a in addresses)

    def vouched(self, host: str) -> bool:
        """True if ``host`` is on the operator's allow-list (its addresses are not checked)."""
        return self.allowed_storage_hosts is not None and _host_allowed(host, self.allowed_storage_hosts)

    def refusal(self, address: str) -> str | None:
        """Why a storage connection to ``address`` must not be made (None: allowed); see `address_refusal`."""
        return address_refusal(address, loopback_ok=self.hub_on_loopback)

    def is_hub(self, url: str | httpx2.URL) -> bool:
        """True if ``url`` is on the hub's origin (credentials may be sent)."""
        return origin_of(url) == origin_of(self.endpoint)

    def check(self, current: str | httpx2.URL, location: str) -> httpx2.URL:
        """Resolve ``location`` against ``current`` and return it if it may be followed.

        Raises:
            `ValueError`: an unsupported scheme, a downgrade, credentials in the URL, control
                characters, a cross-origin host outside the allow-list, or (without an allow-list) one
                that does not resolve or resolves to any non-public address.
        """
        if not location or _CONTROL_RE.search(location):
            raise ValueError(f"redirect Location {location!r} is empty or contains control characters")
        base = current if isinstance(current, httpx2.URL) else httpx2.URL(current)
        try:
            target = base.join(location)
        except httpx2.InvalidURL as exc:
            raise ValueError(f"redirect Location {location!r} is not a valid URL: {exc}") from None
        if target.scheme not in ("http", "https") or not target.host:
            raise ValueError(
                f"redirect to {redact_url(target)} refused: only absolute http(s) URLs are followed"
            )
        if target.userinfo:
            raise ValueError(f"redirect to {redact_url(target)} refused: the URL embeds credentials")
        if base.scheme == "https" and target.scheme == "http" and not self.allow_downgrade:
            raise ValueError(f"redirect to {redact_url(target)} refused: downgrade from https to http")
        if self.is_hub(target):
            return target
        if self.allowed_storage_hosts is not None:
            if not _host_allowed(target.host, self.allowed_storage_hosts):
                raise ValueError(
                    f"redirect to host {target.host!r} refused: not in the allowed storage hosts "
                    f"{list(self.allowed_storage_hosts)}"
                )
            return target
        for address in self.resolve(target.host, origin_of(target)[2]):
            why = self.refusal(address)
            if why is not None:
                raise ValueError(
                    f"redirect to host {target.host!r} refused: it resolves to {address}, {why}; "
                    "list the host in [[hubs]] allowed_storage_hosts if this storage is trusted"
                )
        return target


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    host = host.lower()
    for entry in allowed:
        if entry.startswith("."):
            if host.endswith(entry) and len(host) > len(entry):
                return True
        elif host == entry:
            return True
    return False


def redact_url(url: str | httpx2.URL) -> str:
    """A URL fit for logs and errors: no query, fragment or credentials (signed URLs keep their
    signature in the query)."""
    parsed = url if isinstance(url, httpx2.URL) else httpx2.URL(url)
    return str(parsed.copy_with(query=None, fragment=None, username=None, password=None))
