"""Derivations of a checkpoint, as uploaders make them: obfuscations, quantisation, pruning, merges.

Every function takes a float32 state dict with Hugging Face names (``LlamaForCausalLM`` or ``BertModel``,
as produced by `monitor.synth.train`) and returns a new one. Function-preserving obfuscations are exact
(the tests check the model's outputs are unchanged), so the detection benchmark measures what an adversary
who keeps the model working can really do. Nothing here is used on hub data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

__all__ = [
    "State",
    "drop_layers",
    "duplicate_layers",
    "fold_norms_and_rotate",
    "magnitude_prune",
    "merge",
    "model_family",
    "n_layers",
    "permute_heads",
    "permute_mlp_units",
    "permute_residual",
    "permute_value_dims",
    "quantize_4bit_blocks",
    "quantize_int8_rows",
    "rescale_attention",
    "rotate_heads_qk",
    "rotate_heads_vo",
    "sign_flip_residual",
    "structured_prune_mlp",
    "vocab_extend",
    "vocab_reorder",
]

State = dict[str, np.ndarray]
_LAYER = re.compile(r"^(model\.layers|encoder\.layer)\.(\d+)\.(.*)$")


def model_family(state: Mapping[str, np.ndarray]) -> str:
    """``llama`` or ``bert`` from the tensor names."""
    if "model.embed_tokens.weight" in state:
        return "llama"
    if "embeddings.word_embeddings.weight" in state:
        return "bert"
    raise ValueError("unknown checkpoint layout")


def n_layers(state: Mapping[str, np.ndarray]) -> int:
    return 1 + max(int(m.group(2)) for k in state if (m := _LAYER.match(k)))


def _copy(state: Mapping[str, np.ndarray]) -> State:
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in state.items()}


# --- names per family -------------------------------------------------------------------------------
def _names(family: str) -> dict[str, str]:
    if family == "llama":
        return {
            "embed": "model.embed_tokens.weight",
            "final": "model.norm.weight",
            "head": "lm_head.weight",
            "prefix": "model.layers.{i}.",
            "q": "self_attn.q_proj",
            "k": "self_attn.k_proj",
            "v": "self_attn.v_proj",
            "o": "self_attn.o_proj",
            "up": "mlp.up_proj",
            "gate": "mlp.gate_proj",
            "down": "mlp.down_proj",
            "n1": "input_layernorm",
            "n2": "post_attention_layernorm",
        }
    return {
        "embed": "embeddings.word_embeddings.weight",
        "prefix": "encoder.layer.{i}.",
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "up": "intermediate.dense",
        "down": "output.dense",
        "n1": "attention.output.LayerNorm",
        "n2": "output.LayerNorm",
    }


def _input_side(family: str) -> list[str]:
    """Linear layers that read the residual stream (their input columns are residual dims)."""
    return ["q", "k", "v", "up", "gate"] if family == "llama" else ["q", "k", "v", "up"]


def _output_side() -> list[str]:
    return ["o", "down"]


# --- residual stream ------------------------------------------------------------------------------
def permute_residual(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> State:
    """Relabel the residual dimensions (function-preserving for LayerNorm and RMSNorm models)."""
    out = _copy(state)
    fam = model_family(out)
    nm = _names(fam)
    d = out[nm["embed"]].shape[1]
    p = rng.permutation(d)
    for k, v in out.items():
        m = _LAYER.match(k)
        rest = m.group(3) if m else k
        if k in (nm["embed"], nm.get("head", "-")) or (
            k.startswith("embeddings.") and k.endswith("_embeddings.weight")
        ):
            out[k] = v[:, p]
        elif (
            v.ndim == 1
            and v.shape[0] == d
            and ("norm" in rest.lower() or rest.endswith(("LayerNorm.weight", "LayerNorm.bias")))
        ):
            out[k] = v[p]
        elif m and any(rest.startswith(nm[s] + ".") for s in _input_side(fam)) and rest.endswith(".weight"):
            out[k] = v[:, p]
        elif m and any(rest.startswith(nm[s] + ".") for s in _output_side()):
            out[k] = v[p] if v.ndim == 1 else v[p, :]
    return out


def sign_flip_residual(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> State:
    """Flip the sign of random residual dimensions (RMSNorm models only; LayerNorm centring forbids it)."""
    out = _copy(state)
    if model_family(out) != "llama":
        raise ValueError("sign flips of the residual stream preserve function only without mean-centring")
    nm = _names("llama")
    d = out[nm["embed"]].shape[1]
    s = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=d)
    out[nm["embed"]] = out[nm["embed"]] * s
    if nm["head"] in out:  # a tied head flips with the embeddings (s·s = 1 at the output)
        out[nm["head"]] = out[nm["head"]] * s
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        for key in ("q", "k", "v", "up", "gate"):
            out[f"{pre}{nm[key]}.weight"] = out[f"{pre}{nm[key]}.weight"] * s[None, :]
        for key in ("o", "down"):
            out[f"{pre}{nm[key]}.weight"] = out[f"{pre}{nm[key]}.weight"] * s[:, None]
    return out


def _random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sign(np.diag(r))[None, :]).astype(np.float32)


def fold_norms_and_rotate(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> State:
    """Fold every RMSNorm gain into the next linear layer, then rotate the residual stream.

    After folding, RMSNorm commutes with any orthogonal map, so ``E' = E Qᵀ``, ``W_in' = W_in diag(g) Qᵀ``,
    ``W_out' = Q W_out`` preserve the function exactly (up to float error). All norm gains become 1.0. A model
    with tied embeddings comes out untied (its output head absorbs the final gain), as an uploader would do.
    """
    out = _copy(state)
    if model_family(out) != "llama":
        raise ValueError("rotation of the residual stream needs RMSNorm (no mean-centring)")
    nm = _names("llama")
    d = out[nm["embed"]].shape[1]
    q = _random_orthogonal(d, rng)
    head = out.get(nm["head"], out[nm["embed"]])  # tied embeddings are untied: the output side is folded
    out[nm["head"]] = (head * out[nm["final"]][None, :]) @ q.T
    out[nm["embed"]] = out[nm["embed"]] @ q.T
    out[nm["final"]] = np.ones(d, dtype=np.float32)
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        g1, g2 = out[f"{pre}{nm['n1']}.weight"], out[f"{pre}{nm['n2']}.weight"]
        for key, g in (("q", g1), ("k", g1), ("v", g1), ("up", g2), ("gate", g2)):
            w = f"{pre}{nm[key]}.weight"
            out[w] = (out[w] * g[None, :]) @ q.T
        for key in ("o", "down"):
            w = f"{pre}{nm[key]}.weight"
            out[w] = q @ out[w]
        out[f"{pre}{nm['n1']}.weight"] = np.ones(d, dtype=np.float32)
        out[f"{pre}{nm['n2']}.weight"] = np.ones(d, dtype=np.float32)
    return out


# --- units and heads -----------------------------------------------------------------------------
def permute_mlp_units(state: Mapping[str, np.ndarray], rng: np.random.Generator) -> State:
    """Relabel the hidden units of every MLP layer independently."""
    out = _copy(state)
    fam = model_family(out)
    nm = _names(fam)
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        n = out[f"{pre}{nm['up']}.weight"].shape[0]
        p = rng.permutation(n)
        for key in ("up", "gate"):
            if key in nm and f"{pre}{nm[key]}.weight" in out:
                out[f"{pre}{nm[key]}.weight"] = out[f"{pre}{nm[key]}.weight"][p]
                if f"{pre}{nm[key]}.bias" in out:
                    out[f"{pre}{nm[key]}.bias"] = out[f"{pre}{nm[key]}.bias"][p]
        out[f"{pre}{nm['down']}.weight"] = out[f"{pre}{nm['down']}.weight"][:, p]
    return out


def _heads(
    state: Mapping[str, np.ndarray], pre: str, nm: Mapping[str, str], head_dim: int
) -> tuple[int, int]:
    nq = state[f"{pre}{nm['q']}.weight"].shape[0] // head_dim
    nkv = state[f"{pre}{nm['k']}.weight"].shape[0] // head_dim
    return nq, nkv


def permute_heads(state: Mapping[str, np.ndarray], rng: np.random.Generator, *, head_dim: int) -> State:
    """Relabel attention heads per layer (KV groups move with their query heads under GQA)."""
    out = _copy(state)
    fam = model_family(out)
    nm = _names(fam)
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        nq, nkv = _heads(out, pre, nm, head_dim)
        group = nq // nkv
        kv_perm = rng.permutation(nkv)
        q_perm = np.concatenate([kv * group + rng.permutation(group) for kv in kv_perm])
        q_rows = (q_perm[:, None] * head_dim + np.arange(head_dim)[None, :]).ravel()
        kv_rows = (kv_perm[:, None] * head_dim + np.arange(head_dim)[None, :]).ravel()
        for key, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
            out[f"{pre}{nm[key]}.weight"] = out[f"{pre}{nm[key]}.weight"][rows]
            if f"{pre}{nm[key]}.bias" in out:
                out[f"{pre}{nm[key]}.bias"] = out[f"{pre}{nm[key]}.bias"][rows]
        out[f"{pre}{nm['o']}.weight"] = out[f"{pre}{nm['o']}.weight"][:, q_rows]
    return out


def rescale_attention(
    state: Mapping[str, np.ndarray], rng: np.random.Generator, *, head_dim: int, log_range: float = 1.4
) -> State:
    """Scale Q by c and K by 1/c, and V by c' and O by 1/c', per head (function-preserving)."""
    out = _copy(state)
    fam = model_family(out)
    nm = _names(fam)
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        nq, nkv = _heads(out, pre, nm, head_dim)
        group = nq // nkv
        c_kv = np.exp(rng.uniform(-log_range, log_range, nkv)).astype(np.float32)
        v_kv = np.exp(rng.uniform(-log_range, log_range, nkv)).astype(np.float32)
        c_rows = np.repeat(c_kv, head_dim)
        cq_rows = np.repeat(np.repeat(c_kv, group), head_dim)
        vq_rows = np.repeat(np.repeat(v_kv, group), head_dim)
        for key, scale in (("q", cq_rows), ("k", 1.0 / c_rows), ("v", np.repeat(v_kv, head_dim))):
            out[f"{pre}{nm[key]}.weight"] *= scale[:, None]
            if f"{pre}{nm[key]}.bias" in out:
                out[f"{pre}{nm[key]}.bias"] *= scale
        out[f"{pre}{nm['o']}.weight"] /= vq_rows[None, :]
    return out


def _transform_value_heads(
    state: Mapping[str, np.ndarray], head_dim: int, make: Callable[[], np.ndarray]
) -> State:
    """Apply an orthogonal ``make()`` to the value space of every KV head (``V ← R V``) and undo it in the
    output columns of every query head that reads it (``O ← O Rᵀ``): function-preserving."""
    out = _copy(state)
    nm = _names(model_family(out))
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        nq, nkv = _heads(out, pre, nm, head_dim)
        group = nq // nkv
        v = out[f"{pre}{nm['v']}.weight"]
        o = out[f"{pre}{nm['o']}.weight"]
        for h in range(nkv):
            r = make()
            sl = slice(h * head_dim, (h + 1) * head_dim)
            v[sl] = r @ v[sl]
            if f"{pre}{nm['v']}.bias" in out:
                out[f"{pre}{nm['v']}.bias"][sl] = r @ out[f"{pre}{nm['v']}.bias"][sl]
            for qh in range(h * group, (h + 1) * group):
                osl = slice(qh * head_dim, (qh + 1) * head_dim)
                o[:, osl] = o[:, osl] @ r.T
    return out


def rotate_heads_vo(state: Mapping[str, np.ndarray], rng: np.random.Generator, *, head_dim: int) -> State:
    """Rotate each value head by a random orthogonal matrix and undo it in the output projection."""
    return _transform_value_heads(state, head_dim, lambda: _random_orthogonal(head_dim, rng))


def rotate_heads_qk(state: Mapping[str, np.ndarray], rng: np.random.Generator, *, head_dim: int) -> State:
    """Rotate queries and keys of each KV group by one orthogonal matrix (``q·k`` unchanged).

    BERT (no positions inside attention) admits any rotation of the head space. Llama's RoPE rotates the
    pairs ``(i, i + head_dim/2)`` by position-dependent angles, so only rotations that commute with it keep
    the function: an independent 2-D rotation of every such pair.
    """
    out = _copy(state)
    fam = model_family(out)
    nm = _names(fam)
    half = head_dim // 2
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        nq, nkv = _heads(out, pre, nm, head_dim)
        group = nq // nkv
        for h in range(nkv):
            if fam == "llama":
                theta = rng.uniform(0, 2 * np.pi, half)
                r = np.zeros((head_dim, head_dim), dtype=np.float32)
                idx = np.arange(half)
                r[idx, idx] = np.cos(theta)
                r[idx, idx + half] = -np.sin(theta)
                r[idx + half, idx] = np.sin(theta)
                r[idx + half, idx + half] = np.cos(theta)
            else:
                r = _random_orthogonal(head_dim, rng)
            heads = [("k", h)] + [("q", qh) for qh in range(h * group, (h + 1) * group)]
            for key, head in heads:
                sl = slice(head * head_dim, (head + 1) * head_dim)
                out[f"{pre}{nm[key]}.weight"][sl] = r @ out[f"{pre}{nm[key]}.weight"][sl]
                if f"{pre}{nm[key]}.bias" in out:
                    out[f"{pre}{nm[key]}.bias"][sl] = r @ out[f"{pre}{nm[key]}.bias"][sl]
    return out


def permute_value_dims(state: Mapping[str, np.ndarray], rng: np.random.Generator, *, head_dim: int) -> State:
    """Relabel the value dimensions inside each KV head (V rows with the matching output columns).

    The symmetry the exact attention test is built on: applied to a derivative it makes that test's null
    true by construction.
    """
    eye = np.eye(head_dim, dtype=np.float32)
    return _transform_value_heads(state, head_dim, lambda: eye[rng.permutation(head_dim)])


# --- compression -----------------------------------------------------------------------------------
def _matrices(state: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k, v in state.items() if v.ndim == 2 and ("layers" in k or "layer." in k)]


def quantize_int8_rows(state: Mapping[str, np.ndarray]) -> State:
    """Symmetric per-row int8 round-to-nearest of every layer matrix (bitsandbytes-style LLM.int8 weights)."""
    out = _copy(state)
    for k in _matrices(out):
        w = out[k]
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12) / 127.0
        out[k] = (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)
    return out


def quantize_4bit_blocks(state: Mapping[str, np.ndarray], *, block: int = 32) -> State:
    """Q4_0-like: blocks of ``block`` values along each row, one scale per block, 16 levels."""
    out = _copy(state)
    for k in _matrices(out):
        w = out[k]
        rows, cols = w.shape
        pad = (-cols) % block
        wp = np.pad(w, ((0, 0), (0, pad))).reshape(rows, -1, block)
        amax_idx = np.abs(wp).argmax(axis=2)
        amax = np.take_along_axis(wp, amax_idx[..., None], axis=2)
        d = amax / -8.0
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.clip(np.round(wp * inv), -8, 7)
        out[k] = (q * d).reshape(rows, -1)[:, :cols].astype(np.float32)
    return out


def magnitude_prune(state: Mapping[str, np.ndarray], *, fraction: float = 0.5) -> State:
    """Zero the smallest-magnitude ``fraction`` of every layer matrix."""
    out = _copy(state)
    for k in _matrices(out):
        w = out[k]
        thr = np.quantile(np.abs(w), fraction)
        out[k] = np.where(np.abs(w) < thr, 0.0, w).astype(np.float32)
    return out


def structured_prune_mlp(state: Mapping[str, np.ndarray], *, fraction: float = 0.25) -> State:
    """Remove the ``fraction`` of MLP units with the smallest weight norms (keeping their order)."""
    out = _copy(state)
    fam = model_family(out)
    nm = _names(fam)
    for i in range(n_layers(out)):
        pre = nm["prefix"].format(i=i)
        up = out[f"{pre}{nm['up']}.weight"]
        down = out[f"{pre}{nm['down']}.weight"]
        score = np.linalg.norm(up, axis=1) * np.linalg.norm(down, axis=0)
        keep = np.sort(np.argsort(score)[round(fraction * len(score)) :])
        for key in ("up", "gate"):
            if key in nm and f"{pre}{nm[key]}.weight" in out:
                out[f"{pre}{nm[key]}.weight"] = out[f"{pre}{nm[key]}.weight"][keep]
                if f"{pre}{nm[key]}.bias" in out:
                    out[f"{pre}{nm[key]}.bias"] = out[f"{pre}{nm[key]}.bias"][keep]
        out[f"{pre}{nm['down']}.weight"] = down[:, keep]
    return out


def _relayer(state: Mapping[str, np.ndarray], mapping: list[int]) -> State:
    """New layer ``j`` is old layer ``mapping[j]``."""
    out: State = {}
    for k, v in state.items():
        if not _LAYER.match(k):
            out[k] = np.array(v, dtype=np.float32, copy=True)
    for new, old in enumerate(mapping):
        for k, v in state.items():
            m = _LAYER.match(k)
            if m and int(m.group(2)) == old:
                out[f"{m.group(1)}.{new}.{m.group(3)}"] = np.array(v, dtype=np.float32, copy=True)
    return out


def drop_layers(state: Mapping[str, np.ndarray], *, keep: list[int]) -> State:
    """Keep only the listed layers (in order), renumbered from 0."""
    return _relayer(state, list(keep))


def duplicate_layers(state: Mapping[str, np.ndarray], *, repeat: list[int]) -> State:
    """Depth up-scaling: insert a copy of each listed layer right after it."""
    mapping: list[int] = []
    for i in range(n_layers(state)):
        mapping.append(i)
        if i in repeat:
            mapping.append(i)
    return _relayer(state, mapping)


def merge(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], *, share_a: float) -> State:
    """Linear merge ``share_a·a + (1-share_a)·b`` of two same-shape checkpoints."""
    if a.keys() != b.keys():
        raise ValueError("merge needs identical tensor names")
    return {k: (share_a * a[k] + (1.0 - share_a) * b[k]).astype(np.float32) for k in a}


# --- vocabulary ---------------------------------------------------------------------------------------
def _vocab_tensors(state: Mapping[str, np.ndarray]) -> list[str]:
    fam = model_family(state)
    nm = _names(fam)
    return [nm["embed"]] + ([nm["head"]] if "head" in nm and nm["head"] in state else [])


def vocab_extend(
    state: Mapping[str, np.ndarray], tokens: list[str], *, extra: int, rng: np.random.Generator
) -> tuple[State, list[str]]:
    """Append ``extra`` new tokens with freshly initialised rows (Chinese-LLaMA-style extension)."""
    out = _copy(state)
    for k in _vocab_tensors(out):
        w = out[k]
        new = rng.standard_normal((extra, w.shape[1])).astype(np.float32) * float(w.std())
        out[k] = np.concatenate([w, new])
    return out, list(tokens) + [f"<new_{i}>" for i in range(extra)]


def vocab_reorder(
    state: Mapping[str, np.ndarray],
    tokens: list[str],
    *,
    rng: np.random.Generator,
    drop_fraction: float = 0.0,
) -> tuple[State, list[str]]:
    """Shuffle token ids (and optionally drop some tokens); the tokenizer changes with the rows."""
    out = _copy(state)
    n = len(tokens)
    order = rng.permutation(n)
    if drop_fraction:
        order = np.sort(order[: round(n * (1 - drop_fraction))])
        order = rng.permutation(order)
    for k in _vocab_tensors(out):
        out[k] = out[k][order]
    return out, [tokens[i] for i in order]
