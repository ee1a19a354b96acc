"""One decision function: ``keeper risk``, the daemon's decision path and the replay policy agree (issue 11).

The same position and parameters go through the three callers of :func:`keeper.decision.decide`:
the installed CLI (``keeper risk ... --json``), :meth:`KeeperService.decide` (the daemon's cycle, also what
the on-chain replay runs) and :class:`keeper.replay.policies.RiskSized` (the fast replay). No chain is
needed: the service is built from the sample configuration with a real SQLite journal and given the book
as its adapter would have read it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from keeper.cli import build_app
from keeper.commands.risk import cli_policy
from keeper.domain import SECONDS_PER_YEAR, WAD, Market, Position, PriceRound, Side
from keeper.protocols.base import BookSnapshot
from keeper.replay.policies import Observation, RiskSized
from keeper.runtime.config import load_config
from keeper.runtime.service import KeeperService
from keeper.tx.journal import Journal

ROOT = Path(__file__).resolve().parents[1]
OWNER = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"  # the sample config's protected account
NOW_S = 1_700_000_000
SIGMA = 0.8
HORIZON_S = 3600.0


def _market(fee_rate_annual: float) -> Market:
    per_s = round(fee_rate_annual * WAD / SECONDS_PER_YEAR)
    return Market(0, "ETH", 5 * 10**15, 50 * WAD, 10**16, per_s, 3600)


def _position(side: Side, size: float, entry: float, collateral: float) -> Position:
    return Position(OWNER, 0, side, round(size * 1e18), round(entry * 1e8), round(collateral * 1e6))


CASES = {
    # defect 1 of issue 11: the CLI said 2.93e-6 / $352.54 / $0, the daemon 2.89e-6 / $651.92 / $451.92
    "defect1_long_inside_stress_gap": {
        "side": "long",
        "size": 1.0,
        "entry": 3000.0,
        "price": 3000.0,
        "collateral": 200.0,
        "fee": 0.0,
    },
    "long_above_trigger": {
        "side": "long",
        "size": 1.0,
        "entry": 3000.0,
        "price": 2900.0,
        "collateral": 130.0,
        "fee": 0.0,
    },
    "short_held_with_fees": {
        "side": "short",
        "size": 2.0,
        "entry": 3000.0,
        "price": 2950.0,
        "collateral": 4000.0,
        "fee": 0.1,
    },
}


def _cli(case: dict) -> dict:
    args = [
        "risk",
        "--side",
        case["side"],
        "--size",
        str(case["size"]),
        "--entry",
        str(case["entry"]),
        "--price",
        str(case["price"]),
        "--collateral",
        str(case["collateral"]),
        "--maintenance",
        "0.005",
        "--sigma",
        str(SIGMA),
        "--horizon",
        "1h",
        "--fee-rate",
        str(case["fee"]),
        "--json",
    ]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


@pytest.fixture
def service(tmp_path):
    cfg = load_config(ROOT / "examples" / "keeper.toml", env={"KEEPER_DRY_RUN": "true"}, dotenv_path=None)
    journal = Journal(str(tmp_path / "journal.sqlite"))
    svc = KeeperService(
        cfg,
        client=None,
        adapter=None,
        journal=journal,
        txm=None,  # type: ignore[arg-type]
        signer_address=OWNER,
    )
    svc.check_interval_s = HORIZON_S - svc.policy.latency_s
    yield svc
    journal.close()


@pytest.mark.parametrize("name", list(CASES))
def test_cli_daemon_and_replay_agree(name, service):
    """The CLI's JSON, the daemon's decision and the replay policy's decision agree on probability, collateral,
    top-up, action and reason for the same position and parameters."""
    case = CASES[name]
    market = _market(case["fee"])
    side = Side.LONG if case["side"] == "long" else Side.SHORT
    pos = _position(side, case["size"], case["entry"], case["collateral"])
    rnd = PriceRound(7, round(case["price"] * 1e8), NOW_S)
    assert service.policy == cli_policy(target=1e-4, trigger=1e-3, fat_tailed=True)  # same parameters

    cli = _cli(case)

    policy = service.policy
    gaps = {0: policy.estimate_stress_gap([NOW_S], [rnd.price_e8], service.check_interval_s, now_s=NOW_S).side_gaps}
    snap = BookSnapshot(
        positions={pos.key: pos}, markets={0: market}, prices={0: rnd}, block_number=1, block_timestamp=NOW_S
    )
    daemon = service.decide(snap, {0: SIGMA}, gaps, wallet_e6=10**12, busy={})
    d_daemon = daemon.plan.decisions[0]

    replay = RiskSized(risk_policy=policy, limits=service.limits)
    obs = Observation(
        now_s=NOW_S,
        round_index=0,
        positions=(pos,),
        markets={0: market},
        prices={0: rnd},
        wallet_e6={OWNER: 10**12},
        sigma_annual={0: SIGMA},
        check_interval_s=service.check_interval_s,
    )
    outcome = replay.decisions(obs)
    d_replay = outcome.plan.decisions[0]

    assert d_daemon == d_replay
    r = daemon.risks[0]
    assert cli["breach_probability"] == pytest.approx(r.breach_probability, rel=1e-12, abs=1e-300)
    assert cli["required_collateral"] == r.required_collateral_e6 / 1e6
    assert cli["top_up"] == d_daemon.top_up_e6 / 1e6
    assert (cli["band"], cli["action"], cli["reason"]) == (d_daemon.band, d_daemon.action, d_daemon.reason)
    assert [a.amount_e6 for a in daemon.plan.onchain_actions] == [a.amount_e6 for a in replay.decide(obs)]
    # the breach probability is the closed form 2 Phi(-(d - d_cost) / (kappa sigma_h)) (no fee here: d_cost = 0)
    if case["fee"] == 0.0:
        sig_h = SIGMA * math.sqrt(HORIZON_S / SECONDS_PER_YEAR)
        assert r.breach_probability == pytest.approx(2 * norm.cdf(-r.log_distance / (policy.kappa * sig_h)), rel=1e-9)


def test_defect1_numbers():
    """The issue's position (1 ETH long at $3,000, $200 collateral) gets 2.89e-6, $651.92 and a $451.92 top-up
    from ``keeper risk``, because the 6.4 % log distance is inside the 12 % stress gap."""
    out = _cli(CASES["defect1_long_inside_stress_gap"])
    assert out["breach_probability"] == pytest.approx(2.8926e-6, rel=1e-4)
    assert out["required_collateral"] == pytest.approx(651.92, abs=0.01)
    assert out["top_up"] == pytest.approx(451.92, abs=0.01)
    assert out["reason"].startswith("log distance 0.064 to liquidation is inside the stress gap 0.120")
    assert "top up $452" in out["reason"]


def test_reasons_in_the_traders_words(service):
    """A triggered position says 'breach X > trigger Y within N min: top up $Z to reach 1e-04', a safe one
    'breach X < release Y ...: hold (release is off)', a busy one that a transaction is still open."""
    market = _market(0.0)
    hot = _position(Side.LONG, 1.0, 3000.0, 130.0)
    safe = Position(OWNER, 1, Side.SHORT, 10**18, 3000 * 10**8, 2000 * 10**6)
    busy = Position("0x3c44cdddb6a900fa2b585dd299e03d12fa4293bc", 0, Side.LONG, 10**18, 3000 * 10**8, 100 * 10**6)
    m1 = Market(1, "BTC", 5 * 10**15, 50 * WAD, 10**16, 0, 3600)
    prices = {0: PriceRound(1, 2950 * 10**8, NOW_S), 1: PriceRound(1, 3000 * 10**8, NOW_S)}
    snap = BookSnapshot(
        positions={p.key: p for p in (hot, safe, busy)},
        markets={0: market, 1: m1},
        prices=prices,
        block_number=1,
        block_timestamp=NOW_S,
    )
    gaps = {0: 0.01, 1: 0.01}  # thin stress gaps: volatility sets the target
    out = service.decide(snap, {0: SIGMA, 1: SIGMA}, gaps, wallet_e6=10**12, busy={busy.key: "sent"})
    by_key = {d.key: d for d in out.plan.decisions}
    assert len(by_key) == 3 and all(d.reason for d in by_key.values())
    d_hot, d_safe, d_busy = by_key[hot.key], by_key[safe.key], by_key[busy.key]
    assert d_hot.band == "trigger" and d_hot.action == "top_up" and d_hot.top_up_e6 > 0
    assert d_hot.reason.startswith(f"breach {d_hot.breach_probability:.1e} > trigger 1e-03 within 1 h: top up $")
    assert d_hot.reason.endswith("to reach 1e-04")
    assert d_safe.action == "none" and d_safe.reason.endswith("< release 1e-07 within 1 h: hold (release is off)")
    assert d_busy.action == "awaiting_tx:sent" and "transaction is still open (sent)" in d_busy.reason
    assert not any(a.account.lower() == busy.key[0] for a in out.plan.actions)


def test_log_line_and_check_json_carry_the_reason(service):
    """Every ``position_decision`` log event and every ``keeper check --json`` position row has the decision's
    non-empty reason and action."""
    from types import SimpleNamespace

    from structlog.testing import capture_logs

    from keeper.commands.check import position_rows
    from keeper.runtime.service import CycleReport

    market = _market(0.0)
    pos = _position(Side.LONG, 1.0, 3000.0, 200.0)
    rnd = PriceRound(3, 3000 * 10**8, NOW_S)
    snap = BookSnapshot(
        positions={pos.key: pos}, markets={0: market}, prices={0: rnd}, block_number=1, block_timestamp=NOW_S
    )
    out = service.decide(snap, {0: SIGMA}, {0: 0.12}, wallet_e6=10**12, busy={})
    with capture_logs() as logs:
        service._explain(snap, out.plan)
    events = [e for e in logs if e["event"] == "position_decision"]
    assert len(events) == 1 and events[0]["reason"] == out.plan.decisions[0].reason != ""
    assert events[0]["action"] == "top_up" and events[0]["log_distance"] == pytest.approx(0.06398, abs=1e-5)
    service.adapter = SimpleNamespace(known_markets=lambda: {0: market})
    report = CycleReport(1, NOW_S, list(out.risks), out.plan)
    rows = json.loads(json.dumps(position_rows(report, service)))
    assert rows[0]["reason"] == out.plan.decisions[0].reason and rows[0]["suggested_action"] == "top_up"
