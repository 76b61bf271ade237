"""Signed CDN URLs: the signer with a fake clock, then expiry and tampering against the running hub."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2
import pytest

from monitor.localhub import LocalHub, write_repo
from monitor.localhub.cdn import UrlSigner

BLOB = "ab" * 32


def test_signer_accepts_fresh_and_refuses_expired_or_forged() -> None:
    now = [1_000_000.0]
    signer = UrlSigner(b"k" * 32, ttl_s=60, clock=lambda: now[0])
    query = dict(part.split("=") for part in signer.sign(BLOB).split("&"))
    assert query["exp"] == "1000060"
    assert signer.check(BLOB, query["exp"], query["sig"]) is None
    assert signer.check("cd" * 32, query["exp"], query["sig"]) == "Signature does not match"
    assert signer.check(BLOB, "1000061", query["sig"]) == "Signature does not match"
    assert signer.check(BLOB, None, None).startswith("Missing signature")
    assert signer.check(BLOB, "-5", query["sig"]) == "Invalid expiry"
    now[0] += 61
    assert signer.check(BLOB, query["exp"], query["sig"]) == "Request has expired"
    other = UrlSigner(b"x" * 32, clock=lambda: now[0])
    fresh = dict(part.split("=") for part in other.sign(BLOB).split("&"))
    assert signer.check(BLOB, fresh["exp"], fresh["sig"]) == "Signature does not match"


@pytest.fixture
def hub(tmp_path: Path) -> LocalHub:
    write_repo(tmp_path, "acme/m", {"w.safetensors": b"weights" * 100})
    with LocalHub(tmp_path, cdn_url_ttl_s=0.5, token="hf_t") as hub:  # URLs live 0.5 to 1.5 s
        yield hub


def _location(hub: LocalHub) -> str:
    r = httpx2.head(
        f"{hub.endpoint}/acme/m/resolve/main/w.safetensors", headers={"Authorization": "Bearer hf_t"}
    )
    assert r.status_code == 302
    return r.headers["location"]


def test_signed_url_works_without_auth_then_expires(hub: LocalHub) -> None:
    location = _location(hub)
    assert location.startswith(f"{hub.cdn_origin}/cdn/")
    ok = httpx2.get(location, headers={"Range": "bytes=0-6"})
    assert ok.status_code == 206
    assert ok.content == b"weights"
    time.sleep(1.6)
    expired = httpx2.get(location)
    assert expired.status_code == 403
    assert b"Request has expired" in expired.content
    assert expired.headers["content-type"] == "application/xml"
    assert httpx2.get(_location(hub)).status_code == 200  # a fresh /resolve gives a fresh URL


def test_tampered_and_unknown_blobs(hub: LocalHub) -> None:
    location = _location(hub)
    tampered = location[:-1] + ("0" if location[-1] != "0" else "1")
    assert httpx2.get(tampered).status_code == 403
    assert httpx2.get(location.split("?")[0]).status_code == 403
    assert httpx2.get(hub.cdn_url(BLOB)).status_code == 404
    assert httpx2.get(hub.cdn_url(location.split("/cdn/")[1].split("?")[0], ttl_s=-1)).status_code == 403
    assert httpx2.post(location).status_code == 405


def test_cdn_serves_current_content_only(hub: LocalHub) -> None:
    location = _location(hub)
    write_repo(hub.root, "acme/m", {"w.safetensors": b"changed!"})
    gone = httpx2.get(location)
    assert gone.status_code == 404
    assert b"NoSuchKey" in gone.content
