"""Secrets by reference: tokens come from an environment variable or a file, never from the config text.

The configuration names *where* a secret lives (`SecretRef`: ``token_env = "HF_TOKEN"`` or
``token_file = "/run/secrets/hf"``); `resolve_secret` reads it when a command needs it and returns a
`Secret`, whose ``repr``/``str`` are masked so it cannot leak through logging, tracebacks or
``config check``. Every resolved value is also registered with the redaction list that
`monitor.logs.RedactingFilter` applies to every log record, so a token that ends up inside an exception
message from a third-party library is still masked.

A secret file readable by group or others is accepted (containers often mount secrets 0444) but logged
as a warning: on a shared host anyone could read it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ConfigError

__all__ = [
    "MASK",
    "MIN_REDACT_LEN",
    "Secret",
    "SecretRef",
    "redact",
    "register_secret",
    "registered_secrets",
    "resolve_secret",
    "secret_status",
]

log = logging.getLogger(__name__)

MASK = "********"
MIN_REDACT_LEN = 4
"""Values shorter than this are not registered for redaction: masking every "a" in the logs would
destroy them and such a value protects nothing anyway."""

MAX_SECRET_FILE_BYTES = 64 * 1024

_registry_lock = threading.Lock()
_registry: set[str] = set()


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives; exactly one of ``env`` and ``file`` is set.

    Attributes:
        env (`str | None`): name of the environment variable holding the value.
        file (`Path | None`): path of a file holding the value (trailing newline stripped).
        required (`bool`): whether the features using it refuse to start without it.
        key (`str`): config key path that named it, used in error messages.
    """

    env: str | None = None
    file: Path | None = None
    required: bool = False
    key: str = ""

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ConfigError(f"{self.key or 'secret'}: set exactly one of *_env or *_file")

    def describe(self) -> str:
        """Where the value comes from, for messages (never the value)."""
        return f"environment variable {self.env}" if self.env is not None else f"file {self.file}"


class Secret:
    """A secret value whose ``repr``/``str`` never show it.

    Call `reveal` only at the point where the value is handed to a client library.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, *, source: str) -> None:
        self._value = value
        self.source = source
        register_secret(value)

    def reveal(self) -> str:
        """The secret value itself; pass it straight to the client that needs it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret(source={self.source!r}, value={MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)


def register_secret(value: str) -> None:
    """Add ``value`` to the set that log redaction masks (ignored when shorter than `MIN_REDACT_LEN`)."""
    if len(value) >= MIN_REDACT_LEN:
        with _registry_lock:
            _registry.add(value)


def registered_secrets() -> frozenset[str]:
    """Every value currently masked by `redact`."""
    with _registry_lock:
        return frozenset(_registry)


def redact(text: str) -> str:
    """Replace every registered secret value in ``text`` with `MASK` (longest first)."""
    secrets = registered_secrets()
    if not secrets:
        return text
    for value in sorted(secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def _read_secret_file(ref: SecretRef) -> str:
    assert ref.file is not None
    path = ref.file
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise ConfigError(f"{ref.key}: secret file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"{ref.key}: cannot read secret file {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{ref.key}: secret file {path} is not a regular file")
    if st.st_size > MAX_SECRET_FILE_BYTES:
        raise ConfigError(f"{ref.key}: secret file {path} is {st.st_size} bytes; a token file is tiny")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "%s: secret file %s is readable by group or others (mode %o); run: chmod 600 %s",
            ref.key,
            path,
            stat.S_IMODE(st.st_mode),
            path,
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{ref.key}: cannot read secret file {path}: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{ref.key}: secret file {path} is not UTF-8 text") from exc


def resolve_secret(ref: SecretRef | None, *, environ: Mapping[str, str] | None = None) -> Secret | None:
    """Read the secret ``ref`` points to.

    Args:
        ref (`SecretRef | None`): where to read; ``None`` means "no secret configured".
        environ (`Mapping[str, str] | None`): environment to read from (default: the process
            environment); tests pass their own.

    Returns:
        A `Secret`, or ``None`` when the variable is unset/empty and the secret is optional.

    Raises:
        `ConfigError`: a required secret is missing, or the file is missing, unreadable or not text.
    """
    if ref is None:
        return None
    if ref.env is not None:
        env = os.environ if environ is None else environ
        value = env.get(ref.env, "").strip()
        source = f"env:{ref.env}"
    else:
        value = _read_secret_file(ref)
        source = f"file:{ref.file}"
    if not value:
        if ref.required:
            raise ConfigError(
                f"{ref.key}: the secret is required but {ref.describe()} is "
                + ("not set" if ref.env is not None else "empty")
            )
        return None
    return Secret(value, source=source)


def secret_status(ref: SecretRef | None, *, environ: Mapping[str, str] | None = None) -> str:
    """``"set"``, ``"not set"`` or a short problem description, for ``hubsentry config check``.

    Never raises and never returns the value.
    """
    if ref is None:
        return "not configured"
    if ref.env is not None:
        env = os.environ if environ is None else environ
        return "set" if env.get(ref.env, "").strip() else "not set"
    assert ref.file is not None
    try:
        st = ref.file.stat()
    except FileNotFoundError:
        return "missing file"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if not os.access(ref.file, os.R_OK):
        return "unreadable: permission denied"
    if st.st_size == 0:
        return "empty file"
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"set, but mode {stat.S_IMODE(st.st_mode):o} is readable by others"
    return "set"
