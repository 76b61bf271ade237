"""The attention tier through real files: safetensors and GGUF written by the real writers, read back with
`ModelView`, profiled at registration and sampled from suspects — the path the daemon and `compare` take.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fingerprints import ComparePolicy, compare
from monitor.fingerprinting import SamplingSettings, build_reference, confirm_match, read_sample
from monitor.formats.canonical import ModelView
from monitor.remote.source import LocalFileSet
from monitor.synth import transforms as T
from monitor.synth.export import save_gguf, save_hf_repo
from monitor.synth.models import LlamaConfig
from monitor.synth.train import TrainSpec, shared_vocab, train

CFG = LlamaConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    max_position_embeddings=64,
)
HEAD_DIM = 16
SECRET = b"attention-reads"
SETTINGS = SamplingSettings(tokens=192, layers=2, rows_per_layer=32, attention_heads=4)
POLICY = ComparePolicy()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attention")
    base, _ = train(CFG, TrainSpec(seed=1, steps=60, batch=8, seq_len=32), threads=1)
    vocab = shared_vocab(CFG.vocab_size)
    protected = save_hf_repo(tmp / "protected", base, CFG, vocab)
    fs = LocalFileSet(protected)
    try:
        ref = build_reference(ModelView.open(fs), name="protected", secret=SECRET, settings=SETTINGS)
    finally:
        fs.close()
    return {"tmp": tmp, "base": base, "vocab": vocab, "ref": ref}


def _scan(folder: Path, ref, *, settings: SamplingSettings = SETTINGS, budget: int | None = None):
    fs = LocalFileSet(folder, budget=budget)
    try:
        view = ModelView.open(fs)
        kw = {"secret": SECRET, "suspect_key": "k", "settings": settings}
        s = read_sample(view, tokens=ref.tokens, refs=[ref], **kw)
        first = compare(ref, s, POLICY)
        after_first = fs.stats.bytes_read
        c = confirm_match(view, ref, s, first, policy=POLICY, **kw)
        return first, c, after_first, fs.stats.bytes_read
    finally:
        fs.close()


def test_reference_profiles_every_query_key_and_value_row(world):
    att = world["ref"].attention
    assert att["q"].shape == (3, 4 * HEAD_DIM, 128)
    assert att["k"].shape == att["v"].shape == (3, 2 * HEAD_DIM, 128)
    assert att["q_norm"].shape == (3, 4 * HEAD_DIM)
    np.testing.assert_allclose(np.linalg.norm(att["q"][0].astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_head_permutation_and_rescaling_are_named_from_safetensors(world):
    rng = np.random.default_rng(3)
    permuted = T.permute_heads(world["base"], rng, head_dim=HEAD_DIM)
    state = T.rescale_attention(permuted, rng, head_dim=HEAD_DIM)
    folder = save_hf_repo(world["tmp"] / "heads", state, CFG, world["vocab"], dtype="bfloat16")
    first, c, before, after = _scan(folder, world["ref"])
    assert first.transform == "identity (copy)"
    assert c.verdict == "derived"
    assert "attention heads permuted" in c.transform
    assert "Q/K rescaled" in c.transform or "V/O rescaled" in c.transform
    assert after > before  # the tier read rows of its own, after the verdict


def test_rope_compatible_qk_rotation_is_named_through_gguf(world):
    """GGUF stores Q/K rows in llama.cpp's RoPE order; the canonical view undoes it, so a rotation of the
    RoPE frequency pairs made before conversion is seen exactly as in the HF layout."""
    state = T.rotate_heads_qk(world["base"], np.random.default_rng(4), head_dim=HEAD_DIM)
    path = save_gguf(world["tmp"] / "gguf" / "m.Q8_0.gguf", state, CFG, world["vocab"], qtype="Q8_0")
    _, c, _, _ = _scan(path.parent, world["ref"])
    assert c.verdict == "derived"
    assert "per-head Q/K rotation" in c.transform, c.tests[-1]


def test_copy_gets_no_attention_findings_and_an_exact_value_test(world):
    folder = save_hf_repo(world["tmp"] / "copy", world["base"], CFG, world["vocab"], dtype="bfloat16")
    _, c, _, _ = _scan(folder, world["ref"])
    assert c.transform == "identity (copy)"
    v = next(t for t in c.tests if t["name"].startswith("attention-v-rows"))
    assert v["exact"] is True
    assert v["log10_p"] < -10


def test_budget_exhausted_by_the_tier_keeps_the_first_verdict(world):
    folder = save_hf_repo(world["tmp"] / "budget", world["base"], CFG, world["vocab"], dtype="bfloat16")
    _, _, needed, _ = _scan(folder, world["ref"], settings=replace(SETTINGS, attention_heads=0))
    first, c, _, _ = _scan(folder, world["ref"], budget=needed + 100)
    assert c.verdict == first.verdict == "derived"
    skipped = c.tests[-1]
    assert skipped["name"] == "attention-heads"
    assert "budget" in skipped["skipped"]


def test_tier_off_and_old_references_change_nothing(world):
    folder = save_hf_repo(world["tmp"] / "off", world["base"], CFG, world["vocab"], dtype="bfloat16")
    first, c, before, after = _scan(folder, world["ref"], settings=replace(SETTINGS, attention_heads=0))
    assert c is first
    assert after == before
    old = replace(world["ref"], attention={})
    first, c, before, after = _scan(folder, old)
    assert c is first
    assert after == before
