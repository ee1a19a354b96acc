"""The demo's Aave v3 part: a crash on real Aave accounts, with a liquidator bot and without / with the keeper.

1. A second anvil with real Aave v3 (``keeper devchain --protocol aave-v3``'s deployment): liquidity, the four
   seeded accounts (WETH against USDC; WETH + WBTC against USDC + DAI; an e-mode stablecoin account; LINK in
   isolation mode) and an hour of price history on every source (one round a minute, a seeded random walk),
   so the keeper's volatility and stress gaps come from the sources themselves.
2. ``evm_snapshot``; CONTROL run: the crash (WETH -35 % with a -12 % single-round gap, WBTC -25 %, LINK -45 %,
   DAI +6 %) with a liquidator bot calling ``liquidationCall`` on every account whose health factor is below 1
   after every round.
3. ``evm_revert``; KEEPER run: the keeper daemon (``keeper run`` on ``[protocol] name = "aave-v3"``) with a
   wallet of USDC, DAI, WETH and LINK, the same rounds paced so it can react, the same liquidator.
4. Counts from the Pool's own events (``Supply``/``Repay`` sent by the keeper, ``LiquidationCall``) and the
   keeper's receipts, not from the daemon's word.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from eth_account import Account
from rich.console import Console
from web3 import Web3
from web3.exceptions import ContractLogicError

from keeper.accounts.aave_v3 import WAD, margin_account
from keeper.accounts.base import LegKind
from keeper.chain.anvil import Anvil, free_port
from keeper.chain.rpc import ChainClient
from keeper.commands.demo import DaemonKeeper, daemon_config_tail, keeper_gas, rpc, settle_round
from keeper.dev.aave_v3 import DEFAULT_ACCOUNTS, AaveOps, aave_artifact, deploy_aave, seed_market
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.aave_v3 import AaveV3Adapter

TRADER_KEYS = tuple(ANVIL_KEYS[3:7])
LP_KEY = ANVIL_KEYS[9]
LIQUIDATOR_KEY = ANVIL_KEYS[8]
KEEPER_WALLET = {"USDC": 300_000.0, "DAI": 300_000.0, "WETH": 50.0, "LINK": 20_000.0}
HISTORY_ROUNDS = 60
HISTORY_STEP_S = 60
ROUND_STEP_S = 60
# per-minute log-return std of the history (about 0.8/yr for WETH, 0.6 WBTC, 1.0 LINK, 0.02 stablecoins)
HISTORY_SIGMA = {"WETH": 0.0011, "WBTC": 0.0008, "LINK": 0.0014, "USDC": 0.00003, "DAI": 0.00003}
# the crash: price multipliers of the starting price, one row per oracle round
CRASH = (
    {"WETH": 0.97, "WBTC": 0.98, "LINK": 0.95, "DAI": 1.005},
    {"WETH": 0.93, "WBTC": 0.96, "LINK": 0.88, "DAI": 1.01},
    {"WETH": 0.90, "WBTC": 0.93, "LINK": 0.80, "DAI": 1.02},
    {"WETH": 0.79, "WBTC": 0.88, "LINK": 0.70, "DAI": 1.035},  # -12 % single-round gap in WETH
    {"WETH": 0.74, "WBTC": 0.83, "LINK": 0.62, "DAI": 1.045},
    {"WETH": 0.69, "WBTC": 0.79, "LINK": 0.58, "DAI": 1.055},
    {"WETH": 0.65, "WBTC": 0.75, "LINK": 0.55, "DAI": 1.06},
)


@dataclass
class AaveRun:
    """One run of the crash, read back from the chain over its block range."""

    name: str
    first_block: int
    last_block: int = 0
    liquidated: dict[str, list[dict]] = field(default_factory=dict)  # user -> its liquidationCalls
    supplies: list[dict] = field(default_factory=list)  # by the keeper, on behalf
    repays: list[dict] = field(default_factory=list)
    keeper_txs: int = 0
    keeper_reverted: int = 0
    gas_used: int = 0
    gas_cost_wei: int = 0
    final_hf: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0


class AaveLiquidator:
    """Calls ``liquidationCall`` on every watched account with a health factor below 1: the largest collateral
    against the largest debt, debt to cover = that debt (the pool caps it at the close factor)."""

    def __init__(self, ops: AaveOps, adapter: AaveV3Adapter, users: Sequence[str], key: str = LIQUIDATOR_KEY):
        self.ops = ops
        self.adapter = adapter
        self.users = list(users)
        self.key = key
        self.symbol = {a: s for s, a in ops.deployment.tokens.items()}

    def sweep(self) -> int:
        snap = self.adapter.read_accounts(self.users)
        done = 0
        for user, acct in snap.accounts.items():
            if snap.onchain[user].health_factor_wad >= WAD:
                continue
            view = margin_account(acct, snap.market)
            prices = snap.market.prices_e8
            colls = [leg for leg in view.legs if leg.kind is LegKind.COLLATERAL]
            debts = [leg for leg in view.legs if leg.kind is LegKind.DEBT]
            if not colls or not debts:
                continue
            coll = max(colls, key=lambda leg: leg.value_e8(prices))
            debt = max(debts, key=lambda leg: leg.value_e8(prices))
            try:
                self.ops.liquidate(self.key, self.symbol[coll.asset], self.symbol[debt.asset], user, debt.amount)
                done += 1
            except ContractLogicError:
                continue  # the keeper got there first (45) or a cap: the next round tries again
        return done


def seed_history(ops: AaveOps, anvil: Anvil, rng: np.random.Generator) -> None:
    """An hour of one-minute rounds on every source: a random walk around today's price."""
    start = {s: ops.price_e8(s) for s in ops.deployment.tokens}
    x = dict.fromkeys(start, 0.0)
    for _ in range(HISTORY_ROUNDS):
        rpc(anvil, "evm_increaseTime", [HISTORY_STEP_S])
        for s, p0 in start.items():
            x[s] = 0.98 * x[s] + HISTORY_SIGMA[s] * float(rng.standard_normal())
            ops.set_price(s, int(p0 * np.exp(x[s])))
    for s, p0 in start.items():  # the crash starts from the listed prices
        ops.set_price(s, p0)


def round_line(name: str, index: int, ops: AaveOps, users: Sequence[str]) -> str:
    """One line per round for the console: prices, then each account's health factor (LIQ. below 1)."""
    prices = " ".join(f"{s} {ops.price_e8(s) / 1e8:,.{2 if s in ('LINK', 'DAI') else 0}f}" for s in CRASH[0])
    hfs = []
    for k, u in enumerate(users):
        hf = ops.account_data(u)[5] / 1e18
        hfs.append(f"A{k + 1} " + ("LIQ." if hf < 1 else "no debt" if hf > 1e6 else f"{hf:.3f}"))
    return f"{name:<7} {index + 1}/{len(CRASH)} {prices} | HF {' '.join(hfs)}"


def collect(ops: AaveOps, name: str, first_block: int, users: Sequence[str], keeper: str | None) -> AaveRun:
    w3 = ops.w3
    run = AaveRun(name, first_block, w3.eth.block_number)
    rng = {"from_block": first_block, "to_block": run.last_block}
    oracle = w3.eth.contract(
        address=Web3.to_checksum_address(ops.deployment.oracle), abi=aave_artifact("AaveOracle")["abi"]
    )
    symbol = {a.lower(): s for s, a in ops.deployment.tokens.items()}

    def usd(asset: str, amount: int, block: int) -> float:
        price = oracle.functions.getAssetPrice(asset).call(block_identifier=block)
        return amount * price / 10 ** ops.deployment.decimals[symbol[asset.lower()]] / 1e8

    for e in ops.pool.events.LiquidationCall().get_logs(**rng):
        a = e["args"]
        run.liquidated.setdefault(a["user"].lower(), []).append(
            {
                "collateral": symbol[a["collateralAsset"].lower()],
                "debt": symbol[a["debtAsset"].lower()],
                "debt_covered_usd": round(usd(a["debtAsset"], a["debtToCover"], e["blockNumber"]), 2),
                "block": e["blockNumber"],
            }
        )
    if keeper is not None:
        me = keeper.lower()
        for e in ops.pool.events.Supply().get_logs(**rng):
            a = e["args"]
            if a["user"].lower() == me:
                run.supplies.append(_action(a["reserve"], a["onBehalfOf"], a["amount"], e, usd, symbol))
        for e in ops.pool.events.Repay().get_logs(**rng):
            a = e["args"]
            if a["repayer"].lower() == me:
                run.repays.append(_action(a["reserve"], a["user"], a["amount"], e, usd, symbol))
        run.keeper_txs, run.keeper_reverted, run.gas_used, run.gas_cost_wei = keeper_gas(
            w3, keeper, first_block, run.last_block
        )
    run.final_hf = {u.lower(): ops.account_data(u)[5] for u in users}
    return run


def _action(reserve: str, user: str, amount: int, e: Any, usd: Callable[[str, int, int], float], symbol) -> dict:
    return {
        "account": user,
        "asset": symbol[reserve.lower()],
        "amount": int(amount),
        "usd": round(usd(reserve, amount, e["blockNumber"]), 2),
        "block": e["blockNumber"],
        "tx_hash": e["transactionHash"].to_0x_hex(),
    }


def keeper_config(anvil: Anvil, ops: AaveOps, users: Sequence[str], http_port: int, journal: Path) -> str:
    accounts = "\n".join(f'[[accounts]]\naddress = "{u}"\nmode = "protect"\n' for u in users)
    return f"""# generated by `keeper demo` for a throw-away local chain (Aave v3)
dry_run = false

[chain]
rpc_urls = ["{anvil.url}"]
chain_id = {ops.deployment.chain_id}

[protocol]
name = "aave-v3"
provider = "{ops.deployment.provider}"

{accounts}
[limits]
max_top_up_usd = 100000
max_per_day_usd = 2000000

{daemon_config_tail(journal, http_port)}"""


def play(
    ops: AaveOps,
    anvil: Anvil,
    bot: AaveLiquidator,
    users: Sequence[str],
    *,
    name: str,
    keeper: DaemonKeeper | None,
    workdir: Path,
    console: Console | None = None,
) -> AaveRun:
    t0 = time.monotonic()
    first_block = ops.w3.eth.block_number + 1
    keeper_address = Account.from_key(ANVIL_KEYS[2]).address
    start = {s: ops.price_e8(s) for s in ops.deployment.tokens}
    try:
        if keeper is not None:
            workdir.mkdir(parents=True, exist_ok=True)
            keeper.port = free_port()
            text = keeper_config(anvil, ops, users, keeper.port, keeper.fresh_journal(workdir))
            keeper.launch(text, workdir, ANVIL_KEYS[2], anvil, ops.w3)
        for i, row in enumerate(CRASH):
            rpc(anvil, "evm_increaseTime", [ROUND_STEP_S])
            for s, factor in row.items():
                ops.set_price(s, int(start[s] * factor))
            settle_round(bot, keeper, ops.w3, console, partial(round_line, name, i, ops, users))
    finally:
        if keeper is not None:
            keeper.stop()
    run = collect(ops, name, first_block, users, keeper_address if keeper is not None else None)
    run.wall_s = time.monotonic() - t0
    return run


def run_aave_demo(*, keeper: bool, workdir: Path, seed: int = 7, console: Console | None = None) -> dict[str, Any]:
    """Deploy, seed, run the control and (``keeper``) the keeper run; the ``aave-v3`` entry of the summary."""
    anvil = Anvil.start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        ops = AaveOps(w3, deploy_aave(w3, ANVIL_KEYS[0], rpc_url=anvil.url))
        users = seed_market(ops, LP_KEY, TRADER_KEYS, DEFAULT_ACCOUNTS)
        seed_history(ops, anvil, np.random.default_rng(seed))
        keeper_address = Account.from_key(ANVIL_KEYS[2]).address
        for s, amount in KEEPER_WALLET.items():
            ops.mint(s, keeper_address, ops.units(s, amount))
        client = ChainClient.connect(anvil.url)
        bot = AaveLiquidator(ops, AaveV3Adapter(client, ops.deployment.provider), users)
        snapshot = rpc(anvil, "evm_snapshot")
        control = play(ops, anvil, bot, users, name="CONTROL", keeper=None, workdir=workdir, console=console)
        kept = None
        if keeper:
            rpc(anvil, "evm_revert", [snapshot])
            ops.reset_nonces()
            kept = play(ops, anvil, bot, users, name="KEEPER", keeper=DaemonKeeper(), workdir=workdir, console=console)
        client.close()
        return summarize(users, control, kept)
    finally:
        anvil.stop()


def summarize(users: Sequence[str], control: AaveRun, kept: AaveRun | None) -> dict[str, Any]:
    accounts = []
    for u in users:
        row: dict[str, Any] = {
            "account": u,
            "liquidated_without_keeper": u.lower() in control.liquidated,
            "liquidations_without_keeper": control.liquidated.get(u.lower(), []),
            "health_factor_end_without_keeper": control.final_hf[u.lower()] / 1e18,
        }
        if kept is not None:
            row.update(
                {
                    "liquidated_with_keeper": u.lower() in kept.liquidated,
                    "supplied": [x for x in kept.supplies if x["account"].lower() == u.lower()],
                    "repaid": [x for x in kept.repays if x["account"].lower() == u.lower()],
                    "health_factor_end_with_keeper": kept.final_hf[u.lower()] / 1e18,
                }
            )
        accounts.append(row)
    out: dict[str, Any] = {
        "positions": len(users),
        "liquidated_without_keeper": len(control.liquidated),
        "liquidated_with_keeper": None if kept is None else len(kept.liquidated),
        "top_ups": None if kept is None else len(kept.supplies) + len(kept.repays),
        "supplies": None if kept is None else len(kept.supplies),
        "repays": None if kept is None else len(kept.repays),
        "collateral_added": None if kept is None else round(sum(x["usd"] for x in kept.supplies + kept.repays), 2),
        "gas_used": None if kept is None else kept.gas_used,
        "keeper_transactions": None if kept is None else kept.keeper_txs,
        "keeper_reverted": None if kept is None else kept.keeper_reverted,
        "seconds_control": round(control.wall_s, 1),
        "seconds_keeper": None if kept is None else round(kept.wall_s, 1),
        "accounts": accounts,
    }
    return out
