"""The Slack drain benchmark's CI slice: a small burst through the real daemon into a rate-limited channel."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.slack_drain import REPO, main, measure


def test_a_small_burst_drains_at_the_channels_rate_exactly_once() -> None:
    figures = measure("burst", alerts=6, outage_s=0.0, tree=REPO)
    assert (figures["delivered"], figures["duplicates"]) == (6, 0)
    assert figures["slack_429_answers"] >= 1  # the channel limit pushed back...
    assert figures["first_to_last_message_s"] < 10  # ...and was waited out in seconds, not 15 s intervals
    assert figures["tree"] == str(Path(REPO))


def test_the_command_line_rejects_unknown_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--scenario", "flood"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
