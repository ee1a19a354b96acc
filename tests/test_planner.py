"""Tests of the pure planner (keeper/planner.py): escalation ladder, caps, bands, determinism.

PositionRisk objects are built directly here (the risk engine's ``assess_position`` is someone else's
work): ``top_up_e6`` and ``excess_e6`` follow the interface contract in docs/design.md
(top-up = required - collateral when p > p_trigger; excess = collateral - required when p < p_release).
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keeper.domain import WAD, ActionKind, Market, Position, PriceRound, Side, notional_e6
from keeper.planner import BookState, PlanLimits, fee_headroom_e6, initial_margin_collateral_e6, plan_actions
from keeper.risk.policy import PositionRisk, RiskPolicy

ALICE = "0x00000000000000000000000000000000000A11cE"
BOB = "0x0000000000000000000000000000000000000B0b"
FEE_10PCT = 10**17 // (365 * 24 * 3600)  # 10 %/yr in WAD per second (devchain markets)
ETH = Market(0, "ETH", 5 * 10**15, 50 * WAD, 10**16, FEE_10PCT, 3600)
BTC = Market(1, "BTC", 5 * 10**15, 50 * WAD, 10**16, FEE_10PCT, 3600)
SOL = Market(2, "SOL", 5 * 10**15, 50 * WAD, 10**16, FEE_10PCT, 3600)
MARKETS = {m.market_id: m for m in (ETH, BTC, SOL)}
PRICES = {0: 3000 * 10**8, 1: 60000 * 10**8, 2: 150 * 10**8}
USD = 10**6
P_TRIGGER, P_RELEASE = 1e-3, 1e-7


def pos(account: str = ALICE, market_id: int = 0, collateral_usd: float = 300, size: float = 1.0) -> Position:
    """A long at the market's current price (no PnL, no fee) with the given collateral."""
    return Position(
        account=account,
        market_id=market_id,
        side=Side.LONG,
        size_e18=int(size * 10**18),
        entry_price_e8=PRICES[market_id],
        collateral_e6=int(collateral_usd * USD),
    )


def risk(p: Position, breach: float, required_usd: float, *, liquidatable: bool = False) -> PositionRisk:
    """A PositionRisk consistent with the interface contract for ``breach`` and ``required_usd``."""
    required = int(required_usd * USD)
    top_up = max(0, required - p.collateral_e6) if (breach > P_TRIGGER or liquidatable) else 0
    excess = max(0, p.collateral_e6 - required) if breach < P_RELEASE else 0
    price = PRICES[p.market_id]
    return PositionRisk(
        position=p,
        price_e8=price,
        sigma_annual=0.8,
        horizon_s=300.0,
        liquidation_price_e8=int(p.liquidation_price(MARKETS[p.market_id]) * 1e8),
        log_distance=0.05,
        breach_probability=breach,
        required_collateral_e6=required,
        release_collateral_e6=required * 2,
        top_up_e6=top_up,
        excess_e6=excess,
        suggested_check_interval_s=30.0,
        liquidatable=liquidatable,
    )


def state(wallet_usd: float = 1_000, *, spent_usd: float = 0, stale=(), watch=(), wallets=None) -> BookState:
    w = wallets if wallets is not None else {ALICE: int(wallet_usd * USD), BOB: int(wallet_usd * USD)}
    return BookState(
        markets=MARKETS,
        wallet_e6=w,
        stale_markets=frozenset(stale),
        watch_only=frozenset(a.lower() for a in watch),
        spent_today_e6=int(spent_usd * USD),
    )


def limits(**kw) -> PlanLimits:
    base = {"max_per_tx_e6": 5_000 * USD, "max_per_day_e6": 20_000 * USD, "min_action_e6": 10 * USD}
    base.update(kw)
    return PlanLimits(**base)


def kinds(plan) -> list[str]:
    return [a.kind.value for a in plan.actions]


class TestEscalation:
    def test_top_up_from_wallet_reaches_target(self):
        """An endangered position is topped up from its owner's wallet by exactly the missing amount."""
        plan = plan_actions(state(), [risk(pos(collateral_usd=100), 5e-3, 250)], limits())
        assert kinds(plan) == ["top_up"]
        (a,) = plan.actions
        assert a.amount_e6 == 150 * USD and a.account == ALICE and a.market_id == 0
        assert "top up" in a.reason and "$150.00" in a.reason
        assert plan.onchain_actions == plan.actions

    def test_small_need_rounded_up_to_min_action(self):
        """A need below the minimum action size is rounded up to it (no dust transactions)."""
        plan = plan_actions(state(), [risk(pos(collateral_usd=100), 5e-3, 103)], limits())
        assert [a.amount_e6 for a in plan.actions] == [10 * USD]

    def test_wallet_short_moves_margin_from_safe_position(self):
        """With an empty wallet, margin moves from a safe position of the same owner, keeping its floor."""
        target = risk(pos(collateral_usd=100), 5e-2, 400)
        source = risk(pos(market_id=1, collateral_usd=5_000), 1e-5, 2_000)  # hold band, 3,000 movable
        plan = plan_actions(state(0), [target, source], limits())
        assert kinds(plan) == ["move_margin"]
        (a,) = plan.actions
        assert (a.from_market_id, a.market_id, a.amount_e6) == (1, 0, 300 * USD)
        assert a.urgent  # 5 % breach probability is above the default urgent level of 1 %

    def test_move_respects_initial_margin_floor(self):
        """A source never gives collateral below its max-leverage initial margin even if the risk target is lower."""
        src_pos = pos(market_id=1, collateral_usd=1_500)  # 60,000 notional -> 1,200 initial margin at 50x
        im = initial_margin_collateral_e6(src_pos, BTC, PRICES[1])
        assert im == 1_200 * USD  # 60,000 / 50
        plan = plan_actions(state(0), [risk(pos(collateral_usd=100), 5e-2, 1_000), risk(src_pos, 1e-5, 500)], limits())
        moved = sum(a.amount_e6 for a in plan.actions if a.kind is ActionKind.MOVE_MARGIN)
        assert moved == 300 * USD - fee_headroom_e6(src_pos, BTC)  # a day of fees stays behind
        assert plan.actions[-1].kind is ActionKind.ALERT  # still short by 600: alert

    def test_other_owner_is_never_a_source(self):
        """Margin is never moved across owners."""
        plan = plan_actions(
            state(0), [risk(pos(collateral_usd=100), 5e-2, 400), risk(pos(BOB, 1, 9_000), 1e-9, 1_000)], limits()
        )
        assert kinds(plan) == ["alert"]

    def test_unsaveable_position_alerts(self):
        """A position that neither wallet nor moves can fund gets an alert naming the shortfall."""
        plan = plan_actions(state(50), [risk(pos(collateral_usd=100), 0.2, 400, liquidatable=True)], limits())
        assert kinds(plan) == ["top_up", "alert"]
        assert plan.actions[0].amount_e6 == 50 * USD
        assert plan.actions[1].amount_e6 == 250 * USD and "cannot be saved" in plan.actions[1].reason

    def test_reduce_size_as_last_resort_when_allowed(self):
        """With reduction allowed, the unfunded fraction of the target equity is cut from the size."""
        p = pos(collateral_usd=100)
        plan = plan_actions(state(0), [risk(p, 0.2, 400)], limits(allow_reduce=True))
        assert kinds(plan) == ["reduce_size", "alert"]
        # no PnL/fee: target equity 400, short 300 -> cut 3/4 of the size (ceil in e18)
        assert plan.actions[0].size_delta_e18 == 75 * 10**16
        assert "size reduction planned" in plan.actions[1].reason

    def test_reduce_not_planned_without_opt_in(self):
        """Without allow_reduce the keeper never reduces size."""
        plan = plan_actions(state(0), [risk(pos(collateral_usd=100), 0.2, 400)], limits())
        assert "reduce_size" not in kinds(plan)


class TestPriorityAndCaps:
    def test_short_funds_go_to_highest_expected_loss(self):
        """When the wallet covers one of two needs, the higher breach probability x notional is served first."""
        small = risk(pos(market_id=0, collateral_usd=100), 2e-2, 300)  # 2e-2 * 3,000 = 60
        big = risk(pos(market_id=1, collateral_usd=1_300), 5e-3, 1_500)  # 5e-3 * 60,000 = 300
        plan = plan_actions(state(200), [small, big], limits())
        top_ups = [a for a in plan.actions if a.kind is ActionKind.TOP_UP]
        assert [(a.market_id, a.amount_e6) for a in top_ups] == [(1, 200 * USD)]

    def test_per_tx_cap(self):
        """No single top-up exceeds the per-transaction cap; the rest is alerted."""
        plan = plan_actions(state(10_000), [risk(pos(collateral_usd=100), 5e-2, 700)], limits(max_per_tx_e6=200 * USD))
        assert kinds(plan) == ["top_up", "alert"] and plan.actions[0].amount_e6 == 200 * USD

    def test_day_budget(self):
        """Top-ups stop at what is left of the day budget after spent_today_e6."""
        plan = plan_actions(
            state(10_000, spent_usd=950), [risk(pos(collateral_usd=100), 5e-2, 700)], limits(max_per_day_e6=1_000 * USD)
        )
        assert plan.actions[0].amount_e6 == 50 * USD

    def test_manual_approval(self):
        """An action above the approval threshold is marked needs_approval, alerted, and not on chain."""
        plan = plan_actions(
            state(), [risk(pos(collateral_usd=100), 5e-3, 400)], limits(manual_approval_above_e6=100 * USD)
        )
        assert kinds(plan) == ["top_up", "alert"]
        assert plan.actions[0].needs_approval and "manual approval" in plan.actions[1].reason
        assert plan.onchain_actions == ()


class TestModesAndStaleness:
    def test_alert_only_sends_nothing(self):
        """In alert-only mode every would-be action becomes an alert."""
        plan = plan_actions(state(), [risk(pos(collateral_usd=100), 5e-3, 400)], limits(alert_only=True))
        assert kinds(plan) == ["alert"] and plan.onchain_actions == ()
        assert plan.actions[0].reason.startswith("alert-only mode: would top_up")

    def test_watch_only_account_alerts(self):
        """A watch-only account is alerted, never transacted, while a protected one is topped up."""
        plan = plan_actions(
            state(watch=[BOB]),
            [risk(pos(collateral_usd=100), 5e-3, 400), risk(pos(BOB, 0, 100), 5e-3, 400)],
            limits(),
        )
        assert {(a.account, a.kind.value) for a in plan.actions} == {(ALICE, "top_up"), (BOB, "alert")}

    def test_stale_price_never_releases(self):
        """A position on a stale market is alerted and never released, even deep in the release band."""
        r = risk(pos(collateral_usd=3_000), 1e-12, 200)
        assert r.excess_e6 > 0
        plan = plan_actions(state(stale=[0]), [r], limits(allow_release=True))
        assert kinds(plan) == ["alert"] and "stale" in plan.actions[0].reason

    def test_stale_endangered_top_up_but_no_move(self):
        """A stale endangered position may be topped up (addMargin needs no price) but nothing is moved to it."""
        plan = plan_actions(
            state(100, stale=[0]),
            [risk(pos(collateral_usd=100), 5e-2, 400), risk(pos(market_id=1, collateral_usd=9_000), 1e-5, 2_000)],
            limits(),
        )
        assert kinds(plan) == ["alert", "top_up", "alert"]
        assert plan.actions[1].amount_e6 == 100 * USD

    def test_stale_source_is_not_moved_from(self):
        """Margin is never moved out of a position whose market price is stale."""
        plan = plan_actions(
            state(0, stale=[1]),
            [risk(pos(collateral_usd=100), 5e-2, 400), risk(pos(market_id=1, collateral_usd=9_000), 1e-5, 2_000)],
            limits(),
        )
        assert "move_margin" not in kinds(plan)


class TestRelease:
    def test_release_down_to_target_when_opted_in(self):
        """Excess below p_release is returned to the owner down to the p_target collateral level."""
        p = pos(collateral_usd=3_000)
        plan = plan_actions(state(), [risk(p, 1e-9, 1_000)], limits(allow_release=True))
        headroom = fee_headroom_e6(p, MARKETS[p.market_id])
        assert 0 < headroom < 10 * USD  # a day of 10 %/yr fees on this notional
        assert kinds(plan) == ["release"] and plan.actions[0].amount_e6 == 2_000 * USD - headroom

    def test_release_of_a_winner_leaves_the_pending_fee(self):
        """A winner whose profit covers the initial margin needs no collateral, but the pending fee settles out
        of the collateral first: the release stops short of it (and a day of fee), so it cannot revert."""
        p = replace(pos(collateral_usd=300), entry_price_e8=2_000 * 10**8, pending_fee_e6=50 * USD)
        plan = plan_actions(state(), [risk(p, 1e-9, 0)], limits(allow_release=True))
        headroom = fee_headroom_e6(p, MARKETS[p.market_id])
        assert kinds(plan) == ["release"]
        assert plan.actions[0].amount_e6 == 300 * USD - 50 * USD - headroom

    def test_no_release_by_default(self):
        """Release is opt-in."""
        assert plan_actions(state(), [risk(pos(collateral_usd=3_000), 1e-9, 1_000)], limits()).actions == ()

    def test_no_release_while_owner_has_short_position(self):
        """Excess stays put while another position of the same owner is short of its target."""
        plan = plan_actions(
            state(0),
            [risk(pos(collateral_usd=100), 5e-2, 9_000), risk(pos(market_id=1, collateral_usd=3_000), 1e-9, 1_500)],
            limits(allow_release=True),
        )
        assert "release" not in kinds(plan)


class TestDecisions:
    def test_one_decision_per_position_with_inputs(self):
        """Plan.decisions has one entry per position, sorted, with the risk inputs and the action taken."""
        rs = [risk(pos(market_id=1, collateral_usd=2_000), 1e-5, 1_500), risk(pos(collateral_usd=100), 5e-3, 250)]
        plan = plan_actions(state(), rs, limits())
        assert [d.market_id for d in plan.decisions] == [0, 1]
        d0, d1 = plan.decisions
        for key in ("price_e8", "sigma_annual", "breach_probability", "liquidation_price_e8", "required_collateral_e6"):
            assert hasattr(d0, key)
        assert (d0.band, d0.action) == ("trigger", "top_up")
        assert (d1.band, d1.action) == ("hold", "none")

    def test_duplicate_position_rejected(self):
        """Two verdicts for one position are a caller bug and raise."""
        r = risk(pos(), 1e-5, 100)
        with pytest.raises(ValueError, match="duplicate"):
            plan_actions(state(), [r, r], limits())


# ---- property tests --------------------------------------------------------------------------------

ACCOUNTS = [ALICE, BOB, "0x00000000000000000000000000000000000c4A21"]


@st.composite
def books(draw):
    n = draw(st.integers(1, 8))
    keys = draw(st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 2)), min_size=n, max_size=n, unique=True))
    rs = []
    for account, mid in keys:
        collateral = draw(st.integers(0, 20_000)) * USD
        size = draw(st.integers(1, 10**6)) * 10**13
        p = Position(account, mid, draw(st.sampled_from(list(Side))), size, PRICES[mid], collateral, 0)
        breach = draw(st.sampled_from([0.0, 1e-12, 1e-8, 5e-7, 1e-4, 9e-4, 2e-3, 0.05, 0.5, 1.0]))
        required = draw(st.integers(0, 25_000)) * USD
        rs.append(
            PositionRisk(
                position=p,
                price_e8=PRICES[mid],
                sigma_annual=0.8,
                horizon_s=60.0,
                liquidation_price_e8=0,
                log_distance=0.1,
                breach_probability=breach,
                required_collateral_e6=required,
                release_collateral_e6=required,
                top_up_e6=max(0, required - collateral) if breach > P_TRIGGER else 0,
                excess_e6=max(0, collateral - required) if breach < P_RELEASE else 0,
                suggested_check_interval_s=30.0,
                liquidatable=breach >= 0.5,
            )
        )
    wallets = {a: draw(st.integers(0, 30_000)) * USD for a in ACCOUNTS}
    bs = BookState(
        markets=MARKETS,
        wallet_e6=wallets,
        stale_markets=frozenset(draw(st.sets(st.integers(0, 2), max_size=1))),
        spent_today_e6=draw(st.integers(0, 20_000)) * USD,
    )
    lim = PlanLimits(
        max_per_tx_e6=draw(st.integers(1, 10_000)) * USD,
        max_per_day_e6=draw(st.integers(1, 30_000)) * USD,
        min_action_e6=draw(st.sampled_from([0, 10 * USD])),
        allow_release=draw(st.booleans()),
        allow_reduce=draw(st.booleans()),
        manual_approval_above_e6=draw(st.sampled_from([None, 1_000 * USD])),
    )
    return bs, rs, lim, draw(st.randoms(use_true_random=False))


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(books())
    def test_budget_invariants(self, book):
        """Top-ups never exceed a wallet, the day budget, or the per-tx cap; moves keep each source's floor."""
        bs, rs, lim, _ = book
        plan = plan_actions(bs, rs, lim)
        top = [a for a in plan.actions if a.kind is ActionKind.TOP_UP]
        for a in plan.actions:
            if a.kind is not ActionKind.ALERT:
                assert 0 < a.amount_e6 <= lim.max_per_tx_e6 or a.kind is ActionKind.REDUCE_SIZE
        for account in ACCOUNTS:
            assert sum(a.amount_e6 for a in top if a.account == account) <= bs.wallet_of(account)
        assert sum(a.amount_e6 for a in top) <= max(0, lim.max_per_day_e6 - bs.spent_today_e6)
        by_key = {r.position.key: r for r in rs}
        for r in rs:
            out = sum(
                a.amount_e6
                for a in plan.actions
                if a.account.lower() == r.position.key[0]
                and (
                    (a.kind is ActionKind.MOVE_MARGIN and a.from_market_id == r.position.market_id)
                    or (a.kind is ActionKind.RELEASE and a.market_id == r.position.market_id)
                )
            )
            if out:
                src = by_key[r.position.key]
                floor = max(
                    src.required_collateral_e6,
                    initial_margin_collateral_e6(src.position, MARKETS[src.position.market_id], src.price_e8),
                )
                assert src.position.collateral_e6 - out >= floor
                assert src.position.market_id not in bs.stale_markets
        for a in plan.actions:
            if a.kind is ActionKind.RELEASE:
                assert a.market_id not in bs.stale_markets

    @settings(max_examples=200, deadline=None)
    @given(books())
    def test_deterministic_under_shuffle(self, book):
        """The plan does not depend on the order in which risks are given."""
        bs, rs, lim, rnd = book
        shuffled = list(rs)
        rnd.shuffle(shuffled)
        assert plan_actions(bs, rs, lim) == plan_actions(bs, shuffled, lim)

    @settings(max_examples=200, deadline=None)
    @given(books())
    def test_hold_band_gets_no_action(self, book):
        """A fresh-price position between p_release and p_trigger is never the target of any action."""
        bs, rs, lim, _ = book
        plan = plan_actions(bs, rs, lim)
        for r in rs:
            if (
                P_RELEASE <= r.breach_probability <= P_TRIGGER
                and not r.liquidatable
                and r.position.market_id not in bs.stale_markets
            ):
                hit = [a for a in plan.actions if (a.account.lower(), a.market_id) == r.position.key]
                assert hit == []


def test_from_reads_marks_stale_markets():
    """BookState.from_reads applies the protocol's staleness rule (age > heartbeat) per market."""
    bs = BookState.from_reads(
        markets=[ETH, BTC, SOL],
        prices={0: PriceRound(1, PRICES[0], 1_000), 1: PriceRound(1, PRICES[1], 1_000 - 1)},
        wallet_e6={ALICE: 5},
        now_s=1_000 + 3_600,
    )
    assert bs.stale_markets == frozenset({1, 2})  # 1: 3,601 s old > 3,600; 2: no price at all
    assert bs.wallet_of(ALICE.upper().replace("0X", "0x")) == 5


def test_from_policy_uses_bands():
    """PlanLimits.from_policy takes the bands and minimum action size from the risk policy."""
    lim = PlanLimits.from_policy(RiskPolicy(), max_per_tx_e6=1, max_per_day_e6=2, allow_release=True)
    assert (lim.p_trigger, lim.p_release, lim.min_action_e6) == (1e-3, 1e-7, 10_000_000) and lim.allow_release


def test_random_order_smoke():
    """A larger mixed book plans identically across random permutations (a quick non-hypothesis check)."""
    rs = [risk(pos(a, m, 100 + 50 * m), b, 400) for a in (ALICE, BOB) for m, b in ((0, 5e-2), (1, 1e-5), (2, 1e-9))]
    base = plan_actions(state(150), rs, limits(allow_release=True))
    for seed in range(5):
        random.Random(seed).shuffle(rs)
        assert plan_actions(state(150), rs, limits(allow_release=True)) == base
    assert notional_e6(10**18, PRICES[0]) == 3_000 * USD


class TestWithRiskEngine:
    def test_top_up_restores_target_per_risk_engine(self):
        """Applying the planned top-up to a 40x ETH long and re-assessing brings it to the p_target level."""
        from dataclasses import replace as dc_replace

        from keeper.risk.policy import assess_position

        policy = RiskPolicy()
        p = pos(collateral_usd=75)  # 1 ETH at 3,000: 40x, liquidation ~2 % away
        before = assess_position(p, ETH, PRICES[0], 1.5, policy, 300.0, 0)
        assert before.breach_probability > policy.p_trigger
        plan = plan_actions(
            state(10_000), [before], PlanLimits.from_policy(policy, max_per_tx_e6=10**12, max_per_day_e6=10**12)
        )
        (top_up,) = plan.onchain_actions
        after = assess_position(
            dc_replace(p, collateral_e6=p.collateral_e6 + top_up.amount_e6), ETH, PRICES[0], 1.5, policy, 300.0, 0
        )
        assert after.breach_probability <= policy.p_target  # the target includes the 12 % stress gap: far below
        assert after.top_up_e6 == 0 and after.excess_e6 == 0  # now in the hold band: no further action


def test_fee_headroom_rounds_up():
    """A day of fees kept back is rounded up (the safe side): the planner's headroom is the domain's
    fee_headroom_e6, the function the fixed-ratio replay policy also calls."""
    from keeper.domain import fee_headroom_e6 as domain_headroom

    p = pos(size=1.0)
    exact = notional_e6(p.size_e18, p.entry_price_e8) * ETH.fee_rate_per_s_wad * 86_400
    assert exact % WAD != 0  # the floor and the ceiling differ here
    assert (
        fee_headroom_e6(p, ETH)
        == exact // WAD + 1
        == domain_headroom(p.size_e18, p.entry_price_e8, ETH.fee_rate_per_s_wad)
    )
    assert p.fee_headroom_e6(ETH) == fee_headroom_e6(p, ETH)
