"""An in-memory protocol adapter for tests of code above the adapter (the service, commands, alerts).

:class:`FakeAdapter` implements :class:`~keeper.protocols.base.ProtocolAdapter` over plain dictionaries: markets,
positions, oracle rounds, wallet balances and allowances that the test sets, and a block counter it moves.
Every transaction it builds is recorded in :attr:`FakeAdapter.calls`; :meth:`FakeAdapter.apply` carries one
out in memory (a top-up moves collateral from the payer's wallet to the position), so a test can play the
chain's part without a chain, as ``httpx.MockTransport`` plays a server's. It encodes no calldata: its calls
carry what they do in ``meta`` (kind, account, market id, amount). Nothing here talks to a network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from keeper.chain.abi import ErrorDecoder
from keeper.domain import Market, Position, PriceRound
from keeper.errors import ChainMismatchError, InputError
from keeper.protocols.base import BookSnapshot, HeadProbe, PositionKey, ProtocolAdapter, keys_of
from keeper.protocols.reference import ALLOWANCE_LOW, UNLIMITED_ALLOWANCE
from keeper.tx.call import ContractCall

FAKE_ENGINE = "0x00000000000000000000000000000000000fa4e1"
FAKE_COLLATERAL = "0x00000000000000000000000000000000000fa4e2"


class FakeAdapter(ProtocolAdapter):
    """A protocol held in dictionaries; tests set its state and read what the keeper asked of it."""

    name = "fake"

    def __init__(
        self,
        markets: Iterable[Market],
        *,
        block_number: int = 1,
        block_timestamp: int = 1_700_000_000,
        block_time_s: int = 12,
    ) -> None:
        self.errors = ErrorDecoder()
        self.markets = {m.market_id: m for m in markets}
        self.positions: dict[PositionKey, Position] = {}
        self.rounds: dict[int, list[PriceRound]] = {mid: [] for mid in self.markets}
        self.wallets: dict[str, int] = {}
        self.allowances: dict[str, int] = {}
        self.opened: set[PositionKey] = set()  # what discover_accounts finds
        self.block_number = block_number
        self.block_timestamp = block_timestamp
        self.block_time_s = block_time_s
        self.deployed = True
        self.calls: list[ContractCall] = []
        self.book_reads = 0

    # ---- the test's side: set state, move time --------------------------------------------------

    def set_position(self, position: Position) -> None:
        key = (position.account.lower(), position.market_id)
        self.positions[key] = replace(position, account=key[0])
        self.opened.add(key)

    def push_price(self, market_id: int, price_e8: int, *, at_s: int | None = None) -> PriceRound:
        """Append an oracle round (next id) at ``at_s`` (default: the current block's timestamp)."""
        history = self.rounds.setdefault(market_id, [])
        round_id = history[-1].round_id + 1 if history else 1
        r = PriceRound(
            round_id=round_id, price_e8=price_e8, updated_at_s=self.block_timestamp if at_s is None else at_s
        )
        history.append(r)
        return r

    def mine(self, blocks: int = 1) -> None:
        self.block_number += blocks
        self.block_timestamp += blocks * self.block_time_s

    def fund(self, owner: str, amount_e6: int) -> None:
        self.wallets[owner.lower()] = self.wallets.get(owner.lower(), 0) + amount_e6

    def apply(self, call: ContractCall, payer: str) -> None:
        """Carry out ``call`` as the chain would, paid from (or released to) ``payer``'s wallet."""
        meta, payer = call.meta, payer.lower()
        kind = meta.get("kind")
        if kind == "approve":
            self.allowances[payer] = int(meta["amount"])
            return
        key = (str(meta["account"]).lower(), int(meta["market_id"]))
        pos = self.positions[key]
        amount = int(meta.get("amount_e6") or 0)
        if kind == "top_up":
            if self.wallets.get(payer, 0) < amount or self.allowances.get(payer, 0) < amount:
                raise InputError(f"top-up of {amount} e6 exceeds {payer}'s balance or allowance")
            self.wallets[payer] -= amount
            self.positions[key] = replace(pos, collateral_e6=pos.collateral_e6 + amount)
        elif kind == "release":
            self.wallets[payer] = self.wallets.get(payer, 0) + amount
            self.positions[key] = replace(pos, collateral_e6=pos.collateral_e6 - amount)
        else:
            raise InputError(f"the fake adapter does not carry out {kind} calls")

    # ---- the keeper's side: the adapter interface -----------------------------------------------

    def contract_addresses(self) -> dict[str, str]:
        return {"engine": FAKE_ENGINE, "collateral": FAKE_COLLATERAL}

    def check_deployment(self) -> None:
        if not self.deployed:
            raise ChainMismatchError("no fake protocol deployed")

    def load_markets(self) -> dict[int, Market]:
        return self.markets

    def probe_head(self) -> HeadProbe:
        rounds = {mid: h[-1].round_id for mid, h in self.rounds.items() if h}
        return HeadProbe(self.block_number, self.block_timestamp, rounds)

    def wallet_balance_e6(self, owner: str) -> int:
        return self.wallets.get(owner.lower(), 0)

    def read_book(self, keys: Iterable[PositionKey]) -> BookSnapshot:
        self.book_reads += 1
        wanted = keys_of(list(keys))
        positions = {k: self.positions[k] for k in wanted if k in self.positions}
        prices = {mid: h[-1] for mid, h in self.rounds.items() if h}
        missing = tuple(k for k in wanted if k not in self.positions)
        return BookSnapshot(
            positions, dict(self.markets), prices, self.block_number, self.block_timestamp, missing=missing
        )

    def oracle_history(
        self, market_id: int, max_rounds: int = 500, latest: PriceRound | None = None
    ) -> list[PriceRound]:
        return list(self.rounds.get(market_id, [])[-max_rounds:])

    def discover_accounts(self, from_block: int | None = None, to_block: int | None = None) -> set[PositionKey]:
        return set(self.opened)

    def _call(self, description: str, **meta: object) -> ContractCall:
        call = ContractCall(FAKE_ENGINE, b"", 0, description, dict(meta))
        self.calls.append(call)
        return call

    def add_margin_call(self, account: str, market_id: int, amount_e6: int) -> ContractCall:
        return self._call(
            f"addMargin {amount_e6} e6",
            kind="top_up",
            account=account.lower(),
            market_id=market_id,
            amount_e6=amount_e6,
        )

    def remove_margin_call(self, account: str, market_id: int, amount_e6: int) -> ContractCall:
        return self._call(
            f"removeMargin {amount_e6} e6",
            kind="release",
            account=account.lower(),
            market_id=market_id,
            amount_e6=amount_e6,
        )

    def move_margin_call(self, account: str, from_market_id: int, to_market_id: int, amount_e6: int) -> ContractCall:
        return self._call(
            f"moveMargin {amount_e6} e6",
            kind="move_margin",
            account=account.lower(),
            market_id=to_market_id,
            from_market_id=from_market_id,
            amount_e6=amount_e6,
        )

    def decrease_position_call(self, account: str, market_id: int, size_delta_e18: int) -> ContractCall:
        return self._call(
            f"decreasePosition {size_delta_e18} e18",
            kind="reduce_size",
            account=account.lower(),
            market_id=market_id,
            size_delta_e18=size_delta_e18,
        )

    def approval_call(self, owner: str) -> ContractCall | None:
        if self.allowances.get(owner.lower(), 0) >= ALLOWANCE_LOW:
            return None
        call = self._call(
            "approve", kind="approve", amount=UNLIMITED_ALLOWANCE, key=f"approve:{FAKE_ENGINE}:{owner.lower()}"
        )
        return replace(call, to=FAKE_COLLATERAL)


__all__ = ["FAKE_COLLATERAL", "FAKE_ENGINE", "FakeAdapter"]
