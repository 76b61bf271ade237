"""The attention tier on really trained models: which head, what was done to it, and a valid exact test.

A tiny GQA Llama (4 query heads, 2 KV heads) is trained here, derived with each attention-only
obfuscation (applied exactly, and checked to preserve the model's function), and compared through
`fingerprints.compare` + `fingerprints.confirm` — the path the daemon takes after the cheap tiers flag a
candidate.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fingerprints import ComparePolicy, Comparison, attention_target, compare, confirm
from monitor.synth import transforms as T
from monitor.synth.models import LlamaConfig, LlamaLM
from monitor.synth.train import TrainSpec, shared_vocab, train
from tests.fp_helpers import attention_sample, reference, sample

CFG = LlamaConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
)
HEAD_DIM = 16
BLOCK = (200, 392)


@pytest.fixture(scope="module")
def models():
    base, _ = train(CFG, TrainSpec(seed=1, steps=80, batch=8, seq_len=32), threads=1)
    other, _ = train(CFG, TrainSpec(seed=2, steps=80, batch=8, seq_len=32), threads=1)
    tuned, _ = train(
        CFG,
        TrainSpec(seed=3, split="n-z", steps=40, batch=8, seq_len=32, lr=2e-3),
        init_state=base,
        threads=1,
    )
    return {"base": base, "other": other, "tuned": tuned, "tokens": list(shared_vocab(CFG.vocab_size).tokens)}


@pytest.fixture(scope="module")
def ref(models):
    return reference(models["base"], models["tokens"], block=BLOCK, head_dim=HEAD_DIM)


def _logits(state: dict[str, np.ndarray]) -> np.ndarray:
    model = LlamaLM(CFG)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 24)))
    with torch.no_grad():
        return model(ids).numpy()


def _confirmed(ref, models, state, *, heads: int = 4, policy: ComparePolicy | None = None) -> Comparison:
    toks = models["tokens"]
    s = sample(state, toks, block=BLOCK, seed=5)
    first = compare(ref, s, policy)
    target = attention_target(first)
    assert target is not None, first.tests
    att = attention_sample(state, layer=target[0], ref_layer=target[1], head_dim=HEAD_DIM, heads=heads)
    return confirm(ref, s, first, att, policy)


@pytest.mark.parametrize(
    "transform",
    [
        lambda s, r: T.permute_heads(s, r, head_dim=HEAD_DIM),
        lambda s, r: T.rescale_attention(s, r, head_dim=HEAD_DIM),
        lambda s, r: T.rotate_heads_vo(s, r, head_dim=HEAD_DIM),
        lambda s, r: T.rotate_heads_qk(s, r, head_dim=HEAD_DIM),
        lambda s, r: T.permute_value_dims(s, r, head_dim=HEAD_DIM),
    ],
    ids=["heads", "rescale", "vo-rotation", "qk-rotation", "value-dims"],
)
def test_attention_obfuscations_preserve_function(models, transform):
    base = models["base"]
    changed = transform(base, np.random.default_rng(4))
    assert any(not np.allclose(base[k], changed[k]) for k in base)
    np.testing.assert_allclose(_logits(changed), _logits(base), atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("heads", "attention heads permuted"),
        ("rescale", "Q/K rescaled"),
        ("rescale", "V/O rescaled"),
        ("vo-rotation", "per-head V/O rotation"),
        ("qk-rotation", "per-head Q/K rotation"),
        ("value-dims", "value dims permuted"),
    ],
)
def test_attention_transformations_are_named(models, ref, name, expected):
    rng = np.random.default_rng(8)
    state = {
        "heads": lambda: T.permute_heads(models["base"], rng, head_dim=HEAD_DIM),
        "rescale": lambda: T.rescale_attention(models["base"], rng, head_dim=HEAD_DIM, log_range=1.4),
        "vo-rotation": lambda: T.rotate_heads_vo(models["base"], rng, head_dim=HEAD_DIM),
        "qk-rotation": lambda: T.rotate_heads_qk(models["base"], rng, head_dim=HEAD_DIM),
        "value-dims": lambda: T.permute_value_dims(models["base"], rng, head_dim=HEAD_DIM),
    }[name]()
    c = _confirmed(ref, models, state)
    assert c.verdict == "derived"
    assert expected in c.transform, (c.transform, c.tests[-2:])
    assert c.transform != "identity (copy)"


def test_copy_and_fine_tune_name_nothing_in_attention(models, ref):
    for key in ("base", "tuned"):
        c = _confirmed(ref, models, models[key])
        heads = next(t for t in c.tests if t["name"].startswith("attention-heads"))
        assert heads["findings"] == [], (key, heads)
    assert _confirmed(ref, models, models["base"]).transform == "identity (copy)"


def test_value_row_test_adds_exact_evidence(models, ref):
    s = sample(models["tuned"], models["tokens"], block=BLOCK, seed=5)
    first = compare(ref, s)
    c = _confirmed(ref, models, models["tuned"])
    v = next(t for t in c.tests if t["name"].startswith("attention-v-rows"))
    assert v["exact"] is True
    assert v["log10_p"] < -5
    assert c.log10_p < first.log10_p
    assert c.tests[: len(first.tests)] == first.tests


def test_value_row_p_values_are_valid_under_their_own_symmetry(models, ref):
    """H0 made literal for this test: relabel the value dims of every head uniformly at random. Its
    p-values must then be super-uniform whatever else matches (here everything else is a copy)."""
    log10_ps = []
    for seed in range(40):
        state = T.permute_value_dims(models["tuned"], np.random.default_rng(500 + seed), head_dim=HEAD_DIM)
        c = _confirmed(ref, models, state, heads=1)
        v = next(t for t in c.tests if t["name"].startswith("attention-v-rows"))
        log10_ps.append(v["log10_p"])
    ps = 10 ** np.asarray(log10_ps)
    for a in (0.05, 0.2, 0.5):
        assert np.mean(ps <= a) <= a + 0.1, (a, sorted(log10_ps)[:5])


def test_independent_model_gets_no_attention_evidence(models, ref):
    toks = models["tokens"]
    first = compare(ref, sample(models["other"], toks, block=BLOCK, seed=5))
    assert first.verdict == "independent"
    assert attention_target(first) is None
    # Forced anyway (as if flagged): the value rows of an independent model carry no exact evidence.
    for layer in range(CFG.num_hidden_layers):
        att = attention_sample(models["other"], layer=layer, ref_layer=layer, head_dim=HEAD_DIM, heads=4)
        c = confirm(ref, sample(models["other"], toks, block=BLOCK, seed=5), first, att)
        v = next(t for t in c.tests if t["name"].startswith("attention-v-rows"))
        assert v["log10_p"] > -3, v


def test_reference_without_attention_leaves_the_comparison_alone(models):
    plain = reference(models["base"], models["tokens"], block=BLOCK)
    assert plain.attention == {}
    s = sample(models["base"], models["tokens"], block=BLOCK, seed=5)
    first = compare(plain, s)
    att = attention_sample(models["base"], layer=0, ref_layer=0, head_dim=HEAD_DIM)
    assert confirm(plain, s, first, att) is first


def test_attention_profiles_round_trip_through_storage(ref):
    from fingerprints import ReferenceFingerprint

    again = ReferenceFingerprint.from_parts(ref.header(), ref.to_arrays())
    assert set(again.attention) == {"q", "k", "v", "q_norm", "k_norm", "v_norm"}
    assert again.attention["q"].dtype == np.float16
    assert again.attention["q_norm"].dtype == np.float32
    np.testing.assert_array_equal(again.attention["v"], ref.attention["v"])


def test_relabelling_residual_and_mlp_but_not_value_dims_is_caught_exactly(models, ref):
    """The limit of the cheap tiers (every residual and MLP label relabelled) is reached only if the value
    dimensions of every head are relabelled too: otherwise the attention tier's exact test decides."""
    rng = np.random.default_rng(5)
    state = T.permute_mlp_units(T.fold_norms_and_rotate(models["base"], rng), rng)
    s = sample(state, models["tokens"], block=BLOCK, k=64)
    first = compare(ref, s)
    assert first.verdict == "inconclusive"
    target = attention_target(first)
    assert target is not None
    att = attention_sample(state, layer=target[0], ref_layer=target[1], head_dim=HEAD_DIM, heads=4)
    assert confirm(ref, s, first, att).verdict == "derived"
    hidden = T.permute_value_dims(state, rng, head_dim=HEAD_DIM)
    s_hidden = sample(hidden, models["tokens"], block=BLOCK, k=64)
    first_hidden = compare(ref, s_hidden)
    att = attention_sample(hidden, layer=target[0], ref_layer=target[1], head_dim=HEAD_DIM, heads=4)
    assert confirm(ref, s_hidden, first_hidden, att).verdict != "derived"
