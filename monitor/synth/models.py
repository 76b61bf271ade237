"""Two small transformer families in plain torch, with Hugging Face tensor names and semantics.

HubSentry never runs models it finds on a hub; these exist so the demo, the tests and the detection
benchmark can *train* independent models and *fine-tune* real derivatives offline, and save them as the
checkpoints a hub would carry. The state-dict names and layouts match ``transformers``' ``LlamaForCausalLM``
and ``BertModel`` (q/k in rotate-half order, ``nn.Linear`` weights as ``(out, in)``), so the saved files
exercise the same parsing paths as real uploads, and the real all-MiniLM-L6-v2 weights load into
`BertEncoder` unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BertConfig", "BertEncoder", "LlamaConfig", "LlamaLM", "config_json"]


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama-family decoder (pre-RMSNorm, SwiGLU MLP, RoPE)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (post-LayerNorm, GELU MLP, learned positions)."""

    vocab_size: int = 4096
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


def config_json(config: LlamaConfig | BertConfig) -> dict[str, object]:
    """The ``config.json`` a Hugging Face repo would carry for this model."""
    body: dict[str, object] = asdict(config)
    if isinstance(config, LlamaConfig):
        body.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu")
    else:
        body.update(
            model_type="bert",
            architectures=["BertModel"],
            hidden_act="gelu",
            position_embedding_type="absolute",
        )
    return body


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _LlamaAttention(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.c = c
        hd = c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * hd, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * hd, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        c, hd = self.c, self.c.head_dim
        q = self.q_proj(x).view(b, t, c.num_attention_heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.num_key_value_heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.num_key_value_heads, hd).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        rep = c.num_attention_heads // c.num_key_value_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class _LlamaMLP(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _LlamaLayer(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = _LlamaAttention(c)
        self.post_attention_layernorm = _RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = _LlamaMLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class _LlamaBody(nn.Module):
    def __init__(self, c: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(_LlamaLayer(c) for _ in range(c.num_hidden_layers))
        self.norm = _RMSNorm(c.hidden_size, c.rms_norm_eps)


class LlamaLM(nn.Module):
    """A Llama-family causal LM; ``state_dict()`` names match ``LlamaForCausalLM``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = _LlamaBody(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        inv = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self(ids[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


class _BertSelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class _BertDenseNorm(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _BertAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.self = _BertSelfAttention(c)
        self.output = _BertDenseNorm(c.hidden_size, c.hidden_size, c.layer_norm_eps)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _BertLayer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.c = c
        self.attention = _BertAttention(c)
        self.intermediate = _Dense(c.hidden_size, c.intermediate_size)
        self.output = _BertDenseNorm(c.intermediate_size, c.hidden_size, c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        h = self.c.num_attention_heads
        sa = self.attention.self

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, h, d // h).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(sa.query(x)), split(sa.key(x)), split(sa.value(x)), attn_mask=mask
        )
        ctx = ctx.transpose(1, 2).reshape(b, t, d)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(ctx))
        y = self.output.dense(F.gelu(self.intermediate.dense(x)))
        return self.output.LayerNorm(x + y)


class _BertEmbeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _BertStack(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_BertLayer(c) for _ in range(c.num_hidden_layers))


class BertEncoder(nn.Module):
    """A BERT encoder whose ``state_dict()`` names match ``BertModel`` (as in all-MiniLM-L6-v2).

    The masked-LM head used for training lives in ``mlm_head`` and is *not* part of `encoder_state`,
    just as sentence-transformers checkpoints carry only the encoder.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _BertEmbeddings(config)
        self.encoder = _BertStack(config)
        self.mlm_head = nn.Sequential(
            nn.Linear(config.hidden_size, config.hidden_size),
            nn.GELU(),
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps),
        )
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, ids: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
        t = ids.shape[1]
        e = self.embeddings
        x = e.word_embeddings(ids) + e.position_embeddings(torch.arange(t))[None]
        x = e.LayerNorm(x + e.token_type_embeddings(torch.zeros_like(ids)))
        keep = (ids != pad_id)[:, None, None, :]
        mask = torch.zeros(keep.shape, dtype=x.dtype).masked_fill(~keep, -math.inf)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(hidden) @ self.embeddings.word_embeddings.weight.T + self.mlm_bias

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """The encoder tensors only, named as in a ``BertModel`` checkpoint."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("mlm_")}
