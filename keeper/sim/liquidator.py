"""A liquidator bot for the reference protocol: liquidates anything liquidatable, at every block.

It is the adversary of the demo, the end-to-end tests and the on-chain replay: whatever the keeper fails
to protect, it takes. It signs real EIP-1559 transactions with its own key (default: anvil key 3) and
collects the protocol's penalty (``min(max(equity, 0), notional * penalty)``, paid by the engine).

Which positions: an explicit set of accounts (each watched on every market of the deployment), or, by
default, every ``(account, marketId)`` that ever emitted ``PositionOpened`` (scanned incrementally from the
deployment's start block). A sweep reads all of them in one ``getPositions`` call and sends ``liquidate``
for each one whose view says ``liquidatable`` (``equity < maintenance`` with a fresh price: the
protocol's own rule, so the bot never second-guesses the engine).

Two ways to run it:

* in-process: call :meth:`LiquidatorBot.sweep` after each price push (deterministic: the sweep happens
  before anyone else can react to the new round — the adversarial order a keeper must survive);
* as a background thread: :meth:`LiquidatorBot.start` polls for new blocks and sweeps on each one;
  :meth:`LiquidatorBot.stop` ends it. Both share one lock, so they can be combined.

After ``evm_revert`` call :meth:`LiquidatorBot.reset` (the chain's nonces and logs moved back).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Self

import structlog
from eth_account import Account
from web3 import Web3
from web3.logs import DISCARD

from keeper.dev.reference import ANVIL_KEYS, Deployment, Sender, contract

log = structlog.get_logger("keeper.sim.liquidator")

LIQUIDATOR_KEY = ANVIL_KEYS[3]
LIQUIDATE_GAS = 300_000  # liquidate() uses ~80-110k; a fixed limit avoids estimating a call that may revert


@dataclass(frozen=True, slots=True)
class Liquidation:
    """One successful liquidation, as the ``Liquidated`` event reported it."""

    account: str
    market_id: int
    block_number: int
    price_e8: int
    penalty_e6: int
    returned_e6: int
    tx_hash: str
    gas_used: int

    def to_dict(self) -> dict:
        return {
            "account": self.account,
            "market_id": self.market_id,
            "block": self.block_number,
            "price": self.price_e8 / 1e8,
            "penalty": self.penalty_e6 / 1e6,
            "returned": self.returned_e6 / 1e6,
            "tx_hash": self.tx_hash,
            "gas_used": self.gas_used,
        }


class LiquidatorBot:
    """Liquidates every liquidatable position it knows of; see the module docstring."""

    def __init__(
        self,
        rpc_url: str,
        deployment: Deployment,
        key: str = LIQUIDATOR_KEY,
        *,
        accounts: Iterable[str] | None = None,
        poll_interval_s: float = 0.05,
        gas_limit: int = LIQUIDATE_GAS,
    ) -> None:
        if poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be > 0")
        self.w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        self.deployment = deployment
        self.engine = contract(self.w3, "PerpEngine", deployment.engine)
        self._key = key
        self.address = Account.from_key(key).address
        self.poll_interval_s = poll_interval_s
        self.gas_limit = gas_limit
        self._discover = accounts is None
        market_ids = sorted(deployment.markets.values())
        self.watched: set[tuple[str, int]] = (
            set() if accounts is None else {(Web3.to_checksum_address(a), m) for a in accounts for m in market_ids}
        )
        self.liquidations: list[Liquidation] = []
        self.failed = 0  # liquidate transactions mined with status 0 (someone saved the position first)
        self.errors = 0  # sweeps that raised (thread mode keeps going)
        self._sender: Sender | None = None
        self._cursor = deployment.start_block
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened_topic = self.engine.events.PositionOpened().topic

    # ---- results -----------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self.liquidations)

    @property
    def penalty_e6(self) -> int:
        return sum(x.penalty_e6 for x in self.liquidations)

    @property
    def gas_used(self) -> int:
        return sum(x.gas_used for x in self.liquidations)

    def liquidated_keys(self) -> set[tuple[str, int]]:
        return {(x.account.lower(), x.market_id) for x in self.liquidations}

    # ---- discovery and sweeping --------------------------------------------------------------------

    def discover(self) -> int:
        """Add every (account, market) with a ``PositionOpened`` since the last scan; return how many are new."""
        head = self.w3.eth.block_number
        if head < self._cursor:
            return 0
        logs = self.w3.eth.get_logs(
            {"address": self.engine.address, "fromBlock": self._cursor, "toBlock": head, "topics": [self._opened_topic]}
        )
        before = len(self.watched)
        for entry in logs:
            ev = self.engine.events.PositionOpened().process_log(entry)
            self.watched.add((Web3.to_checksum_address(ev["args"]["account"]), int(ev["args"]["marketId"])))
        self._cursor = head + 1
        return len(self.watched) - before

    def sweep(self) -> list[Liquidation]:
        """Liquidate everything liquidatable now; return the liquidations this sweep made."""
        with self._lock:
            if self._discover:
                self.discover()
            if not self.watched:
                return []
            keys = sorted(self.watched)
            views = self.engine.functions.getPositions([a for a, _ in keys], [m for _, m in keys]).call()
            targets = [k for k, v in zip(keys, views, strict=True) if v[0] and v[11]]
            if not targets:
                return []
            sender = self._get_sender()
            sent = []
            for account, market_id in targets:
                try:
                    tx = sender.transact(self.engine.functions.liquidate(account, market_id), gas=self.gas_limit)
                except Exception as exc:  # noqa: BLE001 - a refused send: resync the nonce, try next sweep
                    log.warning("liquidation_send_failed", account=account, market_id=market_id, error=str(exc))
                    self._sender = None
                    break
                log.info("liquidation_sent", account=account, market_id=market_id, tx_hash=tx.to_0x_hex())
                sent.append(tx)
            made = []
            for tx in sent:
                receipt = self.w3.eth.wait_for_transaction_receipt(tx, timeout=30)
                sender.pending.remove(tx)
                if receipt["status"] != 1:
                    self.failed += 1
                    log.info("liquidation_reverted", tx_hash=tx.to_0x_hex())
                    continue
                for ev in self.engine.events.Liquidated().process_receipt(receipt, errors=DISCARD):
                    a = ev["args"]
                    liq = Liquidation(
                        account=a["account"],
                        market_id=int(a["marketId"]),
                        block_number=receipt["blockNumber"],
                        price_e8=int(a["price"]),
                        penalty_e6=int(a["penalty"]),
                        returned_e6=int(a["returned"]),
                        tx_hash=tx.to_0x_hex(),
                        gas_used=int(receipt["gasUsed"]),
                    )
                    made.append(liq)
                    log.info(
                        "position_liquidated",
                        account=liq.account,
                        market_id=liq.market_id,
                        price_e8=liq.price_e8,
                        penalty_e6=liq.penalty_e6,
                        block=liq.block_number,
                    )
            self.liquidations.extend(made)
            return made

    def _get_sender(self) -> Sender:
        if self._sender is None:
            self._sender = Sender(self.w3, self._key)
        return self._sender

    def reset(self, *, clear_results: bool = True) -> None:
        """Forget the nonce and the log cursor (after ``evm_revert``); by default also the results."""
        with self._lock:
            self._sender = None
            self._cursor = self.deployment.start_block
            if clear_results:
                self.liquidations = []
                self.failed = 0
                self.errors = 0

    # ---- background thread -------------------------------------------------------------------------

    def start(self) -> Self:
        """Sweep on every new block in a daemon thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="liquidator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        last = -1
        while not self._stop.is_set():
            try:
                head = self.w3.eth.block_number
                if head != last:
                    last = head
                    self.sweep()
            except Exception as exc:  # noqa: BLE001 - keep liquidating; the error is counted and logged
                self.errors += 1
                log.warning("liquidator_sweep_failed", error=str(exc))
            self._stop.wait(self.poll_interval_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
