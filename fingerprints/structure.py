"""Structure signatures: which protected models an upload can be compared with. Routing only, never evidence.

Shapes say nothing about provenance (every Llama-7B fine-tune *and* every independent 7B model with the same
config share them), so the signature is used only to skip comparisons that cannot be run and to order the
rest. The tests themselves work across widths and depths (pruning, layer drop, duplication), so the rules are
deliberately loose: a suspect is comparable when it has MLP units and token embeddings, and its MLP is not
wider than the protected model's (a derivative can lose units, rarely gain them), with room for upcycled
experts of the same width.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["StructureSignature", "comparable", "signature"]


@dataclass(frozen=True)
class StructureSignature:
    """The routing-relevant shape of a model."""

    family: str
    n_layers: int
    d_model: int
    d_ff: int | None
    vocab_size: int
    gated_mlp: bool
    norm: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "d_ff": self.d_ff,
            "vocab_size": self.vocab_size,
            "gated_mlp": self.gated_mlp,
            "norm": self.norm,
        }


def signature(arch: Mapping[str, Any]) -> StructureSignature:
    """Signature from `ArchInfo` fields (as a mapping)."""
    return StructureSignature(
        family=str(arch.get("family", "unknown")),
        n_layers=int(arch.get("n_layers") or 0),
        d_model=int(arch.get("d_model") or 0),
        d_ff=int(arch["d_ff"]) if arch.get("d_ff") else None,
        vocab_size=int(arch.get("vocab_size") or 0),
        gated_mlp=bool(arch.get("gated_mlp", False)),
        norm=str(arch.get("norm", "unknown")),
    )


def comparable(ref: StructureSignature, sus: StructureSignature) -> tuple[bool, str]:
    """Whether the tests can run on this pair, and why not."""
    if not sus.d_ff or not sus.n_layers:
        return False, "suspect has no MLP layers the fingerprint can read"
    if not sus.vocab_size or not sus.d_model:
        return False, "suspect has no token embeddings"
    if ref.d_ff and sus.d_ff > ref.d_ff * 1.05:
        return False, f"suspect MLP width {sus.d_ff} exceeds the protected model's {ref.d_ff}"
    return True, ""
