"""End-to-end statistics on real (small, really trained) models and their real derivations.

Models are trained for a few seconds here: a base, an independent model with another seed, and a
fine-tune of the base (actual gradient steps). Each function-preserving obfuscation is applied exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from fingerprints import ComparePolicy, compare
from monitor.synth import transforms as T
from monitor.synth.models import LlamaConfig
from monitor.synth.train import TrainSpec, shared_vocab, train
from tests.fp_helpers import reference, sample

CFG = LlamaConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
)
BLOCK = (200, 392)
HEAD_DIM = 16


@pytest.fixture(scope="module")
def models():
    base, _ = train(CFG, TrainSpec(seed=1, steps=80, batch=8, seq_len=32), threads=1)
    other, _ = train(CFG, TrainSpec(seed=2, steps=80, batch=8, seq_len=32), threads=1)
    tuned, info = train(
        CFG,
        TrainSpec(seed=3, split="n-z", steps=40, batch=8, seq_len=32, lr=2e-3),
        init_state=base,
        threads=1,
    )
    assert info["loss_last"] < info["loss_first"] + 1.0
    return {"base": base, "other": other, "tuned": tuned, "tokens": list(shared_vocab(CFG.vocab_size).tokens)}


@pytest.fixture(scope="module")
def ref(models):
    return reference(models["base"], models["tokens"], block=BLOCK)


def _derivations(models):
    rng = np.random.default_rng(11)
    base, tuned, other = models["base"], models["tuned"], models["other"]
    return {
        "copy": base,
        "fine-tune": tuned,
        "int8": T.quantize_int8_rows(base),
        "4-bit blocks": T.quantize_4bit_blocks(base),
        "magnitude prune 50%": T.magnitude_prune(base, fraction=0.5),
        "structured prune 25%": T.structured_prune_mlp(base, fraction=0.25),
        "layer drop": T.drop_layers(base, keep=[0, 2]),
        "layer duplication": T.duplicate_layers(base, repeat=[1]),
        "residual permutation": T.permute_residual(base, rng),
        "sign flips": T.sign_flip_residual(base, rng),
        "fold + rotation": T.fold_norms_and_rotate(base, rng),
        "MLP permutation": T.permute_mlp_units(base, rng),
        "head permutation": T.permute_heads(base, rng, head_dim=HEAD_DIM),
        "attention rescaling": T.rescale_attention(base, rng, head_dim=HEAD_DIM),
        "merge 50% with independent": T.merge(base, other, share_a=0.5),
        "fine-tune + rotation + 4-bit": T.quantize_4bit_blocks(T.fold_norms_and_rotate(tuned, rng)),
    }


@pytest.mark.parametrize("kind", ["up", "gate", "down"])
def test_every_derivation_is_detected_with_tiny_p(models, ref, kind):
    for name, state in _derivations(models).items():
        c = compare(ref, sample(state, models["tokens"], block=BLOCK, kind=kind, seed=5))
        assert c.verdict == "derived", (name, c.matched, c.tests)
        assert c.log10_p <= -12, (name, c.log10_p)


def test_transform_is_reported(models, ref):
    rng = np.random.default_rng(3)
    toks = models["tokens"]
    rotated = compare(ref, sample(T.fold_norms_and_rotate(models["base"], rng), toks, block=BLOCK))
    assert "residual rotation" in rotated.transform
    assert "norm gains folded" in rotated.transform
    permuted = compare(ref, sample(T.permute_residual(models["base"], rng), toks, block=BLOCK))
    assert "residual permutation" in permuted.transform
    mlp = compare(ref, sample(T.permute_mlp_units(models["base"], rng), toks, block=BLOCK))
    assert "MLP unit permutation" in mlp.transform
    dropped = compare(ref, sample(T.drop_layers(models["base"], keep=[0, 2]), toks, block=BLOCK))
    assert "layers remapped" in dropped.transform
    assert compare(ref, sample(models["base"], toks, block=BLOCK)).transform == "identity (copy)"
    flipped = compare(ref, sample(T.sign_flip_residual(models["base"], rng), toks, block=BLOCK))
    assert "residual sign flips" in flipped.transform


def test_independent_model_is_independent(models, ref):
    for seed in range(6):
        c = compare(ref, sample(models["other"], models["tokens"], block=BLOCK, seed=seed))
        assert c.verdict == "independent", c.tests
        assert c.log10_p > -4


def test_exchangeability_action_gives_valid_p_values(models, ref):
    """H0 made literal: relabel the residual and every MLP layer of a *derived* model uniformly at random.

    Under exactly this action the tests' nulls hold by construction, so p-values must be super-uniform:
    P(p <= a) <= a. (Content still matches perfectly, so this is the hardest case for validity.)
    """
    log10_ps = []
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        relabelled = T.permute_mlp_units(T.permute_residual(models["tuned"], rng), rng)
        c = compare(ref, sample(relabelled, models["tokens"], block=BLOCK, seed=seed))
        log10_ps.append(c.log10_p)
        assert c.verdict != "derived"
    ps = 10 ** np.asarray(log10_ps)
    for a in (0.05, 0.2, 0.5):
        assert np.mean(ps <= a) <= a + 0.1


def test_full_relabelling_is_flagged_only_as_approximate(models, ref):
    """The theoretical limit: when every exchangeable group is relabelled no exact test can fire, but the
    approximate within-model evidence still marks the upload as inconclusive rather than independent."""
    rng = np.random.default_rng(5)
    state = T.permute_mlp_units(T.fold_norms_and_rotate(models["base"], rng), rng)
    c = compare(ref, sample(state, models["tokens"], block=BLOCK, k=64))
    assert c.verdict == "inconclusive"
    approx = [t for t in c.tests if t["name"] == "mlp-units-permuted"]
    assert approx
    assert approx[0]["exact"] is False


def test_vocabulary_reorder_and_extension(models, ref):
    rng = np.random.default_rng(9)
    toks = models["tokens"]
    state, new_tokens = T.vocab_reorder(models["base"], toks, rng=rng)
    where = {t: i for i, t in enumerate(new_tokens)}
    ids = np.asarray([where[toks[i]] for i in range(*BLOCK)])
    s = sample(state, new_tokens, block=(0, 1))  # layers only; embed rows replaced below
    from fingerprints import SuspectSample

    s = SuspectSample(
        arch=s.arch,
        tokens=tuple(new_tokens[i] for i in ids),
        embed=state["model.embed_tokens.weight"][ids],
        layers=s.layers,
    )
    c = compare(ref, s)
    assert c.verdict == "derived"
    ext, ext_tokens = T.vocab_extend(models["base"], toks, extra=500, rng=rng)
    c2 = compare(ref, sample(ext, ext_tokens, block=BLOCK))
    assert c2.verdict == "derived"
    assert "vocabulary" in c2.transform


def test_no_shared_tokens_is_not_evidence(models, ref):
    s = sample(models["base"], [f"x{i}" for i in range(CFG.vocab_size)], block=BLOCK)
    c = compare(ref, s)
    assert c.verdict == "independent"
    assert c.log10_p == 0.0


def test_policy_alpha_controls_the_verdict(models, ref):
    s = sample(models["tuned"], models["tokens"], block=BLOCK)
    strict = compare(ref, s, ComparePolicy(alpha=10 ** (compare(ref, s).log10_p - 5)))
    assert strict.verdict == "inconclusive"
