"""The demo's Perpetual Protocol v2 part: a crash on real Curie accounts, with a liquidator bot and without / with
the keeper.

1. A third anvil with Curie deployed from the npm artifacts (:mod:`keeper.dev.perp_v2`): maker liquidity, a
   market mover, five cross-margined traders at 5-8x (long ETH + long BTC, long ETH + short BTC, BTC alone,
   ETH alone, short ETH + long BTC) and an hour of index history (one Chainlink round a minute on each
   market's aggregator, a seeded random walk), so the keeper's volatility estimate has rounds to read.
2. ``evm_snapshot``; CONTROL run: the crash (ETH -23 % with a -8.8 % single-round gap, BTC -18 %, and from the
   third round on the pools pushed 4 % below the index, which drags the mark, a median of TWAPs, under it)
   with a liquidator bot calling ``ClearingHouse.liquidate`` on every market of every account the contract
   calls liquidatable (``getAccountValue < getMarginRequirementForLiquidation``) after every round.
3. ``evm_revert``; KEEPER run: the keeper daemon (``keeper run`` on ``[protocol] name = "perp-v2"``) with a
   wallet of settlement tokens, the same rounds paced so it can react, the same liquidator.
4. Counts from the chain's own events (the ClearingHouse's ``PositionLiquidated``, the Vault's ``Deposited``
   in transactions the keeper's address sent) and the keeper's receipts, not from the daemon's word.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from eth_account import Account
from rich.console import Console
from web3 import Web3
from web3.exceptions import ContractLogicError

from keeper.chain.anvil import Anvil, free_port
from keeper.commands.demo import DaemonKeeper, daemon_available, daemon_config_tail, keeper_gas, rpc, settle_round
from keeper.dev.perp_v2 import KEEPER, LIQUIDATOR, PerpOps, SeedLeg, SeedTrader, start_perp_devchain
from keeper.dev.reference import ANVIL_KEYS

E18 = 10**18
BOOK: tuple[SeedTrader, ...] = (
    SeedTrader(1, 1_000.0, (SeedLeg("ETH", True, 5_000.0), SeedLeg("BTC", True, 3_000.0))),  # 8x, both long
    SeedTrader(4, 2_000.0, (SeedLeg("ETH", True, 10_000.0), SeedLeg("BTC", False, 2_000.0))),  # 6x, long/short
    SeedTrader(5, 1_500.0, (SeedLeg("BTC", True, 10_000.0),)),  # 6.7x
    SeedTrader(6, 1_200.0, (SeedLeg("ETH", True, 6_000.0),)),  # 5x
    SeedTrader(7, 1_500.0, (SeedLeg("ETH", False, 2_000.0), SeedLeg("BTC", True, 10_000.0))),  # 8x, short/long
)
START_PRICES = {"ETH": 2_000.0, "BTC": 40_000.0}  # DEFAULT_PERP_MARKETS' listing prices
LIQUIDATOR_DEPOSIT_E6 = 1_000_000 * 10**6  # the bot takes the liquidated positions over (CH_NEFCI without it)
KEEPER_WALLET_E6 = 50_000 * 10**6
HISTORY_ROUNDS = 60
HISTORY_STEP_S = 60
# per-minute log-return std of the index history (about 0.8/yr for ETH, 0.6 for BTC), AR(1) 0.98 around today
HISTORY_SIGMA = {"ETH": 0.0011, "BTC": 0.0008}
SETTLE_S = 20  # after a round's market move: the mark (median of TWAPs) follows a pool move after >= 15 s
# the crash: index price multipliers of the starting price, one row per round (round 4: the gap)
CRASH: tuple[dict[str, float], ...] = (
    {"ETH": 0.98, "BTC": 0.985},
    {"ETH": 0.95, "BTC": 0.96},
    {"ETH": 0.91, "BTC": 0.93},
    {"ETH": 0.83, "BTC": 0.87},  # -8.8 % ETH, -6.5 % BTC in one round
    {"ETH": 0.80, "BTC": 0.85},
    {"ETH": 0.78, "BTC": 0.83},
    {"ETH": 0.77, "BTC": 0.82},
)
# where each round leaves the pools, relative to the new index: a seller pushes them 4 % under it from round 3
PUSH: tuple[float, ...] = (1.0, 1.0, 0.96, 0.96, 0.96, 0.96, 0.96)


@dataclass
class PerpRun:
    """One run of the crash, read back from the chain over its block range."""

    name: str
    first_block: int
    last_block: int = 0
    liquidated: dict[str, list[dict]] = field(default_factory=dict)  # trader -> its PositionLiquidated events
    deposits: list[dict] = field(default_factory=list)  # Vault Deposited in the keeper's transactions
    keeper_txs: int = 0
    keeper_reverted: int = 0
    gas_used: int = 0
    gas_cost_wei: int = 0
    final: dict[str, tuple[int, int]] = field(default_factory=dict)  # trader -> (account value, requirement) x18
    wall_s: float = 0.0


def trader_address(trader: SeedTrader) -> str:
    return Account.from_key(ANVIL_KEYS[trader.key_index]).address


def margin_of(ops: PerpOps, trader: str) -> tuple[int, int]:
    """The contract's own (account value, maintenance requirement) of ``trader``, 18 decimals."""
    value = ops.ch.functions.getAccountValue(trader).call()
    requirement = ops.account_balance.functions.getMarginRequirementForLiquidation(trader).call()
    return value, requirement


class PerpLiquidator:
    """After a round: while the contract calls an account liquidatable, ``ClearingHouse.liquidate`` each of its
    markets that holds a position (simulated first; the bot takes the position over, so it holds a deposit).

    A partial liquidation may leave the account liquidatable: the bot goes round its markets again, at most
    ``max_passes`` times per sweep. A liquidation the keeper's deposit beat (``CH_EAV``) is skipped.
    """

    def __init__(self, ops: PerpOps, traders: Sequence[str], key: str = ANVIL_KEYS[LIQUIDATOR], max_passes: int = 4):
        self.ops = ops
        self.traders = [Web3.to_checksum_address(t) for t in traders]
        self.key = key
        self.address = Account.from_key(key).address
        self.max_passes = max_passes

    def liquidatable(self, trader: str) -> bool:
        value, requirement = margin_of(self.ops, trader)
        return value < requirement

    def sweep(self) -> int:
        """Liquidate what the contract lets the bot; returns how many ``liquidate`` calls went through."""
        done = 0
        for trader in self.traders:
            for _ in range(self.max_passes):
                took = 0
                for symbol, base in self.ops.bases.items():
                    if not self.liquidatable(trader):
                        break
                    if self.ops.account_balance.functions.getTakerPositionSize(trader, base.address).call() == 0:
                        continue
                    try:
                        self.ops.ch.functions.liquidate(trader, base.address).call({"from": self.address})
                    except ContractLogicError:
                        continue  # CH_EAV and friends: nothing to take in this market now
                    try:
                        self.ops.liquidate(self.key, trader, symbol)
                    except RuntimeError:
                        continue  # mined reverted: the keeper's deposit landed between the simulation and it
                    took += 1
                done += took
                if not took or not self.liquidatable(trader):
                    break
        return done


def push_indexes(ops: PerpOps, prices: Mapping[str, float]) -> None:
    """One Chainlink round per market at ``prices`` (sent back to back, then waited for)."""
    s = ops.sender(ops.deployer_key)
    for symbol, price in prices.items():
        s.transact(ops.aggregators[symbol].functions.updateAnswer(round(price * 1e8)), gas=200_000)
    s.wait()


def seed_history(ops: PerpOps, rng: np.random.Generator, start: Mapping[str, float] = START_PRICES) -> None:
    """An hour of one-minute index rounds on every market (a random walk around ``start``), then ``start``.

    Only the index moves: the pools stay where the book left them, and the mark (a median of the pool price,
    its TWAP and the index plus the pool's premium over it) stays with them.
    """
    x = dict.fromkeys(start, 0.0)
    for _ in range(HISTORY_ROUNDS):
        ops.rpc("evm_increaseTime", [HISTORY_STEP_S])
        for s in start:
            x[s] = 0.98 * x[s] + HISTORY_SIGMA[s] * float(rng.standard_normal())
        push_indexes(ops, {s: p0 * float(np.exp(x[s])) for s, p0 in start.items()})
    push_indexes(ops, start)  # the crash starts from the listed prices


def play_round(ops: PerpOps, index: Mapping[str, float], push: float) -> None:
    """One round: new index rounds, each pool traded to ``index x push`` (steps >= 15 s apart, within the 10 %
    band), the index rounds refreshed (they must stay fresher than the feeds' 2,400 s timeout), then
    ``SETTLE_S`` seconds so the mark follows the pools."""
    push_indexes(ops, index)
    for symbol, price in index.items():
        ops.move_market(symbol, price * push)
    push_indexes(ops, index)
    ops.advance(SETTLE_S)


def round_line(name: str, i: int, ops: PerpOps, traders: Sequence[str]) -> str:
    """One line per round for the console: index and mark per market, then each account's value over its
    maintenance requirement (``LIQ.`` below 1, ``closed`` once nothing is left)."""
    parts = []
    for symbol, base in ops.bases.items():
        idx = base.functions.getIndexPrice(0).call() / E18
        parts.append(f"{symbol} {idx:,.0f} (mark {ops.mark_price(symbol) / E18:,.0f})")
    ratios = []
    for k, t in enumerate(traders):
        value, requirement = margin_of(ops, t)
        text = "closed" if requirement == 0 else ("LIQ." if value < requirement else f"{value / requirement:.2f}")
        ratios.append(f"P{k + 1} {text}")
    return f"{name:<7} {i + 1}/{len(CRASH)} {' '.join(parts)} | value/req {' '.join(ratios)}"


def collect(ops: PerpOps, name: str, first_block: int, traders: Sequence[str], keeper: str | None) -> PerpRun:
    """Liquidations, the keeper's deposits and gas between ``first_block`` and the head, from the chain."""
    w3 = ops.w3
    run = PerpRun(name, first_block, w3.eth.block_number)
    span = {"from_block": first_block, "to_block": run.last_block}
    symbol = {b.address.lower(): s for s, b in ops.bases.items()}
    for e in ops.ch.events.PositionLiquidated().get_logs(**span):
        a = e["args"]
        run.liquidated.setdefault(a["trader"].lower(), []).append(
            {
                "market": symbol.get(a["baseToken"].lower(), a["baseToken"]),
                "size": a["positionSize"] / E18,
                "notional": round(a["positionNotional"] / E18, 2),
                "penalty": round(a["liquidationFee"] / E18, 6),
                "liquidator": a["liquidator"],
                "block": e["blockNumber"],
            }
        )
    if keeper is not None:
        me = keeper.lower()
        settlement = ops.usdc.address.lower()
        for e in ops.vault.events.Deposited().get_logs(**span):
            a = e["args"]
            if a["collateralToken"].lower() != settlement:
                continue
            if w3.eth.get_transaction(e["transactionHash"])["from"].lower() != me:
                continue  # the event names no sender: the transaction's own from decides
            run.deposits.append(
                {
                    "account": a["trader"],
                    "amount_e6": int(a["amount"]),
                    "usd": a["amount"] / 1e6,
                    "block": e["blockNumber"],
                    "tx_hash": e["transactionHash"].to_0x_hex(),
                }
            )
        run.keeper_txs, run.keeper_reverted, run.gas_used, run.gas_cost_wei = keeper_gas(
            w3, keeper, first_block, run.last_block
        )
    run.final = {t.lower(): margin_of(ops, Web3.to_checksum_address(t)) for t in traders}
    return run


def keeper_config(
    anvil: Anvil, ops: PerpOps, traders: Sequence[str], deployment: Path, port: int, journal: Path
) -> str:
    """The daemon's configuration for the Perp chain (the key comes from ``KEEPER_PRIVATE_KEY``)."""
    accounts = "\n".join(f'[[accounts]]\naddress = "{t}"\nmode = "protect"\n' for t in traders)
    return f"""# generated by `keeper demo` for a throw-away local chain (Perp v2)
dry_run = false

[chain]
rpc_urls = ["{anvil.url}"]
chain_id = {ops.deployment.chain_id}

[protocol]
name = "perp-v2"
deployment = "{deployment}"
stale_after_s = 3600

{accounts}
[limits]
max_top_up_usd = 50000
max_per_day_usd = 1000000

{daemon_config_tail(journal, port)}"""


def perp_daemon_available() -> bool:
    """Whether this installation's ``keeper run`` knows ``[protocol] name = "perp-v2"``."""
    if not daemon_available():
        return False
    from keeper.protocols import registry

    return "perp-v2" in registry.names()


def play(
    ops: PerpOps,
    anvil: Anvil,
    bot: PerpLiquidator,
    traders: Sequence[str],
    *,
    name: str,
    keeper: DaemonKeeper | None,
    workdir: Path,
    console: Console | None = None,
) -> PerpRun:
    """One run of :data:`CRASH`: the optional daemon, the bot sweeping after every round (and again once the
    daemon has had its cycle), then the run read back from the chain."""
    t0 = time.monotonic()
    first_block = ops.w3.eth.block_number + 1
    keeper_address = Account.from_key(ANVIL_KEYS[KEEPER]).address
    try:
        if keeper is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            deployment = ops.deployment.save(workdir / "deployment.json").resolve()
            keeper.port = free_port()
            text = keeper_config(anvil, ops, traders, deployment, keeper.port, keeper.fresh_journal(workdir))
            keeper.launch(text, workdir, ANVIL_KEYS[KEEPER], anvil, ops.w3)
        for i, (row, push) in enumerate(zip(CRASH, PUSH, strict=True)):
            play_round(ops, {s: START_PRICES[s] * f for s, f in row.items()}, push)
            settle_round(bot, keeper, ops.w3, console, partial(round_line, name, i, ops, traders))
    finally:
        if keeper is not None:
            keeper.stop()
    run = collect(ops, name, first_block, traders, keeper_address if keeper is not None else None)
    run.wall_s = time.monotonic() - t0
    return run


def run_perp_demo(*, keeper: bool, workdir: Path, seed: int = 7, console: Console | None = None) -> dict[str, Any]:
    """Deploy, seed, run the control and (``keeper``) the keeper run; the ``perp-v2`` entry of the summary."""
    anvil, ops = start_perp_devchain(seed=False)
    try:
        ops.seed(BOOK)
        traders = [trader_address(t) for t in BOOK]
        ops.deposit(ANVIL_KEYS[LIQUIDATOR], LIQUIDATOR_DEPOSIT_E6)
        seed_history(ops, np.random.default_rng(seed))
        ops.mint(Account.from_key(ANVIL_KEYS[KEEPER]).address, KEEPER_WALLET_E6)
        bot = PerpLiquidator(ops, traders)
        snapshot = rpc(anvil, "evm_snapshot")
        control = play(ops, anvil, bot, traders, name="CONTROL", keeper=None, workdir=workdir, console=console)
        kept = None
        if keeper and not perp_daemon_available():
            if console is not None:
                console.print("[yellow]`keeper run` does not know protocol perp-v2: Perp v2 control run only[/yellow]")
        elif keeper:
            rpc(anvil, "evm_revert", [snapshot])
            ops.reset_nonces()
            kept = play(
                ops, anvil, bot, traders, name="KEEPER", keeper=DaemonKeeper(), workdir=workdir, console=console
            )
        return summarize(traders, control, kept)
    finally:
        anvil.stop()


def _legs(trader: SeedTrader) -> list[str]:
    return [f"{'long' if leg.is_long else 'short'} {leg.symbol} ${leg.notional_usd:,.0f}" for leg in trader.legs]


def summarize(traders: Sequence[str], control: PerpRun, kept: PerpRun | None) -> dict[str, Any]:
    """The ``perp-v2`` entry: the ``aave-v3`` entry's fields (``supplies`` are the keeper's ``depositFor``
    calls, ``repays`` 0: Curie has no debt to repay on someone's behalf), plus liquidation events and their
    penalties. ``liquidated_*`` count accounts, ``liquidations_*`` the ``PositionLiquidated`` events."""
    accounts = []
    for t, seeded in zip(traders, BOOK, strict=True):
        key = t.lower()
        value, requirement = control.final[key]
        row: dict[str, Any] = {
            "account": t,
            "legs": _legs(seeded),
            "deposit": seeded.deposit_usd,
            "liquidated_without_keeper": key in control.liquidated,
            "liquidations_without_keeper": control.liquidated.get(key, []),
            "account_value_end_without_keeper": value / E18,
            "requirement_end_without_keeper": requirement / E18,
        }
        if kept is not None:
            value, requirement = kept.final[key]
            row.update(
                {
                    "liquidated_with_keeper": key in kept.liquidated,
                    "liquidations_with_keeper": kept.liquidated.get(key, []),
                    "deposited": [x for x in kept.deposits if x["account"].lower() == key],
                    "account_value_end_with_keeper": value / E18,
                    "requirement_end_with_keeper": requirement / E18,
                }
            )
        accounts.append(row)

    def penalties(run: PerpRun) -> float:
        return round(sum(x["penalty"] for xs in run.liquidated.values() for x in xs), 6)

    return {
        "positions": len(traders),
        "legs": sum(len(t.legs) for t in BOOK),
        "liquidated_without_keeper": len(control.liquidated),
        "liquidated_with_keeper": None if kept is None else len(kept.liquidated),
        "liquidations_without_keeper": sum(len(xs) for xs in control.liquidated.values()),
        "liquidations_with_keeper": None if kept is None else sum(len(xs) for xs in kept.liquidated.values()),
        "penalties_without_keeper": penalties(control),
        "penalties_with_keeper": None if kept is None else penalties(kept),
        "top_ups": None if kept is None else len(kept.deposits),
        "supplies": None if kept is None else len(kept.deposits),
        "repays": None if kept is None else 0,
        "collateral_added": None if kept is None else round(sum(x["usd"] for x in kept.deposits), 2),
        "gas_used": None if kept is None else kept.gas_used,
        "keeper_transactions": None if kept is None else kept.keeper_txs,
        "keeper_reverted": None if kept is None else kept.keeper_reverted,
        "seconds_control": round(control.wall_s, 1),
        "seconds_keeper": None if kept is None else round(kept.wall_s, 1),
        "accounts": accounts,
    }
