"""Perpetual Protocol v2 ("Curie") adapter: one batched read of traders, markets and pools; depositFor.

Reads (every value from one block, one Multicall3 ``aggregate3`` read: one JSON-RPC round trip, two if a
block lands between chunks):

- per market: ``AccountBalance.getMarkPrice``, ``BaseToken.getIndexPrice(0)`` and ``(twapInterval)``,
  ``BaseToken.isOpen``, the aggregator's ``latestRoundData`` (staleness), ``MarketRegistry.getMarketInfo``
  (fee ratios, price band) and the pool's ``slot0`` and ``liquidity`` (order-book depth);
- once: ``ClearingHouseConfig`` mmRatio, imRatio, liquidation penalty ratio, twapInterval, mark price config;
- per trader: ``AccountBalance.getAccountInfo`` and ``Exchange.getPendingFundingPayment`` per market,
  ``getPnlAndPendingFee``, ``getBaseTokens``, ``hasOrder``, ``Vault.getBalance``, ``Vault.getFreeCollateral``,
  and the contract's own ``ClearingHouse.getAccountValue`` and ``getMarginRequirementForLiquidation``
  (the keeper's numbers from keeper.accounts.perp_v2 are checked against them).

Curie's contracts revert with short codes (``execution reverted: CH_EAV``); :class:`PerpErrorDecoder` turns
them into words for the journal and the alerts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eth_abi import decode
from eth_utils import to_checksum_address

from keeper.accounts.perp_v2 import (
    ONE_E18,
    WAD,
    PerpAccount,
    PerpLeg,
    PerpMargin,
    PerpParams,
    PerpRules,
    PoolDepth,
    leg_size_e18,
    margin_at,
    margin_view,
    position_value_x18,
    premium_gaps,
    price_impact,
)
from keeper.chain.abi import DecodedRevert, ErrorDecoder, Function, event_topic
from keeper.chain.discovery import LogScanner
from keeper.chain.multicall import Call, Multicall
from keeper.chain.rpc import ChainClient
from keeper.domain import AccountAction, AccountActionKind, PriceRound
from keeper.errors import ChainMismatchError, ConfigError, InputError
from keeper.protocols.base import AccountAdapter, AccountBook, HeadProbe
from keeper.protocols.reference import decode_round, history_round_ids, write_atomically
from keeper.tx.call import ContractCall

if TYPE_CHECKING:
    from web3 import Web3

    from keeper.runtime.config import KeeperConfig
    from keeper.tx.journal import Journal

F_ACCOUNT_INFO = Function("getAccountInfo(address,address)")
F_FUNDING = Function("getPendingFundingPayment(address,address)")
F_PNL = Function("getPnlAndPendingFee(address)")
F_BASE_TOKENS = Function("getBaseTokens(address)", ["address[]"])
F_HAS_ORDER = Function("hasOrder(address)")
F_BALANCE = Function("getBalance(address)")
F_FREE = Function("getFreeCollateral(address)")
F_ACCOUNT_VALUE = Function("getAccountValue(address)")
F_REQUIREMENT = Function("getMarginRequirementForLiquidation(address)")
F_MARK = Function("getMarkPrice(address)")
F_INDEX = Function("getIndexPrice(uint256)")
F_IS_OPEN = Function("isOpen()")
F_MARKET_INFO = Function("getMarketInfo(address)")
F_SLOT0 = Function("slot0()")
F_LIQUIDITY = Function("liquidity()")
F_LATEST_ROUND = Function("latestRoundData()")
F_MM = Function("getMmRatio()")
F_IM = Function("getImRatio()")
F_PENALTY = Function("getLiquidationPenaltyRatio()")
F_TWAP = Function("getTwapInterval()")
F_MARK_CONFIG = Function("getMarkPriceConfig()")
F_DEPOSIT_FOR = Function("depositFor(address,address,uint256)")
F_WITHDRAW = Function("withdraw(address,uint256)")
F_OPEN_POSITION = Function("openPosition((address,bool,bool,uint256,uint256,uint256,uint160,bytes32))")
REDUCE_SLIPPAGE = 0.005  # a reduction's quote bound: twice the expected price impact plus this
F_APPROVE = Function("approve(address,uint256)")
F_ALLOWANCE = Function("allowance(address,address)")
F_ERC20_BALANCE = Function("balanceOf(address)")
F_SYMBOL = Function("symbol()", ["string"])
F_GET_ROUND = Function("getRoundData(uint80)")
TOPIC_POSITION_CHANGED = event_topic(
    "PositionChanged(address,address,int256,int256,uint256,int256,int256,uint256)"
)  # IClearingHouse: trader is topic 1
DEFAULT_MARK_PUSH_USD = 250_000.0
"""The adverse market order (USD notional) the buffer must survive beside the index's own gap: it moves the
mark by the pool's depth (``premium_gaps``). The watched book's own positions on that side are added (their
liquidation would trade that way). Configurable as ``protocol.mark_push_usd``."""

# Curie 2.8.4 revert codes (the comments beside each require in the contracts' sources)
PERP_ERRORS = {
    "CH_EAV": "enough account value: the account is not liquidatable",
    "CH_CLWTISO": "cannot liquidate while the trader still has open maker orders",
    "CH_NEFCI": "not enough free collateral by imRatio",
    "CH_WLD": "wrong liquidation direction",
    "CH_IIC": "insufficient insurance fund capacity for the bad debt",
    "CH_MNO": "market is not open",
    "CH_TF": "settlement token transfer failed",
    "V_GTSTBC": "deposit exceeds the settlement token balance cap",
    "V_GTDC": "deposit exceeds the deposit cap",
    "V_ZA": "amount is zero",
    "V_TINAC": "token is not a collateral",
    "V_NEFC": "not enough free collateral",
    "EX_MIP": "market is paused (max tick crossed within block is 0)",
    "EX_OPLAS": "over price limit after swap (more ticks than allowed since the last 15 s)",
    "EX_OPB": "over the price band: the swap would leave the market too far from the index",
    "EX_TKMM": "tick mismatch between the pool and the replayed swap",
    "OLD": "Uniswap oracle has no observation old enough for the TWAP",
    "MR_IB": "base token address must be below the quote token's",
    "MR_PNI": "pool not initialised",
    "MR_CHBNE": "ClearingHouse's base token balance not enough",
    "SO_CNO": "caller is not the owner",
    "ERC20: transfer amount exceeds balance": "the payer's wallet holds too little settlement token",
    "ERC20: transfer amount exceeds allowance": "the payer has not approved the vault for that amount",
}


def explain(code: str) -> str:
    """``CH_EAV`` -> ``CH_EAV (enough account value: the account is not liquidatable)``."""
    words = PERP_ERRORS.get(code)
    return f"{code} ({words})" if words and words != code else code


class PerpErrorDecoder(ErrorDecoder):
    """ErrorDecoder whose ``Error(string)`` reasons carry Curie's code and its meaning."""

    def decode(self, data: bytes | None) -> DecodedRevert:
        out = super().decode(data)
        if out.name == "Error" and len(out.args) == 1 and out.args[0] in PERP_ERRORS:
            return DecodedRevert("Error", (explain(out.args[0]),), out.raw)
        return out


@dataclass(frozen=True)
class PerpMarketRecord:
    """Where one market lives: its base token, Uniswap pool and index price chain."""

    base_token: str
    pool: str
    aggregator: str
    chainlink_feed: str
    dispatcher: str


@dataclass(frozen=True)
class PerpDeployment:
    """Where Curie lives on a chain (JSON-serialisable; ``markets`` keyed by symbol)."""

    rpc_url: str
    chain_id: int
    start_block: int
    clearing_house: str
    config: str
    vault: str
    account_balance: str
    exchange: str
    order_book: str
    market_registry: str
    insurance_fund: str
    collateral_manager: str
    quote_token: str
    settlement_token: str
    uniswap_factory: str
    multicall: str
    markets: dict[str, PerpMarketRecord] = field(default_factory=dict)
    deployer: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_atomically(path, self.to_json())

    @classmethod
    def from_json(cls, text: str, source: str = "deployment") -> PerpDeployment:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source} is not valid JSON (line {exc.lineno}): {exc.msg}") from exc
        missing = sorted(set(cls.__dataclass_fields__) - {"markets", "deployer"} - set(data))
        if missing:
            raise InputError(f"{source} is not a Perp v2 deployment: it lacks {', '.join(missing)}")
        markets = {s: PerpMarketRecord(**m) for s, m in data.get("markets", {}).items()}
        return cls(**{**{k: data[k] for k in cls.__dataclass_fields__ if k in data}, "markets": markets})

    @classmethod
    def load(cls, path: str | Path) -> PerpDeployment:
        path = Path(path)
        try:
            return cls.from_json(path.read_text(), f"deployment file {path}")
        except FileNotFoundError as exc:
            raise InputError(
                f"deployment file {path} does not exist: run `keeper devchain --protocol perp-v2`"
            ) from exc

    def verify(self, w3: Web3) -> None:
        """Refuse a deployment that does not match the chain (a web3 connection): chain id and code at every
        address (the daemon checks the same through :meth:`PerpV2Adapter.check_deployment`)."""
        chain_id = w3.eth.chain_id
        if chain_id != self.chain_id:
            raise ChainMismatchError(f"deployment is for chain id {self.chain_id} but the node is chain id {chain_id}")
        named = {"clearing_house": self.clearing_house, "vault": self.vault, "multicall": self.multicall}
        named |= {f"pool {s}": m.pool for s, m in self.markets.items()}
        for name, address in named.items():
            if len(w3.eth.get_code(to_checksum_address(address))) == 0:
                raise ChainMismatchError(
                    f"deployment names {name} at {address} but the chain has no code there "
                    "(a restarted chain? re-run `keeper devchain --protocol perp-v2`)"
                )


def _int(data: bytes, i: int = 0) -> int:
    return int.from_bytes(data[32 * i : 32 * (i + 1)], "big", signed=True)


def _uint(data: bytes, i: int = 0) -> int:
    return int.from_bytes(data[32 * i : 32 * (i + 1)], "big")


@dataclass(frozen=True, slots=True)
class PerpMarketState:
    """One market at the read block: prices (18 dec), index round time, pool depth, open flag."""

    symbol: str
    base_token: str
    mark_price_x18: int
    index_price_x18: int
    index_twap_x18: int
    index_updated_at_s: int
    is_open: bool
    depth: PoolDepth
    max_price_spread_ratio_e6: int
    index_round: PriceRound | None = None  # the index aggregator's latest round (volatility, staleness)

    @property
    def premium(self) -> float:
        """Mark over index, relative (the premium the risk model forecasts beside the index)."""
        return self.mark_price_x18 / self.index_price_x18 - 1.0


@dataclass(frozen=True, slots=True)
class PerpTraderState:
    """A trader as read, with the contract's own account value and requirement beside the keeper's."""

    account: PerpAccount
    base_tokens: tuple[str, ...]
    has_orders: bool
    free_collateral_e6: int
    unrealized_pnl_x18: int  # getPnlAndPendingFee's, for cross-checking
    contract_account_value_x18: int  # 0 when read without cross_check
    contract_requirement_x18: int


@dataclass(frozen=True, slots=True)
class PerpSnapshot:
    params: PerpParams
    twap_interval_s: int
    mark_config_s: tuple[int, int]  # (marketTwapInterval, premiumInterval)
    markets: dict[str, PerpMarketState]
    traders: dict[str, PerpTraderState]
    block_number: int
    block_timestamp: int
    round_trips: int
    failed: tuple[str, ...] = field(default=())

    @property
    def marks_x18(self) -> dict[str, int]:
        return {m.base_token: m.mark_price_x18 for m in self.markets.values()}

    def margin(self, trader: str) -> PerpMargin:
        """The keeper's own account value and requirement at the read block's mark prices."""
        return margin_at(self.traders[trader.lower()].account, self.marks_x18, self.params)


class PerpV2Adapter(AccountAdapter):
    """Curie at the addresses of a :class:`PerpDeployment` (written by ``keeper devchain --protocol perp-v2``)."""

    name = "perp-v2"
    cross_check_max_accounts = 100  # the contract's own value and requirement re-run every TWAP per trader

    def __init__(
        self,
        client: ChainClient,
        deployment: PerpDeployment,
        *,
        max_calls_per_chunk: int = 120,
        max_request_bytes: int = 1_900_000,
        journal: Journal | None = None,
        mark_push_usd: float = DEFAULT_MARK_PUSH_USD,
        log_chunk_blocks: int = 5_000,
        reorg_depth: int = 12,
    ) -> None:
        if not mark_push_usd >= 0:
            raise InputError(f"mark_push_usd must be >= 0, got {mark_push_usd}")
        self.client = client
        self.d = deployment
        self.mark_push_usd = mark_push_usd
        self.symbols: dict[str, str] = {}
        self.reducible: frozenset[str] = frozenset()  # accounts whose key the keeper holds, reduction enabled
        self.scanner = (
            LogScanner(
                client,
                journal,
                f"{self.name}:{deployment.clearing_house.lower()}:traders",
                to_checksum_address(deployment.clearing_house),
                [[TOPIC_POSITION_CHANGED]],
                deployment.start_block,
                chunk_blocks=log_chunk_blocks,
                reorg_depth=reorg_depth,
            )
            if journal is not None
            else None
        )
        self.markets = {s: m for s, m in deployment.markets.items()}
        # Curie's views cost ~50-100k gas each (TWAPs through the pool's observations): small chunks keep each
        # eth_call under the node's gas cap. JSON-RPC batches up to 1.9 MB (anvil 1.7.1 refuses bodies over
        # 2 MiB; measured): 1,000 accounts' keeper inputs (~3.2 MB of hex) then take 2 round trips, not 3
        self.multicall = Multicall(
            client, deployment.multicall, max_calls=max_calls_per_chunk, max_request_bytes=max_request_bytes
        )
        self.errors = PerpErrorDecoder()

    @property
    def settlement_token(self) -> str:
        return to_checksum_address(self.d.settlement_token)

    # ---- reads -----------------------------------------------------------------------------------

    def _global_calls(self) -> list[Call]:
        d = self.d
        calls = [Call(d.config, f.encode(), False) for f in (F_MM, F_IM, F_PENALTY, F_TWAP, F_MARK_CONFIG)]
        return calls

    def read(self, traders: Iterable[str], twap_interval_s: int = 900, *, cross_check: bool = True) -> PerpSnapshot:
        """Every trader, every market and the config at one block (one multicall).

        ``cross_check=False`` skips the contract's own getAccountValue, requirement, free collateral and
        getBaseTokens (their fields are then 0 / empty): the keeper's maths needs only the other calls, and
        those four re-run every TWAP of every market per trader (about half the read's gas).
        """
        d = self.d
        who = [to_checksum_address(t) for t in traders]
        calls = self._global_calls()
        for m in self.markets.values():
            calls += [
                Call(d.account_balance, F_MARK.encode(m.base_token), False),
                Call(m.base_token, F_INDEX.encode(0), False),
                Call(m.base_token, F_INDEX.encode(twap_interval_s)),
                Call(m.base_token, F_IS_OPEN.encode(), False),
                Call(m.aggregator, F_LATEST_ROUND.encode(), False),
                Call(d.market_registry, F_MARKET_INFO.encode(m.base_token), False),
                Call(m.pool, F_SLOT0.encode(), False),
                Call(m.pool, F_LIQUIDITY.encode(), False),
            ]
        per_market = 2
        head = 7 if cross_check else 3
        per_trader = head + per_market * len(self.markets)
        for t in who:
            calls += [
                Call(d.account_balance, F_PNL.encode(t)),
                Call(d.account_balance, F_HAS_ORDER.encode(t)),
                Call(d.vault, F_BALANCE.encode(t)),
            ]
            if cross_check:
                calls += [
                    Call(d.account_balance, F_BASE_TOKENS.encode(t)),
                    Call(d.vault, F_FREE.encode(t)),
                    Call(d.clearing_house, F_ACCOUNT_VALUE.encode(t)),
                    Call(d.account_balance, F_REQUIREMENT.encode(t)),
                ]
            for m in self.markets.values():
                calls += [
                    Call(d.account_balance, F_ACCOUNT_INFO.encode(t, m.base_token)),
                    Call(d.exchange, F_FUNDING.encode(t, m.base_token)),
                ]
        res = self.multicall.aggregate3(calls)
        r = res.results
        if not all(x.success for x in r[:5]):
            raise ChainMismatchError(f"no ClearingHouseConfig answering at {d.config}")
        params = PerpParams(
            mm_ratio_e6=_uint(r[0].data), im_ratio_e6=_uint(r[1].data), liquidation_penalty_ratio_e6=_uint(r[2].data)
        )
        twap = _uint(r[3].data)
        mark_cfg = (_uint(r[4].data, 0), _uint(r[4].data, 1))
        i = 5
        markets: dict[str, PerpMarketState] = {}
        for symbol, m in self.markets.items():
            mark, idx, twp, is_open, rnd, info, slot0, liq = r[i : i + 8]
            i += 8
            if not all(x.success for x in (mark, idx, is_open, rnd, info, slot0, liq)):
                raise ChainMismatchError(f"market {symbol} (base {m.base_token}) did not answer: wrong deployment?")
            markets[symbol] = PerpMarketState(
                symbol=symbol,
                base_token=to_checksum_address(m.base_token),
                mark_price_x18=_uint(mark.data),
                index_price_x18=_uint(idx.data),
                index_twap_x18=_uint(twp.data) if twp.success else 0,
                index_updated_at_s=_uint(rnd.data, 3),
                is_open=_uint(is_open.data) == 1,
                depth=PoolDepth(
                    sqrt_price_x96=_uint(slot0.data, 0),
                    liquidity=_uint(liq.data),
                    exchange_fee_ratio_e6=_uint(info.data, 1),
                ),
                max_price_spread_ratio_e6=_uint(info.data, 4),
                index_round=decode_round(rnd.data),
            )
        states: dict[str, PerpTraderState] = {}
        failed: list[str] = []
        bases = [to_checksum_address(m.base_token) for m in self.markets.values()]
        for t in who:
            chunk = r[i : i + per_trader]
            i += per_trader
            if not all(x.success for x in chunk):
                failed.append(t.lower())
                continue
            pnl, has_order, bal = chunk[:3]
            legs = []
            for k, base in enumerate(bases):
                info_r, fund_r = chunk[head + 2 * k], chunk[head + 1 + 2 * k]
                size, open_notional = _int(info_r.data, 0), _int(info_r.data, 1)
                if size != 0 or open_notional != 0:
                    legs.append(PerpLeg(base, size, open_notional, _int(fund_r.data)))
            account = PerpAccount(
                trader=t.lower(),
                vault_balance_e6=_int(bal.data),
                owed_realized_pnl_x18=_int(pnl.data, 0),
                pending_fee_x18=_uint(pnl.data, 2),
                legs=tuple(legs),
            )
            checked = chunk[3:7] if cross_check else None
            states[t.lower()] = PerpTraderState(
                account=account,
                has_orders=_uint(has_order.data) == 1,
                unrealized_pnl_x18=_int(pnl.data, 1),
                base_tokens=tuple(decode(["address[]"], checked[0].data)[0]) if checked else (),
                free_collateral_e6=_uint(checked[1].data) if checked else 0,
                contract_account_value_x18=_int(checked[2].data) if checked else 0,
                contract_requirement_x18=_int(checked[3].data) if checked else 0,
            )
        return PerpSnapshot(
            params=params,
            twap_interval_s=twap,
            mark_config_s=mark_cfg,
            markets=markets,
            traders=states,
            block_number=res.block_number,
            block_timestamp=res.block_timestamp,
            round_trips=res.round_trips,
            failed=tuple(failed),
        )

    # ---- the account book (keeper.protocols.base.AccountAdapter) ----------------------------------

    def contract_addresses(self) -> dict[str, str]:
        d = self.d
        named = {
            "ClearingHouse": d.clearing_house,
            "ClearingHouseConfig": d.config,
            "Vault": d.vault,
            "AccountBalance": d.account_balance,
            "Exchange": d.exchange,
            "Multicall3": d.multicall,
        }
        for symbol, m in self.markets.items():
            named |= {f"{symbol} base token": m.base_token, f"{symbol} pool": m.pool, f"{symbol} index": m.aggregator}
        return {k: to_checksum_address(v) for k, v in named.items()}

    def check_deployment(self) -> None:
        if self.client.chain_id is not None and self.client.chain_id != self.d.chain_id:
            raise ChainMismatchError(
                f"deployment is for chain id {self.d.chain_id} but the node is chain id {self.client.chain_id}"
            )
        for name, address in self.contract_addresses().items():
            if not self.client.get_code(address):
                raise ChainMismatchError(
                    f"no contract at the {name} address {address} on chain id {self.client.chain_id}: "
                    "wrong deployment file, or a restarted chain? (re-run `keeper devchain --protocol perp-v2`)"
                )

    def load(self) -> dict[str, str]:
        """Base token -> market symbol, settlement token -> its ``symbol()``."""
        res = self.multicall.aggregate3([Call(self.settlement_token, F_SYMBOL.encode())]).results[0]
        try:
            token = str(F_SYMBOL.decode(res.data)[0]) if res.success else "settlement token"
        except (ValueError, OverflowError):
            token = "settlement token"
        self.symbols = {to_checksum_address(m.base_token): s for s, m in self.markets.items()}
        self.symbols[self.settlement_token] = token
        return dict(self.symbols)

    def history_ids(self) -> dict[str, int]:
        """Base token -> its market's position in the deployment (the volatility cache's key)."""
        return {to_checksum_address(m.base_token): i for i, m in enumerate(self.markets.values())}

    def probe_head(self) -> HeadProbe:
        ids = self.history_ids()
        aggregators = [to_checksum_address(m.aggregator) for m in self.markets.values()]
        res = self.multicall.aggregate3([Call(a, F_LATEST_ROUND.encode()) for a in aggregators])
        rounds = {
            i: decode_round(r.data).round_id
            for i, r in zip(ids.values(), res.results, strict=True)
            if r.success and len(r.data) >= 160
        }
        return HeadProbe(res.block_number, res.block_timestamp, rounds)

    def read_book(
        self, accounts: Iterable[str], *, cross_check: bool = True, must_read: Iterable[str] = ()
    ) -> AccountBook:
        """:meth:`read` as the protocol-neutral book. Prices are the marks (Curie values positions and the
        requirement at the mark, not the index); volatility comes from the index feed's rounds; the premium
        gap per market is what a market order of :data:`DEFAULT_MARK_PUSH_USD` (``mark_push_usd``) plus the
        book's own positions on that side does to the pool (``premium_gaps``), capped at the price band.
        Every account is read every time (``must_read`` changes nothing)."""
        snap = self.read(accounts, cross_check=cross_check)
        marks = {m.base_token: m.mark_price_x18 for m in snap.markets.values()}
        premiums = {
            m.base_token: m.mark_price_x18 - (m.index_twap_x18 or m.index_price_x18) for m in snap.markets.values()
        }
        traders = {t: st.account for t, st in snap.traders.items()}
        rules = PerpRules(
            traders,
            marks,
            snap.params,
            self.settlement_token,
            premiums,
            depths={m.base_token: m.depth for m in snap.markets.values()},
            reducible=self.reducible,
            releasable=self.releasable,
        )
        long_x18 = dict.fromkeys(marks, 0)
        short_x18 = dict.fromkeys(marks, 0)
        for acct in traders.values():
            for leg in acct.legs:
                value = position_value_x18(leg_size_e18(leg), marks[leg.base_token])
                (long_x18 if value > 0 else short_x18)[leg.base_token] += abs(value)
        push = int(self.mark_push_usd * ONE_E18)
        gaps: dict[str, tuple[float, float]] = {}
        basis: dict[str, dict[str, object]] = {}
        for m in snap.markets.values():
            down, _ = premium_gaps(m.depth, push + long_x18[m.base_token], m.max_price_spread_ratio_e6)
            _, up = premium_gaps(m.depth, push + short_x18[m.base_token], m.max_price_spread_ratio_e6)
            gaps[m.base_token] = (down, up)
            basis[m.base_token] = {
                "basis": "mark",
                "mark": m.mark_price_x18 / ONE_E18,
                "index": m.index_price_x18 / ONE_E18,
                "premium": round(m.premium, 6),
                "premium_gap_down": round(down, 6),
                "premium_gap_up": round(up, 6),
            }
        onchain = {}
        if cross_check:
            for t, st in snap.traders.items():
                req = st.contract_requirement_x18
                onchain[t] = max(0, st.contract_account_value_x18) * WAD // req if req > 0 else 2**256 - 1
        decimals = dict.fromkeys(marks, 18) | {self.settlement_token: 6}
        return AccountBook(
            protocol=self.name,
            block_number=snap.block_number,
            timestamp_s=snap.block_timestamp,
            accounts=tuple(
                margin_view(a, snap.params, premiums, snap.block_number) for _, a in sorted(traders.items())
            ),
            rules=rules,
            prices_e8=rules.prices_e8,
            rounds={m.base_token: m.index_round for m in snap.markets.values() if m.index_round is not None},
            history_ids=self.history_ids(),
            decimals=decimals,
            onchain_health=onchain,
            premium_gaps=gaps,
            price_basis=basis,
            round_trips=snap.round_trips,
            failed=snap.failed,
        )

    def wallet(self, owner: str) -> tuple[dict[str, int], dict[str, int]]:
        """The settlement token ``owner`` holds and has approved to the vault, in one read."""
        who = to_checksum_address(owner)
        token, vault = self.settlement_token, to_checksum_address(self.d.vault)
        res = self.multicall.aggregate3(
            [Call(token, F_ERC20_BALANCE.encode(who)), Call(token, F_ALLOWANCE.encode(who, vault))]
        ).results
        balance, allowance = (_uint(r.data) if r.success else 0 for r in res)
        return {token: balance}, {token: allowance}

    def source_history(self, asset: str, max_rounds: int, latest: PriceRound) -> list[PriceRound]:
        """The index aggregator's rounds before ``latest`` (oldest first, ``latest`` included), one read."""
        market = next((m for m in self.markets.values() if m.base_token.lower() == asset.lower()), None)
        if market is None:
            raise InputError(f"{asset} is not a base token of this Perp v2 deployment")
        ids = history_round_ids(latest.round_id, None, max_rounds)
        res = self.multicall.aggregate3([Call(market.aggregator, F_GET_ROUND.encode(i)) for i in ids]).results
        out = [decode_round(r.data) for r in res if r.success and len(r.data) >= 160]
        return [r for r in out if r.updated_at_s > 0] + [latest]

    def approve_call(self, asset: str, amount: int) -> ContractCall:
        if asset.lower() != self.settlement_token.lower():
            raise InputError(f"Perp v2 takes top-ups in its settlement token {self.settlement_token}, not {asset}")
        return self.approve_call_e6(amount)

    def call_for_account_action(self, action: AccountAction) -> ContractCall:
        """``Vault.depositFor`` for an add-collateral action (the only one Curie lets a third party send);
        ``openPosition`` the other way for a reduction (sent with the owner's own key)."""
        if action.kind is AccountActionKind.REDUCE_EXPOSURE:
            return self.reduce_call(action)
        if action.kind is AccountActionKind.RELEASE:
            return self.withdraw_call(action)
        if action.kind is not AccountActionKind.ADD_COLLATERAL:
            raise InputError(f"{action.kind.value} actions are not sent on Perp v2 by the keeper")
        if action.asset.lower() != self.settlement_token.lower():
            raise InputError(f"depositFor takes the settlement token {self.settlement_token}, not {action.asset}")
        call = self.deposit_for_call(action.account, action.amount)
        meta = {
            "kind": action.kind.value,
            "account": action.account.lower(),
            "asset": self.settlement_token,
            "amount": str(action.amount),
            "cost_e6": action.cost_e6,
        }
        return ContractCall(call.to, call.data, call.value_wei, call.description, {**call.meta, **meta})

    def withdraw_call(self, action: AccountAction) -> ContractCall:
        """``Vault.withdraw(settlementToken, amount)``: margin back to the sender, which must be the trader (the
        keeper holds the owner's key; ``limits.allow_release``)."""
        if action.asset.lower() != self.settlement_token.lower() or action.amount <= 0:
            raise InputError(f"a release withdraws a positive amount of {self.settlement_token}, got {action}")
        return ContractCall(
            to=to_checksum_address(self.d.vault),
            data=F_WITHDRAW.encode(self.settlement_token, action.amount),
            description=f"Vault.withdraw({action.amount / 1e6:,.6f} USDC) to {action.account}",
            meta={
                "protocol": self.name,
                "kind": action.kind.value,
                "account": action.account.lower(),
                "asset": self.settlement_token,
                "amount": str(action.amount),
                "cost_e6": action.cost_e6,
            },
        )

    def reduce_call(self, action: AccountAction) -> ContractCall:
        """Close ``action.amount`` (base units, 18 decimals) of the owner's position in ``action.asset``: a taker
        trade the other way, exact in the base amount, with a quote bound of twice the expected price impact
        plus :data:`REDUCE_SLIPPAGE` at the pool's price now (the trade reverts rather than fill worse)."""
        market = next((m for m in self.markets.values() if m.base_token.lower() == action.asset.lower()), None)
        if market is None or action.amount <= 0:
            raise InputError(f"reduce needs a base token of this deployment and a positive size, got {action}")
        info = self.multicall.aggregate3(
            [
                Call(market.pool, F_SLOT0.encode(), False),
                Call(market.pool, F_LIQUIDITY.encode(), False),
                Call(self.d.market_registry, F_MARKET_INFO.encode(market.base_token), False),
                Call(self.d.account_balance, F_ACCOUNT_INFO.encode(action.account, market.base_token), False),
            ]
        ).results
        depth = PoolDepth(_uint(info[0].data, 0), _uint(info[1].data), _uint(info[2].data, 1))
        size = _int(info[3].data, 0)
        if size == 0 or action.amount > abs(size):
            raise InputError(f"{action.account} holds {size} of {action.asset}: cannot reduce by {action.amount}")
        long = size > 0
        quote = action.amount * depth.price_x18 // ONE_E18
        tolerance = 2 * abs(price_impact(depth, max(quote, 1), buy=not long)) + REDUCE_SLIPPAGE
        bound = int(quote * (1 - tolerance)) if long else int(quote * (1 + tolerance))
        base = to_checksum_address(market.base_token)
        # (baseToken, isBaseToQuote, isExactInput, amount, oppositeAmountBound, deadline, sqrtPriceLimitX96, ref)
        params = (base, long, long, action.amount, bound, 2**256 - 1, 0, b"\x00" * 32)
        return ContractCall(
            to=to_checksum_address(self.d.clearing_house),
            data=F_OPEN_POSITION.encode(params),
            description=f"reduce {action.account}'s {'long' if long else 'short'} {base} by {action.amount / 1e18:.6g}",
            meta={
                "protocol": self.name,
                "kind": action.kind.value,
                "account": action.account.lower(),
                "asset": base,
                "amount": str(action.amount),
                "cost_e6": action.cost_e6,
            },
        )

    def describe_transaction(self, to: str, data: bytes) -> dict | None:
        """A ``depositFor`` of the keeper's key found on chain, in :meth:`call_for_account_action`'s meta form
        (``cost_e6`` too: the settlement token is worth its face value)."""
        if to.lower() == self.d.clearing_house.lower() and data[:4] == F_OPEN_POSITION.selector:
            opened = F_OPEN_POSITION.decode_input(data)
            if opened is None:
                return None
            base, _, _, amount, *_ = opened[0]
            return {
                "kind": AccountActionKind.REDUCE_EXPOSURE.value,
                "asset": to_checksum_address(base),
                "amount": str(int(amount)),
            }  # the account is the sender: the caller knows it
        if to.lower() == self.d.vault.lower() and data[:4] == F_WITHDRAW.selector:
            withdrawn = F_WITHDRAW.decode_input(data)
            if withdrawn is None:
                return None
            return {
                "kind": AccountActionKind.RELEASE.value,
                "asset": to_checksum_address(withdrawn[0]),
                "amount": str(int(withdrawn[1])),
            }  # the account is the sender
        if to.lower() != self.d.vault.lower() or data[:4] != F_DEPOSIT_FOR.selector:
            return None
        args = F_DEPOSIT_FOR.decode_input(data)
        if args is None:
            return None
        trader, token, amount = args
        return {
            "kind": AccountActionKind.ADD_COLLATERAL.value,
            "account": str(trader).lower(),
            "asset": to_checksum_address(token),
            "amount": str(int(amount)),
            "cost_e6": int(amount),
        }

    def discover_accounts(self) -> set[str]:
        """Every trader the ClearingHouse's PositionChanged events name (makers' orders are not taker risk)."""
        if self.scanner is None:
            raise ValueError("discover_accounts needs a journal (cursor store): pass journal= to the adapter")
        self.scanner.scan(_traders_from_logs)
        return {a for a, _ in self.scanner.store.known_accounts(self.scanner.name)}

    # ---- transactions ----------------------------------------------------------------------------

    def deposit_for_call(self, trader: str, amount_e6: int) -> ContractCall:
        """``Vault.depositFor(trader, settlementToken, amount)``: a top-up from the keeper's wallet that backs
        every market of the trader's account at once (the payer needs an approval: :meth:`approve_call`)."""
        if amount_e6 <= 0:
            raise InputError(f"top-up amount must be positive, got {amount_e6}")
        trader = to_checksum_address(trader)
        return ContractCall(
            to=to_checksum_address(self.d.vault),
            data=F_DEPOSIT_FOR.encode(trader, self.settlement_token, amount_e6),
            description=f"Vault.depositFor({trader}, {amount_e6 / 1e6:,.6f} USDC)",
            meta={"protocol": self.name, "kind": "top_up", "account": trader.lower(), "amount_e6": amount_e6},
        )

    def approve_call_e6(self, amount_e6: int) -> ContractCall:
        """Settlement token ``approve(vault, amount)`` from the payer."""
        return ContractCall(
            to=self.settlement_token,
            data=F_APPROVE.encode(to_checksum_address(self.d.vault), amount_e6),
            description=f"approve Perp v2 vault for {amount_e6 / 1e6:,.6f} USDC",
            meta={"protocol": self.name, "kind": "approve", "amount_e6": amount_e6},
        )


def _traders_from_logs(logs: list[dict]) -> set[tuple[str, int, int]]:
    out = set()
    for lg in logs:
        topics = lg["topics"]
        if lg.get("removed") or len(topics) < 2 or topics[0] != TOPIC_POSITION_CHANGED:
            continue
        out.add(("0x" + topics[1][-40:].lower(), 0, int(lg["blockNumber"], 16)))
    return out


def from_config(client: ChainClient, config: KeeperConfig, journal: Journal | None) -> PerpV2Adapter:
    """The registry's factory: ``[protocol] name = "perp-v2"`` with ``deployment`` (a PerpDeployment file)."""
    p = config.protocol
    if p.deployment is None:
        raise ConfigError("perp-v2 needs protocol.deployment = 'path/to/devchain-perp-v2.json'", field="protocol")
    try:
        deployment = PerpDeployment.load(p.deployment)
    except InputError as exc:
        raise ConfigError(str(exc), field="protocol.deployment") from exc
    push = DEFAULT_MARK_PUSH_USD if p.mark_push_usd is None else p.mark_push_usd
    return PerpV2Adapter(client, deployment, journal=journal, mark_push_usd=push)


def stale_markets(snapshot: PerpSnapshot, max_age_s: int) -> list[str]:
    """Markets whose index round is older than ``max_age_s`` at the read block (treat as danger)."""
    return [s for s, m in snapshot.markets.items() if snapshot.block_timestamp - m.index_updated_at_s > max_age_s]


def symbols_of(snapshot: PerpSnapshot, legs: Sequence[PerpLeg]) -> list[str]:
    by_base = {m.base_token.lower(): s for s, m in snapshot.markets.items()}
    return [by_base.get(leg.base_token.lower(), leg.base_token) for leg in legs]
