"""Build references and suspect samples straight from in-memory Llama state dicts (pure-math tests).

The I/O path (files → ModelView → `monitor.fingerprinting`) has its own tests; these helpers let the
statistics be tested on many derivations quickly, without writing files.
"""

from __future__ import annotations

import numpy as np

from fingerprints import (
    AttentionSample,
    LayerSample,
    ReferenceBuilder,
    ReferenceFingerprint,
    SuspectSample,
)
from monitor.synth.transforms import n_layers


def reference(
    state: dict[str, np.ndarray], tokens: list[str], *, block: tuple[int, int], head_dim: int | None = None
) -> ReferenceFingerprint:
    """The protected model's reference; with ``head_dim`` also its attention profiles."""
    ids = np.arange(*block)
    emb = state["model.embed_tokens.weight"]
    b = ReferenceBuilder(
        name="protected",
        algo="test",
        arch=arch(state, head_dim=head_dim),
        tokens=[tokens[i] for i in ids],
        token_ids=ids,
        embed=emb[ids],
    )
    for i in range(n_layers(state)):
        p = f"model.layers.{i}."
        b.add_layer(
            i,
            {
                "up": state[p + "mlp.up_proj.weight"],
                "gate": state[p + "mlp.gate_proj.weight"],
                "down": state[p + "mlp.down_proj.weight"].T,
            },
            mlp_gain=state[p + "post_attention_layernorm.weight"],
            attention=(
                {k: state[p + f"self_attn.{k}_proj.weight"] for k in "qkv"} if head_dim is not None else None
            ),
            attn_gain=state[p + "input_layernorm.weight"],
        )
    return b.build(final_norm=state["model.norm.weight"])


def arch(state: dict[str, np.ndarray], *, head_dim: int | None = None) -> dict[str, object]:
    heads = {}
    if head_dim is not None:
        heads = {
            "head_dim": head_dim,
            "n_heads": state["model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
            "n_kv_heads": state["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        }
    return heads | {
        "family": "llama",
        "n_layers": n_layers(state),
        "d_model": state["model.embed_tokens.weight"].shape[1],
        "d_ff": state["model.layers.0.mlp.up_proj.weight"].shape[0],
        "vocab_size": state["model.embed_tokens.weight"].shape[0],
        "gated_mlp": True,
        "norm": "rmsnorm",
    }


def sample(
    state: dict[str, np.ndarray],
    tokens: list[str],
    *,
    block: tuple[int, int],
    k: int = 32,
    kind: str = "up",
    seed: int = 0,
    layers: list[int] | None = None,
) -> SuspectSample:
    rng = np.random.default_rng(seed)
    emb = state["model.embed_tokens.weight"]
    ids = np.arange(*block)
    out = []
    for i in layers if layers is not None else range(n_layers(state)):
        p = f"model.layers.{i}."
        w = {
            "up": state[p + "mlp.up_proj.weight"],
            "gate": state[p + "mlp.gate_proj.weight"],
            "down": state[p + "mlp.down_proj.weight"].T,
        }[kind]
        start = int(rng.integers(0, w.shape[0] - k + 1))
        out.append(
            LayerSample(
                layer=i,
                kind=kind,
                start=start,
                units=w[start : start + k],  # type: ignore[arg-type]
                gain=state[p + "post_attention_layernorm.weight"] if kind != "down" else None,
            )
        )
    return SuspectSample(
        arch=arch(state), tokens=tuple(tokens[i] for i in ids), embed=emb[ids], layers=tuple(out)
    )


def attention_sample(
    state: dict[str, np.ndarray],
    *,
    layer: int,
    ref_layer: int,
    head_dim: int,
    head_start: int = 0,
    heads: int = 1,
) -> AttentionSample:
    """Query heads ``head_start..+heads`` and their KV heads, as `read_attention` reads them."""
    p = f"model.layers.{layer}."
    q, k, v = (state[p + f"self_attn.{x}_proj.weight"] for x in "qkv")
    n_heads, n_kv = q.shape[0] // head_dim, k.shape[0] // head_dim
    group = n_heads // n_kv
    kv0, kv1 = head_start // group, (head_start + heads - 1) // group + 1
    return AttentionSample(
        layer=layer,
        ref_layer=ref_layer,
        head_start=head_start,
        kv_start=kv0,
        q=q[head_start * head_dim : (head_start + heads) * head_dim],
        k=k[kv0 * head_dim : kv1 * head_dim],
        v=v[kv0 * head_dim : kv1 * head_dim],
        gain=state[p + "input_layernorm.weight"],
        head_dim=head_dim,
        n_heads=n_heads,
        n_kv_heads=n_kv,
    )
