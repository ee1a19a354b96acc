"""`keeper replay --fast` end to end on the real test window, its input errors, and book loading."""

from __future__ import annotations

import json

import pytest

from keeper.cli import main
from keeper.errors import ConfigError
from keeper.replay.book import load_book, opening_collateral_e6, parse_book


def test_cli_fast_writes_summary_report_and_plots(tmp_path, capsys, crash_csv):
    """The CLI replays two policies on the crash window and writes summary.json (issue keys, USD), report.md and
    PNGs."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "replay",
                "--prices",
                f"ETH={crash_csv['ETH']}",
                "--prices",
                f"BTC={crash_csv['BTC']}",
                "--fast",
                "--warmup-h",
                "6",
                "--policy",
                "none",
                "--policy",
                "fixed:12:24:48",
                "--out",
                str(out),
            ]
        )
    assert exc.value.code in (0, None)
    s = json.loads((out / "summary.json").read_text())
    assert set(s["policies"]) == {"none", "fixed:12:24:48"}
    assert s["policies"]["none"]["liquidations"] > 0
    assert s["policies"]["fixed:12:24:48"]["liquidations"] == 0
    for k in ("liquidations", "top_ups", "collateral_added", "gas_used", "avg_idle_collateral"):
        assert k in s["policies"]["none"]
    assert "| `none` |" in (out / "report.md").read_text()
    for png in ("price_ETH.png", "price_BTC.png", "margin_ratio.png", "idle.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_bound_adds_idle_floors(tmp_path, capsys, crash_csv):
    """--bound: every liquidation-free policy gets an idle floor below its own idle (none, liquidated, gets
    none), the target gets the floor at the baseline's budget, and the report says what it means."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "replay",
                "--prices",
                f"ETH={crash_csv['ETH']}",
                "--prices",
                f"BTC={crash_csv['BTC']}",
                "--fast",
                "--warmup-h",
                "6",
                "--policy",
                "risk",
                "--policy",
                "none",
                "--policy",
                "fixed:8:16:32",
                "--bound",
                "--no-plots",
                "--out",
                str(out),
            ]
        )
    assert exc.value.code in (0, None)
    s = json.loads((out / "summary.json").read_text())
    assert "idle_floor" not in s["policies"]["none"]
    for name in ("risk", "fixed:8:16:32"):
        p = s["policies"][name]
        assert p["liquidations"] == 0 and 0 < p["idle_floor"] < p["avg_idle_collateral"]
    t = s["target"]
    assert t["baseline"] == "fixed:8:16:32"
    assert t["idle_floor_at_budget"] == pytest.approx(s["policies"]["fixed:8:16:32"]["idle_floor"])
    goal = 0.7 * s["policies"]["fixed:8:16:32"]["avg_idle_collateral"]
    assert t["out_of_reach"] is (t["idle_floor_at_budget"] > goal)
    report = (out / "report.md").read_text()
    assert "Idle floor (`--bound`)" in report and "| idle floor $ |" in report
    assert "idle floor with" in capsys.readouterr().out


def test_cli_bad_csv_exits_2_naming_line(tmp_path, capsys, ftx_csv):
    """A bad price file exits 2 with one line naming the file and line."""
    bad = tmp_path / "eth.csv"
    bad.write_text("timestamp_utc,unix_s,open,high,low,close,volume\nx,60,1,2,0.5,1,0\nx,120,1,2,zz,1,0\n")
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--prices", f"ETH={bad}", "--prices", f"BTC={ftx_csv['BTC']}", "--fast"])
    assert exc.value.code == 2
    assert "eth.csv:3: column 'low': cannot parse 'zz'" in capsys.readouterr().err


def test_cli_unknown_policy_exits_2(capsys, ftx_csv):
    """An unknown policy name exits 2 listing the allowed ones."""
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "replay",
                "--prices",
                f"ETH={ftx_csv['ETH']}",
                "--prices",
                f"BTC={ftx_csv['BTC']}",
                "--fast",
                "--policy",
                "magic",
            ]
        )
    assert exc.value.code == 2
    assert "allowed: none, risk" in capsys.readouterr().err


class TestBook:
    def test_default_book(self):
        """The default book holds longs and shorts at 3x..50x on ETH and BTC, $100k each, 12 accounts."""
        b = load_book()
        assert len(b.positions) == 24 and len(b.accounts) == 12
        assert {p.leverage for p in b.positions} == {3, 5, 10, 20, 35, 50}
        assert {(p.symbol, p.side.value) for p in b.positions} == {
            ("ETH", "long"),
            ("ETH", "short"),
            ("BTC", "long"),
            ("BTC", "short"),
        }
        p50 = next(p for p in b.positions if p.leverage == 50)
        assert opening_collateral_e6(p50) == 2_000 * 10**6
        assert b.markets["ETH"].fee_rate_per_s_wad == 3170979198

    def test_leverage_above_market_max_is_config_error(self):
        """A leverage above the market's max names the field."""
        with pytest.raises(ConfigError, match=r"positions\[0\]\.leverage = 80"):
            parse_book({"positions": [{"symbol": "ETH", "side": "long", "leverage": 80}]})

    def test_duplicate_account_market_is_config_error(self):
        """Two positions of one account on one market are refused (the protocol holds one)."""
        with pytest.raises(ConfigError, match="already holds a ETH position"):
            parse_book({"positions": [{"symbol": "ETH", "side": "long", "leverages": [5, 10], "account": "me"}]})
