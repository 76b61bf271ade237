"""`ModelView`: the one interface fingerprints read weights through.

``ModelView.open(fileset)`` picks the weight files (`monitor.formats.discovery`), groups quantised
tensors into logical ``nn.Linear`` weights (`monitor.formats.grouping`), and maps file names to the
canonical keys of `monitor.formats.base` (`monitor.formats.names`), through a `TensorCatalog`
(`monitor.formats.catalog`). Single files have their headers parsed at open; a sharded checkpoint with an
index is known from the index, and a shard's header is parsed only when one of its tensors is first
needed (a 70B model sampled in four layers reads 5 or 6 of its 29 shard headers). Reads then fetch only the
bytes of the rows or columns asked for, in one `read_many` per file (files concurrently), and return
float32 in canonical orientation::

    view = ModelView.open(LocalFileSet("all-MiniLM-L6-v2/"))
    view.arch.family, view.arch.n_layers          # ('bert', 6)
    up = view.read_rows("layers.3.mlp.up", range(64, 96))     # (32, 384) float32
    units = view.read_cols("layers.3.mlp.down", [5, 17])      # (2, 384): MLP units 5 and 17
    view.cost("layers.3.mlp.up", rows=range(64, 96))          # 49152 bytes
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monitor.errors import FormatError
from monitor.formats.base import ArchInfo, CanonicalTensor, WeightFile
from monitor.formats.catalog import CanonEntry, LazyMapping, TensorCatalog
from monitor.formats.discovery import WeightSelection, select_weights
from monitor.formats.gguf import GGUFFile, open_gguf
from monitor.formats.grouping import TensorGroup, plan_groups
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.logical import LogicalTensor
from monitor.formats.names import GGUF_FAMILIES, HF_FAMILIES, ArchParams
from monitor.formats.quantconfig import QuantConfig
from monitor.formats.rows import ReadPlan, RowFile, RowsArg, as_index, execute, fetch, plan_bytes
from monitor.formats.safetensors import open_safetensors
from monitor.formats.shards import WeightFiles, read_shard_index
from monitor.formats.torchzip import open_torch
from monitor.formats.vocab import read_vocab
from monitor.remote.source import FileSet

__all__ = ["MAX_CONFIG_BYTES", "ModelView"]

MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""Largest ``config.json``/``quantize_config.json`` read."""
_OPENERS: dict[str, Callable[[Any], RowFile]] = {
    "safetensors": open_safetensors,
    "gguf": open_gguf,
    "torch": open_torch,
}
_LAYERNORM_FAMILIES = {"bert", "gpt2", "gpt_neox"}
_TOKENIZER_DIGEST_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt")
_CONFIG_FILES = ("config.json", "quantize_config.json", "quant_config.json")
"""Documents read at open: the model config, then AutoGPTQ's and AutoAWQ's (safetensors only)."""


def _then(plan: ReadPlan, post: Callable[[np.ndarray], np.ndarray]) -> ReadPlan:
    """``plan`` whose final result goes through ``post`` (follow-up plans included)."""
    finish = plan.finish

    def wrapped(arrays: list[np.ndarray]) -> np.ndarray | ReadPlan:
        out = finish(arrays)
        return _then(out, post) if isinstance(out, ReadPlan) else post(out)

    return ReadPlan(plan.needs, wrapped, plan.followup_bytes)


def _cfg_int(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        v = config.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 31:
            return v
    return None


def _kv_int(gguf: GGUFFile, key: str) -> int | None:
    v = gguf.arch_value(key)
    if isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        v = max(v)
    if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 31:
        return v
    return None


def _read_json(fileset: FileSet, path: str) -> dict[str, Any] | None:
    entry = fileset.files.get(path)
    if entry is None:
        return None
    if entry.size > MAX_CONFIG_BYTES:
        raise FormatError(f"{path}: {entry.size} bytes exceeds the limit of {MAX_CONFIG_BYTES}")
    src = fileset.open(path)
    doc = loads_strict(src.read(0, src.size), what=path)
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: must be a JSON object")
    return doc


class ModelView:
    """A model's weights under canonical keys, read partially and lazily.

    For a sharded checkpoint with an index, opening reads the index and ``config.json`` and, for `arch`,
    the header of the shard holding the embedding; every other shard header is read the first time one
    of its tensors is needed. ``key in view.tensors`` and iterating keys never read anything;
    ``view.tensors[key]`` reads at most the headers of the shards holding that tensor.

    Attributes:
        fileset (`FileSet`): where the bytes come from (its ``stats`` count every byte read).
        format (`str`): ``safetensors``, ``gguf`` or ``torch``.
        selection (`WeightSelection`): the weight files chosen.
        files (`WeightFiles`): the weight files; ``files.parsed`` lists those whose header was read,
            ``files.unlisted`` tensors found in a shard the index does not list (ignored).
        arch (`ArchInfo`): what the model is.
        config (`dict | None`): ``config.json`` when present.
        tensors (`Mapping[str, CanonicalTensor]`): canonical tensors by key, in layer order.
        logical (`Mapping[str, LogicalTensor]`): weights by checkpoint name, after dequantisation grouping.
        unmapped (`dict[str, str]`): logical tensors without a canonical key, with the reason.
        unsupported (`dict[str, str]`): tensors present but unreadable, with the reason. For a sharded
            checkpoint both list what the names tell and what has been resolved so far; reading a
            tensor that turns out unreadable raises `UnsupportedFormat` with the reason.
    """

    def __init__(
        self,
        fileset: FileSet,
        *,
        selection: WeightSelection,
        files: WeightFiles,
        config: dict[str, Any] | None,
        quant_config: QuantConfig | None,
        folder: str,
    ) -> None:
        self.fileset = fileset
        self.selection = selection
        self.format = selection.format
        self.files = files
        self.config = config
        self.quant_config = quant_config
        self._folder = folder
        first = files.file(files.paths[0]) if files.index is None else None
        self._gguf = first if isinstance(first, GGUFFile) else None
        self._groups = plan_groups(files.names, quantised=self.format == "safetensors")
        params = self._params()
        self._catalog = TensorCatalog(
            files, self._groups, params=params, gguf=self._gguf is not None, quant_config=quant_config
        )
        catalog = self._catalog
        self.unmapped = catalog.unmapped
        self.unsupported = catalog.unsupported
        self.tensors: LazyMapping[CanonicalTensor] = LazyMapping(
            catalog.keys, catalog.__contains__, lambda key: catalog.entry(key).info
        )
        self.logical: LazyMapping[LogicalTensor] = LazyMapping(
            catalog.logical_names, lambda n: n in self._groups and n not in self.unsupported, catalog.logical
        )
        self.arch = self._arch_info(params)
        self._vocab: list[str] | None = None
        self._vocab_read = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def open(cls, fileset: FileSet, *, weights: str | Sequence[str] | None = None) -> ModelView:
        """Discover a model's weight files and read what knowing the model takes (bytes counted in
        ``fileset.stats``): every header of a single file or unindexed series; for an indexed
        checkpoint the index, ``config.json`` and the one shard header `arch` needs.

        Args:
            fileset (`FileSet`): a local folder/file or a hub repo pinned to a commit.
            weights (`str | Sequence[str] | None`): explicit weight file(s) or shard index to use
                instead of the discovery rules (e.g. one quantisation of a GGUF repo).

        Raises:
            `UnsupportedFormat`: nothing readable (no weights, legacy pickle, unsupported layout).
            `FormatError`: malformed, truncated, inconsistent or hostile files (for a sharded
                checkpoint: in the index, config, or the shards read at open; the other shards are
                checked when first used).
            `BudgetExceeded`: the headers alone exceed the fileset's byte budget.
        """
        selection = select_weights(fileset.files, weights=weights)
        opener: Callable[[Any], RowFile] = _OPENERS[selection.format]
        anchor = selection.index or selection.files[0]
        folder = anchor.rsplit("/", 1)[0] if "/" in anchor else ""
        prefix = f"{folder}/" if folder else ""
        if selection.index is None:
            files = WeightFiles(fileset, opener, paths=selection.files)
        else:
            files = WeightFiles(fileset, opener, index=read_shard_index(fileset, selection.index))
        documents = {"gguf": (), "torch": _CONFIG_FILES[:1]}.get(selection.format, _CONFIG_FILES)
        found = {name: _read_json(fileset, prefix + name) for name in documents}
        config = found.get("config.json")
        quant_config = None
        if selection.format == "safetensors":
            quant_config = QuantConfig.from_documents(
                config=config,
                quantize_config=found.get("quantize_config.json"),
                quant_config=found.get("quant_config.json"),
            )
        return cls(
            fileset,
            selection=selection,
            files=files,
            config=config,
            quant_config=quant_config,
            folder=folder,
        )

    @property
    def weight_files(self) -> list[WeightFile]:
        """Every weight file, parsed: for a sharded checkpoint this reads every shard header not read
        yet (concurrently). Use ``files.parsed`` to see what has been read."""
        return list(self.files.files(self.files.paths))

    def files_of(self, key: str) -> tuple[str, ...]:
        """Weight files holding canonical ``key``, known without reading any header (from the shard index
        or the file list); empty for unknown keys. Lets a sampler keep its reads in few shards."""
        return self._catalog.files_of(key)

    def prepare(self, keys: Sequence[str]) -> None:
        """Read, concurrently, the shard headers that canonical ``keys`` need and not read yet.

        A no-op for single files. Reads call it themselves (`read_batch` for all its keys at once);
        call it before looking at several tensors one by one (``view.tensors[k].shape``) to pay one
        round trip for their shards instead of one per shard. Unknown keys are ignored.

        Raises:
            `FormatError`: a shard is malformed or contradicts the index.
        """
        self._catalog.resolve_keys(keys)

    def _params(self) -> ArchParams:
        if self._gguf is not None:
            arch = self._gguf.architecture or "unknown"
            n_heads = _kv_int(self._gguf, "attention.head_count")
            d_model = _kv_int(self._gguf, "embedding_length")
            return ArchParams(
                family=GGUF_FAMILIES.get(arch, "unknown"),
                n_heads=n_heads,
                n_kv_heads=_kv_int(self._gguf, "attention.head_count_kv") or n_heads,
                head_dim=_kv_int(self._gguf, "attention.key_length")
                or (d_model // n_heads if d_model and n_heads else None),
                d_ff=_kv_int(self._gguf, "feed_forward_length"),
                gguf_arch=arch,
            )
        cfg = self.config or {}
        model_type = cfg.get("model_type") if isinstance(cfg.get("model_type"), str) else None
        family = HF_FAMILIES.get(model_type or "", "") or self._family_from_names()
        n_heads = _cfg_int(cfg, "num_attention_heads", "n_head", "num_heads")
        d_model = _cfg_int(cfg, "hidden_size", "n_embd", "d_model")
        return ArchParams(
            family=family,
            n_heads=n_heads,
            n_kv_heads=_cfg_int(cfg, "num_key_value_heads", "multi_query_group_num") or n_heads,
            head_dim=_cfg_int(cfg, "head_dim") or (d_model // n_heads if d_model and n_heads else None),
            d_ff=_cfg_int(cfg, "intermediate_size", "n_inner", "ffn_dim"),
        )

    def _family_from_names(self) -> str:
        names = " ".join(self._groups)
        for needle, family in (
            (".attention.self.query", "bert"),
            (".attn.c_attn", "gpt2"),
            ("query_key_value", "gpt_neox"),
            ("qkv_proj", "phi3"),
            ("gate_up_proj", "phi3"),
            ("self_attn.q_proj", "llama"),
            ("W_pack", "llama"),
        ):
            if needle in names:
                return family
        return "unknown"

    def _arch_info(self, params: ArchParams) -> ArchInfo:
        cfg = self.config or {}
        t = self.tensors
        layer_ids = {int(k.split(".")[1]) for k in t if k.startswith("layers.")}
        g = self._gguf
        n_layers = (
            _kv_int(g, "block_count") if g else _cfg_int(cfg, "num_hidden_layers", "n_layer", "num_layers")
        ) or (max(layer_ids) + 1 if layer_ids else 0)
        d_model = (
            _kv_int(g, "embedding_length") if g else _cfg_int(cfg, "hidden_size", "n_embd", "d_model")
        ) or (t["embed"].shape[1] if "embed" in t else 0)
        d_ff = params.d_ff
        if d_ff is None:  # from the first layer's up projection: one shard header at most
            up = next((k for k in t if k.endswith(".mlp.up")), None)
            d_ff = t[up].shape[0] if up is not None else None
        if d_ff is None and params.family == "gpt2" and d_model:
            d_ff = 4 * d_model
        vocab = (
            t["embed"].shape[0]
            if "embed" in t
            else (_cfg_int(cfg, "vocab_size") or (len(g.tokens) if g and g.tokens else 0))
        )
        if params.family in _LAYERNORM_FAMILIES:
            norm = "layernorm"
        elif params.family in ("llama", "phi3"):
            norm = "rmsnorm"
        else:
            norm = "layernorm" if any(k.endswith("_norm.bias") for k in t) else "rmsnorm"
        extra: dict[str, object] = {"format": self.format, "tied_embeddings": "lm_head" not in t}
        if g:
            extra["gguf_architecture"] = params.gguf_arch
        for key in ("model_type", "architectures", "torch_dtype"):
            if key in cfg:
                extra[key] = cfg[key]
        return ArchInfo(
            family=params.family,
            n_layers=n_layers,
            d_model=d_model,
            d_ff=d_ff,
            n_heads=params.n_heads,
            n_kv_heads=params.n_kv_heads,
            head_dim=params.head_dim,
            vocab_size=vocab,
            norm=norm,
            gated_mlp=any(k.endswith(".mlp.gate") for k in t),
            quantization=self._quantization(),
            extra=extra,
        )

    def _quantization(self) -> str | None:
        if self._gguf is not None:
            label = self._gguf.file_type
            if label is None:
                counts: dict[str, int] = {}
                for info in self._gguf.tensors.values():
                    if len(info.shape) == 2:
                        counts[info.dtype] = counts.get(info.dtype, 0) + 1
                label = max(counts, key=counts.__getitem__) if counts else None
            return f"gguf:{label}" if label else None
        kinds = Counter(g.kind for g in self._groups.values() if g.kind != "dense")
        if not kinds:
            return None
        catalog = self._catalog
        if catalog.lazy:  # one group of the commonest kind tells the scheme: prefer one already read
            top = kinds.most_common(1)[0][0]
            members = [g for g in self._groups.values() if g.kind == top]
            if not any(catalog.is_resolved(g.name) for g in members):
                catalog.resolve([min(members, key=self._unread_shards).name])
        schemes: dict[str, int] = {}
        for name in self._groups:
            scheme = getattr(catalog.logical(name), "scheme", None) if catalog.is_resolved(name) else None
            if isinstance(scheme, str):
                schemes[scheme] = schemes.get(scheme, 0) + 1
        return max(schemes, key=schemes.__getitem__) if schemes else None

    def _unread_shards(self, group: TensorGroup) -> int:
        parsed = set(self.files.parsed)
        return len({self.files.names[s] for s in group.stored} - parsed)

    # -- reads --------------------------------------------------------------------------------

    def _get(self, key: str) -> CanonEntry:
        try:
            return self._catalog.entry(key)
        except KeyError:
            raise KeyError(f"{self.fileset.ref}: no canonical tensor {key!r}") from None

    def plan(self, key: str, *, rows: RowsArg | None = None, cols: RowsArg | None = None) -> ReadPlan:
        """The read plan of `read`/`read_rows`/`read_cols` (for batching and cost estimates)."""
        c = self._get(key)
        if rows is not None and cols is not None:
            raise ValueError("give rows or cols, not both")
        base, m, shape = c.base, c.mapping, c.info.shape
        idx = m.index
        if cols is not None:
            if len(shape) != 2:
                raise ValueError(f"{key}: columns need a 2-D tensor, shape is {shape}")
            cidx = as_index(cols, shape[1], what=key)
            plan = base.plan_rows(cidx) if m.transposed else base.plan_cols(cidx)
            return plan if idx is None else _then(plan, lambda a: np.ascontiguousarray(a[:, idx]))
        if rows is not None:
            ridx = as_index(rows, shape[0], what=key)
            units = ridx if idx is None else idx[ridx]
            return base.plan_cols(units) if m.transposed else base.plan_rows(units)
        if m.transposed:
            return _then(base.plan_all(), lambda a: np.ascontiguousarray((a if idx is None else a[:, idx]).T))
        return base.plan_all() if idx is None else base.plan_rows(idx)

    def read(self, key: str) -> np.ndarray:
        """A whole canonical tensor as float32."""
        return execute(self.plan(key))

    def read_rows(self, key: str, rows: RowsArg) -> np.ndarray:
        """Canonical rows as float32 ``(len(rows), *shape[1:])``, reading only their bytes where the
        layout allows (see ``tensors[key].rows_contiguous``)."""
        return execute(self.plan(key, rows=rows))

    def read_cols(self, key: str, cols: RowsArg) -> np.ndarray:
        """Canonical columns as vectors: float32 ``(len(cols), shape[0])``."""
        return execute(self.plan(key, cols=cols))

    def read_batch(self, requests: Sequence[tuple[str, RowsArg | None, RowsArg | None]]) -> list[np.ndarray]:
        """Several reads ``(key, rows, cols)`` fetched together: the shard headers they need in one round
        trip (`prepare`), then one `read_many` per file per stage, all files concurrently."""
        self.prepare([key for key, _, _ in requests])
        plans = [self.plan(key, rows=rows, cols=cols) for key, rows, cols in requests]
        arrays = fetch([need for p in plans for need in p.needs])
        out: list[np.ndarray] = []
        pos = 0
        for p in plans:
            result = p.finish(arrays[pos : pos + len(p.needs)])
            pos += len(p.needs)
            out.append(execute(result) if isinstance(result, ReadPlan) else result)
        return out

    def cost(self, key: str, *, rows: RowsArg | None = None, cols: RowsArg | None = None) -> int:
        """Bytes the corresponding read would fetch (an upper bound for GPTQ act-order columns)."""
        return plan_bytes(self.plan(key, rows=rows, cols=cols))

    # -- tokenizer ----------------------------------------------------------------------------

    def vocab(self) -> list[str] | None:
        """Token strings by id: GGUF tokens, else ``tokenizer.json``, else ``vocab.txt``; ``None`` if none."""
        if not self._vocab_read:
            if self._gguf is not None and self._gguf.tokens is not None:
                self._vocab = self._gguf.tokens
            else:
                self._vocab = read_vocab(self.fileset, folder=self._folder)
            self._vocab_read = True
        return self._vocab

    @property
    def tokenizer_digest(self) -> str | None:
        """Identity of the tokenizer `vocab` reads, without reading anything: for GGUF a SHA-256 of the
        token list already parsed from the header; otherwise the listed SHA-256 or git blob id of
        ``tokenizer.json``/``tokenizer.model``/``vocab.txt``. ``None`` when nothing is known."""
        if self._gguf is not None and self._gguf.tokens is not None:
            h = hashlib.sha256()
            for token in self._gguf.tokens:
                h.update(token.encode("utf-8", errors="surrogatepass") + b"\x00")
            return f"gguf-tokens-sha256:{h.hexdigest()}"
        prefix = f"{self._folder}/" if self._folder else ""
        for name in _TOKENIZER_DIGEST_FILES:
            entry = self.fileset.files.get(prefix + name)
            if entry is not None:
                if entry.sha256:
                    return f"sha256:{entry.sha256}"
                if entry.blob_id:
                    return f"git-blob:{entry.blob_id}"
        return None
