"""Shared types for weight-file parsers and the canonical model view.

A parser turns the first bytes of a file into a list of `TensorInfo` (no tensor data is read) and
then decodes exactly the rows asked for. `ModelView` (in `monitor.formats.canonical`) maps the
file-specific names of one model (HF safetensors, GGUF, PyTorch zip, GPTQ/AWQ/bnb) to the
*canonical keys* below, in the layout of an unfused, unpermuted Hugging Face checkpoint, so the
fingerprints compare like with like.

Canonical keys (``i`` is the 0-based layer index; shapes use ``nn.Linear`` layout ``(out, in)``):

=============================  ===========================  =============================================
key                            shape                        source examples
=============================  ===========================  =============================================
``embed``                      (vocab, d_model)             embed_tokens, word_embeddings, wte, token_embd
``pos_embed``                  (n_positions, d_model)       position_embeddings, wpe
``type_embed``                 (n_types, d_model)           BERT token_type_embeddings, token_types
``embed_norm``                 (d_model,)                   BERT embeddings.LayerNorm
``final_norm``                 (d_model,)                   model.norm, ln_f, output_norm
``lm_head``                    (vocab, d_model)             lm_head, output (absent when tied)
``layers.i.attn_norm``         (d_model,)                   input_layernorm, ln_1, attn_norm
``layers.i.mlp_norm``          (d_model,)                   post_attention_layernorm, ln_2, ffn_norm,
                                                            BERT attention.output.LayerNorm
``layers.i.out_norm``          (d_model,)                   BERT output.LayerNorm (post-LN only)
``layers.i.attn.q|k|v``        (n_heads*head_dim, d_model)  q_proj, query, split qkv/W_pack/c_attn;
                                                            q/k in HF rotate-half order (GGUF undone)
``layers.i.attn.o``            (d_model, n_heads*head_dim)  o_proj, attention.output.dense, c_proj
``layers.i.mlp.up``            (d_ff, d_model)              up_proj, intermediate.dense, c_fc, ffn_up
``layers.i.mlp.gate``          (d_ff, d_model)              gate_proj, ffn_gate (GLU models only)
``layers.i.mlp.down``          (d_model, d_ff)              down_proj, output.dense, c_proj, ffn_down
=============================  ===========================  =============================================

Norm keys get a ``.bias`` sibling where the model has one (``layers.i.mlp_norm.bias``), and so do
linear layers (``layers.i.mlp.up.bias``).

An MLP *unit* ``j`` of layer ``i`` is row ``j`` of ``mlp.up``/``mlp.gate`` and column ``j`` of
``mlp.down``. Which of those is cheap to read depends on the file layout (rows of a row-major
safetensors matrix are contiguous; GPTQ/AWQ pack ``down`` so that its *columns* are), which is why
`CanonicalTensor` says whether rows and columns are contiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "ArchInfo",
    "CanonicalTensor",
    "TensorInfo",
    "WeightFile",
]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a file declares it; nothing of its data has been read.

    Attributes:
        name (`str`): the name in the file (``model.layers.0.mlp.up_proj.weight``, ``blk.0.ffn_up.weight``).
        dtype (`str`): storage type: safetensors names (``F32``, ``F16``, ``BF16``, ``F8_E4M3``,
            ``F8_E5M2``, ``I8``, ``U8``, ``I32``, ``I64``, ``BOOL``...) or GGML quantisation names
            (``Q4_0``, ``Q8_0``, ``Q4_K``, ``Q6_K``...).
        shape (`tuple[int, ...]`): logical shape in row-major (PyTorch/numpy) order. For GGUF this is
            the GGML ``ne`` list reversed.
        file (`str`): repo-relative path of the file holding the data.
        offset (`int`): absolute byte offset of the first data byte in that file.
        nbytes (`int`): number of data bytes.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    nbytes: int

    @property
    def n_rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_nbytes(self) -> int:
        """Bytes per row (first axis); rows of every supported layout are whole blocks."""
        return self.nbytes // self.n_rows if self.n_rows else 0


@runtime_checkable
class WeightFile(Protocol):
    """A parsed weight file: tensor index plus row-level decoding.

    Attributes:
        path (`str`): repo-relative path.
        format (`str`): ``safetensors``, ``gguf`` or ``torch``.
        tensors (`dict[str, TensorInfo]`): by name in the file.
        metadata (`dict[str, object]`): format metadata (safetensors ``__metadata__``; GGUF key/values
            with large arrays kept only where needed, e.g. ``tokenizer.ggml.tokens``).
    """

    path: str
    format: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, object]

    def read_rows(self, name: str, rows: Sequence[int] | range) -> np.ndarray:
        """Decode the given rows (first axis) of a tensor as float32, reading only their bytes.

        Returns an array of shape ``(len(rows), *shape[1:])``. Quantised types are dequantised.
        """
        ...

    def read(self, name: str) -> np.ndarray:
        """Decode a whole tensor as float32 (for small tensors: norms, biases)."""
        ...


@dataclass(frozen=True)
class ArchInfo:
    """What a model is, as far as routing and sampling need to know.

    Attributes:
        family (`str`): ``llama`` (pre-RMSNorm, gated MLP, RoPE: Llama, Mistral, Qwen2, SmolLM...),
            ``bert`` (post-LayerNorm encoders), ``gpt2``, ``gpt_neox``, ``phi3``, ... or ``unknown``.
        n_layers (`int`), d_model (`int`), d_ff (`int | None`): depth and widths.
        n_heads (`int | None`), n_kv_heads (`int | None`), head_dim (`int | None`).
        vocab_size (`int`): rows of ``embed``.
        norm (`str`): ``rmsnorm`` or ``layernorm``.
        gated_mlp (`bool`): whether ``mlp.gate`` exists.
        quantization (`str | None`): e.g. ``gguf:Q4_K_M``, ``gptq:4bit-g128``, ``awq:4bit-g128``,
            ``bnb:int8``, ``bnb:nf4``; ``None`` for float checkpoints.
    """

    family: str
    n_layers: int
    d_model: int
    d_ff: int | None
    n_heads: int | None
    n_kv_heads: int | None
    head_dim: int | None
    vocab_size: int
    norm: str
    gated_mlp: bool
    quantization: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class CanonicalTensor:
    """A canonical tensor of a model and what it costs to read parts of it.

    Attributes:
        key (`str`): canonical key (see module docstring).
        shape (`tuple[int, ...]`): canonical shape.
        dtype (`str`): storage dtype of the underlying data (after unpacking names, e.g. ``Q4_K``,
            ``gptq-int4``).
        sources (`tuple[str, ...]`): names of the file tensors it is decoded from.
        files (`tuple[str, ...]`): repo-relative files those tensors live in.
        rows_contiguous (`bool`): reading ``k`` consecutive rows costs about ``k/shape[0]`` of the
            tensor in one span.
        cols_contiguous (`bool`): the same for columns (GPTQ/AWQ ``down``; GPT-2 Conv1D).
        nbytes (`int`): stored bytes of the whole tensor (all sources).
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    sources: tuple[str, ...]
    files: tuple[str, ...]
    rows_contiguous: bool
    cols_contiguous: bool
    nbytes: int
