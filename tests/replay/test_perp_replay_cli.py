"""``keeper replay --book <a book with [[perp_accounts]]>`` runs the Perp v2 account replay."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from keeper.accounts.costs import PERP_DEPOSIT_FOR_GAS
from keeper.cli import build_app


def test_cli_replays_a_perp_book(tmp_path, crash_csv):
    out = tmp_path / "out"
    r = CliRunner().invoke(
        build_app(),
        [
            "replay", "--fast", "--book", "examples/perp_book.toml", "--warmup-h", "6",
            "--prices", f"ETH={crash_csv['ETH']}", "--prices", f"BTC={crash_csv['BTC']}",
            "--policy", "risk", "--policy", "fixed:1.5:2", "--policy", "none", "--policy", "risk:cost:L2",
            "--out", str(out),
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "perp-v2" and summary["book"]["wallet_asset"] == "USDC"
    assert set(summary["policies"]) == {"risk", "fixed:1.5:2", "none", "risk:cost:l2"}
    cost = summary["policies"]["risk:cost:l2"]
    assert set(cost["total_cost_usd"]) == {"l1", "l2"} and cost["liquidations"] == 0 and cost["deposits"] > 0
    none, risk = summary["policies"]["none"], summary["policies"]["risk"]
    assert set(none["total_cost_usd"]) == {"l1", "l2"} and none["liquidations"] > 0
    assert risk["liquidations"] == 0 and risk["deposits"] > 0 and risk["min_health"] >= 1.0
    assert summary["config"]["gas_per_action"] == {"deposit": PERP_DEPOSIT_FOR_GAS}
    report = (out / "report.md").read_text()
    assert report.startswith("# Perp v2 account replay") and "| `none` |" in report and "| deposits |" in report
    assert "| `risk:cost:l2` |" in report
    assert (out / "health_factor.png").stat().st_size > 0


def test_a_perp_book_needs_fast_and_one_protocol(tmp_path, crash_csv):
    r = CliRunner().invoke(
        build_app(), ["replay", "--book", "examples/perp_book.toml", "--prices", f"ETH={crash_csv['ETH']}"]
    )
    assert r.exit_code != 0 and "--fast" in str(r.exception) + r.output
    both = tmp_path / "both.toml"
    text = Path("examples/perp_book.toml").read_text() + "\n" + Path("examples/aave_book.toml").read_text()
    both.write_text(text)
    r = CliRunner().invoke(
        build_app(), ["replay", "--fast", "--book", str(both), "--prices", f"ETH={crash_csv['ETH']}"]
    )
    assert r.exit_code != 0 and "one protocol" in str(r.exception) + r.output
