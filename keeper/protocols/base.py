"""The interface every protocol adapter implements, and the snapshot it returns.

An adapter turns one protocol's contracts into the canonical domain types (keeper/domain.py, units in
docs/design.md) and builds the transactions the keeper sends. Adding a protocol = one new module here
implementing :class:`ProtocolAdapter`; nothing else in the keeper changes.

Hot-path contract: :meth:`ProtocolAdapter.read_book` reads every watched position, every market and
every oracle's latest round in one Multicall3 read (one JSON-RPC round trip, two at most), at one block.

The adapter is the keeper's only door to a protocol: the service never reads a contract address, an
encoded call or a token balance itself. It asks the adapter whether the deployment is there
(:meth:`~ProtocolAdapter.check_deployment`), what the head and the oracles say
(:meth:`~ProtocolAdapter.probe_head`), what the keeper's wallet holds
(:meth:`~ProtocolAdapter.wallet_balance_e6`), which approval top-ups need
(:meth:`~ProtocolAdapter.approval_call`) and which transaction carries out an action
(:meth:`~ProtocolAdapter.call_for_action`). Adapters are found by name (``protocol.name`` in the
configuration) through :mod:`keeper.protocols.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from keeper.accounts.base import AccountRules, MarginAccount
from keeper.chain.abi import ErrorDecoder
from keeper.domain import AccountAction, Action, ActionKind, Market, Position, PriceRound, notional_e6
from keeper.errors import InputError
from keeper.tx.call import ContractCall

PositionKey = tuple[str, int]  # (lower-case account, market id)


@dataclass(frozen=True, slots=True)
class PositionExtras:
    """What the protocol itself reports about a position (to cross-check the keeper's own maths)."""

    equity_e6: int
    maintenance_margin_e6: int
    liquidation_price_e8: int
    liquidatable: bool


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """Every watched position, market and latest oracle round, all read at ``block_number``.

    ``positions`` holds only positions that exist; ``missing`` lists watched keys with no position (closed
    or liquidated) or whose read failed (``failed``).
    """

    positions: dict[PositionKey, Position]
    markets: dict[int, Market]
    prices: dict[int, PriceRound]
    block_number: int
    block_timestamp: int
    extras: dict[PositionKey, PositionExtras] = field(default_factory=dict)
    missing: tuple[PositionKey, ...] = ()
    failed: tuple[PositionKey, ...] = ()
    round_trips: int = 1


@dataclass(frozen=True, slots=True)
class HeadProbe:
    """The cheap check the fast loop runs every block: the head, and each market's latest oracle round id."""

    block_number: int
    block_timestamp: int
    rounds: dict[int, int] = field(default_factory=dict)  # market id -> latest round id (markets that answered)


class ProtocolAdapter(ABC):
    """Reads one protocol's state into domain types and builds its margin transactions."""

    name: str = "protocol"
    errors: ErrorDecoder
    markets: dict[int, Market]  # the markets as last read (``load_markets`` or ``read_book``)

    # ---- reads -----------------------------------------------------------------------------------

    @abstractmethod
    def check_deployment(self) -> None:
        """Raise :class:`~keeper.errors.ChainMismatchError` naming what is missing when the protocol's contracts
        (and the batching contract the reads use) are not on the connected chain."""

    @abstractmethod
    def contract_addresses(self) -> dict[str, str]:
        """Name -> address of every contract that must hold code on an endpoint for it to serve this deployment
        (the protocol's and the batching contract's); the RPC client checks them on every endpoint it uses."""

    def known_markets(self) -> dict[int, Market]:
        """The markets as last read, reading them when none has been yet."""
        return self.markets or self.load_markets()

    @abstractmethod
    def probe_head(self) -> HeadProbe:
        """The latest block and every known market's latest oracle round id, in one read."""

    @abstractmethod
    def wallet_balance_e6(self, owner: str) -> int:
        """Collateral ``owner``'s wallet holds, ready to pay top-ups (e6)."""

    @abstractmethod
    def load_markets(self) -> dict[int, Market]:
        """Read the market list and parameters (at start and when a market may have been added)."""

    @abstractmethod
    def read_book(self, keys: Iterable[PositionKey]) -> BookSnapshot:
        """Positions for ``keys`` plus every market and latest price, in one batched read."""

    @abstractmethod
    def oracle_history(
        self, market_id: int, max_rounds: int = 500, latest: PriceRound | None = None
    ) -> list[PriceRound]:
        """Past oracle rounds (oldest first), read incrementally: only rounds not yet cached are fetched.

        ``latest``: the market's latest round when the caller already read it (the book read has): it is not
        read again, so a cycle that sees one new round costs no extra round trip."""

    @abstractmethod
    def discover_accounts(self, from_block: int | None = None, to_block: int | None = None) -> set[PositionKey]:
        """Every (account, market) that ever opened a position, from events; the cursor persists."""

    # ---- transactions ----------------------------------------------------------------------------

    @abstractmethod
    def add_margin_call(self, account: str, market_id: int, amount_e6: int) -> ContractCall: ...

    @abstractmethod
    def remove_margin_call(self, account: str, market_id: int, amount_e6: int) -> ContractCall: ...

    @abstractmethod
    def move_margin_call(
        self, account: str, from_market_id: int, to_market_id: int, amount_e6: int
    ) -> ContractCall: ...

    @abstractmethod
    def decrease_position_call(self, account: str, market_id: int, size_delta_e18: int) -> ContractCall: ...

    @abstractmethod
    def approval_call(self, owner: str) -> ContractCall | None:
        """The approval ``owner`` must send before the protocol can pull top-ups from its wallet, or ``None``
        when the allowance already suffices. The call's ``meta["key"]`` is its idempotency key."""

    def describe_transaction(self, to: str, data: bytes) -> dict | None:
        """What a transaction of the keeper's key found on chain did, in the ``meta`` form of
        :meth:`call_for_action` (``kind``, ``account``, ``market_id``, ``amount_e6``...), or ``None`` when it is
        not a call to this protocol. Used to journal transactions the journal lost, so they still count."""
        return None

    def call_for_action(self, action: Action) -> ContractCall:
        """The transaction that carries out ``action`` (ALERT actions have none)."""
        meta = {
            "kind": action.kind.value,
            "account": action.account.lower(),
            "market_id": action.market_id,
            "amount_e6": action.amount_e6,
            "size_delta_e18": action.size_delta_e18,
            "from_market_id": action.from_market_id,
        }
        if action.kind is ActionKind.TOP_UP:
            call = self.add_margin_call(action.account, action.market_id, action.amount_e6)
        elif action.kind is ActionKind.RELEASE:
            call = self.remove_margin_call(action.account, action.market_id, action.amount_e6)
        elif action.kind is ActionKind.MOVE_MARGIN:
            if action.from_market_id is None:
                raise InputError("a move_margin action needs from_market_id")
            call = self.move_margin_call(action.account, action.from_market_id, action.market_id, action.amount_e6)
        elif action.kind is ActionKind.REDUCE_SIZE:
            call = self.decrease_position_call(action.account, action.market_id, action.size_delta_e18)
        else:
            raise InputError(f"{action.kind.value} actions are not sent on chain")
        return ContractCall(call.to, call.data, call.value_wei, call.description, {**call.meta, **meta})

    @staticmethod
    def value_at_stake_e6(position: Position, market: Market, price_e8: int) -> int:
        """What a protective action saves if it prevents liquidation: the penalty ``notional * penalty``."""
        return notional_e6(position.size_e18, price_e8) * market.liquidation_penalty_wad // 10**18


def keys_of(pairs: Sequence[tuple[str, int]]) -> list[PositionKey]:
    """Normalise (account, market id) pairs to lower-case keys, order kept, duplicates removed."""
    seen: dict[PositionKey, None] = {}
    for account, market_id in pairs:
        seen.setdefault((account.lower(), int(market_id)), None)
    return list(seen)


# ---- margin-account protocols (Aave v3, Perp v2): several assets per account, one health figure ----------


@dataclass(frozen=True)
class AccountBook:
    """Every watched margin account of one protocol and the prices its rule liquidates at, read at one block.

    ``accounts`` holds the risk engine's view of each account read (legless when it holds nothing),
    ``rules`` the protocol's exact rule over this read. ``prices_e8`` is asset -> the price that decides a
    liquidation (Aave: the oracle's; Perp v2: the mark), ``rounds`` asset -> the latest round of the oracle
    whose history measures its volatility (Aave: the price source; Perp v2: the index feed) and
    ``history_ids`` asset -> its key in the volatility cache and the head probe. ``premium_gaps`` asset ->
    (down, up) log moves added to the oracle's stress gap where the liquidating price can move away from the
    oracle's (Perp v2: a market order pushing the mark, from the pool's depth); ``price_basis`` asset -> what
    the price is (``{"basis": "mark", "index": ..., "premium": ...}``), for the logs.
    """

    protocol: str
    block_number: int
    timestamp_s: int
    accounts: tuple[MarginAccount, ...]
    rules: AccountRules
    prices_e8: dict[str, int]
    rounds: dict[str, PriceRound]
    history_ids: dict[str, int]
    decimals: dict[str, int]
    onchain_health: dict[str, int] = field(default_factory=dict)  # account -> the contract's own figure (wad)
    premium_gaps: dict[str, tuple[float, float]] = field(default_factory=dict)
    price_basis: dict[str, dict[str, object]] = field(default_factory=dict)
    round_trips: int = 1
    failed: tuple[str, ...] = ()
    accounts_read: int | None = None  # accounts read afresh at this block (None: every one; Aave reads what changed)


class AccountAdapter(ABC):
    """Reads one margin-account protocol into :class:`AccountBook` and builds its protective transactions.

    The account sibling of :class:`ProtocolAdapter` (the service's only door to the protocol, found by name
    through :mod:`keeper.protocols.registry`): Aave v3 supplies and repays on behalf, Perp v2 deposits for a
    trader. Assets are named by their token address; :meth:`load` says their symbols."""

    name: str = "accounts"
    errors: ErrorDecoder
    cross_check_max_accounts: int = 1_000
    reducible: frozenset[str] = frozenset()
    """Accounts (lower case) whose owner's key the keeper holds and may reduce (``limits.allow_reduce``); a
    protocol without reductions ignores it."""
    releasable: frozenset[str] = frozenset()
    """The same for releases (``limits.allow_release``)."""
    """Books up to this size are read with the contract's own health figure beside the keeper's (``read_book``'s
    ``cross_check``); larger ones skip it to keep the read at two round trips."""

    @abstractmethod
    def check_deployment(self) -> None:
        """Raise :class:`~keeper.errors.ChainMismatchError` naming what is missing on the connected chain."""

    @abstractmethod
    def contract_addresses(self) -> dict[str, str]:
        """Name -> address of every contract an endpoint must hold code at to serve this deployment."""

    @abstractmethod
    def load(self) -> dict[str, str]:
        """Read what changes only by governance (reserves, markets) and return asset -> symbol, for every asset
        the accounts may hold or the keeper may pay with."""

    @abstractmethod
    def probe_head(self) -> HeadProbe:
        """The head and each asset's oracle latest round id (keyed like ``AccountBook.history_ids``)."""

    @abstractmethod
    def read_book(
        self, accounts: Iterable[str], *, cross_check: bool = True, must_read: Iterable[str] = ()
    ) -> AccountBook:
        """Every account in ``accounts`` with the prices and rules, at one block (a few round trips).
        ``cross_check`` also reads the contract's own health figure per account (``onchain_health``);
        ``must_read``: accounts a protocol that reads only what changed (Aave v3) must read afresh anyway."""

    @abstractmethod
    def wallet(self, owner: str) -> tuple[dict[str, int], dict[str, int]]:
        """(balance, allowance to the protocol) per payable asset of ``owner``, native units, one read."""

    @abstractmethod
    def source_history(self, asset: str, max_rounds: int, latest: PriceRound) -> list[PriceRound]:
        """The rounds of ``asset``'s oracle up to ``latest`` (oldest first), at most ``max_rounds``."""

    @abstractmethod
    def approve_call(self, asset: str, amount: int) -> ContractCall:
        """``approve`` of ``asset`` to the contract that pulls the keeper's payments."""

    @abstractmethod
    def call_for_account_action(self, action: AccountAction) -> ContractCall:
        """The transaction that carries out ``action`` (alerts have none)."""

    @abstractmethod
    def describe_transaction(self, to: str, data: bytes) -> dict | None:
        """What a protective transaction of the keeper's key found on chain did (``kind``, ``account``,
        ``asset``, ``amount``), or ``None`` when it is not one of this protocol's."""

    @abstractmethod
    def discover_accounts(self) -> set[str]:
        """Every account the protocol's events name (the cursor persists in the journal)."""
