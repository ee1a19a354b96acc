"""The pure protocol model: hand-computed reference values from docs/design.md and consistency with the domain."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.domain import Market, Side
from keeper.replay.model import ModelRevert, PerpModel

ETH = Market(
    market_id=0,
    symbol="ETH",
    maintenance_margin_wad=5 * 10**15,
    max_leverage_wad=50 * 10**18,
    liquidation_penalty_wad=10**16,
    fee_rate_per_s_wad=10**17 // (365 * 86400),
    heartbeat_s=3600,
)
T0 = 1_700_000_000


def _model(price_e8: int = 3000 * 10**8) -> PerpModel:
    m = PerpModel.with_markets([ETH], T0)
    m.push_price(0, price_e8, T0)
    return m


class TestArithmetic:
    def test_equity_and_maintenance_reference(self):
        """1 ETH long at $3000 with $100: at $2915 equity $15 >= mm $14.575 (safe); at $2914.5 liquidatable."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        m.push_price(0, 2915 * 10**8, T0)
        v = m.view("a", 0, T0)
        assert (v.equity, v.maintenance_margin, v.liquidatable) == (15_000_000, 14_575_000, False)
        m.push_price(0, 291450000000, T0)
        v = m.view("a", 0, T0)
        assert (v.equity, v.maintenance_margin, v.liquidatable) == (14_500_000, 14_572_500, True)

    def test_liquidation_price_reference(self):
        """Long liquidation price (3000 - 100/1)/(1 - 0.005) = 2914.5728643... -> floor e8 291457286432."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        assert m.view("a", 0, T0).liquidation_price == 291457286432
        # and the float formula of keeper.domain agrees to 1e-8 USD
        pos = m.position("a", 0, T0)
        assert pos.liquidation_price(ETH) == pytest.approx(2914.5728643216, abs=1e-8)

    def test_pnl_floors_toward_minus_infinity(self):
        """A 1-wei position one e8 tick against it loses 1 e6 unit (floor), and gains 0 one tick for it."""
        m = _model()
        m.open_position("long", 0, True, 1, 1, T0)
        m.open_position("short", 0, False, 1, 1, T0)
        m.push_price(0, 3000 * 10**8 + 1, T0)
        assert m.view("short", 0, T0).equity == 1 - 1
        assert m.view("long", 0, T0).equity == 1 + 0

    def test_fee_one_day_reference(self):
        """10 %/yr on $3000 entry notional for 86,400 s: rate 3170979198 wad/s -> index 273972602707200 -> fee
        821917."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        m.push_price(0, 3000 * 10**8, T0 + 86_400)
        assert ETH.fee_rate_per_s_wad == 3170979198
        assert m.view("a", 0, T0 + 86_400).pending_fee == 821_917
        m.add_margin("a", 0, 1, T0 + 86_400)  # settles the fee into collateral
        assert m.positions[("a", 0)].collateral_e6 == 100_000_000 - 821_917 + 1

    def test_liquidation_penalty_and_return(self):
        """Liquidation pays min(equity, 1% of notional) to the liquidator and the rest to the account."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        m.push_price(0, 2914 * 10**8, T0)
        # equity = 100 - 86 = 14; notional 2914 -> 1% = 29.14 > 14: the whole equity is the penalty
        assert m.liquidate("a", 0, T0) == (14_000_000, 0)
        assert ("a", 0) not in m.positions

    def test_liquidation_with_equity_above_penalty(self):
        """A 10-ETH position liquidated with equity above 1 % of notional returns the difference."""
        m = _model()
        m.open_position("a", 0, True, 10 * 10**18, 1000 * 10**6, T0)
        m.push_price(0, 2910 * 10**8, T0)  # equity 1000 - 900 = 100 < mm 145.5; penalty 291 capped at 100
        assert m.liquidate("a", 0, T0) == (100_000_000, 0)
        m.open_position("b", 0, True, 10 * 10**18, 145_000_000 + 600_000_000, T0)
        m.push_price(0, 2850 * 10**8, T0)  # equity 745 - 600 = 145 > mm 142.5: not liquidatable
        with pytest.raises(ModelRevert, match="NotLiquidatable"):
            m.liquidate("b", 0, T0)


class TestRules:
    def test_max_leverage_on_open(self):
        """$60 opens a $3000 position at 50x exactly; one e6 unit less reverts LeverageTooHigh."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 60 * 10**6, T0)
        with pytest.raises(ModelRevert, match="LeverageTooHigh"):
            m.open_position("b", 0, True, 10**18, 60 * 10**6 - 1, T0)

    def test_remove_margin_respects_initial_margin(self):
        """removeMargin may go down to the 50x initial margin and not one unit below; state is unchanged on revert."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        with pytest.raises(ModelRevert, match="LeverageTooHigh"):
            m.remove_margin("a", 0, 40 * 10**6 + 1, T0)
        assert m.positions[("a", 0)].collateral_e6 == 100 * 10**6
        assert m.remove_margin("a", 0, 40 * 10**6, T0) == 40 * 10**6

    def test_stale_price_blocks_all_but_add_margin(self):
        """After the heartbeat, remove/liquidate revert StalePrice while addMargin still works."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        late = T0 + 3601
        with pytest.raises(ModelRevert, match="StalePrice"):
            m.remove_margin("a", 0, 10**6, late)
        with pytest.raises(ModelRevert, match="StalePrice"):
            m.liquidate("a", 0, late)
        m.add_margin("a", 0, 10**6, late)
        assert not m.view("a", 0, late).liquidatable
        m.remove_margin("a", 0, 10**6, T0 + 3600)  # exactly the heartbeat is still fresh

    def test_exit_equity_counts_unfloored_fee(self):
        """Liquidation equity is collateral + pnl - pendingFee before settlement (fee larger than collateral)."""
        m = _model()
        m.open_position("a", 0, True, 10**18, 60 * 10**6, T0)
        later = T0 + 3 * 365 * 86400  # 30 % of $3000 in fees = $900 > $60 collateral
        m.push_price(0, 3000 * 10**8, later)
        v = m.view("a", 0, later)
        assert v.equity == 60_000_000 - v.pending_fee < 0
        assert m.liquidate("a", 0, later) == (0, 0)

    def test_increase_averages_entry(self):
        """Increasing re-averages the entry price by size (floored)."""
        m = _model()
        m.open_position("a", 0, False, 10**18, 100 * 10**6, T0)
        m.push_price(0, 3001 * 10**8, T0)
        m.open_position("a", 0, False, 2 * 10**18, 200 * 10**6, T0)
        assert m.positions[("a", 0)].entry_price_e8 == (3000 * 10**8 + 2 * 3001 * 10**8) // 3
        with pytest.raises(ModelRevert, match="SideMismatch"):
            m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)

    def test_move_margin_between_markets(self):
        """moveMargin keeps total collateral and checks the source's initial margin."""
        btc = Market(1, "BTC", 5 * 10**15, 50 * 10**18, 10**16, 0, 3600)
        m = PerpModel.with_markets([ETH, btc], T0)
        m.push_price(0, 3000 * 10**8, T0)
        m.push_price(1, 60000 * 10**8, T0)
        m.open_position("a", 0, True, 10**18, 100 * 10**6, T0)
        m.open_position("a", 1, False, 10**17, 200 * 10**6, T0)
        m.move_margin("a", 1, 0, 50 * 10**6, T0)
        assert (m.positions[("a", 0)].collateral_e6, m.positions[("a", 1)].collateral_e6) == (150 * 10**6, 150 * 10**6)
        with pytest.raises(ModelRevert, match="LeverageTooHigh"):
            m.move_margin("a", 1, 0, 31 * 10**6, T0)  # would leave $119 < $120 initial margin on $6000


@settings(max_examples=300, deadline=None)
@given(
    is_long=st.booleans(),
    size=st.integers(10**12, 10**21),
    entry=st.integers(10**8, 10**13),
    lev=st.integers(1, 50),
    move=st.floats(-0.5, 0.5),
    dt=st.integers(0, 30 * 86400),
)
def test_view_matches_domain_position(is_long, size, entry, lev, move, dt):
    """The model's equity, maintenance and liquidatable flag equal keeper.domain.Position's for any state."""
    m = _model(entry)
    coll = -(-(size * entry // 10**20) // lev) + 1
    m.open_position("a", 0, is_long, size, coll, T0)
    price = max(1, int(entry * (1 + move)))
    m.push_price(0, price, T0 + dt)
    v = m.view("a", 0, T0 + dt)
    pos = m.position("a", 0, T0 + dt)
    assert pos.side is (Side.LONG if is_long else Side.SHORT)
    assert v.equity == pos.equity_e6(price)
    assert v.maintenance_margin == pos.maintenance_margin_e6(ETH, price)
    assert v.liquidatable == pos.is_liquidatable(ETH, price)
