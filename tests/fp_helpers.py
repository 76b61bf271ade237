"""Build references and suspect samples straight from in-memory Llama state dicts (pure-math tests).

The I/O path (files → ModelView → `monitor.fingerprinting`) has its own tests; these helpers let the
statistics be tested on many derivations quickly, without writing files.
"""

from __future__ import annotations

import numpy as np

from fingerprints import LayerSample, ReferenceBuilder, ReferenceFingerprint, SuspectSample
from monitor.synth.transforms import n_layers


def reference(
    state: dict[str, np.ndarray], tokens: list[str], *, block: tuple[int, int]
) -> ReferenceFingerprint:
    ids = np.arange(*block)
    emb = state["model.embed_tokens.weight"]
    b = ReferenceBuilder(
        name="protected",
        algo="test",
        arch=arch(state),
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
        )
    return b.build(final_norm=state["model.norm.weight"])


def arch(state: dict[str, np.ndarray]) -> dict[str, object]:
    return {
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
