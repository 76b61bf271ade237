"""``hubsentry demo``: the whole loop offline, in under a minute.

It trains a small protected model and an independent one (different seed, same data), fine-tunes the protected
model with real gradient steps, publishes five uploads on a local Hugging Face hub — the fine-tune, a GGUF
quantisation, a byte-identical re-upload, an obfuscated copy (norms folded, residual stream rotated) and the
independent model — starts a local Slack API server, registers the protected model, runs one scan cycle of
the real daemon code, and shows the alerts as stored and as delivered to Slack. It exits 0 only when the four
derivatives were flagged and the independent model was not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

__all__ = ["DEMO_REPOS", "run_demo"]

PROTECTED_NAME = "acme/guard-mini"
DEMO_REPOS = {
    "someorg/guard-mini-finetuned": "fine-tuned copy (real gradient steps)",
    "quantco/guard-mini-GGUF": "GGUF quantisation (Q4_0, embeddings Q8_0)",
    "mirror/guard-mini": "byte-identical re-upload",
    "stealth/guard-mini-rotated": "obfuscated copy (norms folded + residual rotation)",
    "indie/tiny-lm": "independent model: same architecture and data, other seed",
}
EXPECTED_FLAGGED = {k for k in DEMO_REPOS if k != "indie/tiny-lm"}
_SLACK_TOKEN_ENV = "HUBSENTRY_DEMO_SLACK_TOKEN"  # noqa: S105 - a variable name, not a secret
_SECRET_ENV = "HUBSENTRY_DEMO_SECRET"  # noqa: S105 - a variable name, not a secret


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _build_models(workdir: Path, console: Console) -> tuple[Path, Path]:
    """Train, derive and write every demo model; returns (protected folder, hub root)."""
    from monitor.synth import transforms as T
    from monitor.synth.export import save_gguf, save_hf_repo
    from monitor.synth.models import LlamaConfig
    from monitor.synth.train import TrainSpec, shared_vocab, train

    cfg = LlamaConfig(
        vocab_size=4096,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    vocab = shared_vocab(cfg.vocab_size)
    spec = {"batch": 8, "seq_len": 48}
    t = time.monotonic()
    protected, info = train(cfg, TrainSpec(seed=1, steps=160, **spec))
    console.print(f"  trained protected model       loss {info['loss_first']:.2f} → {info['loss_last']:.2f}")
    independent, info = train(cfg, TrainSpec(seed=2, steps=160, **spec))
    console.print(f"  trained independent model     loss {info['loss_first']:.2f} → {info['loss_last']:.2f}")
    tuned, info = train(cfg, TrainSpec(seed=3, split="n-z", steps=60, lr=1e-3, **spec), init_state=protected)
    drift = float(
        np.mean(
            [
                np.linalg.norm(tuned[k] - protected[k]) / np.linalg.norm(protected[k])
                for k in protected
                if protected[k].ndim == 2
            ]
        )
    )
    console.print(
        f"  fine-tuned protected model    loss {info['loss_first']:.2f} → {info['loss_last']:.2f}, "
        f"relative weight change {drift:.1%}"
    )
    console.print(f"  [dim]({time.monotonic() - t:.1f} s of CPU training)[/dim]")

    protected_dir = save_hf_repo(workdir / "protected" / "guard-mini", protected, cfg, vocab)
    hub = workdir / "hub"
    save_hf_repo(hub / "someorg" / "guard-mini-finetuned", tuned, cfg, vocab, dtype="bfloat16")
    save_gguf(
        hub / "quantco" / "guard-mini-GGUF" / "guard-mini.Q4_0.gguf",
        protected,
        cfg,
        vocab,
        qtype="Q4_0",
        embed_qtype="Q8_0",
        name="guard-mini",
    )
    shutil.copytree(protected_dir, hub / "mirror" / "guard-mini")
    rotated = T.fold_norms_and_rotate(protected, np.random.default_rng(7))
    save_hf_repo(hub / "stealth" / "guard-mini-rotated", rotated, cfg, vocab, dtype="float16")
    save_hf_repo(hub / "indie" / "tiny-lm", independent, cfg, vocab)
    return protected_dir, hub


def _write_config(path: Path, *, store: Path, endpoint: str, slack_url: str) -> None:
    path.write_text(f"""\
[store]
path = {json.dumps(str(store))}

[[hubs]]
name = "localhub"
kind = "huggingface"
endpoint = {json.dumps(endpoint)}
poll_interval = "5m"
token_env = "HUBSENTRY_DEMO_HF_TOKEN"
budget_per_repo = "16MiB"

[alerts]
min_verdict = "derived"

[alerts.slack]
channel = "#model-ip"
token_env = "{_SLACK_TOKEN_ENV}"
base_url = {json.dumps(slack_url)}

[alerts.log]
enabled = false

[fingerprint]
secret_env = "{_SECRET_ENV}"

[server]
listen = ""
""")


def run_demo(*, workdir: Path | None = None, console: Console | None = None) -> int:
    """Run the offline demo; returns the process exit code (0 = every expectation met)."""
    from monitor.config import load_config
    from monitor.localhub import LocalHub
    from monitor.localslack import LocalSlack
    from monitor.registry import add as protect
    from monitor.scheduler import alert_sinks, build_services, pipeline_processor, run_cycle
    from monitor.store import Store
    from monitor.store.alerts import list_alerts

    console = console or Console()
    t0 = time.monotonic()
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="hubsentry-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        console.rule("[bold]HubSentry offline demo")
        console.print("[bold]1. Models[/bold] (trained here, on the Python standard library's source)")
        protected_dir, hub_root = _build_models(work, console)
        console.print("[bold]2. A local Hugging Face hub and a local Slack[/bold]")
        with LocalHub(hub_root) as hub, LocalSlack(channels=["model-ip"]) as slack:
            console.print(f"  hub   {hub.endpoint}  ({len(DEMO_REPOS)} uploads)")
            console.print(f"  slack {slack.base_url}")
            cfg_path = work / "hubsentry.toml"
            _write_config(
                cfg_path, store=work / "hubsentry.db", endpoint=hub.endpoint, slack_url=slack.base_url
            )
            with _env(**{_SLACK_TOKEN_ENV: slack.token, _SECRET_ENV: "demo-secret-not-for-production"}):
                config = load_config(cfg_path)
                console.print(f"[bold]3. Register[/bold] {PROTECTED_NAME} from {protected_dir}")
                with Store(config.store.path) as store:
                    model = protect(
                        store, str(protected_dir), name=PROTECTED_NAME, owner="ml-ip-team", config=config
                    )
                    console.print(f"  {model.notes}")
                console.print(
                    "[bold]4. Scan[/bold] (one cycle of the daemon: list → queue → read → test → alert)"
                )
                stop = threading.Event()
                services = build_services(
                    config, processor_factory=pipeline_processor, stop=stop, sinks=alert_sinks(config)
                )
                try:
                    report = run_cycle(services)
                finally:
                    services.close()
                _ = report
                with Store(config.store.path) as store, store.read() as db:
                    alerts = list_alerts(db, limit=50)
                    scans = list(
                        db.query(
                            "SELECT repo_id, bytes_read, requests, outcome_json FROM work_items "
                            "ORDER BY repo_id"
                        )
                    )
            flagged = _show(console, alerts, scans, slack.messages())
        ok = flagged == EXPECTED_FLAGGED
        elapsed = time.monotonic() - t0
        if ok:
            console.print(
                f"[bold green]OK[/bold green]: {len(flagged)} derivatives flagged, the independent "
                f"model not ({elapsed:.1f} s)"
            )
            return 0
        console.print(
            f"[bold red]UNEXPECTED[/bold red]: flagged {sorted(flagged)}, expected "
            f"{sorted(EXPECTED_FLAGGED)} ({elapsed:.1f} s)"
        )
        return 1
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)


def _show(console: Console, alerts: list[dict], scans: list[dict], messages: list) -> set[str]:
    console.print("[bold]5. What was scanned[/bold]")
    table = Table("upload", "what it is", "bytes read", "requests", "verdict")
    verdicts: dict[str, str] = {}
    for row in scans:
        outcome = json.loads(row["outcome_json"] or "{}")
        best = min(outcome.get("findings", []), key=lambda f: f["log10_p"], default=None)
        verdicts[row["repo_id"]] = best["verdict"] if best else "-"
        table.add_row(
            row["repo_id"],
            DEMO_REPOS.get(row["repo_id"], ""),
            f"{row['bytes_read']:,}",
            str(row["requests"]),
            verdicts[row["repo_id"]],
        )
    console.print(table)
    console.print("[bold]6. Alerts[/bold]")
    at = Table("suspect", "verdict", "p-value", "transform found")
    flagged = set()
    for a in sorted(alerts, key=lambda a: a["repo_id"]):
        flagged.add(a["repo_id"])
        at.add_row(
            f"{a['repo_id']}@{a['commit_sha'][:10]}", a["verdict"], f"10^{a['log10_p']:.1f}", a["transform"]
        )
    console.print(at)
    console.print(f"[bold]7. Slack[/bold]: {len(messages)} message(s) delivered to #model-ip")
    for m in messages:
        text = getattr(m, "text", None) or (m.get("text") if isinstance(m, dict) else str(m))
        console.print(f"  • {text}")
    return flagged
