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

from keeper.accounts.perp_v2 import PerpAccount, PerpLeg, PerpMargin, PerpParams, PoolDepth, margin_at
from keeper.chain.abi import DecodedRevert, ErrorDecoder, Function
from keeper.chain.multicall import Call, Multicall
from keeper.chain.rpc import ChainClient
from keeper.errors import ChainMismatchError, InputError
from keeper.protocols.reference import write_atomically
from keeper.tx.call import ContractCall

if TYPE_CHECKING:
    from web3 import Web3

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
F_APPROVE = Function("approve(address,uint256)")

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


class PerpV2Adapter:
    """Curie at the addresses of a :class:`PerpDeployment` (written by ``keeper devchain --protocol perp-v2``)."""

    name = "perp-v2"

    def __init__(
        self, client: ChainClient, deployment, *, max_calls_per_chunk: int = 120, max_request_bytes: int = 1_900_000
    ) -> None:
        self.client = client
        self.d = deployment
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

    def approve_call(self, amount_e6: int) -> ContractCall:
        """Settlement token ``approve(vault, amount)`` from the payer."""
        return ContractCall(
            to=self.settlement_token,
            data=F_APPROVE.encode(to_checksum_address(self.d.vault), amount_e6),
            description=f"approve Perp v2 vault for {amount_e6 / 1e6:,.6f} USDC",
            meta={"protocol": self.name, "kind": "approve", "amount_e6": amount_e6},
        )


def stale_markets(snapshot: PerpSnapshot, max_age_s: int) -> list[str]:
    """Markets whose index round is older than ``max_age_s`` at the read block (treat as danger)."""
    return [s for s, m in snapshot.markets.items() if snapshot.block_timestamp - m.index_updated_at_s > max_age_s]


def symbols_of(snapshot: PerpSnapshot, legs: Sequence[PerpLeg]) -> list[str]:
    by_base = {m.base_token.lower(): s for s, m in snapshot.markets.items()}
    return [by_base.get(leg.base_token.lower(), leg.base_token) for leg in legs]
