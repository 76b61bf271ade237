"""Train and fine-tune the small models of `monitor.synth.models` on standard-library text.

Independent models differ in their *initialisation seed* (the null hypothesis HubSentry tests is
independent initialisation); the data order has its own seed, so "same seed, different order" (expected to
stay dependent) and "different seed, same order" can be built separately. Fine-tunes take real gradient
steps from a given state — the benchmark never fakes a derivative with noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from monitor.synth.models import BertConfig, BertEncoder, LlamaConfig, LlamaLM
from monitor.synth.text import SPECIAL_TOKENS, Split, WordVocab, load_corpus, tokenize_words

__all__ = ["TrainSpec", "corpus_ids", "shared_vocab", "to_numpy_state", "train"]

Objective = Literal["clm", "mlm"]


@dataclass(frozen=True)
class TrainSpec:
    """How to train one model.

    Attributes:
        seed (`int`): initialisation seed (the identity of an independent model).
        data_seed (`int | None`): order of training windows; defaults to ``seed``.
        split (`Split`): which half of the corpus to train on.
        steps (`int`), batch (`int`), seq_len (`int`), lr (`float`): optimisation.
        warmup (`int`): linear warm-up steps before cosine decay.
    """

    seed: int
    data_seed: int | None = None
    split: Split = "all"
    steps: int = 300
    batch: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.01


@lru_cache(maxsize=4)
def shared_vocab(size: int = 4096) -> WordVocab:
    """The word vocabulary every synthetic model uses (built from the whole corpus)."""
    return WordVocab.build(tokenize_words(load_corpus("all")), size)


@lru_cache(maxsize=8)
def corpus_ids(split: Split, vocab_size: int = 4096) -> np.ndarray:
    """Token ids of a corpus split under the shared vocabulary."""
    return shared_vocab(vocab_size).encode(tokenize_words(load_corpus(split)))


def _windows(ids: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int) -> torch.Tensor:
    starts = rng.integers(0, len(ids) - seq_len - 1, size=batch)
    return torch.from_numpy(np.stack([ids[s : s + seq_len] for s in starts]))


def _mask_tokens(
    ids: torch.Tensor, rng: np.random.Generator, mask_id: int, vocab: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 15% masking (80% [MASK], 10% random, 10% kept); returns inputs and labels (-100 = ignore)."""
    sel = torch.from_numpy(rng.random(ids.shape) < 0.15)
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    roll = torch.from_numpy(rng.random(ids.shape))
    inputs = ids.clone()
    inputs[sel & (roll < 0.8)] = mask_id
    rand = sel & (roll >= 0.8) & (roll < 0.9)
    inputs[rand] = torch.from_numpy(rng.integers(len(SPECIAL_TOKENS), vocab, size=ids.shape))[rand]
    return inputs, labels


def to_numpy_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Float32 numpy copies of a model's checkpoint tensors (encoder only for BERT)."""
    state = model.encoder_state() if isinstance(model, BertEncoder) else model.state_dict()
    return {k: v.detach().to(torch.float32).numpy().copy() for k, v in state.items()}


def train(
    config: LlamaConfig | BertConfig,
    spec: TrainSpec,
    *,
    init_state: Mapping[str, np.ndarray] | None = None,
    threads: int | None = None,
    ids: np.ndarray | None = None,
    mask_id: int = 4,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train a model (from scratch, or fine-tune from ``init_state``) and return its weights.

    Args:
        config: model shape; a `LlamaConfig` trains causal LM, a `BertConfig` masked LM.
        spec: seeds, data and optimisation.
        init_state: start from these weights (a fine-tune); missing head tensors keep their init.
        threads: torch intra-op threads (the benchmark runs one job at a time on 2 cores).
        ids: training token ids in the model's own vocabulary (default: the corpus split under the shared
            word vocabulary) — real models such as all-MiniLM-L6-v2 are fine-tuned on text mapped into theirs.
        mask_id: the ``[MASK]`` id for masked-LM training.

    Returns:
        ``(state, info)`` — float32 numpy checkpoint and ``{"loss_first", "loss_last", "steps"}``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    model: LlamaLM | BertEncoder = LlamaLM(config) if isinstance(config, LlamaConfig) else BertEncoder(config)
    if init_state is not None:
        current = model.state_dict()
        loaded = {
            k: torch.from_numpy(np.asarray(v, dtype=np.float32))
            for k, v in init_state.items()
            if k in current and tuple(current[k].shape) == tuple(v.shape)
        }
        model.load_state_dict(loaded, strict=False)
    if ids is None:
        ids = corpus_ids(spec.split, config.vocab_size)
    rng = np.random.default_rng(spec.data_seed if spec.data_seed is not None else spec.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    losses: list[float] = []
    model.train()
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch = _windows(ids, rng, spec.batch, spec.seq_len)
        if isinstance(model, LlamaLM):
            loss = model.loss(batch)
        else:
            inputs, labels = _mask_tokens(batch, rng, mask_id=mask_id, vocab=config.vocab_size)
            logits = model.mlm_logits(model(inputs, pad_id=0))
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    head = max(1, min(10, len(losses)))
    info = {
        "loss_first": float(np.mean(losses[:head])) if losses else float("nan"),
        "loss_last": float(np.mean(losses[-head:])) if losses else float("nan"),
        "steps": float(spec.steps),
    }
    return to_numpy_state(model), info
