"""The README's first command: `hubsentry demo` runs the whole loop offline and exits 0."""

from __future__ import annotations

import io

from click.testing import CliRunner
from rich.console import Console

from monitor.cli import cli
from monitor.demo import EXPECTED_FLAGGED, run_demo


def test_demo_flags_every_derivative_and_not_the_independent_model(tmp_path):
    out = io.StringIO()
    code = run_demo(workdir=tmp_path, console=Console(file=out, width=200))
    text = out.getvalue()
    assert code == 0, text
    for repo in EXPECTED_FLAGGED:
        assert repo in text
    assert "message(s) delivered to #model-ip" in text
    assert "OK:" in text


def test_demo_command_is_wired():
    res = CliRunner().invoke(cli, ["demo", "--help"])
    assert res.exit_code == 0
    assert "offline demo" in res.output
