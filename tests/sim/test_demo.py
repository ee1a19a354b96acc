"""`keeper demo` plumbing: the control run liquidates what the protocol rules say; the keeper run is pluggable
and its summary comes from chain events."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from eth_account import Account

from keeper.commands.demo import DEMO_BOOK, DemoContext, run_demo, write_summary
from keeper.dev.reference import ANVIL_KEYS, DEFAULT_MARKETS
from keeper.domain import WAD, Market, Position, Side
from keeper.sim.scenario import PlayedRound, demo_crash

pytestmark = pytest.mark.chain


def expected_liquidations(scenario) -> set[tuple[int, str]]:
    """Positions of the demo book whose equity falls below maintenance at some round (domain model, fees ignored:
    10 %/yr over 6 minutes is < $0.05 on these books)."""
    out = set()
    for p in DEMO_BOOK:
        spec = next(m for m in DEFAULT_MARKETS if m.symbol == p.symbol)
        market = Market(
            0,
            p.symbol,
            int(spec.maintenance_margin * WAD),
            int(spec.max_leverage * WAD),
            int(spec.liquidation_penalty * WAD),
            0,
            spec.heartbeat_s,
        )
        entry = scenario.start_prices_e8[p.symbol]
        size = int(p.notional_usd * 1e8 * 1e18) // entry
        pos = Position("x", 0, p.side, size, entry, p.collateral_e6)
        if any(pos.is_liquidatable(market, int(px)) for px in scenario.path_e8(p.symbol)[1:]):
            out.add((p.account, p.symbol))
    return out


class StaticKeeper:
    """A stand-in keeper: before the scenario it tops up every losing position by half its notional."""

    name = "static"

    def __init__(self) -> None:
        self.sent_e6 = 0
        self.rounds = 0

    def start(self, ctx: DemoContext) -> None:
        ops = ctx.ops
        sender = ops.sender(ctx.keeper_key)
        for p in DEMO_BOOK:
            if (p.symbol == "ETH") == (p.side is Side.LONG):  # ETH longs and BTC shorts lose in the scenario
                amount = int(p.notional_usd / 2 * 1e6)
                account = Account.from_key(ANVIL_KEYS[p.account]).address
                sender.wait(
                    sender.transact(ops.engine.functions.addMargin(account, ops.deployment.markets[p.symbol], amount))
                )
                self.sent_e6 += amount

    def after_round(self, played: PlayedRound) -> None:
        self.rounds += 1

    def stop(self) -> None:
        pass


def test_control_and_pluggable_keeper_run(tmp_path):
    """Without a keeper the demo book loses exactly the positions the rules predict; a keeper that funds them
    loses none, and the summary's top-ups, amounts and gas come from the chain."""
    scenario = demo_crash(7)
    expected = expected_liquidations(scenario)
    assert len(expected) == 4  # the 2 ETH longs and the 2 BTC shorts
    keeper = StaticKeeper()
    summary = run_demo(seed=7, reserve_usd=150_000, keeper=keeper, workdir=tmp_path)
    index_of = {Account.from_key(k).address: i for i, k in enumerate(ANVIL_KEYS)}
    got = {(index_of[r["account"]], r["market"]) for r in summary["positions"] if r["liquidated_without_keeper"]}
    assert got == expected
    assert summary["liquidated_without_keeper"] == 4
    assert summary["liquidated_with_keeper"] == 0
    assert summary["positions_saved"] == 4
    assert keeper.rounds == len(scenario.rounds)
    assert summary["top_ups"] == 4
    assert summary["collateral_added"] == pytest.approx(keeper.sent_e6 / 1e6, abs=1e-6)
    assert summary["rebalances"] == 0
    assert summary["gas_used"] > 4 * 21_000 and summary["keeper_transactions"] == 4
    path = write_summary(summary, tmp_path / "demo-summary.json")
    data = json.loads(path.read_text())
    for field in (
        "positions",
        "liquidated_with_keeper",
        "liquidated_without_keeper",
        "top_ups",
        "collateral_added",
        "gas_used",
    ):
        assert field in data


@pytest.mark.slow
def test_keeper_demo_json_end_to_end(tmp_path):
    """`keeper demo --json` with the real daemon: liquidations without the keeper, none with it (the default
    reserve funds the top-ups), and the printed summary is the one written to disk."""
    out = tmp_path / "demo-summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "keeper", "demo", "--json", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == summary
    assert summary["keeper_ran"] is True
    assert summary["liquidated_without_keeper"] == 4
    assert summary["liquidated_with_keeper"] == 0
    assert summary["positions_saved"] == 4
    assert summary["top_ups"] > 0 and 0 < summary["collateral_added"] <= summary["reserve"]
    assert summary["gas_used"] > 0
    # every amount in the summary is backed by an action with a transaction hash
    assert sum(a["amount_e6"] for a in summary["actions"] if a["kind"] == "top_up") == summary["collateral_added_e6"]
