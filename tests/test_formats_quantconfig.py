"""Quantisation settings from config.json, quantize_config.json or quant_config.json."""

from __future__ import annotations

import pytest

from monitor.errors import FormatError
from monitor.formats.quantconfig import QuantConfig


def test_precedence_and_defaults():
    assert QuantConfig.from_documents() is None
    assert QuantConfig.from_documents(config={"model_type": "llama"}) is None
    gptq = QuantConfig.from_documents(
        quantize_config={"bits": 4, "group_size": 128, "desc_act": True, "sym": True}
    )
    assert gptq == QuantConfig("gptq", 4, 128, True, True, None, None, "quantize_config.json")
    awq = QuantConfig.from_documents(quant_config={"w_bit": 4, "q_group_size": 64, "version": "GEMM"})
    assert (awq.method, awq.bits, awq.group_size, awq.version) == ("awq", 4, 64, "gemm")
    both = QuantConfig.from_documents(
        config={"quantization_config": {"quant_method": "AWQ", "bits": 4}}, quantize_config={"bits": 8}
    )
    assert (both.method, both.bits, both.source) == ("awq", 4, "config.json:quantization_config")
    bnb = QuantConfig.from_documents(config={"quantization_config": {"load_in_4bit": True}})
    assert bnb.method == "bitsandbytes"
    marlin = QuantConfig.from_documents(quantize_config={"bits": 4, "is_marlin_format": True})
    assert marlin.checkpoint_format == "marlin"


@pytest.mark.parametrize(
    "doc", [{"bits": True}, {"bits": "4"}, {"group_size": 1.5}, {"desc_act": "yes"}, {"quant_method": 3}]
)
def test_wrong_types_are_format_errors(doc):
    with pytest.raises(FormatError, match=r"quantize_config\.json"):
        QuantConfig.from_documents(quantize_config=doc)
