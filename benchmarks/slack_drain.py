"""How fast the daemon drains a burst of alerts into a rate-limited Slack channel, and after an outage.

A store is seeded with ``--alerts`` alerts (real ``record_outcome``: alert and outbox rows, as a scan writes
them), then the real daemon (``hubsentry run`` as a subprocess, against an empty LocalHub) delivers them to a
LocalSlack that allows about one message per second per channel (``rate_limit(1.0, burst=3)``, 429 with
``Retry-After`` beyond it, like Slack). Two scenarios:

* ``burst``: Slack is up from the start; figure: seconds from the first to the last message, messages/s.
* ``outage``: Slack answers 503 for ``--outage`` seconds from the start, then recovers; figure: seconds from
  the end of the outage to the last message (the backoff carried out of the outage shows here).

``--tree DIR`` runs another source tree of HubSentry (e.g. ``git archive HEAD | tar -x -C DIR``) with this
interpreter, so the same measurement compares two versions; the store is seeded by that tree's own code.

Usage::

    python -m benchmarks.slack_drain --alerts 100                       # this tree
    python -m benchmarks.slack_drain --alerts 100 --tree /tmp/old-tree  # another one

Prints one JSON object per scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monitor.localhub import LocalHub
from monitor.localslack import LocalSlack

__all__ = ["main", "measure"]

REPO = Path(__file__).resolve().parents[1]
SLACK_TOKEN = "xoxb-slack-drain-benchmark-token"
CHANNEL = "model-ip"

_SEED = """
import sys
from datetime import UTC, datetime
from monitor.findings import Finding, ScanOutcome
from monitor.store import NewItem, Store, claim_due, enqueue, record_outcome
db_path, n = sys.argv[1], int(sys.argv[2])
now = datetime.now(UTC)
with Store(db_path) as store:
    for i in range(n):
        finding = Finding(protected="acme/guard", owner="ip-team", verdict="derived", p_value=1e-30,
                          log10_p=-30.0, null="independent init", transform="fine-tune", matched="64/64 units",
                          severity="high")
        outcome = ScanOutcome(hub="hf", repo_id=f"thief/copy-{i:04d}", commit=f"{i + 1:040x}",
                              url=f"http://hub/thief/copy-{i:04d}", findings=(finding,))
        def fn(db, outcome=outcome):
            enqueue(db, [NewItem("hf", outcome.repo_id, outcome.commit)], now=now)
            (item,) = claim_due(db, owner="seed", limit=1, lease_s=60, max_attempts=3, now=now)
            return record_outcome(db, item, outcome, sinks=["slack:#model-ip"], owner="seed", now=now)
        store.write(fn)
"""


def _config(path: Path, *, db: Path, endpoint: str, slack_url: str) -> Path:
    path.write_text(f"""\
[store]
path = "{db}"

[[hubs]]
name = "hf"
endpoint = "{endpoint}"
poll_interval = "1h"
jitter = "0s"
token_env = "HF_TOKEN"

[alerts.slack]
channel = "#{CHANNEL}"
token_env = "SLACK_BOT_TOKEN"
base_url = "{slack_url}"
timeout = "5s"

[alerts.log]
enabled = false

[fingerprint]
secret_env = "HUBSENTRY_SECRET"

[server]
listen = ""
""")
    return path


def measure(
    scenario: str, *, alerts: int, outage_s: float, tree: Path, timeout_s: float = 1800.0
) -> dict[str, Any]:
    """Run one scenario with the source tree ``tree``; returns its figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUBSENTRY_", "SLACK_"))}
    env.update(
        PYTHONPATH=str(tree),
        HF_TOKEN="hf_slack_drain_benchmark",
        SLACK_BOT_TOKEN=SLACK_TOKEN,
        HUBSENTRY_SECRET="slack-drain-benchmark-secret",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    with tempfile.TemporaryDirectory(prefix="hubsentry-slack-drain-") as tmp:
        work = Path(tmp)
        (work / "hub").mkdir()
        db = work / "hubsentry.db"
        subprocess.run([sys.executable, "-c", _SEED, str(db), str(alerts)], env=env, cwd=work, check=True)
        with LocalHub(work / "hub") as hub, LocalSlack(token=SLACK_TOKEN, channels=[CHANNEL]) as slack:
            slack.rate_limit(1.0, burst=3)
            outage_end = None
            if scenario == "outage":
                outage_end = time.time() + outage_s
                slack.outage(until=outage_end, mode="503")
            config = _config(work / "hubsentry.toml", db=db, endpoint=hub.endpoint, slack_url=slack.base_url)
            started = time.time()
            with open(work / "daemon.log", "wb") as log:
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "monitor", "--config", str(config), "run"],
                    env=env,
                    cwd=work,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
            try:
                deadline = time.monotonic() + timeout_s
                while len(slack.messages(CHANNEL)) < alerts and time.monotonic() < deadline:
                    if daemon.poll() is not None:
                        raise RuntimeError(f"the daemon exited: {(work / 'daemon.log').read_text()[-2000:]}")
                    time.sleep(0.2)
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=120)
            posts = [r for r in slack.requests("chat.postMessage") if r.status == 200 and r.error is None]
            limited = [r for r in slack.requests("chat.postMessage") if r.status == 429]
            delivered = len(slack.messages(CHANNEL))
            keys = [m.alert_key for m in slack.messages(CHANNEL)]
        first, last = posts[0].at, posts[-1].at
        result: dict[str, Any] = {
            "scenario": scenario,
            "tree": str(tree),
            "alerts": alerts,
            "delivered": delivered,
            "duplicates": len(keys) - len(set(keys)),
            "daemon_start_to_last_message_s": round(last - started, 1),
            "first_to_last_message_s": round(last - first, 1),
            "messages_per_s": round((delivered - 1) / (last - first), 3) if last > first else None,
            "slack_429_answers": len(limited),
        }
        if outage_end is not None:
            result["outage_s"] = outage_s
            result["outage_end_to_first_message_s"] = round(first - outage_end, 1)
            result["outage_end_to_last_message_s"] = round(last - outage_end, 1)
        return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.slack_drain", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--alerts", type=int, default=100)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds of Slack 503s (outage scenario)")
    parser.add_argument("--scenario", choices=("burst", "outage", "both"), default="both")
    parser.add_argument("--tree", type=Path, default=REPO, help="HubSentry source tree to run")
    args = parser.parse_args(argv)
    scenarios = ("burst", "outage") if args.scenario == "both" else (args.scenario,)
    for scenario in scenarios:
        figures = measure(scenario, alerts=args.alerts, outage_s=args.outage, tree=args.tree.resolve())
        print(json.dumps(figures, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
