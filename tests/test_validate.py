"""Validation tables for repo ids, commits, revisions, repo paths, endpoints and redirects."""

from __future__ import annotations

import ipaddress
import re

import pytest

from monitor.validate import (
    MAX_PATH_LENGTH,
    RedirectPolicy,
    address_refusal,
    is_commit,
    normalize_endpoint,
    origin_of,
    redact_url,
    validate_commit,
    validate_model_repo_id,
    validate_repo_path,
    validate_revision,
)

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    "repo_id",
    ["acme/model", "Acme-AI/model_v2.1", "a/b", "user123/Llama-3.1-8B-Instruct", "x" * 96 + "/" + "y" * 96],
)
def test_valid_repo_ids(repo_id):
    assert validate_model_repo_id(repo_id) == repo_id


@pytest.mark.parametrize(
    ("repo_id", "fragment"),
    [
        ("gpt2", "exactly one '/'"),
        ("datasets/acme/x", "exactly one '/'"),
        ("acme/", "invalid repo id"),
        ("/model", "invalid repo id"),
        ("acme/mo--del", "invalid repo id"),
        ("acme/mo..del", "invalid repo id"),
        ("acme/model.git", "invalid repo id"),
        ("acme/-model", "invalid repo id"),
        ("acme/mod el", "invalid repo id"),
        ("acme/model\n", "invalid repo id"),
        ("acme/" + "x" * 97, "invalid repo id"),
        ("acme/mоdel", "non-ASCII"),  # Cyrillic 'о': a look-alike must not pass
        ("../etc", "invalid repo id"),
        ("", "exactly one '/'"),
    ],
)
def test_invalid_repo_ids(repo_id, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_model_repo_id(repo_id)


def test_repo_id_must_be_a_string():
    with pytest.raises(ValueError, match="must be a string"):
        validate_model_repo_id(None)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (SHA, True),
        (SHA.upper(), False),
        (SHA[:-1], False),
        (SHA + "0", False),
        ("g" * 40, False),
        ("main", False),
        (None, False),
        (12, False),
    ],
)
def test_commits(value, ok):
    assert is_commit(value) is ok
    if ok:
        assert validate_commit(value) == value
    else:
        with pytest.raises(ValueError, match="40 lowercase hex"):
            validate_commit(value)


@pytest.mark.parametrize(
    "rev", ["main", SHA, "refs/pr/12", "v1.0", "release-2026_01", "refs/convert/parquet"]
)
def test_valid_revisions(rev):
    assert validate_revision(rev) == rev


@pytest.mark.parametrize(
    "rev",
    [
        "",
        "a" * 256,
        "../main",
        "main..x",
        "/main",
        "main/",
        "a//b",
        ".hidden",
        "x.lock",
        "ma in",
        "m\x00",
        "ü",
        5,
    ],
)
def test_invalid_revisions(rev):
    with pytest.raises(ValueError, match="revision"):
        validate_revision(rev)


@pytest.mark.parametrize(
    "path",
    [
        "model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "model-00001-of-00002.safetensors",
        "weird name (1).gguf",
        "a" * MAX_PATH_LENGTH,
        "ünïcode/ok.bin",
    ],
)
def test_valid_paths(path):
    assert validate_repo_path(path) == path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "empty"),
        ("a" * (MAX_PATH_LENGTH + 1), "limit"),
        ("/etc/passwd", "absolute"),
        ("../secret", "'..'"),
        ("a/../../b", "'..'"),
        ("a/./b", "'.'"),
        ("a//b", "empty"),
        ("dir/", "empty"),
        ("a\\b", "backslash"),
        ("C:/x", "drive"),
        ("c:x", "drive"),
        ("a\x00b", "control"),
        ("evil\nINFO forged log line", "control"),
        ("tab\there", "control"),
        ("del\x7f", "control"),
    ],
)
def test_invalid_paths(path, fragment):
    with pytest.raises(ValueError, match=fragment):
        validate_repo_path(path)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://huggingface.co", "https://huggingface.co"),
        ("https://huggingface.co/", "https://huggingface.co"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://mirror.example/hf/", "https://mirror.example/hf"),
        ("HTTPS://HuggingFace.co", "https://huggingface.co"),
    ],
)
def test_normalize_endpoint(endpoint, expected):
    assert normalize_endpoint(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "fragment"),
    [
        ("", "non-empty"),
        ("ftp://x", "http"),
        ("huggingface.co", "http"),
        ("https://user:hf_secret@huggingface.co", "credentials"),
        ("https://huggingface.co/?a=1", "query"),
        ("https://huggingface.co\n", "control"),
    ],
)
def test_bad_endpoints(endpoint, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        normalize_endpoint(endpoint)
    assert "hf_secret" not in str(info.value)


def test_origin_makes_default_ports_explicit():
    assert origin_of("https://h.co") == origin_of("https://H.co:443/x") == ("https", "h.co", 443)
    assert origin_of("http://h.co") != origin_of("https://h.co")


def test_redact_url_drops_signature_and_credentials():
    assert redact_url("https://u:p@cdn.example/x/y?sig=abc&exp=1#f") == "https://cdn.example/x/y"


HUB = "https://huggingface.co"
RESOLVE = f"{HUB}/acme/m/resolve/{SHA}/model.safetensors"
DNS = {
    "huggingface.co": ["18.160.0.1"],
    "cdn-lfs.hf.co": ["18.160.0.2", "2600:9000::1"],
    "us.aws.cdn.hf.co": ["18.160.0.3"],
    "cdn.example": ["93.184.216.34"],
    "localhost": ["127.0.0.1", "::1"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "10.0.0.5"],
    "ula.example": ["fd12::1"],
    "mapped.example": ["::ffff:192.168.1.1"],
    "cgnat.example": ["100.64.1.1"],
    "minio.internal": ["10.0.0.7"],
}


def fake_dns(host: str, port: int) -> list[str]:
    """A resolver with a fixed table (IP literals resolve to themselves), as `resolve_host` answers."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    if host not in DNS:
        raise ValueError(f"cannot resolve storage host {host!r}: unknown name")
    return DNS[host]


@pytest.mark.parametrize(
    ("location", "expected", "is_hub"),
    [
        (
            "https://cdn-lfs.hf.co/repos/ab/cd?X-Amz-Signature=1",
            "https://cdn-lfs.hf.co/repos/ab/cd?X-Amz-Signature=1",
            False,
        ),
        ("/api/resolve-cache/models/acme/m/x", f"{HUB}/api/resolve-cache/models/acme/m/x", True),
        ("other/file", f"{HUB}/acme/m/resolve/{SHA}/other/file", True),
        (
            "https://huggingface.co:443/acme/m2/resolve/x",
            "https://huggingface.co/acme/m2/resolve/x",
            True,
        ),
    ],
)
def test_redirects_followed(location, expected, is_hub):
    policy = RedirectPolicy.for_endpoint(HUB, resolve=fake_dns)
    target = policy.check(RESOLVE, location)
    assert str(target) == expected
    assert policy.is_hub(target) is is_hub


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("ftp://cdn.example/x", "http"),
        ("file:///etc/passwd", "http"),
        ("javascript:alert(1)", "http"),
        ("http://cdn.example/x", "downgrade"),
        ("https://user:pw@cdn.example/x", "credentials"),
        ("", "empty"),
        ("https://cdn.example/x\r\nSet-Cookie: a", "control"),
    ],
)
def test_redirects_refused(location, fragment):
    with pytest.raises(ValueError, match=fragment):
        RedirectPolicy.for_endpoint(HUB, resolve=fake_dns).check(RESOLVE, location)


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        ("https://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local address"),
        ("https://metadata.example/x", "resolves to 169.254.169.254, a link-local address"),
        ("https://[fe80::1]/x", "link-local"),
        ("https://10.1.2.3/x", "10.1.2.3, a private address"),
        ("https://192.168.0.10:8443/x", "private"),
        ("https://ula.example/x", "fd12::1, a private address"),
        ("https://mapped.example/x", "::ffff:192.168.1.1, a private address"),
        ("https://cgnat.example/x", "100.64.1.1, not a public address"),
        ("https://mixed.example/x", "10.0.0.5, a private address"),  # one bad address is enough
        ("https://localhost/x", "a loopback address (the hub is not on loopback)"),
        ("https://127.0.0.2/x", "loopback"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://nowhere.example/x", "cannot resolve storage host 'nowhere.example'"),
    ],
)
def test_storage_redirects_to_internal_addresses_are_refused(location, fragment):
    """Without an allow-list, every address a storage host resolves to must be public: a hostile hub cannot
    point the daemon at a metadata endpoint or a LAN service, directly or through a DNS name."""
    with pytest.raises(ValueError, match=re.escape(fragment)) as info:
        RedirectPolicy.for_endpoint(HUB, resolve=fake_dns).check(RESOLVE, location)
    if "resolve" not in fragment:
        assert "refused" in str(info.value)
        assert "allowed_storage_hosts" in str(info.value)


def test_a_loopback_hub_may_use_loopback_storage_but_nothing_private():
    local = RedirectPolicy.for_endpoint("http://127.0.0.1:9", resolve=fake_dns)
    assert local.hub_on_loopback
    assert local.check("http://127.0.0.1:9/a/resolve/c/d", "http://localhost:9/cdn/x").host == "localhost"
    for bad in ("http://10.1.2.3/cdn/x", "http://169.254.169.254/x"):
        with pytest.raises(ValueError, match="refused"):
            local.check("http://127.0.0.1:9/a/resolve/c/d", bad)
    assert not RedirectPolicy.for_endpoint(HUB, resolve=fake_dns).hub_on_loopback
    assert local.refusal("127.0.0.1") is None
    assert local.refusal("10.0.0.1") is not None


def test_allow_listed_hosts_are_trusted_with_private_addresses():
    """An on-premises mirror's storage on a private network: the operator lists it, and only it."""
    policy = RedirectPolicy.for_endpoint(HUB, allowed_storage_hosts=["minio.internal"], resolve=fake_dns)
    assert policy.check(RESOLVE, "https://minio.internal/bucket/x").host == "minio.internal"
    assert policy.vouched("minio.internal")
    with pytest.raises(ValueError, match="not in the allowed storage hosts"):
        policy.check(RESOLVE, "https://metadata.example/x")


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("fd00:ec2::254", True),
        ("fe80::1%eth0", True),
        ("::ffff:169.254.169.254", True),
        ("100.100.100.200", True),
        ("224.0.0.251", True),
        ("::", True),
        ("127.0.0.1", True),
        ("not-an-ip", True),
    ],
)
def test_address_refusal(address, refused):
    assert (address_refusal(address, loopback_ok=False) is not None) is refused


def test_storage_allow_list():
    policy = RedirectPolicy.for_endpoint(
        HUB, allowed_storage_hosts=[".hf.co", "cas-bridge.xethub.hf.co", " "], resolve=fake_dns
    )
    assert policy.allowed_storage_hosts == (".hf.co", "cas-bridge.xethub.hf.co")
    assert policy.check(RESOLVE, "https://cdn-lfs.hf.co/x").host == "cdn-lfs.hf.co"
    assert policy.check(RESOLVE, "https://us.aws.cdn.hf.co/x").host == "us.aws.cdn.hf.co"
    # The hub itself is always allowed, whatever the list says.
    assert policy.check(RESOLVE, "/acme/m/resolve/main/x").host == "huggingface.co"
    for bad in ("https://hf.co.evil.example/x", "https://evilhf.co/x", "https://hf.co/x"):
        with pytest.raises(ValueError, match="not in the allowed storage hosts"):
            policy.check(RESOLVE, bad)


def test_downgrade_allowed_only_when_asked():
    policy = RedirectPolicy.for_endpoint(HUB, allow_downgrade=True, resolve=fake_dns)
    assert policy.check(RESOLVE, "http://cdn.example/x").scheme == "http"
    plain = RedirectPolicy.for_endpoint("http://127.0.0.1:9", resolve=fake_dns)
    assert not plain.is_hub("http://localhost:9/cdn/x")  # another host name is another origin
    assert plain.check("http://127.0.0.1:9/a/b/resolve/c/d", "http://localhost:9/cdn/x").host == "localhost"
