"""Total cost of protection: the formula by hand, its inputs from a real replay, and the CLI's summary keys."""

from __future__ import annotations

import json

import numpy as np
import pytest

from keeper.cli import main
from keeper.replay.book import load_book
from keeper.replay.cost import SECONDS_PER_YEAR, CostModel, cost_of_protection, native_price_at
from keeper.replay.fast import GAS_PER_ACTION, GAS_REVERT, ReplayConfig, run_fast
from keeper.replay.policies import parse_policy
from keeper.replay.report import policy_costs


class TestFormula:
    def test_hand_computed_total(self):
        """Idle x rate x time + gas x gwei x native price at the spend + penalties + bad debt, per preset."""
        t = np.array([0, 100, 200], dtype=np.int64)
        px = np.array([3000.0, 2000.0, 1000.0])
        log = [(50, 100_000), (200, 50_000), (250, 10_000)]  # spent at $3000, $1000, $1000
        costs = cost_of_protection(
            avg_idle_usd=10_000.0,
            duration_s=SECONDS_PER_YEAR / 2,
            gas_log=log,
            penalties_usd=7.0,
            bad_debt_usd=3.0,
            native_t_s=t,
            native_price_usd=px,
            model=CostModel(0.08, (("l1", 20.0), ("l2", 0.05))),
        )
        weighted = 100_000 * 3000.0 + 50_000 * 1000.0 + 10_000 * 1000.0
        assert costs["l1"].idle_capital_usd == pytest.approx(400.0)
        assert costs["l1"].gas_usd == pytest.approx(weighted * 20e-9)
        assert costs["l2"].gas_usd == pytest.approx(weighted * 0.05e-9)
        assert costs["l1"].total_usd == pytest.approx(400.0 + weighted * 20e-9 + 10.0)
        assert costs["l2"].total_usd < costs["l1"].total_usd

    def test_native_price_is_the_latest_known(self):
        """Before the first round the first price is used; between rounds the earlier one."""
        t = np.array([10, 20], dtype=np.int64)
        px = np.array([1.0, 2.0])
        assert native_price_at(t, px, [0, 10, 15, 20, 99]).tolist() == [1.0, 1.0, 1.0, 2.0, 2.0]

    @pytest.mark.parametrize(
        "presets, match",
        [(["l1"], "NAME=GWEI"), (["l1=abc"], "NAME=GWEI"), (["l1=-1"], ">= 0"), (["a=1", "a=2"], "unique")],
    )
    def test_bad_presets_are_refused(self, presets, match):
        """A preset without a number, a negative price or a repeated name is an error naming the problem."""
        with pytest.raises(ValueError, match=match):
            CostModel.parse(0.08, presets)

    def test_bad_rate_is_refused(self):
        """A capital rate that is not a finite yearly rate is refused."""
        with pytest.raises(ValueError, match="capital_rate_annual"):
            CostModel(float("nan"))


@pytest.fixture(scope="module")
def run(crash_bars):
    """No keeper and one fixed baseline over the 14 h FTX crash window."""
    pols = [parse_policy("none"), parse_policy("fixed:8:16:32")]
    cfg = ReplayConfig(warmup_s=6 * 3600, record=False)
    return run_fast(load_book(), crash_bars, pols, cfg)


class TestOnReplay:
    def test_gas_log_sums_to_gas_used(self, run):
        """Every keeper transaction's gas is logged with its time, and the log adds up to gas_used."""
        r = run.results["fixed:8:16:32"]
        assert r.gas_log and sum(g for _, g in r.gas_log) == r.gas_used
        assert {g for _, g in r.gas_log} <= set(GAS_PER_ACTION.values()) | {GAS_REVERT}
        assert all(run.start_s <= t <= run.end_s for t, _ in r.gas_log)

    def test_no_keeper_costs_its_penalties(self, run):
        """With no keeper there is no gas; the cost is idle capital plus the penalties and bad debt it paid."""
        r = run.results["none"]
        assert r.liquidations > 0 and r.gas_used == 0
        c = policy_costs(run)["none"]["l1"]
        assert c.gas_usd == 0.0
        assert c.penalties_usd == pytest.approx(r.liquidation_penalty_e6 / 1e6)
        assert c.total_usd >= c.penalties_usd

    def test_unknown_native_is_refused(self, run):
        """Gas must be priced by a replayed market; another symbol is an error naming the choices."""
        with pytest.raises(ValueError, match="--native"):
            policy_costs(run, native="SOL")

    def test_cost_rises_with_gas_price(self, run):
        """At a higher gas price a policy that sends transactions costs more, by exactly the gas difference."""
        lo = policy_costs(run, CostModel(0.08, (("x", 1.0),)))["fixed:8:16:32"]["x"]
        hi = policy_costs(run, CostModel(0.08, (("x", 2.0),)))["fixed:8:16:32"]["x"]
        assert hi.total_usd - lo.total_usd == pytest.approx(lo.gas_usd)


def test_cli_summary_has_total_cost_per_preset(tmp_path, capsys, crash_csv):
    """summary.json holds policies[name].total_cost_usd mapping each preset to USD, and the report has the columns."""
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
                "--gas-preset",
                "l1=20",
                "--gas-preset",
                "l2=0.05",
                "--gas-preset",
                "cheap=0",
                "--no-plots",
                "--out",
                str(out),
            ]
        )
    assert exc.value.code in (0, None)
    s = json.loads((out / "summary.json").read_text())
    for name in ("none", "fixed:12:24:48"):
        cost = s["policies"][name]["total_cost_usd"]
        assert set(cost) == {"l1", "l2", "cheap"}
        assert cost["l1"] >= cost["l2"] >= cost["cheap"] >= 0
    fixed = s["policies"]["fixed:12:24:48"]["cost_breakdown_usd"]["cheap"]
    assert fixed["gas"] == 0 and fixed["total"] == pytest.approx(
        fixed["idle_capital"] + fixed["penalties"] + fixed["bad_debt"]
    )
    assert s["config"]["cost_model"]["gas_price_gwei"] == {"l1": 20.0, "l2": 0.05, "cheap": 0.0}
    assert "cost l1 $" in (out / "report.md").read_text()


def test_cli_bad_native_exits_2(capsys, ftx_csv):
    """--native must name a replayed market: exit 2 with a one-line error."""
    with pytest.raises(SystemExit) as exc:
        main(["replay", "--prices", f"ETH={ftx_csv['ETH']}", "--fast", "--native", "BTC", "--policy", "none"])
    assert exc.value.code == 2
    assert "--native" in capsys.readouterr().err


def test_replay_prints_plain_progress_when_not_on_a_terminal(tmp_path, crash_csv, keeper_cli):
    """With stderr not a terminal the replay still reports progress as plain lines ending at 100 % (in this
    process; tests/replay/test_long_inputs.py runs the piped command as a real process). Two policies on the 14 h
    window: 768 rounds, several progress lines."""
    proc = keeper_cli(
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
        "--no-plots",
        "--out",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("replay: ")]
    assert len(lines) >= 2 and "(100%)" in lines[-1]
