"""The transport: loopback binding, origins, lifecycle, keep-alive shutdown, limits, mid-body failures."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub import hf_hub_download

from monitor.errors import FormatError
from monitor.localhub import LocalHub, VirtualFile, write_repo


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::1", "example.com"])
def test_only_loopback_ipv4_can_be_bound(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        LocalHub(tmp_path, host=host)


def test_other_loopback_address_gets_a_cdn_port_of_its_own(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/m", {"w.safetensors": b"abc" * 10})
    with LocalHub(tmp_path, host="127.0.0.2") as hub:
        assert hub.endpoint.startswith("http://127.0.0.2:")
        assert hub.cdn_origin.startswith("http://127.0.0.2:")
        assert hub.cdn_origin != hub.endpoint
        path = hf_hub_download("acme/m", "w.safetensors", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == b"abc" * 10
        assert hub.log.find(bucket="cdn")[-1].host == hub.cdn_origin.removeprefix("http://")


def test_lifecycle_releases_port_and_idle_connections(tmp_path: Path) -> None:
    hub = LocalHub(tmp_path)
    assert "ready" in repr(hub)
    assert not hub.running
    hub.start().start()
    port = int(hub.endpoint.rsplit(":", 1)[1])
    client = httpx2.Client()  # keeps an idle keep-alive connection open
    assert client.get(f"{hub.endpoint}/api/models").status_code == 200
    started = time.monotonic()
    hub.stop()
    hub.stop()
    assert time.monotonic() - started < 3
    assert "stopped" in repr(hub)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    with pytest.raises(RuntimeError):
        hub.start()
    client.close()


def test_request_body_limit_and_chunked_bodies(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": "{}"})
    with LocalHub(tmp_path) as hub:
        url = f"{hub.endpoint}/api/models/acme/m/paths-info/main"
        big = httpx2.post(url, content=b"x" * (1024 * 1024 + 1))
        assert big.status_code == 413
        chunked = httpx2.post(url, content=iter([b"paths=config.json"]))
        assert chunked.status_code == 413
        ok = httpx2.post(url, json={"paths": ["config.json"], "expand": True})
        assert ok.status_code == 200
        assert ok.json()[0]["lastCommit"]["id"] == ok.headers["x-repo-commit"]
        bad = httpx2.post(url, content=b"{", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400


class FailingFile(VirtualFile):
    """A kind whose generator breaks past byte 1000, to exercise failures after the headers left."""

    kind = "test-failing"

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.size = 5 * 1024 * 1024

    def read(self, start: int, end: int) -> bytes:
        if end > 1000:
            raise FormatError("generator failed")
        return b"\0" * (end - start)


def test_failure_mid_body_drops_the_connection(tmp_path: Path) -> None:
    repo = write_repo(tmp_path, "acme/m", {"config.json": "{}"})
    (repo / "x.onnx.virtual.json").write_text(json.dumps({"kind": "test-failing"}))
    with LocalHub(tmp_path, cdn_redirect=False) as hub:
        with pytest.raises(httpx2.RemoteProtocolError):
            httpx2.get(f"{hub.endpoint}/acme/m/resolve/main/x.onnx")
        assert httpx2.get(
            f"{hub.endpoint}/acme/m/resolve/main/x.onnx", headers={"Range": "bytes=0-9"}
        ).content == (b"\0" * 10)
        assert httpx2.get(f"{hub.endpoint}/api/models").status_code == 200


def test_log_record_is_visible_when_the_client_has_its_answer(tmp_path: Path) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": "{}"})
    with LocalHub(tmp_path) as hub, httpx2.Client() as client:
        for i in range(50):
            client.get(
                f"{hub.endpoint}/acme/m/resolve/main/config.json", headers={"Authorization": "Bearer x"}
            )
            assert len(hub.log) == i + 1
            assert hub.log[-1].status == 200
            assert hub.log[-1].auth
