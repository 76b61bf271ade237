"""Build (and cache) the trained-model corpus of the detection benchmark.

Independent same-architecture models are the hard null of any weight fingerprint, and none can be
downloaded here, so they are trained on this machine: small Llama-family and BERT models on the Python
standard library's source, one job at a time (two jobs on 2 cores run 4–7× slower), each with its own
initialisation seed. Fine-tunes of a base model are real gradient steps. Everything is cached as ``.npz``
under ``benchmarks/.cache/corpus`` (or ``--out``), keyed by the spec, so re-runs only train what is missing.

Usage::

    python -m benchmarks.corpus --slice full      # 16 Llama + 8 BERT seeds, variants, fine-tunes
    python -m benchmarks.corpus --slice ci        # 4 Llama seeds + 2 fine-tunes (a few minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from monitor.synth.models import BertConfig, LlamaConfig
from monitor.synth.train import TrainSpec, train

DEFAULT_OUT = Path(__file__).resolve().parent / ".cache" / "corpus"

LLAMA = LlamaConfig()
BERT = BertConfig()


@dataclass(frozen=True)
class ModelSpec:
    """One corpus member: architecture, training, and optional parent (for fine-tunes)."""

    name: str
    family: str  # "llama" | "bert"
    train: TrainSpec
    parent: str | None = None
    role: str = "independent"  # independent | variant | finetune

    def key(self) -> str:
        body = json.dumps(
            {"family": self.family, "train": asdict(self.train), "parent": self.parent}, sort_keys=True
        )
        return hashlib.sha256(body.encode()).hexdigest()[:12]


def corpus_specs(slice_name: str) -> list[ModelSpec]:
    """The models of a slice; ``ci`` is a strict subset of ``full``."""
    n_llama, n_bert = (4, 0) if slice_name == "ci" else (16, 8)
    specs = [ModelSpec(f"llama-s{s}", "llama", TrainSpec(seed=s, steps=600)) for s in range(1, n_llama + 1)]
    specs += [ModelSpec(f"bert-s{s}", "bert", TrainSpec(seed=s, steps=600)) for s in range(1, n_bert + 1)]
    specs += [
        ModelSpec(
            "llama-s1-ft-light",
            "llama",
            TrainSpec(seed=100, split="n-z", steps=100, lr=5e-4),
            parent="llama-s1",
            role="finetune",
        ),
        ModelSpec(
            "llama-s1-ft-heavy",
            "llama",
            TrainSpec(seed=101, split="n-z", steps=600, lr=3e-3),
            parent="llama-s1",
            role="finetune",
        ),
    ]
    if slice_name == "full":
        specs += [
            # Different data: independent seeds trained on disjoint halves of the corpus.
            ModelSpec("llama-s201-am", "llama", TrainSpec(seed=201, split="a-m", steps=600)),
            ModelSpec("llama-s202-nz", "llama", TrainSpec(seed=202, split="n-z", steps=600)),
            ModelSpec("llama-s203-am", "llama", TrainSpec(seed=203, split="a-m", steps=600)),
            ModelSpec("llama-s204-nz", "llama", TrainSpec(seed=204, split="n-z", steps=600)),
            # Same initialisation seed, different data order: dependent by construction (SeedPrints).
            ModelSpec(
                "llama-s1-order2", "llama", TrainSpec(seed=1, data_seed=777, steps=600), role="variant"
            ),
            # Continued pre-training: 4x the original training on the other half of the data.
            ModelSpec(
                "llama-s1-cpt",
                "llama",
                TrainSpec(seed=102, split="a-m", steps=2400, lr=2e-3),
                parent="llama-s1",
                role="finetune",
            ),
            ModelSpec(
                "bert-s1-ft-heavy",
                "bert",
                TrainSpec(seed=103, split="n-z", steps=600, lr=3e-3),
                parent="bert-s1",
                role="finetune",
            ),
        ]
    return specs


def load_model(out: Path, spec: ModelSpec) -> dict[str, np.ndarray]:
    with np.load(out / f"{spec.name}-{spec.key()}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def build(slice_name: str, out: Path = DEFAULT_OUT, *, threads: int = 2) -> dict[str, Path]:
    """Train every missing model of the slice; returns name → cached file."""
    out.mkdir(parents=True, exist_ok=True)
    specs = corpus_specs(slice_name)
    by_name = {s.name: s for s in specs}
    paths: dict[str, Path] = {}
    for spec in specs:
        path = out / f"{spec.name}-{spec.key()}.npz"
        paths[spec.name] = path
        if path.exists():
            continue
        init = load_model(out, by_name[spec.parent]) if spec.parent else None
        t0 = time.time()
        state, info = train(
            LLAMA if spec.family == "llama" else BERT, spec.train, init_state=init, threads=threads
        )
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **state)
        tmp.rename(path)
        meta = {
            "spec": asdict(spec.train),
            "parent": spec.parent,
            "role": spec.role,
            **info,
            "seconds": round(time.time() - t0, 1),
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
        print(
            f"trained {spec.name}: loss {info['loss_first']:.2f}→{info['loss_last']:.2f} "
            f"in {meta['seconds']}s",
            flush=True,
        )
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slice", choices=["ci", "full"], default="ci")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    build(args.slice, args.out, threads=args.threads)


if __name__ == "__main__":
    main()
