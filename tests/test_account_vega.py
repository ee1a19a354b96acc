"""Per-account vega: d breach_probability / d sigma (every asset's annual volatility shifted alike), pure.

Checked against a central finite difference of the breach probability the decision uses (``assess_account`` and
``assess_accounts`` at sigma +- 1e-5) within 1e-4 relative (the difference's own error is of order h^2),
for one dominant factor (closed form) and for several (the screen); positive for an endangered account and 0
for a liquidatable one.
"""

from __future__ import annotations

import pytest

from keeper.accounts.base import Leg, LegKind, MarginAccount
from keeper.risk.accounts import AccountRisk, assess_account, assess_accounts
from keeper.risk.policy import RiskPolicy

POLICY = RiskPolicy(stress_window_s=0.0)
PRICES = {"WETH": 3_000 * 10**8, "WBTC": 60_000 * 10**8, "USDC": 10**8}
SIGMAS = {"WETH": 0.8, "WBTC": 0.6, "USDC": 0.05}
CORR = {("WETH", "WBTC"): 0.6}
H = 1e-5


def _account(name: str, weth: float, wbtc: float, usdc_debt: float) -> MarginAccount:
    legs = [Leg("USDC", LegKind.DEBT, int(usdc_debt * 10**6), 6)]
    if weth:
        legs.append(Leg("WETH", LegKind.COLLATERAL, int(weth * 10**18), 18, 8_250))
    if wbtc:
        legs.append(Leg("WBTC", LegKind.COLLATERAL, int(wbtc * 10**8), 8, 7_800))
    return MarginAccount("aave-v3", name, tuple(legs))


ONE_FACTOR = _account("one", 10.0, 0.0, 24_600.0)  # HF 1.006 on WETH alone: p 0.13 within 5 min
TWO_FACTORS = _account("two", 10.0, 0.5, 47_700.0)  # WETH and WBTC, correlated 0.6: p 3e-3


def _risk(account: MarginAccount, shift: float = 0.0, *, batch: bool = False) -> AccountRisk:
    sigmas = {a: s + shift for a, s in SIGMAS.items()}
    if batch:
        return assess_accounts([account], PRICES, sigmas, POLICY, 300.0, correlation=CORR)[0]
    return assess_account(account, PRICES, sigmas, POLICY, 300.0, correlation=CORR)


@pytest.mark.parametrize("batch", [False, True], ids=["assess_account", "assess_accounts"])
@pytest.mark.parametrize("account, method", [(ONE_FACTOR, "closed_form"), (TWO_FACTORS, "screen")])
def test_vega_is_the_central_difference_of_the_breach_probability(account, method, batch):
    r = _risk(account, batch=batch)
    assert r.method == method and 1e-6 < r.breach_probability < 1.0
    fd = (_risk(account, H, batch=batch).breach_probability - _risk(account, -H, batch=batch).breach_probability) / (
        2 * H
    )
    assert r.vega > 0 and r.vega == pytest.approx(fd, rel=1e-4)
    assert r.breach_probability > POLICY.p_trigger  # endangered: more volatility, more breach


def test_vega_is_zero_when_liquidatable_or_without_debt():
    under = _account("under", 10.0, 0.0, 26_000.0)  # M < 0
    assert _risk(under).breach_probability == 1.0 and _risk(under).vega == 0.0
    free = MarginAccount("aave-v3", "free", (Leg("WETH", LegKind.COLLATERAL, 10**18, 18, 8_250),))
    assert _risk(free).vega == 0.0
