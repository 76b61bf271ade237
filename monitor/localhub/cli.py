"""``hubsentry hub ...``: serve a folder as a local Hugging Face hub, and write virtual checkpoints.

The CLI owner registers the `hub` group under ``hubsentry``; it also works standalone
(``python -m monitor.localhub.cli serve DIR``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from monitor.errors import FormatError
from monitor.localhub.server import LocalHub
from monitor.localhub.virtual_gguf import FILE_TYPES, write_virtual_gguf
from monitor.localhub.virtual_gptq import write_virtual_gptq
from monitor.localhub.virtual_llama import (
    DEFAULT_MAX_SHARD_BYTES,
    LLAMA_7B,
    LLAMA_70B,
    LlamaShape,
    write_virtual_llama,
)

__all__ = ["hub"]

_SHAPES = {"7b": LLAMA_7B, "70b": LLAMA_70B, "tiny": LlamaShape(64, 2, 176, 4, 2, 256)}


@click.group()
def hub() -> None:
    """Run a local Hugging Face hub (offline demo, tests, air-gapped dry runs)."""


@hub.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address to bind.")
@click.option(
    "--port", default=0, show_default=True, type=click.IntRange(0, 65535), help="Port; 0 picks a free one."
)
@click.option(
    "--token-env",
    metavar="NAME",
    default=None,
    help="Environment variable holding the token that grants private/gated access.",
)
@click.option("--no-cdn-redirect", is_flag=True, help="Serve LFS files directly instead of 302 to the CDN.")
def serve(directory: Path, host: str, port: int, token_env: str | None, no_cdn_redirect: bool) -> None:
    """Serve DIRECTORY (DIRECTORY/org/name/... are repos) until SIGINT or SIGTERM.

    \b
    Example:
        HUB_TOKEN=hf_local hubsentry hub serve ./demo-hub --port 8765 --token-env HUB_TOKEN
        HF_ENDPOINT=http://127.0.0.1:8765 hf download acme/tiny-bert config.json
    """
    token = None
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise click.UsageError(f"--token-env {token_env}: that environment variable is not set or empty")
    try:
        local = LocalHub(directory, host=host, port=port, token=token, cdn_redirect=not no_cdn_redirect)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with local:
            for where, why in sorted(local.problems().items()):
                click.echo(f"warning: {where}: {why}", err=True)
            click.echo(f"Serving {directory} at {local.endpoint} (CDN {local.cdn_origin})")
            click.echo(f"Use: HF_ENDPOINT={local.endpoint}  (or HfApi(endpoint=...))")
            sys.stdout.flush()
            while not stop.wait(0.5):
                pass
            click.echo("Stopping.")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@hub.command("virtual-llama")
@click.argument("repo_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--shape", type=click.Choice(sorted(_SHAPES)), default="7b", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["safetensors", "gguf", "gptq"]),
    default="safetensors",
    show_default=True,
    help="safetensors: config, index, shards and tokenizer as save_pretrained writes them; gguf: one "
    "llama.cpp GGUF (tokenizer in its header); gptq: an AutoGPTQ checkpoint with its configs and tokenizer.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Value seed of the model.")
@click.option(
    "--derive-from",
    "base_seed",
    type=int,
    default=None,
    help="Write a derivative of the model with this seed (base + noise).",
)
@click.option("--noise-seed", type=int, default=1, show_default=True)
@click.option("--rel-noise", type=float, default=0.05, show_default=True)
@click.option(
    "--dtype",
    type=click.Choice(["BF16", "F16", "F32"]),
    default="BF16",
    show_default=True,
    help="safetensors: the stored dtype; gguf, gptq: the dtype of the checkpoint that was converted.",
)
@click.option(
    "--max-shard-bytes",
    type=click.IntRange(1),
    default=None,
    help=f"safetensors (default {DEFAULT_MAX_SHARD_BYTES:,}) and gptq (default: one file): shard size limit.",
)
@click.option(
    "--file-type",
    type=click.Choice(sorted(FILE_TYPES)),
    default=None,
    help="gguf only: llama-quantize file type (default Q4_K_M).",
)
@click.option("--bits", type=click.Choice(["2", "4", "8"]), default=None, help="gptq only (default 4).")
@click.option(
    "--group-size",
    type=int,
    default=None,
    help="gptq only: inputs per quantisation group, -1 for one group per row (default 128).",
)
def virtual_llama(
    repo_dir: Path,
    shape: str,
    fmt: str,
    seed: int,
    base_seed: int | None,
    noise_seed: int,
    rel_noise: float,
    dtype: str,
    max_shard_bytes: int | None,
    file_type: str | None,
    bits: str | None,
    group_size: int | None,
) -> None:
    """Write a virtual Llama checkpoint (specs the local hub serves as full-size files) into REPO_DIR.

    \b
    Example:
        hubsentry hub virtual-llama ./demo-hub/acme/llama-7b --shape 7b --seed 7
        hubsentry hub virtual-llama ./demo-hub/thief/llama-ft --derive-from 7 --rel-noise 0.05
        hubsentry hub virtual-llama ./demo-hub/thief/ft-GGUF --derive-from 7 --format gguf --file-type Q8_0
        hubsentry hub virtual-llama ./demo-hub/thief/ft-GPTQ --derive-from 7 --format gptq --bits 4
    """
    misplaced = [
        flag
        for flag, value, formats in (
            ("--file-type", file_type, ("gguf",)),
            ("--bits", bits, ("gptq",)),
            ("--group-size", group_size, ("gptq",)),
            ("--max-shard-bytes", max_shard_bytes, ("safetensors", "gptq")),
        )
        if value is not None and fmt not in formats
    ]
    if misplaced:
        raise click.UsageError(f"{', '.join(misplaced)} does not apply to --format {fmt}")
    derivation = None
    if base_seed is not None:
        derivation = {"base_seed": base_seed, "noise_seed": noise_seed, "rel_noise": rel_noise}
    model = _SHAPES[shape]
    values_seed = None if derivation else seed
    try:
        if fmt == "gguf":
            written = [
                write_virtual_gguf(
                    repo_dir,
                    model,
                    seed=values_seed,
                    derivation=derivation,
                    file_type=file_type or "Q4_K_M",
                    source_dtype=dtype,
                )
            ]
        elif fmt == "gptq":
            written = write_virtual_gptq(
                repo_dir,
                model,
                seed=values_seed,
                derivation=derivation,
                bits=int(bits or 4),
                group_size=128 if group_size is None else group_size,
                max_shard_bytes=max_shard_bytes,
                source_dtype=dtype,
            )
        else:
            written = write_virtual_llama(
                repo_dir,
                model,
                seed=values_seed,
                derivation=derivation,
                dtype=dtype,
                max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES,
            )
    except (ValueError, FormatError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    for path in written:
        click.echo(str(path))


if __name__ == "__main__":
    hub()
