"""Per-policy metrics of a replay, and the comparison against the issue's target.

Definitions (all amounts in the collateral token's units, USD; internally e6):

* ``liquidations`` / ``liquidation_penalty``: positions the liquidator closed, and the penalty they paid;
  ``liquidations_wallet_left``: those of an account whose wallet still held the keeper's least action
  (``WALLET_LEFT_MIN_E6``, $10, in USD at that round's prices) when it was liquidated — a top-up could still have
  been paid. The others had spent the whole wallet: no keeper could have funded them further.
* ``top_ups`` / ``collateral_added``: ``addMargin`` transactions from the owner's wallet and their sum.
* ``releases`` / ``collateral_released``: ``removeMargin`` back to the owner; ``moves``: ``moveMargin``.
* ``transactions``: every keeper transaction sent, reverted ones included; ``gas_used``: their gas
  (per-kind constants, see :mod:`keeper.replay.fast`), and ``gas_log`` the (time, gas) of each, which the total
  cost (:mod:`keeper.replay.cost`) prices at the native token's price of that moment.
* ``bad_debt``: negative equity at liquidation, a loss beyond the position's collateral.
* idle collateral (the issue's definition, "collateral above the maintenance margin"): ``sum over live
  positions of max(0, collateral - accrued fee - maintenance margin)`` — the trader's deposited capital
  committed beyond what the protocol needs. ``avg_idle_collateral`` is its time-weighted mean over the
  replay (after the warm-up), ``peak_idle_collateral`` its maximum. The target is judged on it.
* idle equity: ``sum of max(0, equity - maintenance margin)`` — the same with unrealised PnL counted (a
  winning short's profit is idle by this measure, although ``removeMargin`` cannot hand it back);
  ``avg_idle_equity`` / ``peak_idle_equity``, reported beside it.
* ``min_margin_ratio``: closest approach to liquidation, the least ``equity / maintenance`` seen at any
  round, before the liquidator acted (< 1: liquidated).

Every figure above is an aggregate kept as the replay goes (sums, maxima, counts, one event per transaction); the
per-round series (idle, margin ratio and liquidation price per position) only feed the plots and checks, and
are kept every ``record_every`` rounds (rounds ``0, e, 2e, ...``; a long replay keeps the rows its plots draw,
:func:`plot_stride`), so the memory of a replay does not grow with the positions times the rounds.

Target (issue 6): the risk policy has zero liquidations and its average idle collateral is at least 30 %
below that of the best (least idle) fixed-ratio baseline that also has zero liquidations, with no more
transactions than that baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

TARGET_IDLE_REDUCTION = 0.30
WALLET_LEFT_MIN_E6 = 10_000_000  # the keeper's least action ($10): a wallet holding less cannot pay a top-up
PLOT_POINTS = 4000  # the plots draw one round in max(1, rounds // PLOT_POINTS)


def plot_stride(n_rounds: int) -> int:
    """The spacing, in rounds, of the points a plot of ``n_rounds`` rounds draws."""
    return max(1, n_rounds // PLOT_POINTS)


@dataclass(slots=True)
class Event:
    """One thing that happened in a replay (for the report and the on-chain comparison)."""

    t_s: int
    round_index: int
    kind: str  # top_up, release, move_margin, reduce_size, liquidation, revert
    account: str
    market_id: int
    amount_e6: int = 0
    price_e8: int = 0
    detail: str = ""


@dataclass(slots=True)
class PolicyResult:
    """Per-policy metrics (USD e6 internally; :meth:`summary` converts to USD) and recorded series."""

    name: str
    liquidations: int = 0
    # of those, the liquidations of an account whose wallet still held at least ``WALLET_LEFT_MIN_E6`` (a top-up
    # could still have been paid): the ones a keeper is answerable for; the rest had spent the whole wallet
    liquidations_wallet_left: int = 0
    liquidation_penalty_e6: int = 0
    liquidated: list[str] = field(default_factory=list)
    top_ups: int = 0
    collateral_added_e6: int = 0
    releases: int = 0
    collateral_released_e6: int = 0
    moves: int = 0
    collateral_moved_e6: int = 0
    reductions: int = 0
    reverted: int = 0
    gas_used: int = 0
    gas_log: list[tuple[int, int]] = field(default_factory=list)  # (t_s, gas) per keeper transaction
    bad_debt_e6: int = 0
    idle_time_integral: float = 0.0  # e6 * s
    duration_s: int = 0
    peak_idle_e6: int = 0
    idle_equity_time_integral: float = 0.0  # e6 * s
    peak_idle_equity_e6: int = 0
    min_margin_ratio: float = math.inf
    min_margin_ratio_at: str = ""
    wallet_start_e6: int = 0
    wallet_end_e6: int = 0
    wallet_min_e6: int = 0
    final_equity_e6: int = 0
    events: list[Event] = field(default_factory=list)
    # recorded series, one row every ``record_every`` rounds (row i = round i * record_every): idle collateral,
    # per-position margin ratio and liquidation price; ``t_s`` is the clock of every round
    t_s: np.ndarray | None = None
    idle_e6: np.ndarray | None = None
    ratio: np.ndarray | None = None
    liq_price: np.ndarray | None = None
    record_every: int = 1

    @property
    def transactions(self) -> int:
        return self.top_ups + self.releases + self.moves + self.reductions + self.reverted

    @property
    def avg_idle_e6(self) -> float:
        return self.idle_time_integral / self.duration_s if self.duration_s else 0.0

    @property
    def avg_idle_equity_e6(self) -> float:
        return self.idle_equity_time_integral / self.duration_s if self.duration_s else 0.0

    def start_recording(self, n_rounds: int, n_positions: int, every: int = 1) -> None:
        """Allocate the recorded series: rounds ``0, every, 2 every, ...`` of ``n_rounds``."""
        if every < 1:
            raise ValueError(f"record_every must be >= 1, got {every}")
        rows = -(-n_rounds // every)
        self.record_every = every
        self.idle_e6 = np.zeros(rows)
        self.ratio = np.full((rows, n_positions), np.nan, dtype=np.float32)
        self.liq_price = np.full((rows, n_positions), np.nan, dtype=np.float32)

    @property
    def recorded_t_s(self) -> np.ndarray | None:
        """The times of the recorded rows (``t_s`` every ``record_every`` rounds)."""
        return None if self.t_s is None else self.t_s[:: self.record_every]

    def record_position(
        self, k: int, j: int, label: str, now_s: int, equity_e6: int, maintenance_e6: int, liquidation_price_e8: int
    ) -> None:
        """Record position ``j``'s margin ratio (equity / maintenance) at round ``k`` and the closest approach."""
        ratio = equity_e6 / maintenance_e6 if maintenance_e6 > 0 else math.inf
        if ratio < self.min_margin_ratio:
            self.min_margin_ratio = ratio
            self.min_margin_ratio_at = f"{label} @ {now_s}"
        if self.ratio is not None and self.liq_price is not None and k % self.record_every == 0:
            row = k // self.record_every
            self.ratio[row, j] = ratio
            self.liq_price[row, j] = liquidation_price_e8 / 1e8

    def record_gas(self, t_s: int, gas: int) -> None:
        """Account one keeper transaction's gas, spent at ``t_s``."""
        self.gas_used += gas
        self.gas_log.append((int(t_s), int(gas)))

    def record_idle(self, k: int, idle_e6: int, idle_equity_e6: int, dt_s: float) -> None:
        """Accumulate one round's idle collateral and idle equity, weighted by the time to the next round."""
        self.idle_time_integral += idle_e6 * dt_s
        self.idle_equity_time_integral += idle_equity_e6 * dt_s
        self.duration_s += int(dt_s)
        self.peak_idle_e6 = max(self.peak_idle_e6, idle_e6)
        self.peak_idle_equity_e6 = max(self.peak_idle_equity_e6, idle_equity_e6)
        if self.idle_e6 is not None and k % self.record_every == 0:
            self.idle_e6[k // self.record_every] = idle_e6

    def summary(self) -> dict:
        """JSON-ready metrics in USD (the collateral token's units)."""
        return {
            "liquidations": self.liquidations,
            "liquidations_wallet_left": self.liquidations_wallet_left,
            "liquidation_penalty": self.liquidation_penalty_e6 / 1e6,
            "liquidated_positions": list(self.liquidated),
            "top_ups": self.top_ups,
            "collateral_added": self.collateral_added_e6 / 1e6,
            "releases": self.releases,
            "collateral_released": self.collateral_released_e6 / 1e6,
            "moves": self.moves,
            "collateral_moved": self.collateral_moved_e6 / 1e6,
            "reductions": self.reductions,
            "reverted": self.reverted,
            "transactions": self.transactions,
            "gas_used": self.gas_used,
            "bad_debt": self.bad_debt_e6 / 1e6,
            "avg_idle_collateral": self.avg_idle_e6 / 1e6,
            "peak_idle_collateral": self.peak_idle_e6 / 1e6,
            "avg_idle_equity": self.avg_idle_equity_e6 / 1e6,
            "peak_idle_equity": self.peak_idle_equity_e6 / 1e6,
            "min_margin_ratio": None if math.isinf(self.min_margin_ratio) else self.min_margin_ratio,
            "min_margin_ratio_at": self.min_margin_ratio_at,
            "wallet_start": self.wallet_start_e6 / 1e6,
            "wallet_end": self.wallet_end_e6 / 1e6,
            "wallet_min": self.wallet_min_e6 / 1e6,
            "final_equity": self.final_equity_e6 / 1e6,
        }


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """How the risk policy compares with the best zero-liquidation fixed baseline."""

    policy: str
    baseline: str | None
    idle_reduction: float | None  # 1 - idle(policy) / idle(baseline)
    policy_liquidations: int
    policy_transactions: int
    baseline_transactions: int | None
    met: bool
    reason: str


def best_fixed_baseline(results: dict[str, PolicyResult]) -> str | None:
    """The fixed-ratio baseline with zero liquidations and the least average idle collateral (ties: fewer txs)."""
    ok = [r for n, r in results.items() if n.startswith("fixed:") and r.liquidations == 0]
    if not ok:
        return None
    return min(ok, key=lambda r: (r.avg_idle_e6, r.transactions, r.name)).name


def check_target(results: dict[str, PolicyResult], policy: str = "risk") -> TargetCheck:
    """Evaluate the issue's target for ``policy`` against the best zero-liquidation fixed baseline."""
    if policy not in results:
        return TargetCheck(policy, None, None, -1, -1, None, False, f"policy {policy!r} was not replayed")
    r = results[policy]
    base = best_fixed_baseline(results)
    if base is None:
        return TargetCheck(
            policy,
            None,
            None,
            r.liquidations,
            r.transactions,
            None,
            False,
            "no fixed baseline avoided every liquidation",
        )
    b = results[base]
    red = 1.0 - r.avg_idle_e6 / b.avg_idle_e6 if b.avg_idle_e6 > 0 else math.nan
    reasons = []
    if r.liquidations:
        reasons.append(f"{r.liquidations} liquidation(s)")
    if not red >= TARGET_IDLE_REDUCTION:
        reasons.append(f"idle only {red:.1%} below {base} (target {TARGET_IDLE_REDUCTION:.0%})")
    if r.transactions > b.transactions:
        reasons.append(f"{r.transactions} transactions > {b.transactions} of {base}")
    met = not reasons
    return TargetCheck(
        policy,
        base,
        red,
        r.liquidations,
        r.transactions,
        b.transactions,
        met,
        "met" if met else "; ".join(reasons),
    )
