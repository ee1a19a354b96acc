"""The cost-aware replay policy (``risk:cost:PRESET``): parsed from its preset, its bands priced each decision
at the native market's price, and the trade-off it is built for on a real window."""

from __future__ import annotations

import pytest

from keeper.errors import InputError
from keeper.replay.policies import RiskSized, parse_policy

PRESETS = {"l1": 20.0, "l2": 0.05}


def test_the_policy_is_built_from_its_gas_preset_and_refuses_an_unknown_one():
    pol = parse_policy("risk:cost:l1", gas_presets_gwei=PRESETS, capital_rate_annual=0.1)
    assert isinstance(pol, RiskSized) and pol.name == "risk:cost:l1" and pol.cost_preset == (20.0, 0.1)
    with pytest.raises(InputError, match="unknown gas preset 'l3'"):
        parse_policy("risk:cost:l3", gas_presets_gwei=PRESETS)


def test_dear_gas_trades_transactions_for_idle_capital_on_a_real_crash(crash_csv):
    """14 h of the FTX crash: the l1-priced policy sends fewer transactions and holds more idle than the
    l2-priced one (the cube-root band rule), and neither loses a position."""
    from keeper.replay.book import load_book
    from keeper.replay.fast import ReplayConfig, run_fast
    from keeper.replay.prices import load_bars

    bars = [load_bars(crash_csv["ETH"], "ETH"), load_bars(crash_csv["BTC"], "BTC")]
    pols = [parse_policy(s, gas_presets_gwei=PRESETS) for s in ("risk:cost:l1", "risk:cost:l2")]
    run = run_fast(load_book(), bars, pols, ReplayConfig(warmup_s=3 * 3600, record=False))
    l1, l2 = run.results["risk:cost:l1"], run.results["risk:cost:l2"]
    assert l1.liquidations == 0 and l2.liquidations == 0
    assert l1.transactions < l2.transactions
    assert l1.avg_idle_e6 > l2.avg_idle_e6
