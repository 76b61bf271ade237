"""Validation tables for repo ids, commits, revisions, repo paths, endpoints and redirects."""

from __future__ import annotations

import pytest

from monitor.validate import (
    MAX_PATH_LENGTH,
    RedirectPolicy,
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
    policy = RedirectPolicy.for_endpoint(HUB)
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
        RedirectPolicy.for_endpoint(HUB).check(RESOLVE, location)


def test_storage_allow_list():
    policy = RedirectPolicy.for_endpoint(
        HUB, allowed_storage_hosts=[".hf.co", "cas-bridge.xethub.hf.co", " "]
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
    policy = RedirectPolicy.for_endpoint(HUB, allow_downgrade=True)
    assert policy.check(RESOLVE, "http://cdn.example/x").scheme == "http"
    plain = RedirectPolicy.for_endpoint("http://127.0.0.1:9")
    assert not plain.is_hub("http://localhost:9/cdn/x")  # another host name is another origin
    assert plain.check("http://127.0.0.1:9/a/b/resolve/c/d", "http://localhost:9/cdn/x").host == "localhost"
