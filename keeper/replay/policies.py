"""Policies a replay compares: the keeper's risk-sized policy, fixed-ratio baselines, and no keeper.

A policy sees an :class:`Observation` after every oracle round (prices, positions, wallets, and each
market's volatility estimated only from bars that closed before the decision) and returns
:class:`keeper.domain.Action` objects (``TOP_UP``, ``RELEASE``, ``MOVE_MARGIN``, ``REDUCE_SIZE``; ``ALERT``
is ignored). The replay engine lands them after the inclusion delay (see :mod:`keeper.replay.fast`).

Names (``parse_policy``):

* ``none`` — no keeper.
* ``risk`` — the keeper itself: the daemon's one decision function :func:`keeper.decision.decide` (risk
  engine, then planner: top-ups, moves, opt-in release). ``risk:norelease`` keeps the release band off.
* ``fixed:X:Y`` — DeFi Saver / Instadapp style automation on the **margin ratio**
  ``R = equity / maintenance_margin`` (``equity = collateral + pnl - pending fee``; the protocol liquidates
  at ``R < 1``): when ``R < X`` top up to ``R = Y`` (``X < Y``). ``fixed:X:Y:Z`` adds the "boost" side: when
  ``R > Z`` release collateral back to the owner down to ``R = Y`` (``Y < Z``), never below the protocol's
  initial margin (``equity * maxLeverage >= notional``), like DeFi Saver's repay/boost pair with the target
  in the middle. At 0.5 % maintenance, ``R = 4`` is 50x (the most a release may leave), ``R = 20`` is 10x.
  Actions below ``min_action_e6`` ($10, as the keeper's) are not sent.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Protocol

from keeper.decision import BookDecision, decide
from keeper.domain import Action, ActionKind, Market, Position, PriceRound, min_equity_e6, notional_e6
from keeper.errors import InputError
from keeper.planner import BookState, PlanLimits
from keeper.replay.cost import gas_preset_gwei
from keeper.risk.gaps import SideGaps
from keeper.risk.policy import CostBands, RiskPolicy
from keeper.risk.tails import LongTail

DEFAULT_MIN_ACTION_E6 = 10_000_000


@dataclass(frozen=True, slots=True)
class Observation:
    """What a policy knows when it decides (nothing from the future).

    ``prices`` are the latest oracle rounds per market id; ``sigma_annual`` per market id comes from bars
    closed at or before ``now_s``; ``check_interval_s`` is the time to the next round (the keeper's
    reaction time); ``wallet_e6`` per account (the account's own wallet pays its top-ups).
    """

    now_s: int
    round_index: int
    positions: tuple[Position, ...]
    markets: Mapping[int, Market]
    prices: Mapping[int, PriceRound]
    wallet_e6: Mapping[str, int]
    sigma_annual: Mapping[int, float]
    check_interval_s: float
    spent_today_e6: int = 0


class Policy(Protocol):
    """Anything with a ``name`` and ``decide(observation) -> list[Action]``."""

    name: str

    def decide(self, obs: Observation) -> list[Action]: ...


def margin_ratio(position: Position, market: Market, price_e8: int) -> float:
    """``equity / maintenance_margin`` (inf for a zero maintenance margin); < 1 means liquidatable."""
    mm = position.maintenance_margin_e6(market, price_e8)
    eq = position.equity_e6(price_e8)
    return math.inf if mm <= 0 else eq / mm


@dataclass(slots=True)
class NoKeeper:
    """No keeper: positions live or die on their opening collateral."""

    name: str = "none"
    needs_volatility: ClassVar[bool] = False  # the replay may skip the volatility estimator for it

    def decide(self, obs: Observation) -> list[Action]:
        return []


@dataclass(slots=True)
class FixedRatio:
    """``fixed:X:Y[:Z]``: below margin ratio X top up to Y; above Z (optional) release down to Y."""

    trigger: float
    target: float
    release_above: float | None = None
    min_action_e6: int = DEFAULT_MIN_ACTION_E6
    name: str = ""
    needs_volatility: ClassVar[bool] = False  # ratios only

    def __post_init__(self) -> None:
        if not 1.0 <= self.trigger < self.target:
            raise InputError(f"fixed policy needs 1 <= X < Y, got X={self.trigger:g} Y={self.target:g}")
        if self.release_above is not None and not self.release_above > self.target:
            raise InputError(f"fixed policy needs Z > Y, got Y={self.target:g} Z={self.release_above:g}")
        if not self.name:
            tail = "" if self.release_above is None else f":{self.release_above:g}"
            self.name = f"fixed:{self.trigger:g}:{self.target:g}{tail}"

    def decide(self, obs: Observation) -> list[Action]:
        out: list[Action] = []
        wallet = dict(obs.wallet_e6)
        for pos in sorted(obs.positions, key=lambda p: p.key):
            market = obs.markets[pos.market_id]
            rnd = obs.prices[pos.market_id]
            price = rnd.price_e8
            mm = pos.maintenance_margin_e6(market, price)
            eq = pos.equity_e6(price)
            if mm <= 0:
                continue
            ratio = eq / mm
            acct = pos.account.lower()
            if ratio < self.trigger:
                need = math.ceil(self.target * mm) - eq
                amount = min(max(need, self.min_action_e6), wallet.get(acct, 0))
                if amount >= self.min_action_e6:
                    wallet[acct] = wallet.get(acct, 0) - amount
                    out.append(
                        Action(
                            ActionKind.TOP_UP,
                            acct,
                            pos.market_id,
                            amount_e6=amount,
                            reason=f"margin ratio {ratio:.2f} < {self.trigger:g}: top up to {self.target:g}",
                        )
                    )
            elif (
                self.release_above is not None
                and ratio > self.release_above
                and not rnd.is_stale(obs.now_s, market.heartbeat_s)
            ):
                # equity after >= max(Y * mm, initial margin); removal comes out of collateral (fee settles first)
                im = min_equity_e6(notional_e6(pos.size_e18, price), market.max_leverage_wad)
                keep_equity = max(math.ceil(self.target * mm), im) + 1
                # the fee keeps accruing until the release lands: leave a day of it (rounded up) in the collateral
                fee_day = pos.fee_headroom_e6(market)
                amount = min(eq - keep_equity - fee_day, pos.collateral_e6 - pos.pending_fee_e6 - fee_day)
                if amount >= self.min_action_e6:
                    out.append(
                        Action(
                            ActionKind.RELEASE,
                            acct,
                            pos.market_id,
                            amount_e6=amount,
                            reason=(
                                f"margin ratio {ratio:.2f} > {self.release_above:g}: release down to {self.target:g}"
                            ),
                        )
                    )
        return out


@dataclass(slots=True)
class RiskSized:
    """The keeper's own decision path: the one decision function :func:`keeper.decision.decide`.

    ``risk_policy`` and ``limits`` are the keeper's (``keeper.risk.policy.RiskPolicy``,
    ``keeper.planner.PlanLimits``); ``allow_release`` defaults to on (the policy is meant to hold the
    risk-sized buffer, not the opening collateral). The check interval is the time to the next round.
    :meth:`decisions` gives the full outcome (verdicts and explained decisions), :meth:`decide` its
    on-chain actions.
    """

    risk_policy: RiskPolicy = field(default_factory=RiskPolicy)
    limits: PlanLimits | None = None
    name: str = "risk"
    long_tails: dict[str, LongTail] = field(default_factory=dict)  # symbol -> tail from history before the window
    # cost-aware bands (keeper.risk.policy.cost_aware_bands): gas price (gwei) and capital rate of one cost preset;
    # each decision prices a transaction at ``gas_per_tx`` x that gas price x the native market's latest round
    cost_preset: tuple[float, float] | None = None
    native_symbol: str = "ETH"
    gas_per_tx: int = 78_200  # a top-up's gas (the fast replay's addMargin median, keeper.replay.fast)
    _history: dict = field(default_factory=dict, repr=False)  # market id -> (deque of t_s, deque of price)

    def __post_init__(self) -> None:
        if self.limits is None:
            self.limits = PlanLimits.from_policy(
                self.risk_policy, max_per_tx_e6=10**15, max_per_day_e6=10**15, allow_release=True
            )

    def decisions(self, obs: Observation) -> BookDecision:
        """Record the round, estimate the stress gaps, then decide for the whole book."""
        gaps = self._stress_gaps(obs)
        state = BookState.from_reads(
            markets=obs.markets.values(),
            prices=dict(obs.prices),
            wallet_e6=dict(obs.wallet_e6),
            now_s=obs.now_s,
            spent_today_e6=obs.spent_today_e6,
        )
        assert self.limits is not None  # set in __post_init__
        return decide(
            state,
            obs.positions,
            sigmas_annual=obs.sigma_annual,
            policy=self._policy_now(obs),
            limits=self.limits,
            check_interval_s=obs.check_interval_s,
            now_s=obs.now_s,
            stress_gaps=gaps,
        )

    def _policy_now(self, obs: Observation) -> RiskPolicy:
        """The risk policy, with the cost bands of this moment when the policy is cost-aware (the native
        token's price moves the USD cost of a transaction)."""
        if self.cost_preset is None:
            return self.risk_policy
        gwei, rate = self.cost_preset
        native = next(
            (
                obs.prices[mid].price_e8 / 1e8
                for mid, m in obs.markets.items()
                if m.symbol.upper() == self.native_symbol.upper() and mid in obs.prices
            ),
            None,
        )
        if native is None:
            raise InputError(f"cost-aware policy {self.name}: no replayed market {self.native_symbol} prices the gas")
        bands = CostBands(gas_usd_per_tx=self.gas_per_tx * gwei * 1e-9 * native, capital_rate_annual=rate)
        return replace(self.risk_policy, cost_bands=bands)

    def decide(self, obs: Observation) -> list[Action]:
        if not obs.positions:
            self._stress_gaps(obs)
            return []
        return list(self.decisions(obs).plan.onchain_actions)

    def reset(self) -> None:
        """Forget every round seen: a replay calls it before each run (the same object may replay several
        windows, and rounds of one window must not shape the stress gaps of another)."""
        self._history.clear()

    def observe_round(self, market_id: int, t_s: int, price_e8: int) -> None:
        """Remember one oracle round of a market (the decide path calls it; a replay may feed warm-up rounds
        so the policy knows the same history as a daemon reading the feed)."""
        ts, ps = self._history.setdefault(market_id, (deque(), deque()))
        if not ts or t_s > ts[-1]:
            ts.append(t_s)
            ps.append(price_e8)

    def _stress_gaps(self, obs: Observation) -> dict[int, SideGaps]:
        """Record each market's new oracle round and estimate its stress gaps (per side, ``SideGaps``) from the
        rounds seen so far
        (the daemon does the same from its oracle-history cache; no round after ``obs.now_s`` exists here).
        The window is bounded by ``stress_window_s`` (plus one round before it, as the estimator needs)."""
        rp = self._policy_now(obs)  # cost-aware: the capital rate prices the long-history tail too
        window = rp.stress_window_s
        out: dict[int, SideGaps] = {}
        for mid, rnd in obs.prices.items():
            self.observe_round(mid, rnd.updated_at_s, rnd.price_e8)
            ts, ps = self._history[mid]
            while len(ts) > 2 and ts[1] <= obs.now_s - window:
                ts.popleft()
                ps.popleft()
            market = obs.markets.get(mid)
            tail = self.long_tails.get(market.symbol.upper()) if market is not None else None
            penalty = market.liquidation_penalty_ratio if market is not None else 0.0
            out[mid] = rp.estimate_stress_gap(
                ts, ps, obs.check_interval_s, now_s=obs.now_s, long_tail=tail, penalty=penalty
            ).side_gaps
        return out


def parse_policy(
    spec: str,
    *,
    min_action_e6: int = DEFAULT_MIN_ACTION_E6,
    gas_presets_gwei: Mapping[str, float] | None = None,
    capital_rate_annual: float = 0.08,
    native_symbol: str = "ETH",
) -> Policy:
    """``none`` | ``risk`` | ``risk:norelease`` | ``risk:cost:PRESET`` | ``fixed:X:Y`` | ``fixed:X:Y:Z`` -> a policy.

    ``risk:cost:PRESET`` (e.g. ``risk:cost:l1``) is the risk policy with cost-aware restore and release bands
    at that gas preset (``gas_presets_gwei``) and ``capital_rate_annual``: the same trigger, the bands that
    minimise the cost of protection at that preset (:func:`keeper.risk.policy.cost_aware_bands`)."""
    s = spec.strip().lower()
    if s == "none":
        return NoKeeper()
    if s.startswith("risk:cost:"):
        preset = s.split(":", 2)[2]
        gwei = gas_preset_gwei(spec, preset, gas_presets_gwei)
        from keeper.replay.fast import GAS_PER_ACTION  # the replay's gas per top-up (fast imports this module)

        return RiskSized(
            name=f"risk:cost:{preset}",
            cost_preset=(gwei, capital_rate_annual),
            native_symbol=native_symbol,
            gas_per_tx=GAS_PER_ACTION[ActionKind.TOP_UP],
        )
    if s in ("risk", "risk:norelease"):
        if s == "risk":
            return RiskSized()
        rp = RiskPolicy()
        lim = PlanLimits.from_policy(rp, max_per_tx_e6=10**15, max_per_day_e6=10**15, allow_release=False)
        return RiskSized(risk_policy=rp, limits=lim, name="risk:norelease")
    if s.startswith("fixed:"):
        parts = s.split(":")[1:]
        if len(parts) not in (2, 3):
            raise InputError(f"bad policy {spec!r}: expected fixed:X:Y or fixed:X:Y:Z (margin ratios)")
        try:
            nums = [float(x) for x in parts]
        except ValueError:
            raise InputError(f"bad policy {spec!r}: X, Y, Z must be numbers (margin ratios)") from None
        return FixedRatio(nums[0], nums[1], nums[2] if len(nums) == 3 else None, min_action_e6=min_action_e6)
    raise InputError(
        f"unknown policy {spec!r}; allowed: none, risk, risk:norelease, risk:cost:PRESET, fixed:X:Y, fixed:X:Y:Z"
    )
