"""The fast replay: real price bars through the pure protocol model, one policy at a time.

Timeline. Every bar becomes four oracle rounds (:func:`keeper.replay.prices.build_round_grid`, adverse
intra-bar order). The first ``warmup_s`` of the window only calibrate volatility; the book opens at the
first round after it, at that round's prices. Then, at every round ``k``:

1. actions the policy decided at round ``k - inclusion_delay_rounds`` land (default delay 1: a decision
   taken on round ``k-1``'s price is mined before round ``k``'s oracle update — the keeper reacts to a
   round within one block, but never to the round it has not seen; a gap between two rounds is never
   escaped). Each action is applied by the model; a revert counts as a sent, failed transaction;
2. the oracle pushes round ``k``'s prices;
3. closest approach: the margin ratio ``equity / maintenance`` of every live position is recorded;
4. the liquidator liquidates every liquidatable position (fresh price, ``equity < maintenance``); the
   penalty is lost, the rest returns to the account's wallet;
5. idle collateral ``sum max(0, equity - maintenance)`` over live positions is accumulated, weighted by
   the time to the next round (time-weighted average; peak);
6. the policy observes (prices, positions, wallets, volatility) and decides.

No look-ahead, and the keeper's own volatility input: the volatility a decision sees is the daemon's
estimate (:class:`keeper.runtime.volatility_cache.VolatilityCache` over the feed's history, read back by
``ReferenceAdapter.oracle_history``): :func:`keeper.risk.volatility.estimate_volatility` (EWMA, RiskMetrics
lambda 0.94, per-second variance samples, seeded with the mean of the first 30) over the last
``VOL_WINDOW_ROUNDS`` oracle rounds of the market up to and including the decision's round — every
sub-round pushed, warm-up included, nothing after it (:class:`OracleVol`). The on-chain replay's keeper
reads exactly these rounds from the feeds, so both modes feed the risk engine the same numbers; fewer
than 30 returns give the policy's fallback volatility, and the policy's floor applies.
(:class:`EwmaVol`, the earlier close-to-close estimator, is kept for comparison; the replay no longer uses it.)

Gas. Each keeper transaction is charged a gas figure per kind (:data:`GAS_PER_ACTION`), the medians of
receipts measured by the on-chain replay (:mod:`keeper.replay.onchain`, the README (crash replay section)); a
reverted call is charged :data:`GAS_REVERT`. The liquidator's gas is not the keeper's and is not counted.

Long inputs. The rounds are columns (:class:`keeper.replay.prices.RoundGrid`, about 30 bytes a round), turned
into :class:`Round` objects ``ReplayConfig.chunk_rounds`` at a time; every policy steps through each round
before the next one is made (the policies are independent: each has its own model, wallets and memory), so the
keeper's volatility is computed once per round and never stored for the whole series; the metrics are
aggregates (:mod:`keeper.replay.metrics`) and the per-round series are kept only at the rows the plots draw
(``ReplayConfig.record_every``). Years of minute bars replay in memory proportional to a few numbers a round,
and ``progress`` is called at a steady cadence from the first round on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from keeper.domain import SECONDS_PER_YEAR, Action, ActionKind, PriceRound, Side
from keeper.errors import InputError
from keeper.replay.book import Book, BookPosition, opening_collateral_e6
from keeper.replay.metrics import WALLET_LEFT_MIN_E6, Event, PolicyResult, plot_stride
from keeper.replay.model import ModelRevert, PerpModel
from keeper.replay.policies import Observation, Policy
from keeper.replay.prices import Bars, Round, RoundGrid, build_round_grid, to_e8
from keeper.risk.volatility import estimate_volatility

GAS_PER_ACTION: dict[ActionKind, int] = {  # medians of receipts, measured by the on-chain replay (anvil, PerpEngine)
    ActionKind.TOP_UP: 78_200,  # addMargin: 72.6k-78.3k (112k when a fee slot goes zero -> non-zero)
    ActionKind.RELEASE: 88_600,  # removeMargin: 88.5k-94.2k
    ActionKind.MOVE_MARGIN: 106_500,  # moveMargin: 106.5k (140.7k first time)
    ActionKind.REDUCE_SIZE: 81_500,  # decreasePosition: 81.5k
}
GAS_REVERT = 69_400  # removeMargin reverting InvalidAmount after the fee settlement (the planner's usual revert)
EWMA_LAMBDA = 0.94
EWMA_MIN_RETURNS = 30
DEFAULT_WARMUP_S = 24 * 3600
DEFAULT_CHUNK_ROUNDS = 4096
PROGRESS_EVERY_ROUNDS = 64  # progress(...) is called every this many replayed rounds (and at the last)
VOL_WINDOW_ROUNDS = 2_000  # keeper.runtime.volatility_cache.VolatilityCache.window (tested equal)


class OracleVol:
    """The keeper's volatility input for one market: the last ``window`` oracle rounds and their EWMA.

    Same inputs and same code as the daemon (``VolatilityCache.estimate``: times and ``price_e8 / 1e8`` as
    float arrays into :func:`keeper.risk.volatility.estimate_volatility`, model ``"ewma"``), so the
    result is bit-identical to what the keeper computes from the feed's rounds on chain. The rounds live in
    float arrays that are compacted now and then (a window is a slice, not a copy of a deque: a year of
    hourly rounds took 110 s in conversions alone).
    """

    __slots__ = ("_n", "_p", "_t", "window")

    def __init__(self, window: int = VOL_WINDOW_ROUNDS) -> None:
        self.window = window
        self._t = np.empty(4 * window)
        self._p = np.empty(4 * window)
        self._n = 0

    def add(self, t_s: int, price_e8: int) -> None:
        if self._n == self._t.size:  # keep the last window - 1 rounds at the front
            keep = self.window - 1
            self._t[:keep] = self._t[self._n - keep : self._n]
            self._p[:keep] = self._p[self._n - keep : self._n]
            self._n = keep
        self._t[self._n] = float(t_s)
        self._p[self._n] = float(price_e8)
        self._n += 1

    def __len__(self) -> int:
        return min(self._n, self.window)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept rounds' times (s) and prices (e8), oldest first: views, not copies."""
        lo = max(0, self._n - self.window)
        return self._t[lo : self._n], self._p[lo : self._n]

    def raw_sigma_annual(self) -> float | None:
        """EWMA sigma (annualised) of the kept rounds, or None with fewer than 30 returns (fallback)."""
        times, prices_e8 = self.arrays()
        est = estimate_volatility(times, prices_e8 / 1e8, model="ewma", fallback_annual=1.0)
        return None if est.model == "fallback" else est.raw_sigma_annual


def policy_sigma(raw: float | None, policy: Policy, default_fallback: float) -> float:
    """What the keeper's cache reports: the raw EWMA (or the policy's fallback), never below its floor."""
    rp = getattr(policy, "risk_policy", None)
    floor = float(getattr(rp, "sigma_floor_annual", 0.0))
    return max(raw if raw is not None else _policy_sigma_fallback(policy, default_fallback), floor)


@dataclass(slots=True)
class EwmaVol:
    """Incremental RiskMetrics EWMA of per-second variance samples ``r^2/dt`` (bar closes only).

    Matches :func:`keeper.risk.volatility.ewma_variance_per_s` on the same returns: seeded with the mean of
    the first ``EWMA_MIN_RETURNS`` samples, then ``v = lam v + (1 - lam) x`` from the first sample on.
    """

    lam: float = EWMA_LAMBDA
    last_t: int | None = None
    last_p: float | None = None
    samples: list[float] = field(default_factory=list)
    var_per_s: float | None = None

    def add_close(self, t_s: int, price: float) -> None:
        if self.last_t is not None and self.last_p is not None and t_s > self.last_t:
            r = math.log(price / self.last_p)
            x = r * r / (t_s - self.last_t)
            if self.var_per_s is None:
                self.samples.append(x)
                if len(self.samples) >= EWMA_MIN_RETURNS:
                    v = sum(self.samples) / len(self.samples)
                    for s in self.samples:
                        v = self.lam * v + (1.0 - self.lam) * s
                    self.var_per_s = v
            else:
                self.var_per_s = self.lam * self.var_per_s + (1.0 - self.lam) * x
        self.last_t, self.last_p = t_s, price

    def sigma_annual(self, fallback: float) -> float:
        if self.var_per_s is None:
            return fallback
        return math.sqrt(self.var_per_s * SECONDS_PER_YEAR)


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Knobs of a replay (defaults in the module docstring).

    ``record``: keep the per-round series (idle, margin ratio and liquidation price per position) for the plots,
    one row every ``record_every`` rounds (0: the rows the plots draw, ``max(1, rounds // 4000)``; 1: every
    round). ``chunk_rounds``: rounds made into objects at a time (0: all at once); no result depends on it.
    """

    order: str = "adverse"
    warmup_s: int = DEFAULT_WARMUP_S
    inclusion_delay_rounds: int = 1
    sigma_fallback_annual: float = 1.5
    record: bool = True
    record_every: int = 0
    chunk_rounds: int = DEFAULT_CHUNK_ROUNDS

    def __post_init__(self) -> None:
        if self.inclusion_delay_rounds < 1:
            raise InputError("inclusion_delay_rounds must be >= 1 (a decision cannot land before it is taken)")
        if self.warmup_s < 0:
            raise InputError("warmup_s must be >= 0")
        if self.record_every < 0 or self.chunk_rounds < 0:
            raise InputError("record_every and chunk_rounds must be >= 0")

    def record_stride(self, n_rounds: int) -> int:
        """Rounds between two recorded rows for a replay of ``n_rounds`` rounds."""
        return self.record_every or plot_stride(n_rounds)


@dataclass(slots=True)
class ReplayResult:
    """Everything a report needs: the rounds' clock and prices, the book, each policy's result."""

    book: Book
    config: ReplayConfig
    start_s: int
    end_s: int
    t_s: np.ndarray
    prices: dict[str, np.ndarray]  # symbol -> price per round (USD float, latest known)
    labels: list[str]  # position labels, column order of the recorded series
    results: dict[str, PolicyResult]
    sources: dict[str, str]
    # optional (``keeper replay --bound``, :func:`keeper.replay.bound.idle_floors`): per policy, the least average
    # idle collateral any keeper could hold with that policy's transaction count (USD); "target" for the
    # issue's target (the best baseline's transactions)
    floors: dict[str, float] = field(default_factory=dict)


def _policy_sigma_fallback(policy: Policy, default: float) -> float:
    rp = getattr(policy, "risk_policy", None)
    return float(getattr(rp, "sigma_fallback_annual", default))


@dataclass(frozen=True, slots=True)
class OpenOrder:
    """One ``openPosition`` of the book: who, where, side, size (e18) and collateral (e6)."""

    position: BookPosition
    market_id: int
    is_long: bool
    size_e18: int
    collateral_e6: int


def open_book(model: PerpModel, book: Book, now_s: int) -> list[OpenOrder]:
    """Open every book position in ``model`` at its current prices; returns the orders that succeeded.

    ``size = notional * 1e20 // price``, ``collateral = ceil(notional / leverage)`` (one more e6 unit when
    the floor of the size makes the max-leverage check miss by one).
    """
    orders = []
    for bp in book.positions:
        mid = book.markets[bp.symbol].market_id
        price = model.markets[mid].price_e8
        size = bp.notional_e6 * 10**20 // price
        coll = opening_collateral_e6(bp)
        is_long = bp.side is Side.LONG
        try:
            model.open_position(bp.account, mid, is_long, size, coll, now_s)
        except ModelRevert:
            coll += 1
            model.open_position(bp.account, mid, is_long, size, coll, now_s)
        orders.append(OpenOrder(bp, mid, is_long, size, coll))
    return orders


class _Run:
    """State of one policy's replay (private)."""

    def __init__(self, book: Book, policy: Policy, config: ReplayConfig, n_rounds: int) -> None:
        self.book = book
        self.policy = policy
        self.config = config
        self.model = PerpModel.with_markets(list(book.markets.values()), 0)
        self.wallet = dict(book.wallets_e6)
        self.keys = [(p.account, book.markets[p.symbol].market_id) for p in book.positions]
        self.labels = [p.label for p in book.positions]
        self.res = PolicyResult(name=policy.name)
        self.res.wallet_start_e6 = sum(self.wallet.values())
        self.res.wallet_min_e6 = self.res.wallet_start_e6
        self.pending: dict[int, list[Action]] = {}
        self.spent_day: tuple[int, int] = (-1, 0)
        if config.record:
            self.res.start_recording(n_rounds, len(self.keys), config.record_stride(n_rounds))

    # ---- actions --------------------------------------------------------------------------------
    def apply(self, a: Action, k: int, now_s: int) -> None:
        m, res = self.model, self.res
        acct = a.account.lower()
        gas = GAS_PER_ACTION.get(a.kind)
        if gas is None:
            return
        try:
            if a.kind is ActionKind.TOP_UP:
                if a.amount_e6 > self.wallet.get(acct, 0):
                    raise ModelRevert("TransferFailed", acct, a.amount_e6)
                m.add_margin(acct, a.market_id, a.amount_e6, now_s)
                self.wallet[acct] -= a.amount_e6
                res.top_ups += 1
                res.collateral_added_e6 += a.amount_e6
                day = now_s // 86400
                spent = self.spent_day[1] if self.spent_day[0] == day else 0
                self.spent_day = (day, spent + a.amount_e6)
            elif a.kind is ActionKind.RELEASE:
                m.remove_margin(acct, a.market_id, a.amount_e6, now_s)
                self.wallet[acct] = self.wallet.get(acct, 0) + a.amount_e6
                res.releases += 1
                res.collateral_released_e6 += a.amount_e6
            elif a.kind is ActionKind.MOVE_MARGIN:
                if a.from_market_id is None:
                    raise ModelRevert("InvalidAmount")
                m.move_margin(acct, a.from_market_id, a.market_id, a.amount_e6, now_s)
                res.moves += 1
                res.collateral_moved_e6 += a.amount_e6
            elif a.kind is ActionKind.REDUCE_SIZE:
                m.decrease_position(acct, a.market_id, a.size_delta_e18, now_s)
                res.reductions += 1
            res.record_gas(now_s, gas)
            res.events.append(Event(now_s, k, a.kind.value, acct, a.market_id, a.amount_e6, 0, a.reason))
        except ModelRevert as exc:
            res.reverted += 1
            res.record_gas(now_s, GAS_REVERT)
            res.events.append(Event(now_s, k, "revert", acct, a.market_id, a.amount_e6, 0, f"{a.kind.value}: {exc}"))

    # ---- one round ------------------------------------------------------------------------------
    def open_book(self, now_s: int) -> None:
        open_book(self.model, self.book, now_s)

    def step(
        self, k: int, rnd: Round, dt_next: float, sigma: dict[int, float], sym_to_id: dict[str, int], is_open: bool
    ) -> None:
        m, res = self.model, self.res
        now = rnd.t_s
        for a in self.pending.pop(k, ()):  # 1. land decisions
            self.apply(a, k, now)
        for sym, p in rnd.prices_e8.items():  # 2. oracle
            m.push_price(sym_to_id[sym], p, now)
        if not is_open:
            self.open_book(now)
        idle = idle_equity = 0
        for j, (acct, mid) in enumerate(self.keys):  # 3 + 4 closest approach, liquidator
            if (acct, mid) not in m.positions:
                continue
            v = m.view(acct, mid, now)
            res.record_position(k, j, self.labels[j], now, v.equity, v.maintenance_margin, v.liquidation_price)
            if v.liquidatable:
                penalty, returned = m.liquidate(acct, mid, now)
                res.liquidations += 1
                res.liquidations_wallet_left += self.wallet.get(acct, 0) >= WALLET_LEFT_MIN_E6
                self.wallet[acct] = self.wallet.get(acct, 0) + returned
                res.liquidation_penalty_e6 += penalty
                res.bad_debt_e6 += max(0, -v.equity)
                res.liquidated.append(self.labels[j])
                res.events.append(
                    Event(
                        now, k, "liquidation", acct, mid, penalty, v.mark_price, f"{self.labels[j]} returned {returned}"
                    )
                )
                continue
            idle += max(0, v.collateral - v.pending_fee - v.maintenance_margin)
            idle_equity += max(0, v.equity - v.maintenance_margin)
        res.record_idle(k, idle, idle_equity, dt_next)  # 5. idle
        res.wallet_min_e6 = min(res.wallet_min_e6, sum(self.wallet.values()))
        # 6. decide
        obs = Observation(
            now_s=now,
            round_index=k,
            positions=tuple(pos for key in self.keys if (pos := m.position(key[0], key[1], now)) is not None),
            markets={ms.market.market_id: ms.market for ms in m.markets.values()},
            prices={mid: PriceRound(ms.round_id, ms.price_e8, ms.price_updated_s) for mid, ms in m.markets.items()},
            wallet_e6=dict(self.wallet),
            sigma_annual=sigma,
            check_interval_s=max(1.0, dt_next),
            spent_today_e6=self.spent_day[1] if self.spent_day[0] == now // 86400 else 0,
        )
        actions = self.policy.decide(obs)
        if actions:
            self.pending.setdefault(k + self.config.inclusion_delay_rounds, []).extend(actions)

    def finish(self, now_s: int) -> PolicyResult:
        res = self.res
        res.wallet_end_e6 = sum(self.wallet.values())
        res.final_equity_e6 = sum(max(0, self.model.view(a, mid, now_s).equity) for (a, mid) in self.model.positions)
        return res


class RoundView(Sequence[Round]):
    """Rounds ``lo .. hi - 1`` of a :class:`RoundGrid` as a read-only sequence of :class:`Round` (made when read;
    iterating converts them a chunk at a time)."""

    __slots__ = ("chunk", "grid", "hi", "lo")

    def __init__(self, grid: RoundGrid, lo: int, hi: int, chunk: int = DEFAULT_CHUNK_ROUNDS) -> None:
        self.grid, self.lo, self.hi, self.chunk = grid, lo, max(lo, hi), chunk

    def __len__(self) -> int:
        return self.hi - self.lo

    @overload
    def __getitem__(self, i: int) -> Round: ...
    @overload
    def __getitem__(self, i: slice) -> RoundView: ...
    def __getitem__(self, i: int | slice) -> Round | RoundView:
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a RoundView slice takes no step")
            return RoundView(self.grid, self.lo + a, self.lo + max(a, b), self.chunk)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"round {i} out of range ({n} rounds)")
        return self.grid.round(self.lo + i % n)

    def __iter__(self) -> Iterator[Round]:
        return self.grid.iter_rounds(self.lo, self.hi, self.chunk)

    @property
    def t_s(self) -> np.ndarray:
        """The rounds' times (int64)."""
        return self.grid.t_s[self.lo : self.hi]


@dataclass(frozen=True, slots=True)
class Timeline:
    """The rounds of a replay: every round of the window (warm-up included) and where the book opens."""

    grid: RoundGrid
    open_k: int  # index in rounds_all of the opening round (first after the warm-up with every market)
    sym_to_id: dict[str, int]
    sources: dict[str, str]
    chunk: int = DEFAULT_CHUNK_ROUNDS

    @property
    def rounds_all(self) -> RoundView:
        """Every round of the window, warm-up included."""
        return RoundView(self.grid, 0, len(self.grid), self.chunk)

    @property
    def rounds(self) -> RoundView:
        """The replayed rounds (from the opening round on)."""
        return RoundView(self.grid, self.open_k, len(self.grid), self.chunk)

    def dt_next(self) -> np.ndarray:
        """Seconds from each replayed round to the next (0 for the last)."""
        t = self.grid.t_s[self.open_k :]
        return np.diff(t, append=t[-1])


def plan_timeline(book: Book, series: Sequence[Bars], config: ReplayConfig) -> Timeline:
    """Check the series against the book and build the rounds (shared by the fast and on-chain replays)."""
    by_sym = {b.symbol: b for b in series}
    missing = sorted(set(book.markets) - set(by_sym))
    if missing:
        raise InputError(f"no price series for market(s) {', '.join(missing)} of the book (give --prices SYM=path.csv)")
    used = [by_sym[s] for s in sorted(book.markets)]
    grid = build_round_grid(used, config.order)
    n = len(grid)
    t0 = int(grid.t_s[0])
    open_k = int(np.searchsorted(grid.t_s, t0 + config.warmup_s, side="left"))
    if open_k >= n - 1:
        raise InputError(
            f"the price window ({(int(grid.t_s[-1]) - t0) / 3600:.1f} h) is not longer than the warm-up "
            f"({config.warmup_s / 3600:.1f} h)"
        )
    # the opening round must carry a price for every market (the book opens at those prices)
    full = np.flatnonzero(grid.has[open_k:].all(axis=1))
    if not full.size or open_k + int(full[0]) >= n - 1:
        raise InputError("no round after the warm-up carries a price for every market of the book")
    return Timeline(
        grid=grid,
        open_k=open_k + int(full[0]),
        sym_to_id={s: m.market_id for s, m in book.markets.items()},
        sources={b.symbol: b.source for b in used},
        chunk=config.chunk_rounds,
    )


def oracle_sigmas(timeline: Timeline) -> list[dict[int, float | None]]:
    """Per replayed round, market id -> the keeper's raw EWMA sigma over the oracle rounds so far (None:
    fewer than 30 returns). Computed once for all policies (:class:`OracleVol`); a list of every round's, for the
    on-chain replay's windows of hours (:func:`run_fast` computes them as it goes)."""
    vols = {s: OracleVol() for s in timeline.sym_to_id}
    rows: list[dict[int, float | None]] = []
    for i, r in enumerate(timeline.rounds_all):
        for s, p in r.prices_e8.items():
            vols[s].add(r.t_s, p)
        if i >= timeline.open_k:
            rows.append({timeline.sym_to_id[s]: v.raw_sigma_annual() for s, v in vols.items()})
    return rows


def price_columns(book: Book, rounds: Sequence[Round]) -> dict[str, np.ndarray]:
    """symbol -> latest known price (USD float) at every round."""
    if isinstance(rounds, RoundView):  # from the columns, no Round objects
        return {s: rounds.grid.latest_price_usd(s, rounds.lo, rounds.hi) for s in book.markets}
    prices: dict[str, np.ndarray] = {}
    for s in book.markets:
        col = np.empty(len(rounds))
        last = 0.0
        for i, r in enumerate(rounds):
            if s in r.prices_e8:
                last = r.prices_e8[s] / 1e8
            col[i] = last
        prices[s] = col
    return prices


def run_fast(
    book: Book,
    series: Sequence[Bars],
    policies: Sequence[Policy],
    config: ReplayConfig = ReplayConfig(),
    progress: Callable[[int, int], None] | None = None,
) -> ReplayResult:
    """Replay ``series`` (one :class:`Bars` per symbol of the book) for each policy; see the module docstring.

    ``progress(done, total)`` is called once the rounds are built (``done`` = 0), then every
    :data:`PROGRESS_EVERY_ROUNDS` rounds and at the last (``total`` = rounds x policies; the policies step through
    each round together, so ``done`` = rounds done x policies).
    """
    if len({id(p) for p in policies}) != len(policies):
        raise InputError("the same policy object is given twice (the runs step together: give separate objects)")
    tl = plan_timeline(book, series, config)
    grid, sym_to_id = tl.grid, tl.sym_to_id
    n = len(grid) - tl.open_k
    n_pol = len(policies)
    total = n * n_pol
    if progress is not None:
        progress(0, total)
    # fixed-ratio baselines and no keeper never look at volatility: a sweep of those skips the estimator
    needs_vol = any(getattr(p, "needs_volatility", True) for p in policies)
    vols = {s: OracleVol() for s in sym_to_id} if needs_vol else {}
    t_arr = grid.t_s[tl.open_k :]
    dts = tl.dt_next()  # the last round carries no time
    prices = price_columns(book, tl.rounds)
    runs = [_Run(book, pol, config, n) for pol in policies]
    for pol in policies:
        reset = getattr(pol, "reset", None)  # a policy with memory starts every run from nothing
        if reset is not None:
            reset()
    observers = [getattr(pol, "observe_round", None) for pol in policies]
    # the model must know the warm-up prices too (the feeds' history); only the last one matters
    # the policy sees them as well, as the daemon reads them from the feeds (stress-gap history)
    for r in grid.iter_rounds(0, tl.open_k, config.chunk_rounds):
        for sym, px in r.prices_e8.items():
            mid = sym_to_id[sym]
            for run, observe in zip(runs, observers, strict=True):
                run.model.push_price(mid, px, r.t_s)
                if observe is not None:
                    observe(mid, r.t_s, px)
            if needs_vol:
                vols[sym].add(r.t_s, px)
    fallback = config.sigma_fallback_annual
    for k, r in enumerate(grid.iter_rounds(tl.open_k, None, config.chunk_rounds)):
        raw: dict[int, float | None] = {}
        if needs_vol:
            for sym, px in r.prices_e8.items():
                vols[sym].add(r.t_s, px)
            raw = {sym_to_id[s]: v.raw_sigma_annual() for s, v in vols.items()}
        dt = float(dts[k])
        for run in runs:
            sig = {mid: policy_sigma(v, run.policy, fallback) for mid, v in raw.items()}
            run.step(k, r, dt, sig, sym_to_id, is_open=k > 0)
        if progress is not None and ((k + 1) % PROGRESS_EVERY_ROUNDS == 0 or k == n - 1):
            progress((k + 1) * n_pol, total)
    results: dict[str, PolicyResult] = {}
    end_s = int(t_arr[-1])
    for run in runs:
        res = run.finish(end_s)
        res.t_s = t_arr
        results[run.policy.name] = res
    return ReplayResult(
        book=book,
        config=config,
        start_s=int(t_arr[0]),
        end_s=end_s,
        t_s=t_arr,
        prices=prices,
        labels=[p.label for p in book.positions],
        results=results,
        sources=dict(tl.sources),
    )


__all__ = [
    "GAS_PER_ACTION",
    "GAS_REVERT",
    "Event",
    "EwmaVol",
    "OracleVol",
    "PolicyResult",
    "ReplayConfig",
    "ReplayResult",
    "RoundView",
    "Timeline",
    "oracle_sigmas",
    "plan_timeline",
    "run_fast",
    "to_e8",
]
