"""`ModelView`: the one interface fingerprints read weights through.

``ModelView.open(fileset)`` picks the weight files (`monitor.formats.discovery`), parses their
headers, groups quantised tensors into logical ``nn.Linear`` weights (`monitor.formats.quantized`),
and maps file names to the canonical keys of `monitor.formats.base` (`monitor.formats.names`).
Reads then fetch only the bytes of the rows or columns asked for, in one `read_many` per file, and
return float32 in canonical orientation::

    view = ModelView.open(LocalFileSet("all-MiniLM-L6-v2/"))
    view.arch.family, view.arch.n_layers          # ('bert', 6)
    up = view.read_rows("layers.3.mlp.up", range(64, 96))     # (32, 384) float32
    units = view.read_cols("layers.3.mlp.down", [5, 17])      # (2, 384): MLP units 5 and 17
    view.cost("layers.3.mlp.up", rows=range(64, 96))          # 49152 bytes
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import FormatError
from monitor.formats.base import ArchInfo, CanonicalTensor, WeightFile
from monitor.formats.discovery import WeightSelection, select_weights
from monitor.formats.gguf import GGUFFile, open_gguf
from monitor.formats.jsonstrict import loads_strict
from monitor.formats.logical import DenseTensor, LogicalTensor
from monitor.formats.names import (
    GGUF_FAMILIES,
    HF_FAMILIES,
    ArchParams,
    KeyMapping,
    map_gguf_names,
    map_hf_names,
)
from monitor.formats.quantconfig import QuantConfig
from monitor.formats.quantized import group_tensors
from monitor.formats.rows import ReadPlan, RowFile, RowsArg, as_index, execute, fetch, plan_bytes
from monitor.formats.safetensors import open_safetensors
from monitor.formats.shards import check_shards, read_shard_index
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


@dataclass(frozen=True)
class _Canon:
    info: CanonicalTensor
    base: LogicalTensor
    mapping: KeyMapping


def _then(plan: ReadPlan, post: Callable[[np.ndarray], np.ndarray]) -> ReadPlan:
    """``plan`` whose final result goes through ``post`` (follow-up plans included)."""
    finish = plan.finish

    def wrapped(arrays: list[np.ndarray]) -> np.ndarray | ReadPlan:
        out = finish(arrays)
        return _then(out, post) if isinstance(out, ReadPlan) else post(out)

    return ReadPlan(plan.needs, wrapped, plan.followup_bytes)


def _natural(key: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


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

    Attributes:
        fileset (`FileSet`): where the bytes come from (its ``stats`` count every byte read).
        format (`str`): ``safetensors``, ``gguf`` or ``torch``.
        selection (`WeightSelection`): the weight files chosen.
        weight_files (`list[WeightFile]`): parsed weight files.
        arch (`ArchInfo`): what the model is.
        config (`dict | None`): ``config.json`` when present.
        tensors (`dict[str, CanonicalTensor]`): canonical tensors by key, in layer order.
        logical (`dict[str, LogicalTensor]`): weights by checkpoint name, after dequantisation grouping.
        unmapped (`dict[str, str]`): logical tensors without a canonical key, with the reason.
        unsupported (`dict[str, str]`): tensors present but unreadable, with the reason.
    """

    def __init__(
        self,
        fileset: FileSet,
        *,
        selection: WeightSelection,
        weight_files: list[RowFile],
        config: dict[str, Any] | None,
        quant_config: QuantConfig | None,
        folder: str,
    ) -> None:
        self.fileset = fileset
        self.selection = selection
        self.format = selection.format
        self.weight_files: list[WeightFile] = list(weight_files)
        self.config = config
        self.quant_config = quant_config
        self._folder = folder
        self._gguf = weight_files[0] if isinstance(weight_files[0], GGUFFile) else None
        index: dict[str, RowFile] = {}
        self.unsupported: dict[str, str] = {}
        for wf in weight_files:
            for name in [*wf.tensors, *wf.unsupported]:
                if name in index or name in self.unsupported:
                    raise FormatError(f"{fileset.ref}: tensor {name!r} appears in more than one weight file")
                if name in wf.unsupported:
                    self.unsupported[name] = wf.unsupported[name]
                else:
                    index[name] = wf
        if self.format == "safetensors":
            self.logical, bad = group_tensors(index, quant_config)
            self.unsupported.update(bad)
        else:
            self.logical = {name: DenseTensor(wf, name) for name, wf in index.items()}
        params = self._params()
        shapes = {name: t.shape for name, t in self.logical.items()}
        mapper = map_gguf_names if self._gguf is not None else map_hf_names
        mappings, self.unmapped = mapper(shapes, params)
        canon = [self._canonical(m) for m in mappings]
        self._canon = {c.info.key: c for c in sorted(canon, key=lambda c: _natural(c.info.key))}
        self.tensors: dict[str, CanonicalTensor] = {k: c.info for k, c in self._canon.items()}
        self.arch = self._arch_info(params)
        self._vocab: list[str] | None = None
        self._vocab_read = False

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def open(cls, fileset: FileSet, *, weights: str | Sequence[str] | None = None) -> ModelView:
        """Discover and parse a model's weight files (headers only; bytes counted in ``fileset.stats``).

        Args:
            fileset (`FileSet`): a local folder/file or a hub repo pinned to a commit.
            weights (`str | Sequence[str] | None`): explicit weight file(s) or shard index to use
                instead of the discovery rules (e.g. one quantisation of a GGUF repo).

        Raises:
            `UnsupportedFormat`: nothing readable (no weights, legacy pickle, unsupported layout).
            `FormatError`: malformed, truncated, inconsistent or hostile files.
            `BudgetExceeded`: the headers alone exceed the fileset's byte budget.
        """
        selection = select_weights(fileset.files, weights=weights)
        opener = _OPENERS[selection.format]
        if selection.index is not None:
            index = read_shard_index(fileset, selection.index)
            parsed = {p: opener(fileset.open(p)) for p in index.shards}
            check_shards(index, parsed)
            files = list(parsed.values())
            anchor = selection.index
        else:
            files = [opener(fileset.open(p)) for p in selection.files]
            anchor = selection.files[0]
        folder = anchor.rsplit("/", 1)[0] if "/" in anchor else ""
        prefix = f"{folder}/" if folder else ""
        config = None
        quant_config = None
        if selection.format != "gguf":
            config = _read_json(fileset, f"{prefix}config.json")
            if selection.format == "safetensors":
                quant_config = QuantConfig.from_documents(
                    config=config,
                    quantize_config=_read_json(fileset, f"{prefix}quantize_config.json"),
                    quant_config=_read_json(fileset, f"{prefix}quant_config.json"),
                )
        return cls(
            fileset,
            selection=selection,
            weight_files=files,
            config=config,
            quant_config=quant_config,
            folder=folder,
        )

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
        names = " ".join(self.logical)
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

    def _canonical(self, m: KeyMapping) -> _Canon:
        base = self.logical[m.source]
        bshape = base.shape
        if m.transposed:
            units = len(m.index) if m.index is not None else bshape[1]
            shape: tuple[int, ...] = (units, bshape[0])
            axis_len = bshape[1]
            rows_c, cols_c = base.cols_contiguous, base.rows_contiguous
        else:
            units = len(m.index) if m.index is not None else (bshape[0] if bshape else 1)
            shape = (units, *bshape[1:])
            axis_len = bshape[0] if bshape else 1
            rows_c, cols_c = base.rows_contiguous, base.cols_contiguous
        info = CanonicalTensor(
            key=m.key,
            shape=shape,
            dtype=base.dtype,
            sources=base.sources,
            files=base.files,
            rows_contiguous=rows_c,
            cols_contiguous=cols_c,
            nbytes=base.nbytes * units // axis_len if axis_len else base.nbytes,
        )
        return _Canon(info, base, m)

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
        up = next((t[k] for k in sorted(t, key=_natural) if k.endswith(".mlp.up")), None)
        d_ff = params.d_ff or (up.shape[0] if up else None)
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
        schemes: dict[str, int] = {}
        for lt in self.logical.values():
            scheme = getattr(lt, "scheme", None)
            if isinstance(scheme, str):
                schemes[scheme] = schemes.get(scheme, 0) + 1
        return max(schemes, key=schemes.__getitem__) if schemes else None

    # -- reads --------------------------------------------------------------------------------

    def _get(self, key: str) -> _Canon:
        try:
            return self._canon[key]
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
        """Several reads ``(key, rows, cols)`` fetched together: one `read_many` per file per stage."""
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
