"""Grouping stored tensors into logical weights from names alone (what a shard index gives)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import save_file

from monitor.errors import FormatError
from monitor.formats.grouping import build_group, plan_groups
from monitor.formats.safetensors import open_safetensors
from monitor.remote.source import LocalFileSet

NAMES = [
    "model.embed_tokens.weight",
    "model.layers.0.mlp.up_proj.qweight",
    "model.layers.0.mlp.up_proj.scales",
    "model.layers.0.mlp.up_proj.qzeros",
    "model.layers.0.mlp.up_proj.g_idx",
    "model.layers.1.mlp.up_proj.weight",
    "model.layers.1.mlp.up_proj.SCB",
    "model.layers.1.mlp.up_proj.weight_format",
    "model.layers.2.mlp.up_proj.weight",
    "model.layers.2.mlp.up_proj.weight.absmax",
    "model.layers.2.mlp.up_proj.weight.quant_map",
    "model.layers.2.mlp.up_proj.weight.quant_state.bitsandbytes__nf4",
    "model.norm.weight",
]


def test_groups_from_names_alone():
    groups = plan_groups(NAMES)
    assert list(groups) == [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.2.mlp.up_proj.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
    ]
    assert [g.kind for g in groups.values()] == ["packed", "bnb-int8", "bnb-4bit", "dense", "dense"]
    assert groups["model.layers.0.mlp.up_proj.weight"].stored == tuple(
        f"model.layers.0.mlp.up_proj.{k}" for k in ("qweight", "qzeros", "scales", "g_idx")
    )
    assert groups["model.layers.2.mlp.up_proj.weight"].parts["quant_state"].endswith("bitsandbytes__nf4")
    assert set(plan_groups(NAMES, quantised=False)) == set(NAMES)  # GGUF, PyTorch: every tensor as stored


def test_a_4bit_layer_without_its_parts_is_refused_by_name():
    with pytest.raises(FormatError, match="without absmax, quant_map"):
        plan_groups(["l.weight", "l.weight.quant_state.bitsandbytes__fp4"])


def test_an_int8_scale_without_its_weight_fails_when_built(tmp_path):
    save_file({"l.SCB": np.ones(4, np.float32)}, tmp_path / "m.safetensors")
    file = open_safetensors(LocalFileSet(tmp_path).open("m.safetensors"))
    group = plan_groups(["l.SCB"])["l.weight"]
    with pytest.raises(FormatError, match=r"l\.SCB without an int8 2-D l\.weight"):
        build_group(group, lambda name: file)
