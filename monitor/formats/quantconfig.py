"""Quantisation settings of a checkpoint, from whichever document the quantiser wrote.

GPTQ and AWQ need a few settings the tensors do not carry unambiguously (the GPTQ zero-point
convention, whether act-order made ``g_idx`` non-trivial, the AWQ kernel layout). transformers writes
them to ``config.json`` as ``quantization_config``; AutoGPTQ to ``quantize_config.json``; AutoAWQ to
``quant_config.json``. `QuantConfig.from_documents` reads the first present, type-checked, so a
hostile config is a `FormatError` and not a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from monitor.errors import FormatError

__all__ = ["QuantConfig"]


@dataclass(frozen=True)
class QuantConfig:
    """Quantisation settings from ``config.json``'s ``quantization_config``, ``quantize_config.json``
    (AutoGPTQ) or ``quant_config.json`` (AutoAWQ).

    Attributes:
        method (`str`): ``gptq``, ``awq``, ``bitsandbytes`` or whatever the file says.
        bits (`int | None`), group_size (`int | None`): as configured (``-1`` group size = one group).
        sym (`bool | None`), desc_act (`bool | None`): GPTQ symmetric / act-order flags.
        checkpoint_format (`str | None`): ``gptq`` (v1, zeros stored minus one), ``gptq_v2``...
        version (`str | None`): AWQ kernel layout (``gemm``...).
        source (`str`): where it was read.
    """

    method: str
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    desc_act: bool | None = None
    checkpoint_format: str | None = None
    version: str | None = None
    source: str = ""

    @classmethod
    def from_documents(
        cls,
        *,
        config: Mapping[str, Any] | None = None,
        quantize_config: Mapping[str, Any] | None = None,
        quant_config: Mapping[str, Any] | None = None,
    ) -> QuantConfig | None:
        """Pick the first of the three documents that is present; ``None`` if none is.

        Raises:
            `FormatError`: a present document has values of the wrong type.
        """
        if config is not None and isinstance(config.get("quantization_config"), dict):
            doc, source, default = config["quantization_config"], "config.json:quantization_config", None
        elif quantize_config is not None:
            doc, source, default = quantize_config, "quantize_config.json", "gptq"
        elif quant_config is not None:
            doc, source, default = quant_config, "quant_config.json", "awq"
        else:
            return None

        def get(*keys: str, kind: type | tuple[type, ...]) -> Any:
            for key in keys:
                if key in doc and doc[key] is not None:
                    value = doc[key]
                    if isinstance(value, bool) and kind is int:
                        raise FormatError(f"{source}: {key} must be an integer")
                    if not isinstance(value, kind):
                        raise FormatError(f"{source}: {key} has the wrong type {type(value).__name__}")
                    return value
            return None

        method = get("quant_method", kind=str) or default
        if method is None:
            method = "bitsandbytes" if (doc.get("load_in_8bit") or doc.get("load_in_4bit")) else "unknown"
        fmt = "marlin" if get("is_marlin_format", kind=bool) else get("checkpoint_format", kind=str)
        version = get("version", kind=str)
        return cls(
            method=method.lower(),
            bits=get("bits", "w_bit", kind=int),
            group_size=get("group_size", "q_group_size", kind=int),
            sym=get("sym", kind=bool),
            desc_act=get("desc_act", kind=bool),
            checkpoint_format=fmt,
            version=version.lower() if version else None,
            source=source,
        )
