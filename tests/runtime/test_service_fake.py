"""The service's cycle against the in-memory adapter (no chain): top up, hold, empty wallet, head probing."""

from __future__ import annotations

import pytest

from keeper.chain.rpc import ChainClient, HttpTransport
from keeper.domain import WAD, ActionKind, Market, Position, Side
from keeper.protocols.base import ProtocolAdapter
from keeper.protocols.testing import FakeAdapter
from keeper.runtime.config import KeeperConfig
from keeper.runtime.service import KeeperService
from keeper.tx.journal import Journal

TRADER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # the account tests/runtime/conftest.py configures
ETH = Market(
    market_id=0,
    symbol="ETH",
    maintenance_margin_wad=5 * WAD // 1000,
    max_leverage_wad=50 * WAD,
    liquidation_penalty_wad=WAD // 100,
    fee_rate_per_s_wad=10 * WAD // 100 // 31_536_000,
    heartbeat_s=3600,
)


@pytest.fixture
def fake() -> FakeAdapter:
    """ETH at $3,000 after 60 rounds a minute apart (+-0.01 %)."""
    adapter = FakeAdapter([ETH], block_timestamp=1_700_000_000)
    price = 3_000 * 10**8
    for k in range(60):
        price = price * (10_001 if k % 2 else 9_999) // 10_000
        adapter.push_price(0, price, at_s=adapter.block_timestamp - (60 - k) * 60)
    adapter.push_price(0, 3_000 * 10**8)
    return adapter


def service_for(adapter: FakeAdapter, config: KeeperConfig, *, signer: str | None = TRADER) -> KeeperService:
    cfg = config
    client = ChainClient([HttpTransport("http://127.0.0.1:1")], 31337)  # never called: no transaction manager
    return KeeperService(
        cfg, client=client, adapter=adapter, journal=Journal(str(cfg.journal.path)), txm=None, signer_address=signer
    )


def open_long(adapter: FakeAdapter, collateral_e6: int) -> None:
    adapter.set_position(
        Position(
            account=TRADER,
            market_id=0,
            side=Side.LONG,
            size_e18=20 * 10**18,
            entry_price_e8=3_000 * 10**8,
            collateral_e6=collateral_e6,
        )
    )


def test_fake_adapter_implements_the_whole_interface():
    """The fake is a complete ProtocolAdapter: no abstract method is left unimplemented."""
    assert issubclass(FakeAdapter, ProtocolAdapter)
    assert not getattr(FakeAdapter, "__abstractmethods__", frozenset())


def test_cycle_tops_up_an_endangered_position(fake, fake_config):
    """A 20x long after a 3 % fall gets one top-up to its required collateral; carried out, the next cycle holds."""
    open_long(fake, 3_000 * 10**6)
    fake.fund(TRADER, 30_000 * 10**6)
    fake.allowances[TRADER.lower()] = 2**255
    fake.mine()
    fake.push_price(0, 2_910 * 10**8)
    service = service_for(fake, fake_config())
    try:
        report = service.cycle(execute=False)
        (risk,) = report.risks
        assert report.wallet_e6 == 30_000 * 10**6
        top_ups = [a for a in report.plan.actions if a.kind is ActionKind.TOP_UP]
        assert len(top_ups) == 1 and top_ups[0].account.lower() == TRADER.lower() and top_ups[0].market_id == 0
        assert risk.required_collateral_e6 > risk.position.collateral_e6
        assert 0 < top_ups[0].amount_e6 <= 30_000 * 10**6
        assert report.skipped[0]["action"] == "top_up" and report.sent == []  # execute=False signs nothing
        fake.apply(fake.call_for_action(top_ups[0]), TRADER)
        assert fake.positions[(TRADER.lower(), 0)].collateral_e6 == 3_000 * 10**6 + top_ups[0].amount_e6
        fake.mine()
        after = service.cycle(execute=False)
        assert [a.kind for a in after.plan.actions if a.kind is ActionKind.TOP_UP] == []
        assert after.wallet_e6 == 30_000 * 10**6 - top_ups[0].amount_e6
    finally:
        service.close()


def test_cycle_holds_a_safe_position(fake, fake_config):
    """A 2x long at the entry price plans no protective action (at most a release of excess collateral)."""
    open_long(fake, 30_000 * 10**6)
    fake.fund(TRADER, 1_000 * 10**6)
    service = service_for(fake, fake_config())
    try:
        report = service.cycle(execute=False)
        (risk,) = report.risks
        assert risk.breach_probability < service.policy.p_trigger
        assert [a for a in report.plan.actions if a.kind is not ActionKind.RELEASE] == []
        assert [s["action"] for s in report.skipped if s["action"] != "release"] == []
    finally:
        service.close()


def test_cycle_with_an_empty_wallet_alerts_instead_of_topping_up(fake, fake_config):
    """The same endangered long with nothing in the wallet gets no top-up but one urgent alert naming the shortfall."""
    open_long(fake, 3_000 * 10**6)
    fake.mine()
    fake.push_price(0, 2_910 * 10**8)
    service = service_for(fake, fake_config())
    try:
        report = service.cycle(execute=False)
        assert report.wallet_e6 == 0
        (alert,) = report.plan.actions
        assert alert.kind is ActionKind.ALERT and alert.urgent and alert.market_id == 0
        assert "funded $0.00" in alert.reason and report.skipped == []  # an alert is sent, not a transaction
    finally:
        service.close()


def test_watch_head_reports_a_new_round_once(fake, fake_config):
    """The head probe goes through the adapter: a new oracle round is news until a cycle has seen it."""
    open_long(fake, 30_000 * 10**6)
    service = service_for(fake, fake_config(), signer=None)
    try:
        first = service.watch_head()
        assert (first.block_number, first.oracle_changed) == (fake.block_number, True)
        service.cycle(execute=False)
        fake.mine()
        assert service.watch_head().oracle_changed is False
        fake.push_price(0, 3_010 * 10**8)
        assert service.watch_head().oracle_changed is True
    finally:
        service.close()


def test_start_refuses_a_missing_deployment(fake, fake_config):
    """`start` asks the adapter whether its contracts exist; a missing deployment stops it with ChainMismatchError."""
    from keeper.errors import ChainMismatchError

    fake.deployed = False
    service = service_for(fake, fake_config())
    try:
        with pytest.raises(ChainMismatchError, match="no fake protocol"):
            service.start()
    finally:
        service.close()


def test_position_lines_carry_bound_context(fake, fake_config):
    """Each position_decision line carries chain id, account, market id and market symbol (``market`` = symbol)."""
    from structlog.testing import capture_logs

    open_long(fake, 30_000 * 10**6)
    service = service_for(fake, fake_config())
    try:
        with capture_logs() as logs:
            service.cycle(execute=False)
    finally:
        service.close()
    (line,) = [e for e in logs if e["event"] == "position_decision"]
    assert (line["chain_id"], line["account"], line["market_id"], line["market"]) == (31337, TRADER.lower(), 0, "ETH")


def _write_history(path, bars: int, scale: float, end_s: int) -> str:
    """Hourly bars of a Student-t(3) walk ending before ``end_s`` (the replay's CSV format)."""
    import numpy as np

    rng = np.random.default_rng(7)
    close = 3_000.0 * np.exp(np.cumsum(scale * rng.standard_t(3, bars)))
    rows = ["timestamp_utc,unix_s,open,high,low,close,volume"]
    rows += [f"x,{end_s - 3600 * (bars - i)},{c:.4f},{c:.4f},{c:.4f},{c:.4f},1" for i, c in enumerate(close, start=0)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_long_history_tail_floors_the_stress_gap_and_a_bad_file_stops_the_start(fake, fake_config, tmp_path):
    """[risk.long_history] ETH = years of violent hourly bars: the ETH stress gap rises to the tail's one-round move
    (calm recent rounds alone give the floor); a missing file is a one-line ConfigError naming the field."""
    from keeper.errors import ConfigError

    open_long(fake, 30_000 * 10**6)
    cfg = fake_config()
    plain = service_for(fake, cfg)
    history = _write_history(tmp_path / "eth_1h.csv", 5_000, 0.05, fake.block_timestamp)
    with_tail = cfg.model_copy(update={"risk": cfg.risk.model_copy(update={"long_history": {"ETH": history}})})
    tailed = service_for(fake, with_tail)
    snap, _ = tailed.read()
    _, gaps_plain = plain.estimate(snap)
    _, gaps_tail = tailed.estimate(snap)
    horizon_s = tailed.policy.horizon_s(tailed.check_interval_s)
    fall, _ = tailed.long_tails["ETH"].side_gaps(cfg.risk.p_trigger, horizon_s, 60.0)  # the feed: a round a minute
    assert gaps_plain[0].down == pytest.approx(cfg.risk.stress_floor)
    assert gaps_tail[0].down == pytest.approx(min(fall, cfg.risk.stress_cap)) and gaps_tail[0].down > 0.1

    missing = cfg.model_copy(update={"risk": cfg.risk.model_copy(update={"long_history": {"ETH": "/no/such.csv"}})})
    with pytest.raises(ConfigError) as err:
        service_for(fake, missing)
    assert err.value.field == "risk.long_history.ETH" and "\n" not in str(err.value)
