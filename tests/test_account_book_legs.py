"""The book-wide exposures and stress margins of ``assess_accounts`` equal the per-account loop to the last bit.

``assess_accounts`` computes every account's weighted collateral, debt, gradient and drift (and the exact
margin at its stress prices) from one flat array of the book's legs instead of calling ``exposures`` and
``MarginAccount.margin_excess_e8`` per account; these fields must be the very floats and integers the loop
gives (``repr`` compared: the same sign of zero, the same key order), whatever the legs.
"""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keeper.accounts.base import Leg, LegKind, MarginAccount
from keeper.domain import SECONDS_PER_YEAR
from keeper.risk.accounts import assess_account, assess_accounts, exposures
from keeper.risk.policy import RiskPolicy

POLICY = RiskPolicy()
ASSETS = ("A", "B", "C", "D")
PRICES = {"A": 3_000 * 10**8, "B": 60_000 * 10**8, "C": 10**8, "D": 99_990_000, "SRC": 100_020_000}

legs = st.builds(
    Leg,
    st.sampled_from(ASSETS),
    st.sampled_from((LegKind.COLLATERAL, LegKind.DEBT)),
    st.one_of(st.integers(0, 10**6), st.integers(0, 10**32)),
    st.integers(0, 24),
    st.integers(0, 11_000),
    st.sampled_from(("", "", "SRC")),
    st.floats(0.0, 0.5),
)
accounts = st.lists(
    st.builds(
        MarginAccount,
        st.just("test"),
        st.integers(0, 10**6).map(lambda k: f"0x{k:040x}"),
        st.lists(legs, max_size=5).map(tuple),
        st.just(0),
        st.one_of(st.just(0), st.integers(-(10**14), 10**14)),
        st.one_of(st.just(0.0), st.floats(-1e5, 1e5)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(book=accounts, gap=st.floats(0.0, 0.3))
def test_book_exposures_and_stress_margins_equal_the_loop(book, gap):
    gaps = {a: (gap, gap / 2) for a in (*ASSETS, "SRC")}
    try:
        singles = [assess_account(a, PRICES, {}, POLICY, 120.0, stress_gaps=gaps) for a in book]
    except OverflowError:  # a move to survive past any float (interest cost of a dust account): both raise
        assume(False)
    got = assess_accounts(book, PRICES, {}, POLICY, 120.0, stress_gaps=gaps)
    for account, risk, single in zip(book, got, singles, strict=True):
        coll, debt, grad, drift = exposures(account, PRICES)
        assert repr((risk.collateral_weighted_usd, risk.debt_usd, risk.drift_usd_per_year)) == repr((coll, debt, drift))
        assert repr(risk.margin_excess_usd) == repr(coll - debt)
        assert repr(list(risk.gradient_usd.items())) == repr(list(grad.items()))
        if risk.method == "no_debt":
            continue
        # the exact margin at the stress prices: the loop's integers and comparison
        cost = max(0.0, -drift * (risk.horizon_s / SECONDS_PER_YEAR))
        assert risk.stress_breach == (account.margin_excess_e8(risk.stress_prices_e8) / 1e8 - cost < 0)
        assert risk.stress_prices_e8 == single.stress_prices_e8
        assert risk.stress_breach == single.stress_breach
