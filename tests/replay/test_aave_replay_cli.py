"""``keeper replay --book <a book with [[aave_accounts]]>`` runs the Aave account replay."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"


def test_cli_replays_an_aave_book(tmp_path):
    from typer.testing import CliRunner

    from keeper.cli import build_app

    out = tmp_path / "out"
    r = CliRunner().invoke(
        build_app(),
        [
            "replay", "--fast", "--book", "examples/aave_book.toml",
            "--prices", f"ETH={DATA / 'ftx_2022-11-07T12_ETHUSDT_5m.csv'}",
            "--prices", f"BTC={DATA / 'ftx_2022-11-07T12_BTCUSDT_5m.csv'}",
            "--policy", "fixed:1.2:1.4", "--policy", "none", "--out", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "aave-v3"
    assert set(summary["policies"]) == {"fixed:1.2:1.4", "none"}
    assert set(summary["policies"]["none"]["total_cost_usd"]) == {"l1", "l2"}
    assert summary["policies"]["none"]["liquidations"] > 0
    report = (out / "report.md").read_text()
    assert "| `none` |" in report and "![health_factor](health_factor.png)" in report
    assert (out / "health_factor.png").stat().st_size > 0 and (out / "idle.png").stat().st_size > 0


def test_an_aave_book_needs_fast():
    from typer.testing import CliRunner

    from keeper.cli import build_app

    eth = DATA / "ftx_2022-11-07T12_ETHUSDT_5m.csv"
    r = CliRunner().invoke(build_app(), ["replay", "--book", "examples/aave_book.toml", "--prices", f"ETH={eth}"])
    assert r.exit_code != 0
    assert "--fast" in str(r.exception) or "--fast" in r.output
