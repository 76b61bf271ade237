"""The JSON the Hub returns about a model: list items, ``model_info`` and ``expand=`` fields.

Field names, shapes and defaults follow what huggingface_hub 2.4.0 parses (``ModelInfo``) and what the
Hub sends (hub-api.md §2-§3). Fields the Hub computes from file contents (``safetensors``, ``gguf``,
``config``, ``cardData`` from the README front matter, tags) are derived once per commit and cached.
Keys with no value are left out, as the Hub leaves them out.

Accepted but never filled (the local hub has no data for them): ``baseModels``, ``childrenModelCount``,
``evalResults``, ``inference``, ``inferenceProviderMapping``, ``mask_token``, ``model-index``,
``resourceGroup``, ``transformersInfo``, ``widgetData``. Lineage is in ``cardData.base_model``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from monitor.errors import FormatError
from monitor.localhub.repos import Repo, RepoFile, StaleFileError
from monitor.localhub.summaries import (
    card_data_from_readme,
    config_summary,
    gguf_summary,
    read_safetensors_header,
    safetensors_parameters,
)
from monitor.localhub.wire import iso_ms

__all__ = [
    "EXPAND_KEYS",
    "INFO_FIELDS",
    "LIST_DEFAULT_FIELDS",
    "LIST_FULL_FIELDS",
    "Derived",
    "ModelCatalog",
    "model_object_id",
]

log = logging.getLogger(__name__)

EXPAND_KEYS = (
    "author",
    "baseModels",
    "cardData",
    "childrenModelCount",
    "config",
    "createdAt",
    "disabled",
    "downloads",
    "downloadsAllTime",
    "evalResults",
    "gated",
    "gguf",
    "inference",
    "inferenceProviderMapping",
    "lastModified",
    "library_name",
    "likes",
    "mask_token",
    "model-index",
    "pipeline_tag",
    "private",
    "resourceGroup",
    "safetensors",
    "sha",
    "siblings",
    "spaces",
    "tags",
    "transformersInfo",
    "trendingScore",
    "usedStorage",
    "widgetData",
)
"""``ExpandModelProperty_T`` of huggingface_hub 2.4.0: anything else is a 400, as on the Hub."""

LIST_DEFAULT_FIELDS = (
    "_id",
    "id",
    "likes",
    "trendingScore",
    "private",
    "downloads",
    "tags",
    "pipeline_tag",
    "library_name",
    "createdAt",
    "modelId",
)
"""What a ``/api/models`` item carries without ``expand``/``full`` (captured from the Hub)."""

LIST_FULL_FIELDS = (*LIST_DEFAULT_FIELDS, "author", "sha", "lastModified", "gated", "disabled", "siblings")

INFO_FIELDS = (
    "_id",
    "id",
    "modelId",
    "author",
    "sha",
    "createdAt",
    "lastModified",
    "private",
    "gated",
    "disabled",
    "downloads",
    "likes",
    "trendingScore",
    "tags",
    "pipeline_tag",
    "library_name",
    "cardData",
    "config",
    "siblings",
    "spaces",
    "safetensors",
    "gguf",
    "usedStorage",
)
"""What ``/api/models/{id}`` carries without ``expand``."""

_SMALL_JSON_LIMIT = 10 * 1024 * 1024
_README_LIMIT = 1024 * 1024
_GGUF_SHARD = re.compile(r"^(?P<stem>.*)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$")
_MISSING = object()


def model_object_id(repo_id: str) -> str:
    """A stable 24-hex ``_id`` (the Hub's Mongo id) derived from the repo id."""
    return hashlib.sha1(f"localhub:{repo_id}".encode(), usedforsecurity=False).hexdigest()[:24]


@dataclass(frozen=True)
class Derived:
    """What the Hub derives from a commit's files (cached per ``(repo_id, commit)``)."""

    safetensors: dict[str, Any] | None
    gguf: dict[str, Any] | None
    config: dict[str, Any] | None
    readme_card: dict[str, Any] | None
    model_type: str | None
    formats: tuple[str, ...]
    problems: tuple[str, ...]


class ModelCatalog:
    """Renders model JSON and caches per-commit derived metadata; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._derived: dict[tuple[str, str], Derived] = {}

    # -- derived metadata --------------------------------------------------------------------------

    def derived(self, repo: Repo) -> Derived:
        key = (repo.repo_id, repo.commit)
        with self._lock:
            cached = self._derived.get(key)
        if cached is not None:
            return cached
        value = self._derive(repo)
        with self._lock:
            for stale in [k for k in self._derived if k[0] == repo.repo_id]:
                del self._derived[stale]
            self._derived[key] = value
        return value

    def problems(self) -> dict[str, str]:
        """Metadata the hub could not derive (malformed headers...), keyed by repo id."""
        with self._lock:
            return {k[0]: "; ".join(d.problems) for k, d in self._derived.items() if d.problems}

    def _derive(self, repo: Repo) -> Derived:
        problems: list[str] = []
        files = repo.files
        st_files = [f for p, f in files.items() if p.endswith(".safetensors")]
        safetensors: dict[str, Any] | None = None
        if st_files:
            try:
                params: dict[str, int] = {}
                for f in st_files:
                    with f.opened() as read:
                        for dtype, n in safetensors_parameters(read_safetensors_header(read, f.size)).items():
                            params[dtype] = params.get(dtype, 0) + n
                safetensors = {"parameters": params, "total": sum(params.values())}
            except (FormatError, StaleFileError, OSError) as exc:
                problems.append(f"safetensors: {exc}")
        gguf = self._gguf(files, problems)
        config_raw = self._small_json(files.get("config.json"), problems)
        tok_raw = self._small_json(files.get("tokenizer_config.json"), problems)
        config = config_summary(config_raw, tok_raw) if isinstance(config_raw, dict) else None
        readme_card = None
        readme = files.get("README.md")
        if readme is not None:
            try:
                with readme.opened() as read:
                    text = read(0, min(readme.size, _README_LIMIT)).decode("utf-8", errors="replace")
                readme_card = card_data_from_readme(text)
            except (FormatError, StaleFileError, OSError) as exc:
                problems.append(f"README.md: {exc}")
        model_type = config_raw.get("model_type") if isinstance(config_raw, dict) else None
        formats = tuple(
            fmt
            for fmt, suffixes in (
                ("safetensors", (".safetensors",)),
                ("gguf", (".gguf",)),
                ("onnx", (".onnx",)),
                ("pytorch", (".bin", ".pt", ".pth")),
            )
            if any(p.endswith(suffixes) for p in files)
        )
        for problem in problems:
            log.warning("localhub: %s: %s", repo.repo_id, problem)
        return Derived(
            safetensors,
            gguf,
            config or None,
            readme_card,
            model_type if isinstance(model_type, str) else None,
            formats,
            tuple(problems),
        )

    @staticmethod
    def _gguf(files: Mapping[str, RepoFile], problems: list[str]) -> dict[str, Any] | None:
        ggufs = sorted(p for p in files if p.endswith(".gguf"))
        if not ggufs:
            return None
        first = ggufs[0]
        group = [first]
        match = _GGUF_SHARD.match(first)
        if match:
            stem, n = match.group("stem"), match.group("n")
            group = [
                p
                for p in ggufs
                if (m := _GGUF_SHARD.match(p)) and m.group("stem") == stem and m.group("n") == n
            ]
        try:
            summary: dict[str, Any] | None = None
            for path in group:
                f = files[path]
                with f.opened() as read:
                    part = gguf_summary(read, f.size)
                if summary is None:
                    summary = part
                else:
                    summary["total"] += part["total"]
            return summary
        except (FormatError, StaleFileError, OSError) as exc:
            problems.append(f"gguf {first}: {exc}")
            return None

    @staticmethod
    def _small_json(f: RepoFile | None, problems: list[str]) -> Any:
        if f is None:
            return None
        if f.size > _SMALL_JSON_LIMIT:
            problems.append(f"{f.path}: larger than {_SMALL_JSON_LIMIT} bytes, not parsed")
            return None
        try:
            with f.opened() as read:
                return json.loads(read(0, f.size))
        except (ValueError, StaleFileError, OSError) as exc:
            problems.append(f"{f.path}: {exc}")
            return None

    # -- rendering ---------------------------------------------------------------------------------

    def card_data(self, repo: Repo) -> dict[str, Any] | None:
        if repo.sidecar.card_data is not None:
            return repo.sidecar.card_data
        return self.derived(repo).readme_card

    def library_name(self, repo: Repo) -> str | None:
        if repo.sidecar.library_name is not None:
            return repo.sidecar.library_name
        card = self.card_data(repo) or {}
        if isinstance(card.get("library_name"), str):
            return str(card["library_name"])
        return "transformers" if self.derived(repo).model_type else None

    def pipeline_tag(self, repo: Repo) -> str | None:
        if repo.sidecar.pipeline_tag is not None:
            return repo.sidecar.pipeline_tag
        card = self.card_data(repo) or {}
        return str(card["pipeline_tag"]) if isinstance(card.get("pipeline_tag"), str) else None

    def tags(self, repo: Repo) -> list[str]:
        """Sidecar tags if given; else what the Hub computes (library, formats, model type, card tags,
        ``base_model:...``, ``license:...``, ``region:us``)."""
        if repo.sidecar.tags is not None:
            return list(repo.sidecar.tags)
        derived = self.derived(repo)
        card = self.card_data(repo) or {}
        tags: list[str] = []
        lib = self.library_name(repo)
        tags += [lib] if lib else []
        tags += list(derived.formats)
        tags += [derived.model_type] if derived.model_type else []
        tags += [t for t in _as_list(card.get("tags")) if isinstance(t, str)]
        tags += [f"base_model:{b}" for b in _as_list(card.get("base_model")) if isinstance(b, str)]
        tags += [f"license:{lic}" for lic in _as_list(card.get("license")) if isinstance(lic, str)]
        tags.append("region:us")
        return list(dict.fromkeys(tags))

    def siblings(self, repo: Repo, *, blobs: bool) -> list[dict[str, Any]]:
        out = []
        for f in repo.files.values():
            item: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                item["size"] = f.size
                item["blobId"] = f.blob_id
                if f.sha256 is not None:
                    item["lfs"] = {"size": f.size, "sha256": f.sha256, "pointerSize": f.pointer_size}
            out.append(item)
        return out

    def field(self, repo: Repo, key: str, *, blobs: bool = False) -> Any:
        """One field's value, or ``_MISSING`` when the Hub would leave the key out."""
        sc = repo.sidecar
        simple: dict[str, Any] = {
            "_id": model_object_id(repo.repo_id),
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": sc.author or repo.org,
            "sha": repo.commit,
            "createdAt": iso_ms(repo.created_at_ms),
            "lastModified": iso_ms(repo.last_modified_ms),
            "private": sc.private,
            "gated": sc.gated,
            "disabled": sc.disabled,
            "downloads": sc.downloads,
            "downloadsAllTime": sc.downloads,
            "likes": sc.likes,
            "trendingScore": sc.trending_score,
            "spaces": [],
            "usedStorage": repo.used_storage,
        }
        if key in simple:
            return simple[key]
        value: Any
        if key == "tags":
            value = self.tags(repo)
        elif key == "pipeline_tag":
            value = self.pipeline_tag(repo)
        elif key == "library_name":
            value = self.library_name(repo)
        elif key == "cardData":
            value = self.card_data(repo)
        elif key == "siblings":
            value = self.siblings(repo, blobs=blobs)
        elif key in ("safetensors", "gguf", "config"):
            value = getattr(self.derived(repo), key)
        else:
            value = None
        return _MISSING if value is None else value

    def render(self, repo: Repo, keys: Iterable[str], *, blobs: bool = False) -> dict[str, Any]:
        """A JSON object with the given keys (absent values left out)."""
        out: dict[str, Any] = {}
        for key in keys:
            value = self.field(repo, key, blobs=blobs)
            if value is not _MISSING:
                out[key] = value
        return out


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
