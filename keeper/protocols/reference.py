"""Adapter for the reference protocol (contracts/src/PerpEngine.sol + Chainlink-style PriceFeeds).

Units on chain already match the canonical ones (collateral e6, prices e8, sizes e18, ratios WAD), so the
conversion is a field mapping. The hot path uses precomputed selectors and decodes the all-static
``PositionView`` (12 words), ``MarketView`` (9 words) and ``latestRoundData`` (5 words) by word slicing.

Oracle history: PriceFeed round ids are consecutive from 1. Chainlink proxies encode
``(phase << 64) | aggregator round`` and jump at a phase change; :func:`history_round_ids` never asks for ids
below the current phase's first round (they do not exist), so after a phase change the history is the rounds
cached before it plus the new phase's (a keeper started after the change sees only the new phase and uses
the fallback volatility until 30 returns exist). Rounds already read are cached per feed and never read
again; ``oracle_history`` fetches only ids above the newest cached one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from eth_utils import to_checksum_address

from keeper.chain.abi import ErrorDecoder, Function, event_topic, load_abi
from keeper.chain.discovery import LogScanner
from keeper.chain.multicall import MULTICALL3_ADDRESS, Call, Multicall
from keeper.chain.rpc import ChainClient
from keeper.domain import ActionKind, Market, Position, PriceRound, Side
from keeper.errors import ChainMismatchError, InputError
from keeper.protocols.base import BookSnapshot, HeadProbe, PositionExtras, PositionKey, ProtocolAdapter, keys_of
from keeper.tx.call import ContractCall

if TYPE_CHECKING:
    from keeper.runtime.config import KeeperConfig
    from keeper.tx.journal import Journal

log = structlog.get_logger(__name__)

MARKET_PARAMS = "(address,uint256,uint256,uint256,uint256,uint256)"
F_MARKET_COUNT = Function("marketCount()", ["uint256"])
F_GET_MARKET = Function("getMarket(uint256)")
F_GET_POSITION = Function("getPosition(address,uint256)")
F_LATEST_ROUND = Function("latestRoundData()")
F_GET_ROUND = Function("getRoundData(uint80)")
F_DESCRIPTION = Function("description()", ["string"])
F_ADD_MARGIN = Function("addMargin(address,uint256,uint256)")
F_REMOVE_MARGIN = Function("removeMargin(address,uint256,uint256)")
F_MOVE_MARGIN = Function("moveMargin(address,uint256,uint256,uint256)")
F_DECREASE = Function("decreasePosition(address,uint256,uint256)")
F_APPROVE = Function("approve(address,uint256)")
F_ALLOWANCE = Function("allowance(address,address)", ["uint256"])
F_BALANCE_OF = Function("balanceOf(address)", ["uint256"])
# ERC-20 allowance meaning "no limit" (token base units, not an amount of collateral): the keeper's wallet
# approves the engine once; below ALLOWANCE_LOW it approves again.
UNLIMITED_ALLOWANCE = 2**255
ALLOWANCE_LOW = 2**128
POSITION_OPENED = event_topic("PositionOpened(address,uint256,bool,uint256,uint256,uint256)")


def write_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Deployment:
    """Where the reference protocol lives on a chain."""

    rpc_url: str
    chain_id: int
    start_block: int
    engine: str
    collateral: str
    multicall: str
    feeds: dict[str, str] = field(default_factory=dict)
    markets: dict[str, int] = field(default_factory=dict)
    deployer: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise InputError(f"deployment file {path} does not exist: run `keeper devchain` to make one") from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"deployment file {path} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
        required = {"rpc_url", "chain_id", "start_block", "engine", "collateral", "multicall"}
        missing = sorted(required - set(data))
        if missing:
            raise InputError(f"deployment file {path} lacks {', '.join(missing)}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def verify(self, w3: Any) -> None:
        """Refuse a deployment that does not match the chain: chain id and code at every address (``w3``: a
        web3 client, duck-typed so that reading a deployment file does not import web3)."""
        chain_id = w3.eth.chain_id
        if chain_id != self.chain_id:
            raise ChainMismatchError(
                f"deployment is for chain id {self.chain_id} but {self.rpc_url} is chain id {chain_id}"
            )
        named = {"engine": self.engine, "collateral": self.collateral, "multicall": self.multicall}
        named.update({f"feed {sym}": addr for sym, addr in self.feeds.items()})
        for name, address in named.items():
            if len(w3.eth.get_code(to_checksum_address(address))) == 0:
                raise ChainMismatchError(
                    f"deployment names {name} at {address} but chain id {chain_id} has no code there "
                    "(a restarted or different chain? re-run `keeper devchain`)"
                )


def _words(data: bytes, n: int) -> list[int]:
    if len(data) < 32 * n:
        raise ValueError(f"expected {n} words, got {len(data)} bytes")
    return [int.from_bytes(data[i * 32 : (i + 1) * 32], "big") for i in range(n)]


def _signed(x: int) -> int:
    return x - (1 << 256) if x >> 255 else x


def decode_position(data: bytes) -> tuple:
    """PositionView: exists, isLong, size, entry, collateral, pendingFee, equity(int), mm, liqPrice, mark,
    markUpdatedAt, liquidatable."""
    w = _words(data, 12)
    return (w[0] == 1, w[1] == 1, w[2], w[3], w[4], w[5], _signed(w[6]), w[7], w[8], w[9], w[10], w[11] == 1)


def decode_market(data: bytes) -> tuple:
    """MarketView: (feed, mm, maxLev, penalty, feeRate, heartbeat), feeIndex, longOI, shortOI."""
    w = _words(data, 9)
    feed = "0x" + data[12:32].hex()
    return (feed, w[1], w[2], w[3], w[4], w[5]), w[6], w[7], w[8]


def decode_round(data: bytes) -> PriceRound:
    """latestRoundData / getRoundData: roundId, answer(int), startedAt, updatedAt, answeredInRound."""
    w = _words(data, 5)
    return PriceRound(round_id=w[0], price_e8=_signed(w[1]), updated_at_s=w[3])


def history_round_ids(latest_id: int, newest_cached: int | None, max_rounds: int) -> range:
    """Round ids to read with ``getRoundData``: up to ``max_rounds`` ending at the latest (which the caller
    has), above the newest cached one, and never below the first round of the latest id's phase."""
    phase_start = ((latest_id >> 64) << 64) + 1
    first = max(phase_start, latest_id - max_rounds + 1)
    if newest_cached is not None:
        first = max(first, newest_cached + 1)
    return range(first, latest_id)


class ReferenceAdapter(ProtocolAdapter):
    """The reference PerpEngine at ``engine`` with collateral token ``collateral``."""

    name = "reference"

    def __init__(
        self,
        client: ChainClient,
        engine: str,
        collateral: str,
        *,
        multicall: str = MULTICALL3_ADDRESS,
        journal=None,
        start_block: int = 0,
        symbols: dict[str, int] | None = None,
        log_chunk_blocks: int = 5_000,
        reorg_depth: int = 12,
    ) -> None:
        self.client = client
        self.engine = to_checksum_address(engine)
        self.collateral = to_checksum_address(collateral)
        self.multicall = Multicall(client, multicall)
        self.errors = ErrorDecoder()
        for name in ("PerpEngine", "MockUSD", "PriceFeed"):
            try:
                self.errors.add_abi(load_abi(name))
            except FileNotFoundError:
                log.warning("abi_missing", contract=name)
        self._symbols = {v: k for k, v in (symbols or {}).items()}
        self.markets: dict[int, Market] = {}
        self._history: dict[int, dict[int, PriceRound]] = {}
        self.scanner = None
        if journal is not None:
            self.scanner = LogScanner(
                client,
                journal,
                f"{self.name}:{self.engine.lower()}:accounts",
                self.engine,
                [POSITION_OPENED],
                start_block,
                chunk_blocks=log_chunk_blocks,
                reorg_depth=reorg_depth,
            )

    @classmethod
    def from_deployment(cls, client: ChainClient, deployment, journal=None, **kw) -> ReferenceAdapter:
        """Adapter for a :class:`Deployment` (addresses, markets, start block)."""
        return cls(
            client,
            deployment.engine,
            deployment.collateral,
            multicall=deployment.multicall,
            journal=journal,
            start_block=deployment.start_block,
            symbols=dict(deployment.markets),
            **kw,
        )

    # ---- reads -----------------------------------------------------------------------------------

    def contract_addresses(self) -> dict[str, str]:
        return {"engine": self.engine, "collateral": self.collateral, "Multicall3": self.multicall.address}

    def check_deployment(self) -> None:
        for name, address in (("engine", self.engine), ("collateral", self.collateral)):
            if not self.client.get_code(address):
                raise ChainMismatchError(
                    f"no contract at the configured {name} address {address} on chain id "
                    f"{self.client.chain_id}: wrong deployment or a restarted chain?"
                )
        if not self.client.get_code(self.multicall.address):
            raise ChainMismatchError(
                f"no Multicall3 at {self.multicall.address}: set protocol.multicall (on a "
                "local anvil, `keeper devchain` installs it)"
            )

    def probe_head(self) -> HeadProbe:
        mids = sorted(self.known_markets())
        res = self.multicall.aggregate3([Call(self.markets[i].feed, F_LATEST_ROUND.encode()) for i in mids])
        rounds = {i: decode_round(r.data).round_id for i, r in zip(mids, res.results, strict=True) if r.success}
        return HeadProbe(res.block_number, res.block_timestamp, rounds)

    def wallet_balance_e6(self, owner: str) -> int:
        out = self.client.call(self.collateral, F_BALANCE_OF.encode(to_checksum_address(owner)))
        return int(F_BALANCE_OF.decode(out)[0]) if out else 0

    def load_markets(self) -> dict[int, Market]:
        count_res = self.multicall.aggregate3([Call(self.engine, F_MARKET_COUNT.encode(), False)])
        if not count_res.results[0].data:
            raise ChainMismatchError(f"no PerpEngine at {self.engine}")
        count = int.from_bytes(count_res.results[0].data, "big")
        res = self.multicall.aggregate3([Call(self.engine, F_GET_MARKET.encode(i), False) for i in range(count)])
        views = [decode_market(r.data) for r in res.results]
        feeds = [v[0][0] for v in views]
        desc = self.multicall.aggregate3([Call(f, F_DESCRIPTION.encode()) for f in feeds])
        markets = {}
        for i, (view, d) in enumerate(zip(views, desc.results, strict=True)):
            symbol = self._symbols.get(i)
            if symbol is None and d.success:
                symbol = F_DESCRIPTION.decode(d.data)[0].split("/")[0].strip()
            markets[i] = self._market(i, symbol or f"M{i}", view)
        self.markets = markets
        return markets

    @staticmethod
    def _market(market_id: int, symbol: str, view: tuple) -> Market:
        (feed, mm, max_lev, penalty, fee_rate, heartbeat), _, _, _ = view
        return Market(
            market_id=market_id,
            symbol=symbol,
            maintenance_margin_wad=mm,
            max_leverage_wad=max_lev,
            liquidation_penalty_wad=penalty,
            fee_rate_per_s_wad=fee_rate,
            heartbeat_s=heartbeat,
            feed=to_checksum_address(feed),
        )

    def read_book(self, keys: Iterable[PositionKey]) -> BookSnapshot:
        if not self.markets:
            self.load_markets()
        keys = keys_of(list(keys))
        mids = sorted(self.markets)
        calls = [Call(self.engine, F_GET_MARKET.encode(i)) for i in mids]
        calls += [Call(self.markets[i].feed, F_LATEST_ROUND.encode()) for i in mids]
        calls += [Call(self.engine, F_GET_POSITION.encode(a, m)) for a, m in keys]
        res = self.multicall.aggregate3(calls)
        r = res.results
        markets: dict[int, Market] = {}
        prices: dict[int, PriceRound] = {}
        n = len(mids)
        for j, i in enumerate(mids):
            markets[i] = (
                self._market(i, self.markets[i].symbol, decode_market(r[j].data)) if r[j].success else self.markets[i]
            )
            if r[n + j].success:
                prices[i] = decode_round(r[n + j].data)
        positions: dict[PositionKey, Position] = {}
        extras: dict[PositionKey, PositionExtras] = {}
        missing: list[PositionKey] = []
        failed: list[PositionKey] = []
        for key, result in zip(keys, r[2 * n :], strict=True):
            if not result.success:
                failed.append(key)
                continue
            (exists, is_long, size, entry, coll, fee, equity, mm, liq, _mark, _upd, liquidatable) = decode_position(
                result.data
            )
            if not exists:
                missing.append(key)
                continue
            positions[key] = Position(
                account=key[0],
                market_id=key[1],
                side=Side.LONG if is_long else Side.SHORT,
                size_e18=size,
                entry_price_e8=entry,
                collateral_e6=coll,
                pending_fee_e6=fee,
            )
            extras[key] = PositionExtras(equity, mm, liq, liquidatable)
        self.markets = markets
        return BookSnapshot(
            positions,
            markets,
            prices,
            res.block_number,
            res.block_timestamp,
            extras,
            tuple(missing),
            tuple(failed),
            res.round_trips,
        )

    def oracle_history(
        self, market_id: int, max_rounds: int = 500, latest: PriceRound | None = None
    ) -> list[PriceRound]:
        if market_id not in self.markets:
            self.load_markets()
        feed = self.markets[market_id].feed
        cache = self._history.setdefault(market_id, {})
        if latest is None:
            latest = decode_round(
                self.multicall.aggregate3([Call(feed, F_LATEST_ROUND.encode(), False)]).results[0].data
            )
        newest = max(cache) if cache else None
        wanted = list(history_round_ids(latest.round_id, newest, max_rounds))
        if newest is None or latest.round_id > newest:
            cache[latest.round_id] = latest  # latestRoundData is getRoundData(latest id): never read twice
        if wanted:
            res = self.multicall.aggregate3([Call(feed, F_GET_ROUND.encode(rid)) for rid in wanted])
            for rid, result in zip(wanted, res.results, strict=True):
                if result.success:
                    cache[rid] = decode_round(result.data)
            log.debug("oracle_rounds_read", market_id=market_id, new=len(wanted), cached=len(cache))
        keep = sorted(cache)[-max_rounds:]
        for rid in list(cache):
            if rid < keep[0]:
                del cache[rid]
        return [cache[rid] for rid in keep]

    def discover_accounts(self, from_block: int | None = None, to_block: int | None = None) -> set[PositionKey]:
        if self.scanner is None:
            raise ValueError("discover_accounts needs a journal (cursor store): pass journal= to the adapter")
        if from_block is not None and self.scanner.store.get_cursor(self.scanner.name) is None:
            self.scanner.start_block = from_block
        self.scanner.scan(self._accounts_from_logs, to_block)
        return self.scanner.store.known_accounts(self.scanner.name)

    @staticmethod
    def _accounts_from_logs(logs: list[dict]) -> set[tuple[str, int, int]]:
        out = set()
        for lg in logs:
            if lg.get("removed"):
                continue
            account = "0x" + lg["topics"][1][-40:]
            market_id = int(lg["topics"][2], 16)
            out.add((account.lower(), market_id, int(lg["blockNumber"], 16)))
        return out

    # ---- transactions ----------------------------------------------------------------------------

    def _call(self, fn: Function, *args, description: str) -> ContractCall:
        return ContractCall(self.engine, fn.encode(*args), 0, description)

    def add_margin_call(self, account: str, market_id: int, amount_e6: int) -> ContractCall:
        return self._call(
            F_ADD_MARGIN,
            to_checksum_address(account),
            market_id,
            amount_e6,
            description=f"addMargin {amount_e6} e6 to {account} market {market_id}",
        )

    def remove_margin_call(self, account: str, market_id: int, amount_e6: int) -> ContractCall:
        return self._call(
            F_REMOVE_MARGIN,
            to_checksum_address(account),
            market_id,
            amount_e6,
            description=f"removeMargin {amount_e6} e6 from {account} market {market_id}",
        )

    def move_margin_call(self, account: str, from_market_id: int, to_market_id: int, amount_e6: int) -> ContractCall:
        return self._call(
            F_MOVE_MARGIN,
            to_checksum_address(account),
            from_market_id,
            to_market_id,
            amount_e6,
            description=f"moveMargin {amount_e6} e6 {from_market_id}->{to_market_id} for {account}",
        )

    def decrease_position_call(self, account: str, market_id: int, size_delta_e18: int) -> ContractCall:
        return self._call(
            F_DECREASE,
            to_checksum_address(account),
            market_id,
            size_delta_e18,
            description=f"decreasePosition {size_delta_e18} e18 for {account} market {market_id}",
        )

    def describe_transaction(self, to: str, data: bytes) -> dict | None:
        if to.lower() != self.engine.lower():
            return None
        for kind, fn in (
            (ActionKind.TOP_UP, F_ADD_MARGIN),
            (ActionKind.RELEASE, F_REMOVE_MARGIN),
            (ActionKind.MOVE_MARGIN, F_MOVE_MARGIN),
            (ActionKind.REDUCE_SIZE, F_DECREASE),
        ):
            args = fn.decode_input(data)
            if args is None:
                continue
            meta: dict = {"kind": kind.value, "account": str(args[0]).lower()}
            if kind is ActionKind.MOVE_MARGIN:
                meta.update(from_market_id=int(args[1]), market_id=int(args[2]), amount_e6=int(args[3]))
            elif kind is ActionKind.REDUCE_SIZE:
                meta.update(market_id=int(args[1]), size_delta_e18=int(args[2]))
            else:
                meta.update(market_id=int(args[1]), amount_e6=int(args[2]))
            return meta
        return None

    def approve_collateral_call(self, amount: int) -> ContractCall:
        """Let the engine pull up to ``amount`` collateral base units from the sender's wallet."""
        spender = self.engine.lower()
        return ContractCall(
            self.collateral,
            F_APPROVE.encode(self.engine, amount),
            0,
            f"approve {amount} collateral units to the engine",
            {"kind": "approve", "spender": spender},
        )

    def approval_call(self, owner: str) -> ContractCall | None:
        out = self.client.call(self.collateral, F_ALLOWANCE.encode(to_checksum_address(owner), self.engine))
        if out and int(F_ALLOWANCE.decode(out)[0]) >= ALLOWANCE_LOW:
            return None
        call = self.approve_collateral_call(UNLIMITED_ALLOWANCE)
        return ContractCall(
            call.to,
            call.data,
            call.value_wei,
            call.description,
            {**call.meta, "key": f"approve:{self.engine.lower()}:{owner.lower()}"},
        )


def from_config(client: ChainClient, config: KeeperConfig, journal: Journal | None) -> ReferenceAdapter:
    """The adapter ``config.protocol`` describes: a deployment file (``keeper devchain`` writes one) or explicit
    engine and collateral addresses."""
    protocol = config.protocol
    if protocol.deployment is not None:
        deployment = Deployment.load(protocol.deployment)
        if deployment.chain_id != config.chain.chain_id:
            raise ChainMismatchError(
                f"deployment file is for chain id {deployment.chain_id}, config expects {config.chain.chain_id}"
            )
        return ReferenceAdapter.from_deployment(client, deployment, journal=journal)
    if protocol.engine is None or protocol.collateral is None:  # the config's validation already refuses this
        raise InputError("protocol needs deployment = 'path/to/deployment.json' or both engine and collateral")
    symbols = {m.symbol: mid for mid, m in protocol.markets.items()}
    return ReferenceAdapter(
        client, protocol.engine, protocol.collateral, multicall=protocol.multicall, journal=journal, symbols=symbols
    )


__all__ = ["Deployment", "ReferenceAdapter", "decode_market", "decode_position", "decode_round", "from_config"]
