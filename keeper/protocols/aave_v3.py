"""Adapter for real Aave v3 pools (core-v3 1.19.3 interface): one batched read per cycle, calls on behalf.

Configuration: a ``PoolAddressesProvider`` address, or a market name from :data:`AAVE_V3_MARKETS` (the
providers published in ``@aave-dao/aave-address-book``); Pool, AaveOracle and the data provider are read
from the provider on chain.

Per cycle :meth:`AaveV3Adapter.read_accounts` reads at one block through Multicall3 (an incremental read, below:
pinned by its hash, EIP-1898 ``{"blockHash", "requireCanonical"}``, the head's header its first request):

1. the market pass: every reserve's ``getReserveData`` (configuration bitmap, indices, rates, token addresses)
   and stable debt ``totalSupply``, each price source's ``latestRoundData``, every e-mode category's data and
   the reserve list (a changed list or e-mode set reloads them and reads again);
2. the accounts passes, for the accounts to read: ``getUserConfiguration``, ``getUserEMode`` (and
   ``getUserAccountData`` with ``cross_check``); then the oracle's ``getAssetsPrices``, ``scaledBalanceOf`` of
   the aToken for every reserve flagged as collateral and of the variable debt token for every reserve flagged
   as borrowed, and ``balanceOf`` of the stable debt token where that reserve has any stable debt (its
   ``totalSupply``, read in (1)).

Incremental reads. An account's scaled balances, configuration bitmap and e-mode change only through
transactions, and each emits a log naming it (Pool: Supply, Withdraw, Borrow, Repay, LiquidationCall,
ReserveUsedAsCollateral*, UserEModeSet, ...; aToken and debt tokens: Transfer, BalanceTransfer, Mint, Burn).
The adapter holds every account as last read and the block (number and hash) it is valid at. A read at
``"latest"`` after the first one fetches ``eth_getLogs`` of the Pool and every reserve token (one filter, an
address list, ranges of ``log_chunk_blocks``) over (last block - ``reorg_depth``, block], in one JSON-RPC batch
with the block's header (its hash must be the read's: the node that answered has the block), and reads again
only: the accounts any log names (any topic or 32-byte data word equal to the account's address word: no event
list, so a forgotten event can only cause an extra read), those the previous read's logs named in its last
``reorg_depth`` blocks (a reorg could undo them), new accounts, accounts whose last read failed, accounts with
stable debt (its balance accrues every second) and the caller's ``must_read``. Every account is read (a full
read, logged with its reason as ``aave_full_read``) on the first read; with ``cross_check``; when the last
read's block is no longer on the chain (its header, fetched in the batch after the head's, has another hash) or
the head went back; past ``full_read_after_blocks`` blocks or ``full_read_every_s`` seconds of chain time since
the last full read (0: every read is full); when ``eth_getLogs`` fails or its node lacks the block (a node that
refuses the range as too large: the full read then asks for its own last ``reorg_depth`` blocks only, so the next
read can be incremental); when the reserve list, a token address or the e-mode categories (set or parameters)
changed; and when a market contract logs ``Upgraded`` after the last read's block.
A read with ``cross_check``, with ``full_read_every_s = 0`` or of a given block reads every account as before
the incremental reads: the market and the accounts' configurations in one pass at the head, the balances
pinned to its block number (two round trips for 1,000 accounts), and holds nothing but its balances pass: the
next such read sends it along with the market pass (the same block) and keeps its answers for every account
whose configuration bitmap is unchanged (one round trip; the changed and new accounts' balances in a second one;
a changed reserve token, stable-debt set or price list reads the balances pass afresh).

The keeper then recomputes each account's six ``getUserAccountData`` values with
:func:`keeper.accounts.aave_v3.account_data` (exact integer arithmetic) and keeps the contract's own values
beside them (``AaveSnapshot.onchain``): they must agree to the wei.

Transactions (explicit amounts: ``repay(type(uint256).max)`` on behalf of another user reverts 40):
``supply(asset, amount, onBehalfOf, 0)``, ``repay(asset, amount, 2, onBehalfOf)``, ``approve(pool, amount)``;
``withdraw(asset, amount, to=owner)`` only for the owner's own key (a release: ``limits.allow_release`` and
the keeper's key is the account's). Reverts carry Aave's numeric codes (``Errors.sol``); the
:class:`AaveErrorDecoder` turns them into words.

What the position-based ``ProtocolAdapter`` ABC (keeper/protocols/base.py) would need to take this adapter:
accounts keyed by address only (no market id), a snapshot of margin accounts instead of positions and
per-market prices, and actions "supply/repay asset amount" instead of addMargin/moveMargin.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import to_checksum_address

from keeper.accounts.aave_v3 import (
    AaveAccount,
    AaveRules,
    AccountData,
    EModeCategory,
    Market,
    ReserveState,
    UserReserve,
    decode_reserve_configuration,
)
from keeper.chain.abi import DecodedRevert, ErrorDecoder, Function, event_topic
from keeper.chain.discovery import LogScanner, is_range_error
from keeper.chain.multicall import MULTICALL3_ADDRESS, Call, Multicall, Prepared, Result
from keeper.chain.rpc import BlockId, ChainClient, RpcErrorResponse
from keeper.domain import AccountAction, AccountActionKind, PriceRound
from keeper.errors import ChainMismatchError, InputError, TransientRpcError
from keeper.protocols.base import AccountAdapter, AccountBook, HeadProbe
from keeper.tx.call import ContractCall

if TYPE_CHECKING:
    from keeper.runtime.config import KeeperConfig
    from keeper.tx.journal import Journal

log = structlog.get_logger(__name__)

ZERO_ADDRESS = "0x" + "00" * 20

# PoolAddressesProvider of the real Aave v3 markets (@aave-dao/aave-address-book 4.68.1,
# src/AaveV3<Chain>.sol, POOL_ADDRESSES_PROVIDER): market name -> (chain id, provider).
AAVE_V3_MARKETS: dict[str, tuple[int, str]] = {
    "ethereum": (1, "0x2f39d218133AFaB8F2B819B1066c7E434Ad94E9e"),
    "arbitrum": (42161, "0xa97684ead0e402dC232d5A977953DF7ECBaB3CDb"),
    "base": (8453, "0xe20fCBdBfFC4Dd138cE8b2E6FBb6CB49777ad64D"),
    "optimism": (10, "0xa97684ead0e402dC232d5A977953DF7ECBaB3CDb"),
    "polygon": (137, "0xa97684ead0e402dC232d5A977953DF7ECBaB3CDb"),
    "avalanche": (43114, "0xa97684ead0e402dC232d5A977953DF7ECBaB3CDb"),
}

F_GET_POOL = Function("getPool()", ["address"])
F_SYMBOL = Function("symbol()", ["string"])
F_GET_ORACLE = Function("getPriceOracle()", ["address"])
F_GET_DATA_PROVIDER = Function("getPoolDataProvider()", ["address"])
F_RESERVES_LIST = Function("getReservesList()", ["address[]"])
F_RESERVE_DATA = Function("getReserveData(address)")
F_ACCOUNT_DATA = Function("getUserAccountData(address)")
F_USER_CONFIG = Function("getUserConfiguration(address)")
F_USER_EMODE = Function("getUserEMode(address)")
F_EMODE_DATA = Function("getEModeCategoryData(uint8)", ["(uint16,uint16,uint16,address,string)"])
F_ASSETS_PRICES = Function("getAssetsPrices(address[])", ["uint256[]"])
F_SOURCE_OF_ASSET = Function("getSourceOfAsset(address)", ["address"])
F_LATEST_ROUND = Function("latestRoundData()")
F_SCALED_BALANCE = Function("scaledBalanceOf(address)")
F_BALANCE = Function("balanceOf(address)")
F_TOTAL_SUPPLY = Function("totalSupply()")
F_SUPPLY = Function("supply(address,uint256,address,uint16)")
F_REPAY = Function("repay(address,uint256,uint256,address)")
F_WITHDRAW = Function("withdraw(address,uint256,address)")
F_APPROVE = Function("approve(address,uint256)")
F_ALLOWANCE = Function("allowance(address,address)")
F_GET_ROUND = Function("getRoundData(uint80)")

POOL_EVENTS = {
    # event topic -> index of the topic holding the account (Pool.sol 1.19.3 event declarations)
    event_topic("Supply(address,address,address,uint256,uint16)"): 2,  # onBehalfOf
    event_topic("Borrow(address,address,address,uint256,uint8,uint256,uint16)"): 2,  # onBehalfOf
    event_topic("Repay(address,address,address,uint256,bool)"): 2,  # user
    event_topic("Withdraw(address,address,address,uint256)"): 2,  # user
    event_topic("LiquidationCall(address,address,address,uint256,uint256,address,bool)"): 3,  # user
}

UPGRADED_TOPIC = event_topic("Upgraded(address)")  # a proxy of the market (Pool, a token) got a new implementation

# Errors.sol of @aave/core-v3 1.19.3 (code -> constant name: its comment)
AAVE_ERRORS: dict[int, str] = {
    1: "CALLER_NOT_POOL_ADMIN: The caller of the function is not a pool admin",
    2: "CALLER_NOT_EMERGENCY_ADMIN: The caller of the function is not an emergency admin",
    3: "CALLER_NOT_POOL_OR_EMERGENCY_ADMIN: The caller of the function is not a pool or emergency admin",
    4: "CALLER_NOT_RISK_OR_POOL_ADMIN: The caller of the function is not a risk or pool admin",
    5: "CALLER_NOT_ASSET_LISTING_OR_POOL_ADMIN: The caller of the function is not an asset listing or pool admin",
    6: "CALLER_NOT_BRIDGE: The caller of the function is not a bridge",
    7: "ADDRESSES_PROVIDER_NOT_REGISTERED: Pool addresses provider is not registered",
    8: "INVALID_ADDRESSES_PROVIDER_ID: Invalid id for the pool addresses provider",
    9: "NOT_CONTRACT: Address is not a contract",
    10: "CALLER_NOT_POOL_CONFIGURATOR: The caller of the function is not the pool configurator",
    11: "CALLER_NOT_ATOKEN: The caller of the function is not an AToken",
    12: "INVALID_ADDRESSES_PROVIDER: The address of the pool addresses provider is invalid",
    13: "INVALID_FLASHLOAN_EXECUTOR_RETURN: Invalid return value of the flashloan executor function",
    14: "RESERVE_ALREADY_ADDED: Reserve has already been added to reserve list",
    15: "NO_MORE_RESERVES_ALLOWED: Maximum amount of reserves in the pool reached",
    16: "EMODE_CATEGORY_RESERVED: Zero eMode category is reserved for volatile heterogeneous assets",
    17: "INVALID_EMODE_CATEGORY_ASSIGNMENT: Invalid eMode category assignment to asset",
    18: "RESERVE_LIQUIDITY_NOT_ZERO: The liquidity of the reserve needs to be 0",
    19: "FLASHLOAN_PREMIUM_INVALID: Invalid flashloan premium",
    20: "INVALID_RESERVE_PARAMS: Invalid risk parameters for the reserve",
    21: "INVALID_EMODE_CATEGORY_PARAMS: Invalid risk parameters for the eMode category",
    22: "BRIDGE_PROTOCOL_FEE_INVALID: Invalid bridge protocol fee",
    23: "CALLER_MUST_BE_POOL: The caller of this function must be a pool",
    24: "INVALID_MINT_AMOUNT: Invalid amount to mint",
    25: "INVALID_BURN_AMOUNT: Invalid amount to burn",
    26: "INVALID_AMOUNT: Amount must be greater than 0",
    27: "RESERVE_INACTIVE: Action requires an active reserve",
    28: "RESERVE_FROZEN: Action cannot be performed because the reserve is frozen",
    29: "RESERVE_PAUSED: Action cannot be performed because the reserve is paused",
    30: "BORROWING_NOT_ENABLED: Borrowing is not enabled",
    31: "STABLE_BORROWING_NOT_ENABLED: Stable borrowing is not enabled",
    32: "NOT_ENOUGH_AVAILABLE_USER_BALANCE: User cannot withdraw more than the available balance",
    33: "INVALID_INTEREST_RATE_MODE_SELECTED: Invalid interest rate mode selected",
    34: "COLLATERAL_BALANCE_IS_ZERO: The collateral balance is 0",
    35: "HEALTH_FACTOR_LOWER_THAN_LIQUIDATION_THRESHOLD: Health factor is lesser than the liquidation threshold",
    36: "COLLATERAL_CANNOT_COVER_NEW_BORROW: There is not enough collateral to cover a new borrow",
    37: "COLLATERAL_SAME_AS_BORROWING_CURRENCY: Collateral is (mostly) the same currency that is being borrowed",
    38: (
        "AMOUNT_BIGGER_THAN_MAX_LOAN_SIZE_STABLE: The requested amount is greater than the max loan size"
        " in stable rate mode"
    ),
    39: "NO_DEBT_OF_SELECTED_TYPE: For repayment of a specific type of debt, the user needs to have debt that type",
    40: "NO_EXPLICIT_AMOUNT_TO_REPAY_ON_BEHALF: To repay on behalf of a user an explicit amount to repay is needed",
    41: "NO_OUTSTANDING_STABLE_DEBT: User does not have outstanding stable rate debt on this reserve",
    42: "NO_OUTSTANDING_VARIABLE_DEBT: User does not have outstanding variable rate debt on this reserve",
    43: "UNDERLYING_BALANCE_ZERO: The underlying balance needs to be greater than 0",
    44: "INTEREST_RATE_REBALANCE_CONDITIONS_NOT_MET: Interest rate rebalance conditions were not met",
    45: "HEALTH_FACTOR_NOT_BELOW_THRESHOLD: Health factor is not below the threshold",
    46: "COLLATERAL_CANNOT_BE_LIQUIDATED: The collateral chosen cannot be liquidated",
    47: "SPECIFIED_CURRENCY_NOT_BORROWED_BY_USER: User did not borrow the specified currency",
    49: "INCONSISTENT_FLASHLOAN_PARAMS: Inconsistent flashloan parameters",
    50: "BORROW_CAP_EXCEEDED: Borrow cap is exceeded",
    51: "SUPPLY_CAP_EXCEEDED: Supply cap is exceeded",
    52: "UNBACKED_MINT_CAP_EXCEEDED: Unbacked mint cap is exceeded",
    53: "DEBT_CEILING_EXCEEDED: Debt ceiling is exceeded",
    54: (
        "UNDERLYING_CLAIMABLE_RIGHTS_NOT_ZERO: Claimable rights over underlying not zero"
        " (aToken supply or accruedToTreasury)"
    ),
    55: "STABLE_DEBT_NOT_ZERO: Stable debt supply is not zero",
    56: "VARIABLE_DEBT_SUPPLY_NOT_ZERO: Variable debt supply is not zero",
    57: "LTV_VALIDATION_FAILED: Ltv validation failed",
    58: "INCONSISTENT_EMODE_CATEGORY: Inconsistent eMode category",
    59: "PRICE_ORACLE_SENTINEL_CHECK_FAILED: Price oracle sentinel validation failed",
    60: "ASSET_NOT_BORROWABLE_IN_ISOLATION: Asset is not borrowable in isolation mode",
    61: "RESERVE_ALREADY_INITIALIZED: Reserve has already been initialized",
    62: "USER_IN_ISOLATION_MODE_OR_LTV_ZERO: User is in isolation mode or ltv is zero",
    63: "INVALID_LTV: Invalid ltv parameter for the reserve",
    64: "INVALID_LIQ_THRESHOLD: Invalid liquidity threshold parameter for the reserve",
    65: "INVALID_LIQ_BONUS: Invalid liquidity bonus parameter for the reserve",
    66: "INVALID_DECIMALS: Invalid decimals parameter of the underlying asset of the reserve",
    67: "INVALID_RESERVE_FACTOR: Invalid reserve factor parameter for the reserve",
    68: "INVALID_BORROW_CAP: Invalid borrow cap for the reserve",
    69: "INVALID_SUPPLY_CAP: Invalid supply cap for the reserve",
    70: "INVALID_LIQUIDATION_PROTOCOL_FEE: Invalid liquidation protocol fee for the reserve",
    71: "INVALID_EMODE_CATEGORY: Invalid eMode category for the reserve",
    72: "INVALID_UNBACKED_MINT_CAP: Invalid unbacked mint cap for the reserve",
    73: "INVALID_DEBT_CEILING: Invalid debt ceiling for the reserve",
    74: "INVALID_RESERVE_INDEX: Invalid reserve index",
    75: "ACL_ADMIN_CANNOT_BE_ZERO: ACL admin cannot be set to the zero address",
    76: "INCONSISTENT_PARAMS_LENGTH: Array parameters that should be equal length are not",
    77: "ZERO_ADDRESS_NOT_VALID: Zero address not valid",
    78: "INVALID_EXPIRATION: Invalid expiration",
    79: "INVALID_SIGNATURE: Invalid signature",
    80: "OPERATION_NOT_SUPPORTED: Operation not supported",
    81: "DEBT_CEILING_NOT_ZERO: Debt ceiling is not zero",
    82: "ASSET_NOT_LISTED: Asset is not listed",
    83: "INVALID_OPTIMAL_USAGE_RATIO: Invalid optimal usage ratio",
    84: "INVALID_OPTIMAL_STABLE_TO_TOTAL_DEBT_RATIO: Invalid optimal stable to total debt ratio",
    85: "UNDERLYING_CANNOT_BE_RESCUED: The underlying asset cannot be rescued",
    86: "ADDRESSES_PROVIDER_ALREADY_ADDED: Reserve has already been added to reserve list",
    87: (
        "POOL_ADDRESSES_DO_NOT_MATCH: The token implementation pool address and the pool address provided"
        " by the initializing pool do not match"
    ),
    88: "STABLE_BORROWING_ENABLED: Stable borrowing is enabled",
    89: "SILOED_BORROWING_VIOLATION: User is trying to borrow multiple assets including a siloed one",
    90: "RESERVE_DEBT_NOT_ZERO: the total debt of the reserve needs to be 0",
    91: "FLASHLOAN_DISABLED: FlashLoaning for this asset is disabled",
}


def aave_error(message: str) -> str:
    """``"execution reverted: 45"`` -> ``"45 HEALTH_FACTOR_NOT_BELOW_THRESHOLD: ..."`` (unchanged if not a code)."""
    tail = message.rsplit(":", 1)[-1].strip()
    if tail.isdigit() and int(tail) in AAVE_ERRORS:
        return f"{tail} {AAVE_ERRORS[int(tail)]}"
    return message


class AaveErrorDecoder(ErrorDecoder):
    """Revert decoder for the transaction manager: Aave's ``Error("NN")`` reasons come out in words."""

    def decode(self, data: bytes | None) -> DecodedRevert:
        decoded = super().decode(data)
        if decoded.name == "Error" and len(decoded.args) == 1 and str(decoded.args[0]).isdigit():
            return DecodedRevert("Error", (aave_error(str(decoded.args[0])),), decoded.raw)
        return decoded


def resolve_provider(market: str | None = None, provider: str | None = None) -> tuple[int | None, str]:
    """(expected chain id or None, provider address) from a market name or an explicit provider."""
    if provider:
        try:
            return None, to_checksum_address(provider)
        except ValueError as exc:
            raise InputError(
                f"provider {provider!r} is not an address: give the market's PoolAddressesProvider (0x + 40 hex digits)"
            ) from exc
    if market is None:
        raise InputError("aave-v3 needs `market` (one of " + ", ".join(AAVE_V3_MARKETS) + ") or `provider`")
    key = market.strip().lower()
    if key not in AAVE_V3_MARKETS:
        raise InputError(
            f"unknown Aave v3 market {market!r}: use one of {', '.join(AAVE_V3_MARKETS)} "
            "or give its PoolAddressesProvider as `provider`"
        )
    chain_id, addr = AAVE_V3_MARKETS[key]
    return chain_id, to_checksum_address(addr)


def _word(data: bytes, i: int) -> int:
    return int.from_bytes(data[32 * i : 32 * (i + 1)], "big")


def _addr(data: bytes, i: int) -> str:
    return to_checksum_address("0x" + data[32 * i + 12 : 32 * (i + 1)].hex())


def decode_reserve_data(asset: str, data: bytes) -> ReserveState:
    """``getReserveData``: the 15-word all-static ``ReserveData`` struct."""
    if len(data) < 15 * 32:
        raise ChainMismatchError(f"getReserveData({asset}) answered {len(data)} bytes, expected 480")
    return ReserveState(
        asset=asset,
        config=decode_reserve_configuration(_word(data, 0)),
        liquidity_index_ray=_word(data, 1),
        liquidity_rate_ray=_word(data, 2),
        variable_borrow_index_ray=_word(data, 3),
        variable_borrow_rate_ray=_word(data, 4),
        last_update_s=_word(data, 6),
        reserve_id=_word(data, 7),
        a_token=_addr(data, 8),
        stable_debt_token=_addr(data, 9),
        variable_debt_token=_addr(data, 10),
        isolation_mode_total_debt_e2=_word(data, 14),
    )


def _round(data: bytes) -> PriceRound:
    answer = _word(data, 1)
    return PriceRound(
        round_id=_word(data, 0), price_e8=answer - (1 << 256) if answer >> 255 else answer, updated_at_s=_word(data, 3)
    )


@dataclass(frozen=True, slots=True)
class _Layout:
    """What one user-configuration bitmap asks the second pass to read: the calls (target, selector) in order,
    and per flagged reserve (asset, collateral?, borrowing?, how many debt reads: 0, 1 variable, 2 + stable)."""

    calls: tuple[tuple[str, bytes], ...]
    reserves: tuple[tuple[str, bool, bool, int], ...]
    # per flagged reserve: asset, the positions of its aToken, variable and stable debt answers among the calls
    # (-1: not read, 0), collateral?, borrowing?
    slots: tuple[tuple[str, int, int, int, bool, bool], ...] = ()


class _Layouts:
    """:class:`_Layout` per configuration bitmap, built once per distinct bitmap in a read (a book of 10,000
    accounts holds a handful of reserve combinations)."""

    def __init__(self, reserves: dict[str, ReserveState], stable_any: set[str]) -> None:
        self._by_id = list({s.reserve_id: a for a, s in reserves.items()}.items())  # the pool's reserve order
        self._reserves = reserves
        self._stable_any = stable_any
        self._memo: dict[int, _Layout] = {}
        # what the layouts depend on besides the bitmap: equal signatures, equal calls for every bitmap
        self.signature = tuple(
            (rid, a, s.a_token, s.variable_debt_token, s.stable_debt_token, a in stable_any)
            for rid, a in self._by_id
            for s in (reserves[a],)
        )

    def of(self, bits: int) -> _Layout:
        found = self._memo.get(bits)
        if found is None:
            found = self._memo[bits] = self._layout(bits)
        return found

    def _layout(self, bits: int) -> _Layout:
        calls: list[tuple[str, bytes]] = []
        out: list[tuple[str, bool, bool, int]] = []
        for rid, asset in self._by_id:
            state = self._reserves[asset]
            coll, borrow = bool(bits >> (2 * rid + 1) & 1), bool(bits >> (2 * rid) & 1)
            if coll:
                calls.append((state.a_token, F_SCALED_BALANCE.selector))
            reads = 0
            if borrow:
                calls.append((state.variable_debt_token, F_SCALED_BALANCE.selector))
                reads = 1
                if asset in self._stable_any:
                    calls.append((state.stable_debt_token, F_BALANCE.selector))
                    reads = 2
            if coll or borrow:
                out.append((asset, coll, borrow, reads))
        slots, at = [], 0
        for asset, coll, borrow, reads in out:
            a = at if coll else -1
            at += coll
            v = at if reads else -1
            s = at + 1 if reads > 1 else -1
            at += reads
            slots.append((asset, a, v, s, coll, borrow))
        return _Layout(tuple(calls), tuple(out), tuple(slots))


@dataclass(frozen=True)
class AaveSnapshot:
    """Every watched account and the market state they were read with, at one block."""

    block_number: int
    market: Market
    accounts: dict[str, AaveAccount]
    onchain: dict[str, AccountData]  # the contract's getUserAccountData, for cross-checks
    rounds: dict[str, PriceRound]  # asset -> its price source's latest round
    round_trips: int
    failed: tuple[str, ...] = field(default_factory=tuple)
    read: tuple[str, ...] = ()  # the accounts read afresh at this block (the others: held, unchanged since)
    full_read: str | None = None  # why every account was read (None: only those the logs name, and the must-reads)
    unsure: tuple[str, ...] = ()  # accounts a balance read of failed (read as 0, as before; not held)


@dataclass(frozen=True, slots=True)
class _MarketRead:
    """The per-reserve state of one read (the market pass)."""

    reserves: dict[str, ReserveState]
    rounds: dict[str, PriceRound]
    emodes: dict[int, EModeCategory]
    stable_any: set[str]  # reserves with any stable debt (totalSupply > 0)
    block_number: int
    timestamp_s: int


@dataclass(frozen=True, slots=True)
class _SecondPass:
    """A read's balances pass: what its calls depend on (multicall, oracle, price assets, the reserves' tokens,
    then each account's configuration bitmap), the calls (the oracle's prices first, then per account the calls
    of its bitmap's :class:`_Layout`), where each (account, bitmap)'s answers start and end among them, and the
    calls prepared."""

    key: tuple
    calls: list[Call]
    spans: dict[tuple[str, int], tuple[int, int]]
    prepared: Prepared


@dataclass(slots=True)
class _Held:
    """The accounts as last read, all valid at ``block_number`` (hash ``block_hash``): each was read there, or
    read before and named by no log since."""

    block_number: int
    block_hash: str
    full_read_at_s: int  # chain time of the last full read
    accounts: dict[str, AaveAccount]
    tokens: tuple  # the reserves' ids and token addresses the accounts were read with (_token_signature)
    recent: set[str] | None  # accounts the logs named in the last reorg_depth blocks (None: logs unknown)
    emodes: dict[int, EModeCategory]  # the e-mode categories as read then


class _LogsUnsure(Exception):
    """The logs of a range cannot be trusted to be complete for the read's block."""


def _tokens(state: ReserveState) -> tuple[str, str, str]:
    return state.a_token, state.variable_debt_token, state.stable_debt_token


def _token_signature(reserves: dict[str, ReserveState]) -> tuple:
    return tuple((a, s.reserve_id, *_tokens(s)) for a, s in reserves.items())


def _market_change(held: _Held, market: _MarketRead, signature: tuple) -> str | None:
    """Why the held accounts cannot be carried over to ``market`` (a listing, a token, an e-mode change: rare
    governance acts, each answered with a full read), or ``None``."""
    before, now = [t[0] for t in held.tokens], list(market.reserves)
    if before != now:
        return f"the reserve list changed ({len(before)} -> {len(now)} reserves)"
    if signature != held.tokens:
        return "a reserve's token address changed"
    if market.emodes != held.emodes:
        return "the e-mode categories changed"
    return None


class AaveV3Adapter(AccountAdapter):
    """One Aave v3 pool found through its ``PoolAddressesProvider``."""

    name = "aave-v3"

    def __init__(
        self,
        client: ChainClient,
        provider: str,
        *,
        multicall: str = MULTICALL3_ADDRESS,
        journal=None,
        start_block: int = 0,
        log_chunk_blocks: int = 5_000,
        reorg_depth: int = 12,
        expected_chain_id: int | None = None,
        full_read_after_blocks: int = 1_000,
        full_read_every_s: int = 300,
    ) -> None:
        if log_chunk_blocks < 1 or reorg_depth < 0 or full_read_after_blocks < 0 or full_read_every_s < 0:
            raise ValueError(
                "log_chunk_blocks must be >= 1 and reorg_depth, full_read_after_blocks, full_read_every_s >= 0"
            )
        self.client = client
        self.log_chunk_blocks = log_chunk_blocks
        self.reorg_depth = reorg_depth
        self.full_read_after_blocks = full_read_after_blocks
        self.full_read_every_s = full_read_every_s  # chain time; 0: every read is a full read
        if expected_chain_id is not None and client.chain_id is not None and client.chain_id != expected_chain_id:
            raise ChainMismatchError(
                f"market's provider is on chain id {expected_chain_id}, the RPC serves chain id {client.chain_id}"
            )
        self.provider = to_checksum_address(provider)
        self.multicall = Multicall(client, multicall)
        self.errors = AaveErrorDecoder()
        res = self.multicall.aggregate3(
            [Call(self.provider, f.encode()) for f in (F_GET_POOL, F_GET_ORACLE, F_GET_DATA_PROVIDER)]
        )
        if not all(r.success and len(r.data) == 32 for r in res.results):
            raise ChainMismatchError(f"no PoolAddressesProvider at {self.provider} on chain id {client.chain_id}")
        self.pool, self.oracle, self.data_provider = (_addr(r.data, 0) for r in res.results)
        self.reserves: dict[str, ReserveState] = {}
        self.sources: dict[str, str] = {}
        self.emode_ids: tuple[int, ...] = ()
        self.symbols: dict[str, str] = {}  # asset -> symbol, from load()
        self._checksums: dict[str, str] = {}  # user as given -> EIP-55
        self._address_words: dict[str, bytes] = {}  # EIP-55 user -> its 32-byte ABI word
        self._user_by_word: dict[str, str] = {}  # the ABI word in lower-case hex (64 digits) -> EIP-55 user
        self._held: _Held | None = None  # the accounts as last read at "latest" (incremental reads)
        self._first_pass: tuple[tuple, Prepared] | None = None  # (what the calls depend on, the calls prepared)
        self._second_pass: _SecondPass | None = None  # the last read's balances pass (sent ahead by a full read)
        self.scanner = None
        if journal is not None:
            self.scanner = LogScanner(
                client,
                journal,
                f"{self.name}:{self.pool.lower()}:accounts",
                self.pool,
                [list(POOL_EVENTS)],
                start_block,
                chunk_blocks=log_chunk_blocks,
                reorg_depth=reorg_depth,
            )

    @classmethod
    def for_market(
        cls, client: ChainClient, market: str | None = None, provider: str | None = None, **kw
    ) -> AaveV3Adapter:
        chain_id, addr = resolve_provider(market, provider)
        return cls(client, addr, expected_chain_id=chain_id, **kw)

    # ---- reads -----------------------------------------------------------------------------------

    def load_reserves(self) -> dict[str, ReserveState]:
        """Reserve list, reserve data and price sources (once; the list changes only by governance)."""
        listed = self.multicall.aggregate3([Call(self.pool, F_RESERVES_LIST.encode(), False)]).results[0]
        assets = [to_checksum_address(a) for a in F_RESERVES_LIST.decode(listed.data)[0]]
        calls = [Call(self.pool, F_RESERVE_DATA.encode(a), False) for a in assets]
        calls += [Call(self.oracle, F_SOURCE_OF_ASSET.encode(a)) for a in assets]
        res = self.multicall.aggregate3(calls).results
        n = len(assets)
        self.reserves = {a: decode_reserve_data(a, r.data) for a, r in zip(assets, res[:n], strict=True)}
        self.sources = {a: _addr(r.data, 0) for a, r in zip(assets, res[n:], strict=True) if r.success}
        self.emode_ids = tuple(sorted({s.config.emode_category for s in self.reserves.values()} - {0}))
        log.info("aave_reserves_loaded", pool=self.pool, reserves=n, emode_categories=len(self.emode_ids))
        return self.reserves

    def load(self) -> dict[str, str]:
        """The reserves (:meth:`load_reserves`) and each underlying's ``symbol()`` (a token without a string
        symbol is named by its address)."""
        reserves = self.load_reserves()
        if not reserves:
            raise ChainMismatchError(f"the pool {self.pool} lists no reserves: wrong provider or market?")
        assets = list(reserves)
        res = self.multicall.aggregate3([Call(a, F_SYMBOL.encode()) for a in assets]).results
        out = {}
        for a, r in zip(assets, res, strict=True):
            try:
                out[a] = str(F_SYMBOL.decode(r.data)[0]) if r.success else a
            except (DecodingError, ValueError):
                out[a] = a
        self.symbols = out
        return dict(out)

    def read_book(
        self, accounts: Iterable[str], *, cross_check: bool = True, must_read: Iterable[str] = ()
    ) -> AccountBook:
        """:meth:`read_accounts` as the protocol-neutral book: prices are the oracle's, rounds the sources'."""
        snap = self.read_accounts(accounts, cross_check=cross_check, must_read=must_read)
        rules = AaveRules(snap.accounts, snap.market, self.symbols, releasable=self.releasable)
        return AccountBook(
            protocol=self.name,
            block_number=snap.block_number,
            timestamp_s=snap.market.timestamp_s,
            accounts=tuple(rules.margin_account(u, snap.block_number) for u in sorted(snap.accounts)),
            rules=rules,
            prices_e8=dict(snap.market.prices_e8),
            rounds=dict(snap.rounds),
            history_ids={a: r.reserve_id for a, r in snap.market.reserves.items()},
            decimals={a: r.config.decimals for a, r in snap.market.reserves.items()},
            onchain_health={u.lower(): d.health_factor_wad for u, d in snap.onchain.items()},
            round_trips=snap.round_trips,
            failed=snap.failed,
            accounts_read=len(snap.read),
        )

    def read_accounts(
        self,
        users: Iterable[str],
        block: int | str = "latest",
        *,
        cross_check: bool = True,
        must_read: Iterable[str] = (),
    ) -> AaveSnapshot:
        """Every account in ``users`` with the market state, at one block; at ``"latest"`` only the accounts the
        chain says changed since the last read are read again (the module's docstring says when and how).

        ``cross_check=True`` reads every account with the contract's own ``getUserAccountData`` beside (a full
        read); ``cross_check=False`` skips it (the keeper computes the same six values exactly). ``must_read``:
        accounts read afresh whatever the logs say (the service's endangered ones). A read at a given ``block``
        reads every account and leaves the held state alone.
        """
        if not self.reserves:
            self.load_reserves()
        users = [self._checksummed(u) for u in users]
        if block != "latest" or cross_check or self.full_read_every_s == 0:
            # read in full whatever the logs say: the market and the accounts' configurations in one pass (with
            # the last such read's balances pass), the balances of the others pinned to its block (at most two
            # round trips for 1,000 accounts); nothing held (a later read at "latest" of another kind starts over
            # with a full read)
            if block == "latest":
                self._held = None
                why = "cross-check (getUserAccountData) reads every account" if cross_check else "full_read_every_s = 0"
            else:
                why = f"a read of block {block}"
            market, trips, got, ahead = self._market_pass(block, users, cross_check)
            return self._accounts_pass(
                users, users, market, market.block_number, cross_check, trips, why, got=got, ahead=ahead
            )
        held = self._held
        calls: list[tuple[str, list]] = [("eth_getBlockByNumber", ["latest", False])]
        if held is not None:  # in the same batch, after the head: the last read's block as the head's chain has it
            calls.append(("eth_getBlockByNumber", [hex(held.block_number), False]))
        answers = self.client.batch(calls)
        head = answers[0]
        number, block_hash, stamp = int(head["number"], 16), str(head["hash"]), int(head["timestamp"], 16)
        pin: dict[str, Any] = {"blockHash": block_hash, "requireCanonical": True}
        market, trips, _, _ = self._market_pass(pin)
        trips += 1
        reason = self._full_read_reason(held, number, stamp, answers[1] if held is not None else None)
        sig = _token_signature(market.reserves)
        if reason is None and held is not None:
            reason = _market_change(held, market, sig)
        touched: set[str] = set()
        recent: set[str] | None = None
        # the logs since the last read's block less reorg_depth; in a full read those of the last reorg_depth
        # blocks (whom a reorg could undo next time)
        incremental = reason is None and held is not None
        last = held.block_number if incremental and held is not None else number
        try:
            trips += 1
            touched, recent, upgraded = self._logs_touching(
                max(last - self.reorg_depth + 1, 0), number, block_hash, market.reserves, upgraded_after=last
            )
            if upgraded and reason is None:
                reason = "a contract of the market was upgraded (Upgraded event)"
        except (RpcErrorResponse, TransientRpcError, _LogsUnsure) as exc:
            recent = None
            if reason is None:
                what = "refused the range" if is_range_error(exc) else "failed"
                reason = f"eth_getLogs {what}: {str(exc)[:160]}"
                if isinstance(exc, RpcErrorResponse) and is_range_error(exc):
                    # the node answered that the range since the last read is too much for it: this read is
                    # full, and learns the logs of its own last reorg_depth blocks (a narrow range) so that the
                    # next read can be incremental again
                    recent = self._recent_logs(number, block_hash, market.reserves)
                    trips += 1
        if reason is not None or held is None:
            log.info("aave_full_read", pool=self.pool, block=number, accounts=len(users), reason=reason)
            snap = self._accounts_pass(users, users, market, pin, cross_check, trips, reason)
            self._held = _Held(number, block_hash, stamp, dict(snap.accounts), sig, recent, market.emodes)
            for u in snap.failed:
                self._held.accounts.pop(u, None)
            self._drop_unsure(snap)
            return snap
        cached = held.accounts
        again = touched | (held.recent or set()) | {self._checksummed(u) for u in must_read}
        again |= {u for u, a in cached.items() if any(r.stable_debt for r in a.reserves)}  # accrues every second
        to_read = [u for u in users if u in again or u not in cached]
        snap = self._accounts_pass(users, to_read, market, pin, cross_check, trips, None, cached)
        # the held state moves to this block only when this read covers every account it holds (the logs were
        # matched against all of them); a read of a few accounts (one account's re-check) leaves it as it was
        if cached.keys() <= set(users):
            fresh = {u: snap.accounts[u] for u in snap.read if u in snap.accounts}
            kept = {u: a for u, a in cached.items() if u not in fresh}
            self._held = _Held(number, block_hash, held.full_read_at_s, {**kept, **fresh}, sig, recent, market.emodes)
            for u in snap.failed:
                self._held.accounts.pop(u, None)
            self._drop_unsure(snap)
        return snap

    def _full_read_reason(self, held: _Held | None, number: int, stamp: int, at_last: dict | None) -> str | None:
        """Why this read must read every account (``None``: it may read only what changed)."""
        if held is None:
            return "first read"
        if number < held.block_number:
            return f"the head {number} is behind block {held.block_number} of the last read"
        if at_last is None or at_last.get("hash") != held.block_hash:
            return f"block {held.block_number} of the last read was replaced (reorg)"
        if number - held.block_number > self.full_read_after_blocks:
            return (
                f"{number - held.block_number} blocks since the last read "
                f"(full_read_after_blocks = {self.full_read_after_blocks})"
            )
        if stamp - held.full_read_at_s >= self.full_read_every_s:
            return (
                f"{stamp - held.full_read_at_s} s of chain time since the last full read "
                f"(full_read_every_s = {self.full_read_every_s})"
            )
        if held.recent is None:
            return "the logs of the last read's blocks are unknown (its eth_getLogs failed)"
        return None

    def _logs_touching(
        self,
        from_block: int,
        to_block: int,
        block_hash: str,
        reserves: dict[str, ReserveState],
        *,
        upgraded_after: int = -1,
    ) -> tuple[set[str], set[str], bool]:
        """(users any log names, those named in the last ``reorg_depth`` blocks, whether a contract was upgraded
        after block ``upgraded_after``) over the logs of the Pool and every reserve's tokens in [from_block,
        to_block], one filter with the address list, ranges of ``log_chunk_blocks``, all in one JSON-RPC batch
        with the header of ``to_block``, which must be ``block_hash`` (the node that answered has the read's
        block: its logs are complete). An ``Upgraded`` at or before the last read's block (in the overlap) was
        seen by that read, which was full for it.

        A user is named by any topic or any 32-byte data word of any log that equals its address word: not an
        event list, so an event forgotten here can only cause an extra read, never a missed one."""
        addresses = [self.pool] + sorted({t for s in reserves.values() for t in _tokens(s)})
        calls: list[tuple[str, list]] = []
        for lo in range(from_block, to_block + 1, self.log_chunk_blocks):
            hi = min(to_block, lo + self.log_chunk_blocks - 1)
            calls.append(("eth_getLogs", [{"address": addresses, "fromBlock": hex(lo), "toBlock": hex(hi)}]))
        calls.append(("eth_getBlockByNumber", [hex(to_block), False]))
        answers = self.client.batch(calls)
        header = answers[-1]
        if not isinstance(header, dict) or header.get("hash") != block_hash:
            raise _LogsUnsure(f"the node answering eth_getLogs does not have block {to_block} as read")
        by_word = self._user_by_word
        touched: set[str] = set()
        recent: set[str] = set()
        recent_from = to_block - self.reorg_depth + 1
        upgraded = False
        for logs in answers[:-1]:
            if not isinstance(logs, list):
                raise _LogsUnsure(f"eth_getLogs answered {str(logs)[:60]!r}")
            for lg in logs:
                topics = [str(t).lower() for t in lg.get("topics") or ()]
                data = str(lg.get("data") or "0x")[2:].lower()
                words = topics + [data[i : i + 64] for i in range(0, len(data) - 63, 64)]
                named = {by_word[w[-64:]] for w in words if w[-64:] in by_word}
                at = int(lg.get("blockNumber", "0x0"), 16)
                upgraded |= bool(topics) and topics[0] == UPGRADED_TOPIC and at > upgraded_after
                touched |= named
                if named and at >= recent_from:
                    recent |= named
        return touched, recent, upgraded

    def _recent_logs(self, number: int, block_hash: str, reserves: dict[str, ReserveState]) -> set[str] | None:
        """The users the logs of the last ``reorg_depth`` blocks up to ``number`` name (``None``: not known)."""
        try:
            return self._logs_touching(max(number - self.reorg_depth + 1, 0), number, block_hash, reserves)[1]
        except (RpcErrorResponse, TransientRpcError, _LogsUnsure):
            return None

    def _drop_unsure(self, snap: AaveSnapshot) -> None:
        """Accounts whose balance reads failed are not held (read again next time)."""
        if self._held is not None:
            for u in snap.unsure:
                self._held.accounts.pop(u, None)

    def _user_calls(self, to_read: list[str], cross_check: bool) -> list[Call]:
        """Per account: ``getUserAccountData`` (with ``cross_check``), ``getUserConfiguration``, ``getUserEMode``."""
        words, pool = self._address_words, self.pool
        sel_data, sel_config, sel_emode = F_ACCOUNT_DATA.selector, F_USER_CONFIG.selector, F_USER_EMODE.selector
        calls: list[Call] = []
        for u in to_read:
            w = words[u]
            if cross_check:
                calls.append(Call(pool, sel_data + w))
            calls.append(Call(pool, sel_config + w))
            calls.append(Call(pool, sel_emode + w))
        return calls

    def _market_pass(
        self, block: BlockId, with_users: list[str] | None = None, cross_check: bool = False
    ) -> tuple[_MarketRead, int, list[Result] | None, tuple[_SecondPass, list[Result]] | None]:
        """Everything per reserve at ``block``: reserve data, price source rounds, e-mode categories, stable debt
        totals, and the reserve list itself (a changed list or e-mode set reloads and reads again); with
        ``with_users`` their :meth:`_user_calls` in the same pass (their results returned; the calls and their
        encoding kept while they repeat), and the last read's balances pass sent ahead in it (returned with its
        results: :meth:`_accounts_pass` keeps the answers of every account whose bitmap did not change)."""
        trips = 0
        for _ in range(3):
            assets = list(self.reserves)
            n, m = len(assets), len(self.emode_ids)
            sources = [self.sources.get(a, ZERO_ADDRESS) for a in assets]
            calls = [Call(self.pool, F_RESERVE_DATA.encode(a)) for a in assets]
            calls += [Call(s, F_LATEST_ROUND.encode()) for s in sources]
            calls += [Call(self.pool, F_EMODE_DATA.encode(i)) for i in self.emode_ids]
            calls += [Call(self.reserves[a].stable_debt_token, F_TOTAL_SUPPLY.encode()) for a in assets]
            calls.append(Call(self.pool, F_RESERVES_LIST.encode()))
            k = len(calls)
            ahead = self._second_pass if with_users is not None else None
            if with_users is None:
                first = self.multicall.aggregate3(calls, block)
            else:
                key: tuple = (self.multicall, self.pool, cross_check, tuple(calls), tuple(with_users))
                key += (None if ahead is None else ahead.key,)
                if self._first_pass is None or self._first_pass[0] != key:
                    pass_calls = calls + self._user_calls(with_users, cross_check)
                    self._first_pass = (key, self.multicall.prepare(pass_calls + (ahead.calls if ahead else [])))
                first = self.multicall.aggregate3(self._first_pass[1], block)
            trips += first.round_trips
            r = first.results
            listed = r[k - 1]
            if listed.success and [to_checksum_address(a) for a in F_RESERVES_LIST.decode(listed.data)[0]] != assets:
                log.info("aave_reserve_list_changed", pool=self.pool, reserves_before=n)
                self.load_reserves()
                continue
            reserves = {
                a: decode_reserve_data(a, x.data) if x.success else self.reserves[a]
                for a, x in zip(assets, r[:n], strict=True)
            }
            self.reserves = reserves
            emode_ids = tuple(sorted({s.config.emode_category for s in reserves.values()} - {0}))
            if emode_ids != self.emode_ids:
                log.info("aave_emode_categories_changed", pool=self.pool, before=self.emode_ids, now=emode_ids)
                self.emode_ids = emode_ids
                continue
            rounds = {a: _round(x.data) for a, x in zip(assets, r[n : 2 * n], strict=True) if x.success}
            emodes: dict[int, EModeCategory] = {}
            for cid, x in zip(self.emode_ids, r[2 * n : 2 * n + m], strict=True):
                if x.success:
                    ltv, lt, bonus, src, _label = F_EMODE_DATA.decode(x.data)[0]
                    emodes[cid] = EModeCategory(
                        cid, ltv, lt, bonus, "" if int(src, 16) == 0 else to_checksum_address(src)
                    )
            # a user's stable debt is read only where the reserve has any (totalSupply > 0): exact
            stable_any = {
                a
                for a, x in zip(assets, r[2 * n + m : 3 * n + m], strict=True)
                if not x.success or _word(x.data, 0) > 0
            }
            market = _MarketRead(reserves, rounds, emodes, stable_any, first.block_number, first.block_timestamp)
            if with_users is None:
                return market, trips, None, None
            end = k + (3 if cross_check else 2) * len(with_users)
            return market, trips, r[k:end], None if ahead is None else (ahead, r[end:])
        raise ChainMismatchError(
            f"the pool {self.pool}'s reserve list or e-mode categories keep changing under the read"
        )

    def _accounts_pass(
        self,
        users: list[str],
        to_read: list[str],
        market: _MarketRead,
        block: BlockId,
        cross_check: bool,
        trips: int,
        full_read: str | None,
        cached: dict[str, AaveAccount] | None = None,
        *,
        got: list[Result] | None = None,
        ahead: tuple[_SecondPass, list[Result]] | None = None,
    ) -> AaveSnapshot:
        """``to_read``'s configuration and e-mode (and ``getUserAccountData`` with ``cross_check``; ``got``: their
        results, read with the market), then the oracle's prices and their balances, at ``block``; the other
        ``users`` from ``cached``. ``ahead``: the last read's balances pass and its answers, read with the market
        (the same block): the prices and the balances of every account whose bitmap is the one it had then are
        taken from it, the others read in a pass of their own (none: no more round trip)."""
        reserves = market.reserves
        per_user = 3 if cross_check else 2
        pool = self.pool
        onchain: dict[str, AccountData] = {}
        read: list[tuple[str, int, int]] = []  # (user, configuration bitmap, e-mode category)
        failed: list[str] = []
        if to_read:
            if got is None:  # the same accounts are read every full read: the calls (and their encoding) are kept
                key1: tuple = (self.multicall, pool, cross_check, tuple(to_read))
                if self._first_pass is None or self._first_pass[0] != key1:
                    self._first_pass = (key1, self.multicall.prepare(self._user_calls(to_read, cross_check)))
                first = self.multicall.aggregate3(self._first_pass[1], block)
                trips += first.round_trips
                got = first.results
            r = got
            for k, u in enumerate(to_read):
                got = r[per_user * k : per_user * (k + 1)]
                cfg, em = got[-2], got[-1]
                if not (cfg.success and em.success and got[0].success):
                    failed.append(u)
                    continue
                if cross_check:
                    d = got[0].data
                    onchain[u] = AccountData(*(int.from_bytes(d[32 * i : 32 * i + 32], "big") for i in range(6)))
                read.append((u, int.from_bytes(cfg.data[:32], "big"), int.from_bytes(em.data[:32], "big")))
        emodes = market.emodes
        price_assets = list(reserves) + sorted({e.price_source for e in emodes.values() if e.price_source})
        layouts = _Layouts(reserves, market.stable_any)
        # the second pass's calls follow from the configuration bitmaps, which rarely change: kept like the first
        frame: tuple = (self.multicall, self.oracle, tuple(price_assets), layouts.signature)
        key2 = (*frame, tuple((u, bits) for u, bits, _ in read))
        if ahead is not None and ahead[0].key[:4] == frame:
            results, price_answer, trips = self._balances_with(ahead, read, layouts, block, trips)
        else:
            if self._second_pass is None or self._second_pass.key != key2:
                self._second_pass = self._balances_pass(key2, price_assets, read, layouts)
            res2 = self.multicall.aggregate3(self._second_pass.prepared, block)
            trips += res2.round_trips
            price_answer, results = res2.results[0], res2.results[1:]
        if self._second_pass is None or self._second_pass.key != key2:  # what the next full read sends ahead
            self._second_pass = self._balances_pass(key2, price_assets, read, layouts)
        prices = dict(zip(price_assets, F_ASSETS_PRICES.decode(price_answer.data)[0], strict=True))
        word = int.from_bytes
        values = [word(x.data[:32], "big") if x.success else 0 for x in results]  # every balance read
        all_ok = all(x.success for x in results)
        accounts: dict[str, AaveAccount] = {}
        unsure: list[str] = []
        at = 0
        for u, bits, emode in read:
            layout = layouts.of(bits)
            size = len(layout.calls)
            balances = values[at : at + size]
            balances.append(0)  # position -1: a balance not read
            if not all_ok and not all(x.success for x in results[at : at + size]):
                unsure.append(u)
            at += size
            urs = tuple(
                UserReserve(asset, balances[a], balances[v], balances[s], coll, borrow)
                for asset, a, v, s, coll, borrow in layout.slots
            )
            accounts[u] = AaveAccount(u, emode, urs)
        if cached is not None:  # the accounts not read again as held (a failed read is not replaced by an old one)
            fresh = accounts
            lost = set(failed)
            accounts = {}
            for u in users:
                found = fresh.get(u) or (None if u in lost else cached.get(u))
                if found is not None:
                    accounts[u] = found
        out = Market(reserves, prices, emodes, market.timestamp_s)
        return AaveSnapshot(
            market.block_number,
            out,
            accounts,
            onchain,
            market.rounds,
            trips,
            tuple(failed),
            read=tuple(u for u, _, _ in read),
            full_read=full_read,
            unsure=tuple(unsure),
        )

    def _balances_pass(
        self, key: tuple, price_assets: list[str], read: list[tuple[str, int, int]], layouts: _Layouts
    ) -> _SecondPass:
        """The oracle's prices, then per account the balances its bitmap flags (:class:`_SecondPass`)."""
        words = self._address_words
        calls: list[Call] = [Call(self.oracle, F_ASSETS_PRICES.encode(price_assets), False)]
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for u, bits, _ in read:
            w = words[u]
            start = len(calls)
            calls += [Call(target, sel + w) for target, sel in layouts.of(bits).calls]
            spans[(u, bits)] = (start, len(calls))
        return _SecondPass(key, calls, spans, self.multicall.prepare(calls))

    def _balances_with(
        self,
        ahead: tuple[_SecondPass, list[Result]],
        read: list[tuple[str, int, int]],
        layouts: _Layouts,
        block: BlockId,
        trips: int,
    ) -> tuple[list[Result], Result, int]:
        """The balances of ``read`` (in :meth:`_balances_pass` order, the prices apart) from the pass sent ahead
        where an account's bitmap is the one it had then, the others read now at ``block``; and the round trips."""
        sent, answers = ahead
        spans = sent.spans
        missing = [(u, bits) for u, bits, _ in read if (u, bits) not in spans]
        extra: dict[tuple[str, int], list[Result]] = {}
        if missing:
            words = self._address_words
            calls = [Call(t, sel + words[u]) for u, bits in missing for t, sel in layouts.of(bits).calls]
            got = self.multicall.aggregate3(calls, block)
            trips += got.round_trips
            at = 0
            for u, bits in missing:
                size = len(layouts.of(bits).calls)
                extra[(u, bits)] = got.results[at : at + size]
                at += size
        results: list[Result] = []
        for u, bits, _ in read:
            span = spans.get((u, bits))
            results += answers[span[0] : span[1]] if span is not None else extra[(u, bits)]
        return results, answers[0], trips

    def _checksummed(self, user: str) -> str:
        """``user`` in EIP-55 form, and its ABI word (kept: the same accounts are read every cycle)."""
        found = self._checksums.get(user)
        if found is None:
            found = to_checksum_address(user)
            self._checksums[user] = found
            self._address_words[found] = bytes(12) + bytes.fromhex(found[2:])
            self._user_by_word["00" * 12 + found[2:].lower()] = found
        return found

    # ---- what the daemon needs besides the book ----------------------------------------------------

    def contract_addresses(self) -> dict[str, str]:
        """Name -> address of every contract an endpoint must hold for it to serve this market."""
        return {
            "PoolAddressesProvider": self.provider,
            "Pool": self.pool,
            "AaveOracle": self.oracle,
            "Multicall3": self.multicall.address,
        }

    def check_deployment(self) -> None:
        for name, address in self.contract_addresses().items():
            if not self.client.get_code(address):
                raise ChainMismatchError(
                    f"no contract at the {name} address {address} on chain id {self.client.chain_id}: "
                    "wrong provider or market, or a restarted chain?"
                )

    def known_assets(self) -> list[str]:
        if not self.reserves:
            self.load_reserves()
        return list(self.reserves)

    def probe_head(self) -> HeadProbe:
        """The head and each reserve's price source's latest round id (keyed by reserve id), in one read."""
        assets = self.known_assets()
        calls = [Call(self.sources.get(a, ZERO_ADDRESS), F_LATEST_ROUND.encode()) for a in assets]
        res = self.multicall.aggregate3(calls)
        rounds = {
            self.reserves[a].reserve_id: _round(r.data).round_id
            for a, r in zip(assets, res.results, strict=True)
            if r.success and len(r.data) >= 160
        }
        return HeadProbe(res.block_number, res.block_timestamp, rounds)

    def wallet(self, owner: str) -> tuple[dict[str, int], dict[str, int]]:
        """(balance, allowance to the pool) of ``owner`` in every reserve's underlying, in one read."""
        assets = self.known_assets()
        who = to_checksum_address(owner)
        calls = [Call(a, F_BALANCE.encode(who)) for a in assets]
        calls += [Call(a, F_ALLOWANCE.encode(who, self.pool)) for a in assets]
        res = self.multicall.aggregate3(calls).results
        n = len(assets)
        balances = {a: _word(r.data, 0) if r.success else 0 for a, r in zip(assets, res[:n], strict=True)}
        allowances = {a: _word(r.data, 0) if r.success else 0 for a, r in zip(assets, res[n:], strict=True)}
        return balances, allowances

    def source_history(self, asset: str, max_rounds: int, latest: PriceRound) -> list[PriceRound]:
        """The price source's rounds before ``latest`` (oldest first, ``latest`` included), in one read.

        Round ids step back one at a time within the aggregator's phase (Chainlink's proxy ids are
        ``phase << 64 | round``); a round that does not answer ends the history."""
        source = self.sources.get(asset)
        if source is None or latest.round_id <= 1:
            return [latest]
        phase_start = latest.round_id >> 64 << 64
        ids = [i for i in range(latest.round_id - max_rounds + 1, latest.round_id) if i > phase_start]
        res = self.multicall.aggregate3([Call(source, F_GET_ROUND.encode(i)) for i in ids]).results
        out = [_round(r.data) for r in res if r.success and len(r.data) >= 160]
        return [r for r in out if r.updated_at_s > 0] + [latest]

    def call_for_account_action(self, action: AccountAction) -> ContractCall:
        """The supply or repay on behalf that carries out ``action``, or for a release the owner's own
        ``withdraw`` (only for an account in ``releasable``: the keeper's key is its owner's; alerts have none)."""
        if action.kind is AccountActionKind.ADD_COLLATERAL:
            call = self.supply_call(action.asset, action.amount, action.account)
        elif action.kind is AccountActionKind.REPAY_DEBT:
            call = self.repay_call(action.asset, action.amount, action.account)
        elif action.kind is AccountActionKind.RELEASE:
            owner = action.account.lower()
            if owner not in self.releasable or action.amount <= 0:
                raise InputError(f"a release withdraws a positive amount with the owner's key, got {action}")
            call = self.withdraw_call(action.asset, action.amount, action.account, signer=owner)
        else:
            raise InputError(f"{action.kind.value} actions are not sent on chain")
        meta = {
            "kind": action.kind.value,
            "account": action.account.lower(),
            "asset": action.asset,
            "amount": str(action.amount),
            "cost_e6": action.cost_e6,
        }
        return ContractCall(call.to, call.data, call.value_wei, call.description, {**call.meta, **meta})

    def describe_transaction(self, to: str, data: bytes) -> dict | None:
        """What a supply, repay or (the owner's) withdraw of the keeper's key found on chain did, in the ``meta``
        form of :meth:`call_for_account_action` (no ``cost_e6``: the price at the time is not known), or ``None``
        when it is not one (so a transaction a lost journal forgot is journaled again with its purpose)."""
        if to.lower() != self.pool.lower() or len(data) < 4:
            return None
        for kind, fn, who in (
            (AccountActionKind.ADD_COLLATERAL, F_SUPPLY, 2),
            (AccountActionKind.REPAY_DEBT, F_REPAY, 3),
            (AccountActionKind.RELEASE, F_WITHDRAW, 2),  # withdraw(asset, amount, to): the keeper's own, to itself
        ):
            if data[:4] == fn.selector:
                args = abi_decode(list(fn.input_types), data[4:])
                return {
                    "kind": kind.value,
                    "account": str(args[who]).lower(),
                    "asset": to_checksum_address(args[0]),
                    "amount": str(int(args[1])),
                }
        return None

    # ---- discovery -------------------------------------------------------------------------------

    def discover_accounts(self, to_block: int | None = None) -> set[str]:
        """Every account named by the pool's Supply/Borrow/Repay/Withdraw/LiquidationCall events."""
        if self.scanner is None:
            raise ValueError("discover_accounts needs a journal (cursor store): pass journal= to the adapter")
        self.scanner.scan(self._accounts_from_logs, to_block)
        return {a for a, _ in self.scanner.store.known_accounts(self.scanner.name)}

    @staticmethod
    def _accounts_from_logs(logs: list[dict]) -> set[tuple[str, int, int]]:
        out = set()
        for lg in logs:
            topics = lg["topics"]
            idx = POOL_EVENTS.get(topics[0]) if topics else None
            if lg.get("removed") or idx is None or len(topics) <= idx:
                continue
            out.add(("0x" + topics[idx][-40:].lower(), 0, int(lg["blockNumber"], 16)))
        return out

    # ---- transactions ----------------------------------------------------------------------------

    def supply_call(self, asset: str, amount: int, on_behalf_of: str) -> ContractCall:
        if amount <= 0:
            raise InputError("supply amount must be positive (Aave reverts 26 on 0)")
        return ContractCall(
            self.pool,
            F_SUPPLY.encode(to_checksum_address(asset), amount, to_checksum_address(on_behalf_of), 0),
            0,
            f"supply {amount} of {asset} on behalf of {on_behalf_of}",
            {"action": "supply", "asset": asset, "amount": str(amount), "account": on_behalf_of},
        )

    def repay_call(self, asset: str, amount: int, on_behalf_of: str) -> ContractCall:
        if amount <= 0 or amount >= 2**256 - 1:
            raise InputError(
                "repay amount must be explicit and positive: type(uint256).max on behalf of another user reverts 40"
            )
        return ContractCall(
            self.pool,
            F_REPAY.encode(to_checksum_address(asset), amount, 2, to_checksum_address(on_behalf_of)),
            0,
            f"repay {amount} of {asset} variable debt for {on_behalf_of}",
            {"action": "repay", "asset": asset, "amount": str(amount), "account": on_behalf_of},
        )

    def approve_call(self, asset: str, amount: int) -> ContractCall:
        return ContractCall(
            to_checksum_address(asset),
            F_APPROVE.encode(self.pool, amount),
            0,
            f"approve {amount} of {asset} to the pool",
            {"action": "approve", "asset": asset},
        )

    def withdraw_call(self, asset: str, amount: int, owner: str, signer: str) -> ContractCall:
        """``withdraw`` for the owner's own key only (Aave withdraws msg.sender's aTokens)."""
        if owner.lower() != signer.lower():
            raise InputError(f"withdraw needs the owner's key: {signer} cannot withdraw {owner}'s collateral")
        return ContractCall(
            self.pool,
            F_WITHDRAW.encode(to_checksum_address(asset), amount, to_checksum_address(owner)),
            0,
            f"withdraw {amount} of {asset} to {owner}",
            {"action": "withdraw", "asset": asset},
        )


__all__ = [
    "AAVE_ERRORS",
    "AAVE_V3_MARKETS",
    "AaveErrorDecoder",
    "AaveSnapshot",
    "AaveV3Adapter",
    "aave_error",
    "decode_reserve_data",
    "resolve_provider",
]


def from_config(client: ChainClient, config: KeeperConfig, journal: Journal | None) -> AaveV3Adapter:
    """The registry's factory: ``[protocol] name = "aave-v3"`` with ``provider`` or ``market``."""
    p = config.protocol
    return AaveV3Adapter.for_market(
        client,
        p.market,
        p.provider,
        multicall=p.multicall,
        journal=journal,
        start_block=p.start_block,
        full_read_after_blocks=p.full_read_after_blocks,
        full_read_every_s=p.full_read_every_s,
    )
