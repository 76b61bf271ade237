"""HubSentry's statistics: arrays in, evidence out. No HTTP, no database, no clock.

The public surface:

* `ReferenceBuilder` / `ReferenceFingerprint` — what the registry keeps about a protected model.
* `SuspectSample` / `LayerSample` — the rows read from an upload.
* `compare` → `Comparison` — exact tests, combined p-value, verdict and the transformation found;
  `attention_target` / `confirm` — the attention tier for flagged candidates (`AttentionSample`).
* `ScreeningIndex` — millisecond ranking of protected models for an upload (never evidence).
* `signature` / `comparable` — routing by structure (never evidence).
* `choose_token_block`, `choose_layers`, `choose_unit_block` — secret, reproducible sampling choices.
* `stats` helpers for log-space tails and p-value combination.

See ``docs/fingerprints.md`` for the null hypotheses and their limits.
"""

from fingerprints.attention import ATTENTION_NULL, AttentionSample, attention_test
from fingerprints.reference import (
    UNIT_KINDS,
    LayerSample,
    ReferenceBuilder,
    ReferenceFingerprint,
    SuspectSample,
    attention_layer_profiles,
    unit_profiles,
)
from fingerprints.residual import RESIDUAL_NULL, residual_test
from fingerprints.sampling import choose_head_block, choose_layers, choose_token_block, choose_unit_block
from fingerprints.screening import SKETCH_TOKENS, ScreeningIndex, gram_sketch
from fingerprints.stats import (
    bonferroni_log10,
    cauchy_combine_log10,
    fisher_combine_log10,
    increasing_run_tail_log10,
    to_p,
)
from fingerprints.structure import StructureSignature, comparable, signature
from fingerprints.tokens import align_tokens
from fingerprints.units import UNIT_NULL, unit_layer_test, unit_layer_tests
from fingerprints.verdict import COMBINED_NULL, ComparePolicy, Comparison, attention_target, compare, confirm

__all__ = [
    "ATTENTION_NULL",
    "COMBINED_NULL",
    "RESIDUAL_NULL",
    "SKETCH_TOKENS",
    "UNIT_KINDS",
    "UNIT_NULL",
    "AttentionSample",
    "ComparePolicy",
    "Comparison",
    "LayerSample",
    "ReferenceBuilder",
    "ReferenceFingerprint",
    "ScreeningIndex",
    "StructureSignature",
    "SuspectSample",
    "align_tokens",
    "attention_layer_profiles",
    "attention_target",
    "attention_test",
    "bonferroni_log10",
    "cauchy_combine_log10",
    "choose_head_block",
    "choose_layers",
    "choose_token_block",
    "choose_unit_block",
    "comparable",
    "compare",
    "confirm",
    "fisher_combine_log10",
    "gram_sketch",
    "increasing_run_tail_log10",
    "residual_test",
    "signature",
    "to_p",
    "unit_layer_test",
    "unit_layer_tests",
    "unit_profiles",
]
