"""``keeper devchain``: a local chain with the protocol deployed and a trader's book open, no setup."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from web3 import Web3

from keeper.chain.anvil import Anvil
from keeper.dev.reference import ANVIL_KEYS, DEFAULT_BOOK, DevChainOps, deploy_protocol
from keeper.domain import Side
from keeper.errors import InputError

DEFAULT_OUT = Path(".keeper/devchain.json")
TRADER_RESERVE_E6 = 50_000 * 10**6


def start_devchain(*, seed: bool = True, block_time: float | None = None) -> tuple[Anvil, DevChainOps]:
    """Start anvil, deploy, and (optionally) open the default book for the trader (anvil key 1)."""
    anvil = Anvil.start(block_time=block_time)
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        ops = DevChainOps(w3, deploy_protocol(w3, ANVIL_KEYS[0], rpc_url=anvil.url))
        if seed:
            ops.seed_book(ANVIL_KEYS[1], DEFAULT_BOOK, reserve_e6=TRADER_RESERVE_E6)
            trader = ops.sender(ANVIL_KEYS[1])
            keeper_address = ops.sender(ANVIL_KEYS[2]).address
            trader.wait(trader.transact(ops.engine.functions.setOperator(keeper_address, True)))
    except BaseException:
        anvil.stop()
        raise
    return anvil, ops


AAVE_OUT = Path(".keeper/devchain-aave-v3.json")
PERP_OUT = Path(".keeper/devchain-perp-v2.json")
PROTOCOLS = ("reference", "aave-v3", "perp-v2", "all")
"""``all`` = the reference protocol and Aave v3 on one chain; Perp v2 runs on a chain of its own."""


def deploy_aave_market(anvil: Anvil, *, seed: bool = True):
    """Deploy real Aave v3 on ``anvil``; seed liquidity (anvil key 9) and the default accounts (keys 3-6)."""
    from keeper.dev.aave_v3 import AaveOps, deploy_aave, seed_market

    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
    ops = AaveOps(w3, deploy_aave(w3, ANVIL_KEYS[0], rpc_url=anvil.url))
    traders = seed_market(ops, ANVIL_KEYS[9], ANVIL_KEYS[3:7]) if seed else []
    return ops, traders


def positions_table(ops: DevChainOps, account: str) -> Table:
    table = Table(title=f"positions of {account}")
    for col in ("market", "side", "size", "entry", "collateral", "equity", "maint. margin", "liq. price", "mark"):
        table.add_column(col, justify="right")
    for symbol in ops.deployment.markets:
        p = ops.position(account, symbol)
        if not p[0]:
            continue
        side = Side.LONG if p[1] else Side.SHORT
        table.add_row(
            symbol,
            side.value,
            f"{p[2] / 1e18:.4f}",
            f"{p[3] / 1e8:,.2f}",
            f"{p[4] / 1e6:,.2f}",
            f"{p[6] / 1e6:,.2f}",
            f"{p[7] / 1e6:,.2f}",
            f"{p[8] / 1e8:,.2f}",
            f"{p[9] / 1e8:,.2f}",
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def devchain(
        out: Path = typer.Option(DEFAULT_OUT, help="Where to write the deployment file."),
        seed: bool = typer.Option(True, help="Open the default book for the trader (anvil account 1)."),
        block_time: float = typer.Option(0.0, help="Mine a block every N seconds (0: on each transaction)."),
        once: bool = typer.Option(False, help="Deploy, print, stop the chain and exit (no waiting)."),
        protocol: str = typer.Option(
            "reference", help="reference | aave-v3 | perp-v2 | all (reference + aave-v3 on one chain)."
        ),
        aave_out: Path = typer.Option(AAVE_OUT, help="Where to write the Aave v3 deployment file."),
    ) -> None:
        """Start anvil on a free loopback port, deploy the protocol, seed a trader, write a deployment file."""
        console = Console()
        if protocol not in PROTOCOLS:
            raise InputError(f"--protocol {protocol!r}: allowed {', '.join(PROTOCOLS)}")
        if protocol == "perp-v2":
            from keeper.dev.perp_v2 import describe, start_perp_devchain

            anvil, perp_ops = start_perp_devchain(seed=seed, block_time=block_time or None)
            try:
                path = perp_ops.deployment.save(PERP_OUT if out == DEFAULT_OUT else out)
                chain_id = perp_ops.deployment.chain_id
                console.print(f"anvil pid {anvil.pid} at [bold]{anvil.url}[/bold] (chain id {chain_id})")
                console.print(f"deployment file: {path}")
                for line in describe(perp_ops, seeded=seed):
                    console.print(line)
                if not once:
                    _serve(anvil, console)
            finally:
                anvil.stop()
            return
        anvil, ops = start_devchain(seed=seed and protocol != "aave-v3", block_time=block_time or None)
        try:
            if protocol in ("aave-v3", "all"):
                aave_ops, traders = deploy_aave_market(anvil, seed=seed)
                console.print(f"Aave v3 deployment file: {aave_ops.deployment.save(aave_out)}")
                console.print(f"  provider   {aave_ops.deployment.provider}")
                console.print(f"  pool       {aave_ops.deployment.pool}")
                for trader in traders:
                    data = aave_ops.account_data(trader)
                    console.print(
                        f"  aave account {trader}: collateral ${data[0] / 1e8:,.2f} "
                        f"debt ${data[1] / 1e8:,.2f} HF {data[5] / 1e18:.4f}"
                    )
                console.print(
                    f'  to protect them: [protocol] name = "aave-v3", provider = "{aave_ops.deployment.provider}"'
                    " and their addresses as [[accounts]] (keeper wallet: anvil key 2)",
                    markup=False,
                )
            path = ops.deployment.save(out)
            console.print(f"anvil pid {anvil.pid} at [bold]{anvil.url}[/bold] (chain id {ops.deployment.chain_id})")
            console.print(f"deployment file: {path}")
            for name in ("engine", "collateral", "multicall"):
                console.print(f"  {name:<10} {getattr(ops.deployment, name)}")
            for symbol, feed in ops.deployment.feeds.items():
                console.print(f"  feed {symbol:<5} {feed}")
            if seed and protocol != "aave-v3":
                trader = ops.sender(ANVIL_KEYS[1]).address
                console.print(positions_table(ops, trader))
                console.print(
                    f"trader {trader} (anvil key 1); operator/keeper {ops.sender(ANVIL_KEYS[2]).address} (anvil key 2)"
                )
            if once:
                return
            _serve(anvil, console)
        finally:
            anvil.stop()


def _serve(anvil: Anvil, console: Console) -> None:
    """Keep the chain up until Ctrl-C or SIGTERM (exit 1 if anvil dies)."""
    console.print("devchain running; Ctrl-C to stop")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if anvil.process.poll() is not None:
                console.print("anvil exited")
                raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
