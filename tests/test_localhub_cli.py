"""``hub serve`` in a subprocess (signals, exit codes) and ``hub virtual-llama`` in-process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi

from monitor.localhub import write_repo
from monitor.localhub.cli import hub


def _serve(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor.localhub.cli", "serve", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_until_signal(tmp_path: Path, sig: signal.Signals) -> None:
    write_repo(tmp_path, "acme/m", {"config.json": "{}"}, sidecar={"private": True})
    proc = _serve(tmp_path, "--token-env", "LOCALHUB_TEST_TOKEN", env={"LOCALHUB_TEST_TOKEN": "hf_cli"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        endpoint = re.search(r"at (http://127\.0\.0\.1:\d+) \(CDN http://localhost:\d+\)", line)
        assert endpoint, line
        assert HfApi(endpoint=endpoint.group(1), token="hf_cli").model_info("acme/m").private
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert "Stopping." in out
    assert "hf_cli" not in out + err


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    missing = _serve(tmp_path, "--token-env", "LOCALHUB_UNSET_VARIABLE")
    _, err = missing.communicate(timeout=20)
    assert missing.returncode == 2
    assert "LOCALHUB_UNSET_VARIABLE" in err
    public = _serve(tmp_path, "--host", "0.0.0.0")
    _, err = public.communicate(timeout=20)
    assert public.returncode == 1
    assert "loopback" in err


def test_serve_reports_problems(tmp_path: Path) -> None:
    (tmp_path / "acme" / "bad--name").mkdir(parents=True)
    proc = _serve(tmp_path)
    try:
        assert proc.stdout is not None
        assert "Serving" in proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill() if proc.poll() is None else None
    assert "warning: acme/bad--name: not served: invalid repo id" in err


def test_virtual_llama_command(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        hub,
        [
            "virtual-llama",
            str(tmp_path / "a" / "m"),
            "--shape",
            "tiny",
            "--seed",
            "3",
            "--max-shard-bytes",
            "50000",
        ],
    )
    assert result.exit_code == 0, result.output
    written = [Path(p) for p in result.output.split()]
    assert all(p.exists() for p in written)
    assert (tmp_path / "a" / "m" / "model.safetensors.index.json") in written
    derived = runner.invoke(
        hub,
        [
            "virtual-llama",
            str(tmp_path / "t" / "m"),
            "--shape",
            "tiny",
            "--derive-from",
            "3",
            "--rel-noise",
            "0.1",
        ],
    )
    assert derived.exit_code == 0, derived.output
    spec = json.loads((tmp_path / "t" / "m" / "model.safetensors.virtual.json").read_text())
    assert spec["derivation"] == {"base_seed": 3, "noise_seed": 1, "rel_noise": 0.1}
    assert "seed" not in spec


GPTQ_ARGS = ("--group-size", "16", "--dtype", "F16")


def test_virtual_llama_gguf_and_gptq_formats(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--shape", "tiny", "--derive-from", "3", "--rel-noise", "0.1"]
    gguf = runner.invoke(
        hub,
        ["virtual-llama", str(tmp_path / "t" / "m-GGUF"), *base, "--format", "gguf", "--file-type", "Q8_0"],
    )
    assert gguf.exit_code == 0, gguf.output
    assert [Path(p).name for p in gguf.output.split()] == ["model.Q8_0.gguf.virtual.json"]
    spec = json.loads((tmp_path / "t" / "m-GGUF" / "model.Q8_0.gguf.virtual.json").read_text())
    assert (spec["kind"], spec["file_type"], spec["source_dtype"]) == ("gguf", "Q8_0", "BF16")
    assert spec["derivation"] == {"base_seed": 3, "noise_seed": 1, "rel_noise": 0.1}
    gptq = runner.invoke(
        hub,
        [
            "virtual-llama",
            str(tmp_path / "t" / "m-GPTQ"),
            *base,
            "--format",
            "gptq",
            "--bits",
            "8",
            *GPTQ_ARGS,
        ],
    )
    assert gptq.exit_code == 0, gptq.output
    names = {Path(p).name for p in gptq.output.split()}
    assert {
        "model.safetensors.virtual.json",
        "config.json",
        "quantize_config.json",
        "tokenizer.json",
    } <= names
    spec = json.loads((tmp_path / "t" / "m-GPTQ" / "model.safetensors.virtual.json").read_text())
    assert (spec["kind"], spec["bits"], spec["group_size"], spec["source_dtype"]) == ("gptq", 8, 16, "F16")
    # the default group size does not divide the tiny model's 64 inputs: a clear error, nothing written
    bad = runner.invoke(hub, ["virtual-llama", str(tmp_path / "bad"), *base, "--format", "gptq"])
    assert bad.exit_code == 1
    assert "not whole groups of 128" in bad.output
    assert not (tmp_path / "bad").exists()
    misplaced = runner.invoke(hub, ["virtual-llama", str(tmp_path / "x"), "--format", "gguf", "--bits", "4"])
    assert misplaced.exit_code == 2
    assert "--bits does not apply to --format gguf" in misplaced.output
