"""Deterministic market scenarios as oracle rounds, and a player that pushes them on a devchain.

A :class:`Scenario` is a sequence of :class:`OracleRound` s: at ``t_s`` seconds after the start, every
symbol's feed gets a new answer (``_e8``). :func:`demo_crash` builds the demo's market:

* ETH falls by ``eth_total`` (default −35 %) over the crash rounds, one of which is a single-round gap of
  exactly ``eth_gap`` (default −12 %: the largest single-round move the keeper's default policy is sized to
  survive, ``RiskPolicy.stress_gap``);
* BTC squeezes up by ``btc_total`` (default +25 %) over the same rounds;
* a few calm rounds first, with noise only.

Per-round log-returns are ``r_i = d + sigma_noise * (z_i - mean(z))`` with ``z_i`` standard normal from
``np.random.default_rng(seed)``: the noise is de-meaned over each phase, so the phase totals are exact
(``exp(sum r_i) = 1 + total``) and the same seed always gives the same rounds.

:class:`ScenarioPlayer` pushes each round through :meth:`keeper.dev.reference.DevChainOps.push_price` (real
signed transactions from the feed owner) with ``evm_setNextBlockTimestamp`` so chain time advances by the
scenario's step: borrow fees accrue as in real time and no feed outlives its heartbeat. A hook runs after
each round (the liquidator's sweep, a live view, pacing for the keeper daemon).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from web3.types import RPCEndpoint

from keeper.dev.reference import DevChainOps

DEFAULT_START_PRICES_E8 = {"ETH": 3_000 * 10**8, "BTC": 60_000 * 10**8}


@dataclass(frozen=True, slots=True)
class OracleRound:
    """One oracle round: every listed symbol's new answer, ``t_s`` seconds after the scenario start."""

    index: int
    t_s: int
    prices_e8: Mapping[str, int]
    label: str = ""


@dataclass(frozen=True)
class Scenario:
    """A named, seeded sequence of oracle rounds starting from ``start_prices_e8``."""

    name: str
    seed: int
    step_s: int
    start_prices_e8: Mapping[str, int]
    rounds: tuple[OracleRound, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.rounds:
            raise ValueError(f"scenario {self.name}: no rounds")
        times = [r.t_s for r in self.rounds]
        if any(b <= a for a, b in itertools.pairwise(times)) or times[0] <= 0:
            raise ValueError(f"scenario {self.name}: round times must be positive and increasing")
        for r in self.rounds:
            for sym, p in r.prices_e8.items():
                if p <= 0:
                    raise ValueError(f"scenario {self.name}: round {r.index} {sym} price {p} is not positive")

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.start_prices_e8)

    @property
    def duration_s(self) -> int:
        return self.rounds[-1].t_s

    def path_e8(self, symbol: str) -> np.ndarray:
        """Prices of ``symbol``: the start price followed by one entry per round (int64, e8)."""
        out = [self.start_prices_e8[symbol]]
        for r in self.rounds:
            out.append(r.prices_e8.get(symbol, out[-1]))
        return np.asarray(out, dtype=np.int64)

    def round_returns(self, symbol: str) -> np.ndarray:
        """Simple return of each round, ``p_i / p_{i-1} - 1``."""
        p = self.path_e8(symbol).astype(np.float64)
        return p[1:] / p[:-1] - 1.0

    def total_return(self, symbol: str) -> float:
        p = self.path_e8(symbol)
        return float(p[-1] / p[0] - 1.0)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "seed": self.seed,
            "step_s": self.step_s,
            "rounds": len(self.rounds),
            "duration_s": self.duration_s,
            "total_return": {s: round(self.total_return(s), 6) for s in self.symbols},
            "largest_round_move": {
                s: round(float(self.round_returns(s)[np.argmax(np.abs(self.round_returns(s)))]), 6)
                for s in self.symbols
            },
        }


def _phase_returns(rng: np.random.Generator, n: int, total_log: float, noise: float) -> np.ndarray:
    """``n`` log-returns summing exactly to ``total_log``: equal drift plus de-meaned Gaussian noise."""
    if n <= 0:
        return np.zeros(0)
    z = rng.standard_normal(n)
    return total_log / n + noise * (z - z.mean())


def demo_crash(
    seed: int = 7,
    *,
    n_rounds: int = 24,
    calm_rounds: int = 3,
    step_s: int = 15,
    eth_total: float = -0.35,
    eth_gap: float = -0.12,
    gap_round: int = 10,
    btc_total: float = 0.25,
    noise: float = 0.004,
    start_prices_e8: Mapping[str, int] | None = None,
) -> Scenario:
    """The demo market: calm, then ETH ``eth_total`` with one ``eth_gap`` round, BTC ``btc_total``.

    Rounds ``0 .. calm_rounds-1`` carry noise only (each asset ends the calm phase where it started);
    rounds ``calm_rounds .. n_rounds-1`` carry the crash and the squeeze; ETH's round ``gap_round`` is the
    gap, exactly ``1 + eth_gap`` times the previous price, and the other crash rounds share the rest:

    .. math:: r_i = \\frac{\\ln(1+\\text{total}) - \\ln(1+\\text{gap})}{n_c - 1} + \\sigma_n (z_i - \\bar z)

    With the defaults: 24 rounds 15 s apart (6 minutes of chain time), ETH −1.5 % a round besides the gap.
    """
    if not 0 <= calm_rounds < n_rounds:
        raise ValueError("calm_rounds must be in [0, n_rounds)")
    if not calm_rounds <= gap_round < n_rounds:
        raise ValueError("gap_round must be a crash round: calm_rounds <= gap_round < n_rounds")
    if not (-1 < eth_total and -1 < eth_gap < 0 and btc_total > -1):
        raise ValueError("totals must be > -100 % and the gap a fall (-1 < eth_gap < 0)")
    if noise < 0 or step_s <= 0:
        raise ValueError("noise must be >= 0 and step_s > 0")
    start = dict(DEFAULT_START_PRICES_E8 if start_prices_e8 is None else start_prices_e8)
    rng = np.random.default_rng(seed)
    n_crash = n_rounds - calm_rounds

    eth = np.concatenate([_phase_returns(rng, calm_rounds, 0.0, noise), np.zeros(n_crash)])
    others = [i for i in range(calm_rounds, n_rounds) if i != gap_round]
    eth[others] = _phase_returns(rng, len(others), math.log1p(eth_total) - math.log1p(eth_gap), noise)
    eth[gap_round] = math.log1p(eth_gap)
    btc = np.concatenate(
        [_phase_returns(rng, calm_rounds, 0.0, noise), _phase_returns(rng, n_crash, math.log1p(btc_total), noise)]
    )
    logs = {"ETH": eth, "BTC": btc}

    paths = {s: np.rint(start[s] * np.exp(np.cumsum(logs[s]))).astype(np.int64) for s in ("ETH", "BTC")}
    for s, p in start.items():  # other symbols stay flat (their feeds still get fresh rounds)
        paths.setdefault(s, np.full(n_rounds, p, dtype=np.int64))
    rounds = []
    for i in range(n_rounds):
        label = "calm" if i < calm_rounds else ("ETH gap" if i == gap_round else "crash")
        rounds.append(OracleRound(i, (i + 1) * step_s, {s: int(paths[s][i]) for s in start}, label))
    return Scenario(
        name="demo-crash",
        seed=seed,
        step_s=step_s,
        start_prices_e8=start,
        rounds=tuple(rounds),
        description=(
            f"ETH {eth_total:+.0%} with a {eth_gap:+.0%} single-round gap, BTC {btc_total:+.0%}, "
            f"{n_rounds} rounds {step_s} s apart"
        ),
    )


# ---- player (shell) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlayedRound:
    """A round as it landed on chain: the block of its last price push, that block's timestamp, and the
    player's ``time.monotonic()`` when the push was mined (for pacing a keeper in wall time)."""

    round: OracleRound
    block_number: int
    timestamp_s: int
    landed_monotonic_s: float = 0.0


RoundHook = Callable[[PlayedRound], None]


@dataclass
class ScenarioPlayer:
    """Pushes a scenario's rounds through a devchain's feeds, chain time moved in step.

    Each round's pushes land at ``t0 + round.t_s`` (``t0`` = the latest block's timestamp when
    :meth:`play` starts) via ``evm_setNextBlockTimestamp``; if other transactions already moved the chain
    past that time, the round lands one second after the latest block. ``on_round`` hooks run after every
    round, in order.
    """

    ops: DevChainOps
    scenario: Scenario
    on_round: list[RoundHook] = field(default_factory=list)

    def _rpc(self, method: str, params: list) -> object:
        answer = self.ops.w3.provider.make_request(RPCEndpoint(method), params)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result")

    def play(self, *, rounds: int | None = None) -> list[PlayedRound]:
        """Play the first ``rounds`` rounds (default all); return where each landed."""
        w3 = self.ops.w3
        t0 = w3.eth.get_block("latest")["timestamp"]
        played: list[PlayedRound] = []
        for r in self.scenario.rounds[: rounds if rounds is not None else None]:
            latest = w3.eth.get_block("latest")["timestamp"]
            self._rpc("evm_setNextBlockTimestamp", [max(t0 + r.t_s, latest + 1)])
            sender = self.ops.sender(self.ops.deployer_key)
            hashes = [self.ops.push_price(sym, p, wait=False) for sym, p in r.prices_e8.items()]
            receipt = {}
            for h in hashes:
                receipt = sender.wait(h)
            block = w3.eth.get_block(receipt["blockNumber"])
            pr = PlayedRound(r, block["number"], block["timestamp"], time.monotonic())
            played.append(pr)
            for hook in self.on_round:
                hook(pr)
        return played
