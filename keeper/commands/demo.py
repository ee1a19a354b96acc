"""``keeper demo``: a market crash on a local chain, with and without the keeper, in under two minutes.

1. Start anvil, deploy the reference protocol, open the demo book: one trader holding eight positions in
   four accounts (the protocol keeps one position per account and market): ETH and BTC, long and short,
   5x to 40x. The trader funds the keeper's wallet (anvil key 2) with a reserve for top-ups and approves
   the keeper as operator of every account (so it may also move margin between a trader's positions).
2. ``evm_snapshot``; CONTROL run: play the scenario (ETH −35 % with a −12 % single-round gap, BTC +25 %)
   with no keeper and the liquidator bot (anvil key 3) sweeping after every round.
3. ``evm_revert``; KEEPER run: start the keeper daemon (``python -m keeper run --config <generated>``) as a
   subprocess, let it settle, play the same rounds paced so it can react (it reacts to new oracle rounds;
   the demo waits for its ``/healthz`` to show a cycle after the round), with the same liquidator.
4. Summary from the chain's own events (``MarginAdded`` / ``MarginMoved`` / ``Liquidated``) and the
   keeper's receipts (gas), not from the daemon's word; written to ``.keeper/demo-summary.json``.

The keeper run is pluggable (:class:`KeeperRunner`): the daemon subprocess by default, any object with
``start`` / ``after_round`` / ``stop`` in tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

import typer
from eth_account import Account
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from web3 import Web3
from web3.types import TxData

from keeper.chain.anvil import Anvil, free_port
from keeper.commands.devchain import start_devchain
from keeper.dev.reference import ANVIL_KEYS, DevChainOps
from keeper.domain import Side
from keeper.errors import InputError, KeeperError
from keeper.protocols.reference import write_atomically
from keeper.sim.liquidator import LIQUIDATOR_KEY, LiquidatorBot
from keeper.sim.scenario import PlayedRound, Scenario, ScenarioPlayer, demo_crash

DEFAULT_DIR = Path(".keeper")
SUMMARY_NAME = "demo-summary.json"
KEEPER_KEY = ANVIL_KEYS[2]
DEFAULT_RESERVE_USD = 60_000.0
DEFAULT_SEED = 7


@dataclass(frozen=True, slots=True)
class DemoPosition:
    """One position of the demo book: ``account`` is an index into the anvil keys."""

    account: int
    symbol: str
    side: Side
    leverage: float
    notional_usd: float

    @property
    def collateral_e6(self) -> int:
        return round(self.notional_usd / self.leverage * 1e6)


DEMO_BOOK: tuple[DemoPosition, ...] = (
    DemoPosition(1, "ETH", Side.LONG, 40.0, 40_000.0),
    DemoPosition(1, "BTC", Side.LONG, 5.0, 60_000.0),
    DemoPosition(4, "ETH", Side.SHORT, 10.0, 50_000.0),
    DemoPosition(4, "BTC", Side.SHORT, 25.0, 50_000.0),
    DemoPosition(5, "ETH", Side.LONG, 20.0, 50_000.0),
    DemoPosition(5, "BTC", Side.LONG, 10.0, 50_000.0),
    DemoPosition(6, "ETH", Side.SHORT, 5.0, 40_000.0),
    DemoPosition(6, "BTC", Side.SHORT, 40.0, 40_000.0),
)


@dataclass
class DemoContext:
    """What a keeper runner needs: the chain, the book, the keeper's key and a working directory."""

    anvil: Anvil
    ops: DevChainOps
    accounts: tuple[str, ...]
    keeper_key: str
    workdir: Path

    @property
    def keeper_address(self) -> str:
        return Account.from_key(self.keeper_key).address


# ---- setup -------------------------------------------------------------------------------------------


def account_of(index: int) -> str:
    return Account.from_key(ANVIL_KEYS[index]).address


def open_book(
    ops: DevChainOps,
    book: Sequence[DemoPosition] = DEMO_BOOK,
    *,
    reserve_e6: int,
    keeper_key: str = KEEPER_KEY,
) -> tuple[str, ...]:
    """Fund and open ``book``; give the keeper's wallet ``reserve_e6`` (engine approved) and operator rights.

    Returns the trader's accounts in book order (each once).
    """
    keeper = Account.from_key(keeper_key).address
    accounts: list[int] = []
    for p in book:
        if p.account not in accounts:
            accounts.append(p.account)
    for idx in accounts:
        key = ANVIL_KEYS[idx]
        ops.mint(account_of(idx), sum(p.collateral_e6 for p in book if p.account == idx))
        ops.approve_engine(key)
        s = ops.sender(key)
        s.wait(s.transact(ops.engine.functions.setOperator(keeper, True)))
    for p in book:
        price_e8 = ops.latest_price_e8(p.symbol)
        size_e18 = int(p.notional_usd * 1e8 * 1e18) // price_e8
        ops.open_position(ANVIL_KEYS[p.account], p.symbol, p.side is Side.LONG, size_e18, p.collateral_e6)
    if reserve_e6 > 0:
        ops.mint(keeper, reserve_e6)
    ops.approve_engine(keeper_key)
    return tuple(account_of(i) for i in accounts)


def account_labels(addresses) -> dict[str, str]:
    """``T1``, ``T2``, ... for the trader's accounts in book order (the full addresses are in the JSON)."""
    out: dict[str, str] = {}
    for a in addresses:
        out.setdefault(Web3.to_checksum_address(a), f"T{len(out) + 1}")
    return out


def rpc(anvil: Anvil, method: str, params: list | None = None) -> Any:
    return anvil.request(method, params or [])


# ---- the keeper, pluggable -----------------------------------------------------------------------------


class KeeperRunner(Protocol):
    """Starts a keeper before the scenario, paces it after each round, stops it at the end."""

    name: str

    def start(self, ctx: DemoContext) -> None: ...

    def after_round(self, played: PlayedRound) -> None: ...

    def stop(self) -> None: ...


def daemon_available() -> bool:
    """Whether ``keeper run`` exists in this installation (the daemon is wired into the CLI)."""
    return importlib.util.find_spec("keeper.commands.run") is not None


def keeper_config_toml(ctx: DemoContext, deployment_path: Path, http_port: int, journal: Path) -> str:
    """The daemon's configuration for the demo chain (the key comes from ``KEEPER_PRIVATE_KEY``)."""
    accounts = "\n".join(f'[[accounts]]\naddress = "{a}"\nmode = "protect"\n' for a in ctx.accounts)
    return f"""# generated by `keeper demo` for a throw-away local chain
dry_run = false

[chain]
rpc_urls = ["{ctx.anvil.url}"]
chain_id = {ctx.ops.deployment.chain_id}

[protocol]
deployment = "{deployment_path}"

{accounts}
[limits]
max_top_up_usd = 50000
max_per_day_usd = 1000000

{daemon_config_tail(journal, http_port)}"""


def daemon_config_tail(journal: Path, http_port: int) -> str:
    """The demo daemon's schedule, journal, health listener and log sections (every protocol's the same)."""
    return f"""[schedule]
head_poll_s = 0.1          # the demo pushes a round every ~1 s of wall time: notice it quickly

[journal]
path = "{journal}"

[http]
enabled = true
host = "127.0.0.1"
port = {http_port}

[log]
format = "json"
level = "info"
"""


class DaemonKeeper:
    """The real daemon as a subprocess: ``python -m keeper run --config <generated toml>``.

    Pacing: after a round, wait until ``/healthz`` reports a head at or past the round's block and a cycle
    completed after the round landed, then until the node's pool holds none of the keeper's transactions;
    ``round_timeout_s`` bounds the wait (a fixed delay when the health endpoint says nothing useful).
    """

    name = "daemon"

    def __init__(self, *, start_timeout_s: float = 30.0, round_timeout_s: float = 4.0, settle_s: float = 0.3) -> None:
        self.start_timeout_s = start_timeout_s
        self.round_timeout_s = round_timeout_s
        self.settle_s = settle_s
        self.process: subprocess.Popen | None = None
        self.ctx: DemoContext | None = None
        self.port = 0
        self.log_path: Path | None = None
        self._log: BinaryIO | None = None
        self._anvil: Anvil | None = None
        self._w3: Web3 | None = None
        self._keeper_address = ""

    def start(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        deployment_path = ctx.ops.deployment.save(ctx.workdir / "deployment.json").resolve()
        journal = self.fresh_journal(ctx.workdir)
        self.port = free_port()
        config_text = keeper_config_toml(ctx, deployment_path, self.port, journal)
        self.launch(config_text, ctx.workdir, ctx.keeper_key, ctx.anvil, ctx.ops.w3)

    @staticmethod
    def fresh_journal(workdir: Path) -> Path:
        journal = (workdir / "journal.sqlite").resolve()
        for stale in (journal, journal.with_suffix(".sqlite-wal"), journal.with_suffix(".sqlite-shm")):
            stale.unlink(missing_ok=True)
        return journal

    def launch(self, config_text: str, workdir: Path, keeper_key: str, anvil: Anvil, w3: Web3) -> None:
        """Write ``config_text``, start ``keeper run`` on it, wait for its first cycle and for that cycle's
        transactions to be mined (``self.port`` must be the config's http port)."""
        if not daemon_available():
            raise KeeperError("`keeper run` is not available in this installation: the daemon is missing")
        self._anvil, self._w3 = anvil, w3
        self._keeper_address = Account.from_key(keeper_key).address
        config = workdir / "keeper.toml"
        config.write_text(config_text)
        self.log_path = workdir / "keeper.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEEPER_")}
        env["KEEPER_PRIVATE_KEY"] = keeper_key  # a public anvil test key; never written to a file
        self.process = subprocess.Popen(
            [sys.executable, "-m", "keeper", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            h = self.health()
            if h and h.get("last_cycle_age_s") is not None:
                break
            time.sleep(0.1)
        else:
            raise KeeperError(
                f"the keeper daemon did not complete a cycle in {self.start_timeout_s:.0f}s; see {self.log_path}"
            )
        # the first cycle's top-ups are mined, and (within 2 s) a cycle has seen them: then the scenario starts
        self._wait_idle(time.monotonic(), w3.eth.block_number, 2.0)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503 still carries the JSON body
            try:
                return json.loads(exc.read())
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-1500:] if self.log_path else ""
            raise KeeperError(f"the keeper daemon exited with code {self.process.returncode}:\n{tail}")

    def _keeper_pending(self) -> bool:
        assert self._anvil is not None
        content = rpc(self._anvil, "txpool_content")
        mine = self._keeper_address.lower()
        return any(addr.lower() == mine for part in content.values() for addr in part)

    def _wait_idle(self, since: float, block: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            h = self.health() or {}
            age = h.get("last_cycle_age_s")
            head = h.get("head_block")
            cycled = age is not None and age <= time.monotonic() - since
            if cycled and (head is None or head >= block) and not self._keeper_pending():
                break
            time.sleep(0.05)
        time.sleep(self.settle_s)

    def after_round(self, played: PlayedRound) -> None:
        self.wait_for_cycle(played.landed_monotonic_s or time.monotonic(), played.block_number)

    def wait_for_cycle(self, since_monotonic_s: float, block: int) -> None:
        """Until a cycle finished after ``since_monotonic_s`` saw ``block`` and nothing of ours is pending."""
        self._wait_idle(since_monotonic_s, block, self.round_timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None


# ---- one run of the scenario ---------------------------------------------------------------------------


class Sweeper(Protocol):
    """A demo's liquidator bot: liquidates whatever the protocol lets it, returns how many it took."""

    def sweep(self) -> int: ...


def settle_round(
    bot: Sweeper, keeper: DaemonKeeper | None, w3: Web3, console: Console | None, line: Callable[[], str]
) -> None:
    """A round has landed: the bot sweeps; with the daemon running, wait for its cycle past the round, then the
    bot sweeps again (what the keeper did not save is taken); print the round's line."""
    landed = time.monotonic()
    bot.sweep()
    if keeper is not None:
        keeper.wait_for_cycle(landed, w3.eth.block_number)
        bot.sweep()
    if console is not None:
        console.print(line(), highlight=False, soft_wrap=True)


@dataclass
class RunResult:
    """What one run did, read back from the chain over its block range."""

    name: str
    first_block: int
    last_block: int
    liquidated: dict[tuple[str, int], dict] = field(default_factory=dict)
    margin_added: list[dict] = field(default_factory=list)
    margin_moved: list[dict] = field(default_factory=list)
    keeper_txs: int = 0
    keeper_reverted: int = 0
    keeper_gas_used: int = 0
    keeper_gas_cost_wei: int = 0
    final: dict[tuple[str, int], tuple] = field(default_factory=dict)
    wall_s: float = 0.0


def book_keys(ops: DevChainOps, book: Sequence[DemoPosition]) -> list[tuple[str, int]]:
    return [(account_of(p.account), ops.deployment.markets[p.symbol]) for p in book]


def read_views(ops: DevChainOps, keys: Sequence[tuple[str, int]]) -> list[tuple]:
    return ops.engine.functions.getPositions([a for a, _ in keys], [m for _, m in keys]).call()


def keeper_gas(w3: Web3, keeper_address: str, first_block: int, last_block: int) -> tuple[int, int, int, int]:
    """(transactions, reverted, gas used, gas cost in wei) of ``keeper_address`` in the block range, from receipts."""
    mine = keeper_address.lower()
    txs = reverted = gas = cost = 0
    for n in range(first_block, last_block + 1):
        for item in w3.eth.get_block(n, full_transactions=True)["transactions"]:
            tx = cast(TxData, item)  # full_transactions=True: whole transactions, not hashes
            if tx["from"].lower() != mine:
                continue
            receipt = w3.eth.get_transaction_receipt(tx["hash"])
            txs += 1
            reverted += receipt["status"] != 1
            gas += receipt["gasUsed"]
            cost += receipt["gasUsed"] * receipt["effectiveGasPrice"]
    return txs, reverted, gas, cost


def collect_run(
    ops: DevChainOps, name: str, first_block: int, keys: Sequence[tuple[str, int]], keeper_address: str | None
) -> RunResult:
    """Liquidations, top-ups, moves and the keeper's gas between ``first_block`` and the head (chain events)."""
    w3 = ops.w3
    last = w3.eth.block_number
    res = RunResult(name, first_block, last)
    ev = ops.engine.events
    rng = {"from_block": first_block, "to_block": last}
    for e in ev.Liquidated().get_logs(**rng):
        a = e["args"]
        res.liquidated[(a["account"].lower(), int(a["marketId"]))] = {
            "price": a["price"] / 1e8,
            "penalty": a["penalty"] / 1e6,
            "block": e["blockNumber"],
            "liquidator": a["liquidator"],
        }
    for e in ev.MarginAdded().get_logs(**rng):
        a = e["args"]
        res.margin_added.append(
            {
                "account": a["account"],
                "market_id": int(a["marketId"]),
                "payer": a["payer"],
                "amount_e6": int(a["amount"]),
                "block": e["blockNumber"],
                "tx_hash": e["transactionHash"].to_0x_hex(),
            }
        )
    for e in ev.MarginMoved().get_logs(**rng):
        a = e["args"]
        res.margin_moved.append(
            {
                "account": a["account"],
                "from_market_id": int(a["fromMarketId"]),
                "to_market_id": int(a["toMarketId"]),
                "amount_e6": int(a["amount"]),
                "block": e["blockNumber"],
                "tx_hash": e["transactionHash"].to_0x_hex(),
            }
        )
    if keeper_address is not None:
        res.keeper_txs, res.keeper_reverted, res.keeper_gas_used, res.keeper_gas_cost_wei = keeper_gas(
            w3, keeper_address, first_block, last
        )
    res.final = dict(zip([(a.lower(), m) for a, m in keys], read_views(ops, keys), strict=True))
    return res


# ---- live view -------------------------------------------------------------------------------------------


class LiveView:
    """A rich table of the book, redrawn after every round."""

    def __init__(self, ops: DevChainOps, book: Sequence[DemoPosition], scenario: Scenario, console: Console) -> None:
        self.ops = ops
        self.book = book
        self.keys = book_keys(ops, book)
        self.scenario = scenario
        self.console = console
        self.start_collateral = {k: p.collateral_e6 for k, p in zip(self.keys, book, strict=True)}
        self.labels = account_labels(a for a, _ in self.keys)
        self.live: Live | None = None
        self.title = ""

    def begin(self, title: str) -> None:
        self.title = title
        self.live = Live(self.render(None), console=self.console, refresh_per_second=8, transient=False)
        self.live.start()

    def end(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            self.console.print()

    def update(self, played: PlayedRound | None, liquidated: set[tuple[str, int]] | None = None) -> None:
        if self.live is not None:
            self.live.update(self.render(played, liquidated or set()))

    def render(
        self, played: PlayedRound | None, liquidated: frozenset[tuple[str, int]] | set[tuple[str, int]] = frozenset()
    ) -> Group:
        views = read_views(self.ops, self.keys)
        if played is None:
            head = f"{self.title}: before the first round"
        else:
            r = played.round
            prices = "  ".join(f"{s} {p / 1e8:,.0f}" for s, p in r.prices_e8.items())
            head = f"{self.title}  round {r.index + 1}/{len(self.scenario.rounds)} {r.label}  {prices}"
        t = Table(title=head, title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("acct", "mkt", "side", "lev", "collat.", "added", "liq. price", "dist."):
            t.add_column(col, justify="left" if col in ("acct", "mkt", "side") else "right", no_wrap=True)
        for (acct, mid), p, v in zip(self.keys, self.book, views, strict=True):
            key = (acct.lower(), mid)
            label = self.labels[acct]
            if not v[0]:
                gone = Text("LIQUIDATED", style="bold red") if key in liquidated else Text("closed", style="dim")
                t.add_row(label, p.symbol, p.side.value, f"{p.leverage:.0f}x", "-", "-", gone, "-")
                continue
            equity, mark, liq = v[6], v[9], v[8]
            lev = (v[2] * mark // 10**20) / equity if equity > 0 else float("inf")
            dist = (mark - liq) / mark if v[1] else (liq - mark) / mark
            added = (v[4] - self.start_collateral[(acct, mid)]) / 1e6
            style = "red" if dist < 0.05 else ("yellow" if dist < 0.12 else "green")
            t.add_row(
                label,
                p.symbol,
                p.side.value,
                f"{lev:.1f}x",
                f"{v[4] / 1e6:,.0f}",
                f"{added:+,.0f}",
                f"{liq / 1e8:,.2f}",
                Text(f"{dist:.1%}", style=style),
            )
        return Group(t)


def play_run(
    ctx: DemoContext,
    scenario: Scenario,
    bot: LiquidatorBot,
    book: Sequence[DemoPosition],
    *,
    name: str,
    keeper: KeeperRunner | None = None,
    view: LiveView | None = None,
) -> RunResult:
    """One run of ``scenario``: optional keeper, the liquidator sweeping after every round."""
    t0 = time.monotonic()
    first_block = ctx.ops.w3.eth.block_number + 1
    keys = book_keys(ctx.ops, book)

    def sweep(pr: PlayedRound) -> None:
        bot.sweep()

    hooks: list[Callable[[PlayedRound], None]] = [sweep]
    if keeper is not None:
        hooks.append(keeper.after_round)
        hooks.append(sweep)
    if view is not None:
        hooks.append(lambda pr: view.update(pr, bot.liquidated_keys()))
    try:
        if keeper is not None:
            keeper.start(ctx)
            bot.sweep()
        if view is not None:
            view.begin(name)
        ScenarioPlayer(ctx.ops, scenario, on_round=hooks).play()
    finally:
        if view is not None:
            view.end()
        if keeper is not None:
            keeper.stop()
    res = collect_run(ctx.ops, name, first_block, keys, ctx.keeper_address if keeper is not None else None)
    res.wall_s = time.monotonic() - t0
    return res


# ---- summary ---------------------------------------------------------------------------------------------


def summarize(
    ctx: DemoContext,
    book: Sequence[DemoPosition],
    scenario: Scenario,
    control: RunResult,
    kept: RunResult | None,
    *,
    reserve_e6: int,
    seconds: float,
) -> dict[str, Any]:
    """The demo summary (JSON-ready): per position and totals; amounts in USD (the token's units)."""
    keys = [(a.lower(), m) for a, m in book_keys(ctx.ops, book)]
    positions = []
    for (acct, mid), p in zip(keys, book, strict=True):
        row: dict[str, Any] = {
            "account": Web3.to_checksum_address(acct),
            "market": p.symbol,
            "market_id": mid,
            "side": p.side.value,
            "leverage": p.leverage,
            "notional": p.notional_usd,
            "collateral_start": p.collateral_e6 / 1e6,
            "liquidated_without_keeper": (acct, mid) in control.liquidated,
            "liquidation_without_keeper": control.liquidated.get((acct, mid)),
        }
        if kept is not None:
            added = sum(
                x["amount_e6"] for x in kept.margin_added if (x["account"].lower(), x["market_id"]) == (acct, mid)
            )
            moved_in = sum(
                x["amount_e6"] for x in kept.margin_moved if (x["account"].lower(), x["to_market_id"]) == (acct, mid)
            )
            moved_out = sum(
                x["amount_e6"] for x in kept.margin_moved if (x["account"].lower(), x["from_market_id"]) == (acct, mid)
            )
            final = kept.final[(acct, mid)]
            row.update(
                {
                    "liquidated_with_keeper": (acct, mid) in kept.liquidated,
                    "liquidation_with_keeper": kept.liquidated.get((acct, mid)),
                    "collateral_added": added / 1e6,
                    "margin_moved_in": moved_in / 1e6,
                    "margin_moved_out": moved_out / 1e6,
                    "collateral_end": final[4] / 1e6 if final[0] else None,
                    "equity_end": final[6] / 1e6 if final[0] else None,
                }
            )
            row["saved"] = row["liquidated_without_keeper"] and not row["liquidated_with_keeper"]
        positions.append(row)
    out: dict[str, Any] = {
        "scenario": scenario.to_dict(),
        "positions": positions,
        "liquidated_without_keeper": len(control.liquidated),
        "liquidated_with_keeper": None if kept is None else len(kept.liquidated),
        "penalties_without_keeper": round(sum(x["penalty"] for x in control.liquidated.values()), 6),
        "keeper_ran": kept is not None,
        "reserve": reserve_e6 / 1e6,
        "seconds": round(seconds, 1),
    }
    if kept is not None:
        top_ups = [x for x in kept.margin_added if x["payer"].lower() == ctx.keeper_address.lower()]
        out.update(
            {
                "positions_saved": sum(1 for r in positions if r.get("saved")),
                "penalties_with_keeper": round(sum(x["penalty"] for x in kept.liquidated.values()), 6),
                "top_ups": len(top_ups),
                "collateral_added": sum(x["amount_e6"] for x in top_ups) / 1e6,
                "collateral_added_e6": sum(x["amount_e6"] for x in top_ups),
                "rebalances": len(kept.margin_moved),
                "collateral_moved": sum(x["amount_e6"] for x in kept.margin_moved) / 1e6,
                "gas_used": kept.keeper_gas_used,
                "gas_cost_eth": kept.keeper_gas_cost_wei / 1e18,
                "keeper_transactions": kept.keeper_txs,
                "keeper_reverted": kept.keeper_reverted,
                "actions": [{"kind": "top_up", **x} for x in top_ups]
                + [{"kind": "move_margin", **x} for x in kept.margin_moved],
            }
        )
    else:
        out.update({"positions_saved": None, "top_ups": None, "collateral_added": None, "gas_used": None})
    return out


def summary_tables(summary: dict[str, Any]) -> Group:
    t = Table(title="positions", title_justify="left", box=box.SIMPLE_HEAD)
    labels = account_labels(r["account"] for r in summary["positions"])
    for c in ("acct", "mkt", "side", "lev", "without keeper", "with keeper", "top-ups", "moved"):
        t.add_column(c, no_wrap=True, justify="right" if c in ("top-ups", "moved") else "left")
    for r in summary["positions"]:

        def outcome(liq: dict | None, flag: bool | None) -> Text:
            if flag is None:
                return Text("-", style="dim")
            if not flag:
                return Text("survived", style="green")
            liq = cast(dict, liq)  # liquidated: the run recorded the liquidation (``flag`` is ``key in liquidated``)
            return Text(f"liq. @ {liq['price']:,.0f}", style="red")

        kept = "liquidated_with_keeper" in r
        t.add_row(
            labels[r["account"]],
            r["market"],
            r["side"],
            f"{r['leverage']:.0f}x",
            outcome(r["liquidation_without_keeper"], r["liquidated_without_keeper"]),
            outcome(r.get("liquidation_with_keeper"), r.get("liquidated_with_keeper")),
            f"{r['collateral_added']:,.0f}" if kept else "-",
            f"{r['margin_moved_in'] - r['margin_moved_out']:+,.0f}" if kept else "-",
        )
    lines = [
        (
            f"liquidations without the keeper: {summary['liquidated_without_keeper']}"
            f" (penalties ${summary['penalties_without_keeper']:,.2f})"
        ),
    ]
    if summary["keeper_ran"]:
        lines += [
            f"liquidations with the keeper:    {summary['liquidated_with_keeper']}",
            f"positions saved:                 {summary['positions_saved']}",
            (
                f"top-ups:                         {summary['top_ups']} (${summary['collateral_added']:,.2f} from a "
                f"${summary['reserve']:,.0f} reserve)"
            ),
            f"rebalances (moveMargin):         {summary['rebalances']} (${summary['collateral_moved']:,.2f})",
            (
                f"keeper gas:                      {summary['gas_used']:,} gas in {summary['keeper_transactions']} "
                f"transactions ({summary['gas_cost_eth']:.6f} ETH)"
            ),
        ]
    else:
        lines.append("keeper run: skipped")
    aave = summary.get("protocols", {}).get("aave-v3")
    if aave is not None:
        lines.append(
            f"Aave v3 accounts:                {aave['positions']}, liquidated without the keeper "
            f"{aave['liquidated_without_keeper']}, with it {aave['liquidated_with_keeper']}"
        )
        if aave["top_ups"] is not None:
            lines.append(
                f"Aave v3 supplies / repays:       {aave['supplies']} / {aave['repays']} "
                f"(${aave['collateral_added']:,.2f}), {aave['gas_used']:,} gas"
            )
    perp = summary.get("protocols", {}).get("perp-v2")
    if perp is not None:
        lines.append(
            f"Perp v2 accounts:                {perp['positions']}, liquidated without the keeper "
            f"{perp['liquidated_without_keeper']}, with it {perp['liquidated_with_keeper']}"
        )
        with_keeper = perp["liquidations_with_keeper"]
        lines.append(
            f"Perp v2 liquidate calls:         {perp['liquidations_without_keeper']} without the keeper"
            + ("" if with_keeper is None else f", {with_keeper} with it")
        )
        if perp["top_ups"] is not None:
            lines.append(
                f"Perp v2 deposits (depositFor):   {perp['top_ups']} (${perp['collateral_added']:,.2f}), "
                f"{perp['gas_used']:,} gas"
            )
    lines.append(f"demo wall time:                  {summary['seconds']:.1f} s")
    return Group(t, Text("\n".join(lines)))


# ---- orchestration ----------------------------------------------------------------------------------------


def run_demo(
    *,
    seed: int = DEFAULT_SEED,
    reserve_usd: float = DEFAULT_RESERVE_USD,
    book: Sequence[DemoPosition] = DEMO_BOOK,
    scenario: Scenario | None = None,
    keeper: KeeperRunner | None = None,
    workdir: Path = DEFAULT_DIR / "demo",
    console: Console | None = None,
    aave: bool = False,
    perp: bool = False,
) -> dict[str, Any]:
    """Set up, run the control and (when ``keeper`` is given) the keeper run; return the summary.

    ``aave``: then play the crash on real Aave v3 accounts too (:mod:`keeper.commands._demo_aave`, its own
    chain; the keeper run uses the daemon whenever ``keeper`` is given); ``perp``: and on real Perp v2 accounts
    (:mod:`keeper.commands._demo_perp`, a chain of its own too). The summary's ``protocols`` object maps
    ``reference``, ``aave-v3`` and ``perp-v2`` to their counts."""
    t0 = time.monotonic()
    scenario = scenario or demo_crash(seed)
    reserve_e6 = round(reserve_usd * 1e6)
    anvil, ops = start_devchain(seed=False)
    try:
        accounts = open_book(ops, book, reserve_e6=reserve_e6)
        ctx = DemoContext(anvil, ops, accounts, KEEPER_KEY, workdir)
        bot = LiquidatorBot(anvil.url, ops.deployment, LIQUIDATOR_KEY, accounts=accounts)
        view = LiveView(ops, book, scenario, console) if console is not None else None
        snapshot = rpc(anvil, "evm_snapshot")
        control = play_run(ctx, scenario, bot, book, name="CONTROL (no keeper)", view=view)
        kept = None
        if keeper is not None:
            rpc(anvil, "evm_revert", [snapshot])
            ops.reset_nonces()
            bot.reset()
            kept = play_run(ctx, scenario, bot, book, name=f"KEEPER ({keeper.name})", keeper=keeper, view=view)
        summary = summarize(ctx, book, scenario, control, kept, reserve_e6=reserve_e6, seconds=time.monotonic() - t0)
    finally:
        anvil.stop()
    summary["protocols"] = {"reference": protocol_entry(summary, len(book))}
    if aave:
        from keeper.commands._demo_aave import run_aave_demo

        if console is not None:
            console.print("[bold]Aave v3[/bold]: the crash on real Aave accounts (control run, then the keeper)")
        summary["protocols"]["aave-v3"] = run_aave_demo(
            keeper=keeper is not None, workdir=workdir / "aave-v3", console=console
        )
        summary["seconds"] = round(time.monotonic() - t0, 1)
    if perp:
        from keeper.commands._demo_perp import run_perp_demo

        if console is not None:
            console.print("[bold]Perp v2[/bold]: the crash on real Curie accounts (control run, then the keeper)")
        summary["protocols"]["perp-v2"] = run_perp_demo(
            keeper=keeper is not None, workdir=workdir / "perp-v2", console=console
        )
        summary["seconds"] = round(time.monotonic() - t0, 1)
    return summary


def protocol_entry(summary: dict[str, Any], positions: int) -> dict[str, Any]:
    """The reference protocol's line of the ``protocols`` object (the same keys as every protocol's)."""
    return {
        "positions": positions,
        "liquidated_without_keeper": summary["liquidated_without_keeper"],
        "liquidated_with_keeper": summary["liquidated_with_keeper"],
        "top_ups": summary["top_ups"],
        "collateral_added": summary["collateral_added"],
        "gas_used": summary["gas_used"],
    }


def write_summary(summary: dict[str, Any], path: Path) -> Path:
    return write_atomically(path, json.dumps(summary, indent=2, default=str) + "\n")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON (no live view)."),
        seed: int = typer.Option(DEFAULT_SEED, help="Seed of the scenario's noise (numpy Generator)."),
        reserve: float = typer.Option(DEFAULT_RESERVE_USD, help="USD in the keeper's wallet for top-ups."),
        keeper: bool = typer.Option(True, help="Run the keeper pass (--no-keeper: control run only)."),
        out: Path = typer.Option(DEFAULT_DIR / SUMMARY_NAME, help="Where to write the summary JSON."),
        aave: bool = typer.Option(True, help="Also play the crash on real Aave v3 accounts (--no-aave: skip)."),
        perp: bool = typer.Option(True, help="Also play a crash on real Perp v2 accounts (--no-perp: skip)."),
    ) -> None:
        """A market crash on local chains (the reference protocol, real Aave v3 and real Perp v2): liquidations
        without and with the keeper."""
        if reserve < 0:
            raise InputError(f"--reserve {reserve}: must be >= 0")
        from keeper.runtime.logging import configure_logging

        workdir = out.parent / "demo"
        workdir.mkdir(parents=True, exist_ok=True)
        log_file = open(workdir / "demo.log", "w")  # noqa: SIM115 - lives for the command
        configure_logging("json", "info", stream=log_file)
        console = None if as_json else Console()
        runner: KeeperRunner | None = None
        if keeper:
            if daemon_available():
                runner = DaemonKeeper()
            elif console is not None:
                console.print("[yellow]`keeper run` is not available yet: showing the control run only[/yellow]")
        try:
            summary = run_demo(
                seed=seed, reserve_usd=reserve, keeper=runner, workdir=workdir, console=console, aave=aave, perp=perp
            )
        finally:
            log_file.close()
        path = write_summary(summary, out)
        if as_json:
            typer.echo(json.dumps(summary, indent=2, default=str))
        else:
            assert console is not None
            console.print()
            console.print(summary_tables(summary))
            console.print(f"summary: {path}")
