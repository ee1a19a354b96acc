"""Perpetual Protocol v2 ("Curie") on a local chain, deployed from the real compiled contracts on npm.

Artifacts: ``@perp/curie-contract`` 2.8.4 (ClearingHouse, Vault, AccountBalance, Exchange, OrderBook,
MarketRegistry, InsuranceFund, CollateralManager, ClearingHouseConfig, BaseToken, QuoteToken),
``@perp/perp-oracle-contract`` 0.6.7 (ChainlinkPriceFeedV3, PriceFeedDispatcher), ``@uniswap/v3-core`` 1.0.1
(UniswapV3Factory, UniswapV3Pool), ``@chainlink/contracts`` 0.1.7 (MockV3Aggregator: the index rounds we
push) and ``@aave/core-v3`` 1.19.3 (MintableERC20: a 6-decimal settlement token). Curie's contracts have no
constructors: each is deployed, then ``initialize``d by the deployer in the next transaction (the caller of
``initialize`` becomes the owner). Every transaction is a real signed EIP-1559 transaction.

The wiring is what the contracts' ``require`` checks demand (each code named where it bites): virtual tokens
minted to the ClearingHouse and whitelisted for it and each pool, the base token's address below the quote
token's (else ``MR_IB``), an observation cardinality on each pool (else ``OLD``), a settlement token balance
cap (else ``V_GTSTBC``), a max tick crossed per block (0 pauses the market: ``EX_MIP``). Market moves go in
steps at least 15 s apart (``Exchange._PRICE_LIMIT_INTERVAL``; a bigger jump reverts ``EX_OPLAS``) and within
the 10 % price band around the index (``EX_OPB``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.types import RPCEndpoint

from keeper.dev.reference import ANVIL_KEYS, MULTICALL3_ADDRESS, Sender, multicall3_code
from keeper.errors import ToolchainError
from keeper.protocols.perp_v2 import PerpDeployment, PerpMarketRecord

PROJECT_ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = PROJECT_ROOT / "node_modules"
CURIE = "@perp/curie-contract/artifacts/contracts"
ORACLE = "@perp/perp-oracle-contract/artifacts/contracts"
ARTIFACT_PATHS = {
    name: f"{CURIE}/{name}.sol/{name}.json"
    for name in (
        "ClearingHouse",
        "ClearingHouseConfig",
        "Vault",
        "AccountBalance",
        "Exchange",
        "OrderBook",
        "MarketRegistry",
        "InsuranceFund",
        "CollateralManager",
        "BaseToken",
        "QuoteToken",
    )
} | {
    "ChainlinkPriceFeedV3": f"{ORACLE}/ChainlinkPriceFeedV3.sol/ChainlinkPriceFeedV3.json",
    "PriceFeedDispatcher": f"{ORACLE}/PriceFeedDispatcher.sol/PriceFeedDispatcher.json",
    "UniswapV3Factory": "@uniswap/v3-core/artifacts/contracts/UniswapV3Factory.sol/UniswapV3Factory.json",
    "UniswapV3Pool": "@uniswap/v3-core/artifacts/contracts/UniswapV3Pool.sol/UniswapV3Pool.json",
    "MockV3Aggregator": "@chainlink/contracts/abi/v0.7/MockV3Aggregator.json",
    "MintableERC20": "@aave/core-v3/artifacts/contracts/mocks/tokens/MintableERC20.sol/MintableERC20.json",
}

UNI_FEE = 3000  # the pool fee tier Curie uses (tick spacing 60)
TICK_SPACING = 60
Q96 = 2**96
MAX_UINT = 2**256 - 1
SETTLEMENT_DECIMALS = 6
CHAINLINK_TIMEOUT_S = 2400
CHAINLINK_TWAP_S = 900
PRICE_LIMIT_INTERVAL_S = 15  # Exchange._PRICE_LIMIT_INTERVAL
MAX_TICK_CROSSED = 1000
STEP_TICKS = 800  # a market move step: under MAX_TICK_CROSSED and under the 10 % band (~953 ticks)

# anvil key roles on the Perp devchain
DEPLOYER, TRADER, KEEPER, LIQUIDATOR, MAKER, MOVER = 0, 1, 2, 3, 8, 9


def npm_artifact(name: str) -> dict[str, Any]:
    """ABI and creation bytecode of ``name`` from the pinned npm packages (hardhat or 0x artifact layout)."""
    path = NODE_MODULES / ARTIFACT_PATHS[name]
    if not path.exists():
        raise ToolchainError(f"npm artifact {path} is missing: run `make setup` (npm ci from package-lock.json)")
    data = json.loads(path.read_text())
    if "compilerOutput" in data:  # @chainlink/contracts 0.1.7 (0x sol-compiler layout)
        return {"abi": data["compilerOutput"]["abi"], "bytecode": data["compilerOutput"]["evm"]["bytecode"]["object"]}
    return {"abi": data["abi"], "bytecode": data["bytecode"]}


@dataclass(frozen=True)
class PerpMarketSpec:
    """A market to create: symbol, initial index price (USD) and the maker's liquidity (base units, ticks)."""

    symbol: str
    price: float
    maker_base: float
    range_ticks: int = 6000  # maker range half-width around the initial tick (~±82 %)


DEFAULT_PERP_MARKETS = (PerpMarketSpec("ETH", 2000.0, 5_000.0), PerpMarketSpec("BTC", 40_000.0, 250.0))


# ---- pure helpers -----------------------------------------------------------------------------------


def sqrt_price_x96(price: float, *, price_e18: int | None = None) -> int:
    """sqrtPriceX96 of a quote-per-base price (both tokens have 18 decimals)."""
    p18 = price_e18 if price_e18 is not None else round(price * 10**18)
    return math.isqrt(p18 * 2**192 // 10**18)


def price_of_sqrt(sqrt_x96: int) -> float:
    return (sqrt_x96 / Q96) ** 2


def tick_of_price(price: float) -> int:
    return math.floor(math.log(price) / math.log(1.0001))


def _align(tick: int) -> int:
    return tick - tick % TICK_SPACING


RawRpc = Callable[[str, list], Any]


def _provider_rpc(w3: Web3) -> RawRpc:
    """Raw JSON-RPC through ``w3``'s provider (anvil_* / evm_* methods)."""

    def call(method: str, params: list | None = None) -> Any:
        return w3.provider.make_request(RPCEndpoint(method), params or [])

    return call


# ---- deployment -------------------------------------------------------------------------------------


class _Deployer:
    def __init__(self, w3: Web3, key: str) -> None:
        self.w3 = w3
        self.s = Sender(w3, key)

    def deploy(self, name: str, *args: Any) -> str:
        return self.s.deploy(npm_artifact(name), *args)

    def c(self, name: str, address: str):
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=npm_artifact(name)["abi"])

    def tx(self, fn, gas: int | None = None) -> dict[str, Any]:
        return self.s.wait(self.s.transact(fn, gas=gas))

    def init(self, name: str, *args: Any) -> Any:
        """Deploy ``name`` and initialise it in the next transaction (the deployer becomes owner)."""
        addr = self.deploy(name)
        contract = self.c(name, addr)
        self.tx(contract.functions.initialize(*args))
        return contract


def deploy_perp_v2(
    w3: Web3,
    deployer_key: str = ANVIL_KEYS[DEPLOYER],
    *,
    markets: tuple[PerpMarketSpec, ...] = DEFAULT_PERP_MARKETS,
    rpc_url: str | None = None,
    request: RawRpc | None = None,
) -> PerpDeployment:
    """Deploy Curie with ``markets`` and Multicall3; return where it lives (no liquidity yet: see PerpOps).

    ``request(method, params)`` sends raw anvil RPCs (default: through ``w3.provider``).
    """
    rpc = request or _provider_rpc(w3)
    start_block = w3.eth.block_number
    d = _Deployer(w3, deployer_key)
    rpc("anvil_setCode", [MULTICALL3_ADDRESS, multicall3_code()])
    usdc = d.deploy("MintableERC20", "USD Coin", "USDC", SETTLEMENT_DECIMALS)
    quote = d.init("QuoteToken", "vUSD", "vUSD")
    feeds: dict[str, tuple[str, str, str]] = {}
    bases: dict[str, Any] = {}
    for spec in markets:
        agg = d.deploy("MockV3Aggregator", 8, round(spec.price * 1e8))
        cl = d.deploy("ChainlinkPriceFeedV3", agg, CHAINLINK_TIMEOUT_S, CHAINLINK_TWAP_S)
        disp = d.deploy("PriceFeedDispatcher", cl)
        feeds[spec.symbol] = (agg, cl, disp)
        for _ in range(16):  # Uniswap orders tokens by address: the base must be token0 (MR_IB otherwise)
            base = d.init("BaseToken", f"Perp {spec.symbol}", f"v{spec.symbol}", disp)
            if int(base.address, 16) < int(quote.address, 16):
                break
        else:
            raise RuntimeError(f"could not deploy a v{spec.symbol} base token below the quote token's address")
        bases[spec.symbol] = base
    factory = d.c("UniswapV3Factory", d.deploy("UniswapV3Factory"))
    pools: dict[str, Any] = {}
    for spec in markets:
        d.tx(factory.functions.createPool(bases[spec.symbol].address, quote.address, UNI_FEE))
        pools[spec.symbol] = d.c(
            "UniswapV3Pool", factory.functions.getPool(bases[spec.symbol].address, quote.address, UNI_FEE).call()
        )
    config = d.init("ClearingHouseConfig")
    registry = d.init("MarketRegistry", factory.address, quote.address)
    order_book = d.init("OrderBook", registry.address)
    account_balance = d.init("AccountBalance", config.address, order_book.address)
    exchange = d.init("Exchange", registry.address, order_book.address, config.address)
    d.tx(exchange.functions.setAccountBalance(account_balance.address))
    d.tx(order_book.functions.setExchange(exchange.address))
    insurance = d.init("InsuranceFund", usdc)
    vault = d.init("Vault", insurance.address, config.address, account_balance.address, exchange.address)
    cm = d.init(
        "CollateralManager", config.address, vault.address, 5, 750000, 500000, 2000, 30000, 10_000 * 10**6, 500 * 10**6
    )
    d.tx(vault.functions.setCollateralManager(cm.address))
    d.tx(insurance.functions.setVault(vault.address))
    d.tx(account_balance.functions.setVault(vault.address))
    ch = d.init(
        "ClearingHouse",
        config.address,
        vault.address,
        quote.address,
        factory.address,
        exchange.address,
        account_balance.address,
        insurance.address,
    )
    for contract in (registry, order_book, exchange, account_balance, vault):
        d.tx(contract.functions.setClearingHouse(ch.address))
    d.tx(quote.functions.mintMaximumTo(ch.address))
    d.tx(quote.functions.addWhitelist(ch.address))
    for spec in markets:
        base, pool = bases[spec.symbol], pools[spec.symbol]
        d.tx(base.functions.mintMaximumTo(ch.address))
        d.tx(pool.functions.initialize(sqrt_price_x96(spec.price)))
        d.tx(pool.functions.increaseObservationCardinalityNext(500))
        for token in (base, quote):
            d.tx(token.functions.addWhitelist(pool.address))
        d.tx(base.functions.addWhitelist(ch.address))
        d.tx(registry.functions.addPool(base.address, UNI_FEE))
        d.tx(registry.functions.setFeeRatio(base.address, 1000))  # 0.1 % taker/maker fee
        d.tx(registry.functions.setInsuranceFundFeeRatio(base.address, 100_000))  # 10 % of fees to the IF
        d.tx(exchange.functions.setMaxTickCrossedWithinBlock(base.address, MAX_TICK_CROSSED))
    d.tx(config.functions.setSettlementTokenBalanceCap(MAX_UINT >> 1))
    # the pools' TWAP windows (up to 30 min) need history before the first liquidity (OLD otherwise)
    rpc("evm_increaseTime", [1800])
    rpc("evm_mine", [])
    records = {
        s.symbol: PerpMarketRecord(
            base_token=bases[s.symbol].address,
            pool=pools[s.symbol].address,
            aggregator=feeds[s.symbol][0],
            chainlink_feed=feeds[s.symbol][1],
            dispatcher=feeds[s.symbol][2],
        )
        for s in markets
    }
    return PerpDeployment(
        rpc_url=rpc_url or getattr(w3.provider, "endpoint_uri", "") or "",
        chain_id=w3.eth.chain_id,
        start_block=start_block,
        clearing_house=ch.address,
        config=config.address,
        vault=vault.address,
        account_balance=account_balance.address,
        exchange=exchange.address,
        order_book=order_book.address,
        market_registry=registry.address,
        insurance_fund=insurance.address,
        collateral_manager=cm.address,
        quote_token=quote.address,
        settlement_token=usdc,
        uniswap_factory=factory.address,
        multicall=MULTICALL3_ADDRESS,
        markets=records,
        deployer=d.s.address,
    )


# ---- operations on a deployed system -----------------------------------------------------------------


@dataclass(frozen=True)
class SeedLeg:
    """One taker position to open: market symbol, side and notional in USD."""

    symbol: str
    is_long: bool
    notional_usd: float


@dataclass(frozen=True)
class SeedTrader:
    """A trader (anvil key index) with a vault deposit (USD) and cross-margined legs."""

    key_index: int
    deposit_usd: float
    legs: tuple[SeedLeg, ...]


DEFAULT_PERP_BOOK = (
    SeedTrader(TRADER, 1_000.0, (SeedLeg("ETH", True, 6_000.0), SeedLeg("BTC", True, 3_000.0))),
    SeedTrader(4, 2_000.0, (SeedLeg("ETH", False, 8_000.0), SeedLeg("BTC", True, 8_000.0))),
    SeedTrader(5, 1_500.0, (SeedLeg("BTC", False, 10_000.0),)),
)


class PerpOps:
    """Operations on a deployed Curie: tokens, deposits, liquidity, positions, index rounds, market moves."""

    def __init__(
        self,
        w3: Web3,
        deployment: PerpDeployment,
        *,
        request: RawRpc | None = None,
        deployer_key: str = ANVIL_KEYS[DEPLOYER],
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.rpc = request or _provider_rpc(w3)
        self.deployer_key = deployer_key
        dep = deployment

        def c(name: str, address: str):
            return w3.eth.contract(address=Web3.to_checksum_address(address), abi=npm_artifact(name)["abi"])

        self.ch = c("ClearingHouse", dep.clearing_house)
        self.vault = c("Vault", dep.vault)
        self.account_balance = c("AccountBalance", dep.account_balance)
        self.exchange = c("Exchange", dep.exchange)
        self.usdc = c("MintableERC20", dep.settlement_token)
        self.aggregators = {s: c("MockV3Aggregator", m.aggregator) for s, m in dep.markets.items()}
        self.pools = {s: c("UniswapV3Pool", m.pool) for s, m in dep.markets.items()}
        self.bases = {s: c("BaseToken", m.base_token) for s, m in dep.markets.items()}
        self._senders: dict[str, Sender] = {}

    # -- plumbing
    def sender(self, key: str) -> Sender:
        s = self._senders.get(key)
        if s is None or s.nonce < self.w3.eth.get_transaction_count(Account.from_key(key).address, "pending"):
            s = Sender(self.w3, key)
            self._senders[key] = s
        return s

    def reset_nonces(self) -> None:
        self._senders.clear()

    def send(self, key: str, fn, gas: int | None = None) -> dict[str, Any]:
        s = self.sender(key)
        try:
            return s.wait(s.transact(fn, gas=gas))
        except Exception:
            self._senders.pop(key, None)
            raise

    def advance(self, seconds: int) -> None:
        """Move the chain's clock forward and mine one block."""
        self.rpc("evm_increaseTime", [int(seconds)])
        self.rpc("evm_mine", [])

    # -- money
    def mint(self, to: str, amount_e6: int) -> None:
        self.send(self.deployer_key, self.usdc.functions.mint(Web3.to_checksum_address(to), amount_e6))

    def deposit(self, key: str, amount_e6: int) -> None:
        """Mint ``amount_e6`` settlement tokens to ``key``'s wallet and deposit them in the vault."""
        who = Account.from_key(key).address
        self.mint(who, amount_e6)
        self.send(key, self.usdc.functions.approve(self.vault.address, MAX_UINT))
        self.send(key, self.vault.functions.deposit(self.usdc.address, amount_e6))

    # -- liquidity and positions
    def add_liquidity(self, key: str, symbol: str, base_amount: float, range_ticks: int) -> None:
        """Maker liquidity around the pool's current tick: ``base_amount`` base and the matching quote."""
        slot0 = self.pools[symbol].functions.slot0().call()
        price, tick = price_of_sqrt(slot0[0]), slot0[1]
        lower, upper = _align(tick - range_ticks), _align(tick + range_ticks)
        base18 = int(base_amount * 1e18)
        quote18 = int(base_amount * price * 1e18)
        params = (self.bases[symbol].address, base18, quote18, lower, upper, 0, 0, False, MAX_UINT)
        self.send(key, self.ch.functions.addLiquidity(params))

    def open_position(
        self, key: str, symbol: str, is_long: bool, notional_e18: int, sqrt_price_limit_x96: int = 0
    ) -> dict[str, Any]:
        """Taker order for ``notional_e18`` vUSD: a long pays exactly it, a short receives exactly it."""
        base = self.bases[symbol].address
        params = (base, not is_long, is_long, notional_e18, 0, MAX_UINT, sqrt_price_limit_x96, b"\x00" * 32)
        return self.send(key, self.ch.functions.openPosition(params))

    def seed(
        self, book: tuple[SeedTrader, ...] = DEFAULT_PERP_BOOK, specs: tuple[PerpMarketSpec, ...] = DEFAULT_PERP_MARKETS
    ) -> None:
        """Maker liquidity in every market (maker key), a deep-pocketed market mover, then ``book``'s traders."""
        maker = ANVIL_KEYS[MAKER]
        self.deposit(maker, 100_000_000 * 10**6)
        for spec in specs:
            self.add_liquidity(maker, spec.symbol, spec.maker_base, spec.range_ticks)
        self.deposit(ANVIL_KEYS[MOVER], 50_000_000 * 10**6)
        for trader in book:
            self.open_trader(trader)

    def open_trader(self, trader: SeedTrader) -> None:
        key = ANVIL_KEYS[trader.key_index]
        self.deposit(key, int(trader.deposit_usd * 1e6))
        for leg in trader.legs:
            self.open_position(key, leg.symbol, leg.is_long, int(leg.notional_usd * 1e18))

    # -- prices
    def push_index(self, symbol: str, price: float) -> None:
        """A new Chainlink round on ``symbol``'s aggregator (the index follows at once; the mark does not)."""
        self.send(self.deployer_key, self.aggregators[symbol].functions.updateAnswer(round(price * 1e8)))

    def market_price(self, symbol: str) -> float:
        return price_of_sqrt(self.pools[symbol].functions.slot0().call()[0])

    def move_market(
        self, symbol: str, target: float, *, key: str | None = None, tolerance: float = 1e-4, max_steps: int = 40
    ) -> int:
        """Trade ``symbol``'s pool to ``target`` in steps <= STEP_TICKS, 15 s apart; returns the steps taken.

        The index should be near ``target`` first (a swap ending more than 10 % from the index reverts EX_OPB).
        """
        key = key or ANVIL_KEYS[MOVER]
        steps = 0
        while steps < max_steps:
            current = self.market_price(symbol)
            if abs(current / target - 1) <= tolerance:
                return steps
            up = target > current
            step_price = current * 1.0001 ** (STEP_TICKS if up else -STEP_TICKS)
            limit = min(target, step_price) if up else max(target, step_price)
            self.advance(PRICE_LIMIT_INTERVAL_S + 1)
            self.open_position(key, symbol, up, 10**30, sqrt_price_limit_x96=sqrt_price_x96(limit))
            steps += 1
        raise RuntimeError(
            f"market {symbol} did not reach {target} in {max_steps} steps (at {self.market_price(symbol)})"
        )

    def set_prices(self, prices: dict[str, float], *, settle_s: int = 20) -> None:
        """Index rounds, then the markets traded to them, then ``settle_s`` seconds so the mark follows."""
        for symbol, price in prices.items():
            self.push_index(symbol, price)
        for symbol, price in prices.items():
            self.move_market(symbol, price)
        # refresh the index rounds so they stay fresher than the feeds' timeout after the clock moves
        for symbol, price in prices.items():
            self.push_index(symbol, price)
        self.advance(settle_s)

    def mark_price(self, symbol: str) -> int:
        return self.account_balance.functions.getMarkPrice(self.bases[symbol].address).call()

    def liquidate(self, key: str, trader: str, symbol: str) -> dict[str, Any]:
        fn = self.ch.functions.liquidate(Web3.to_checksum_address(trader), self.bases[symbol].address)
        return self.send(key, fn, gas=3_000_000)


def start_perp_devchain(*, seed: bool = True, block_time: float | None = None):
    """Start anvil, deploy Curie and (optionally) seed the maker and DEFAULT_PERP_BOOK; returns (anvil, ops)."""
    from keeper.chain.anvil import Anvil

    anvil = Anvil.start(block_time=block_time)
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        ops = PerpOps(w3, deploy_perp_v2(w3, rpc_url=anvil.url, request=anvil.request), request=anvil.request)
        if seed:
            ops.seed()
    except BaseException:
        anvil.stop()
        raise
    return anvil, ops


def describe(ops: PerpOps, *, seeded: bool) -> list[str]:
    """Human lines for ``keeper devchain --protocol perp-v2``: addresses, markets, and the seeded traders."""
    d = ops.deployment
    lines = [
        f"  {name:<16} {getattr(d, name)}"
        for name in ("clearing_house", "vault", "account_balance", "exchange", "settlement_token", "multicall")
    ]
    for symbol, m in d.markets.items():
        lines.append(
            f"  market {symbol:<4} base {m.base_token} pool {m.pool} aggregator {m.aggregator} "
            f"mark {ops.mark_price(symbol) / 1e18:,.2f}"
        )
    if seeded:
        for trader in DEFAULT_PERP_BOOK:
            who = Account.from_key(ANVIL_KEYS[trader.key_index]).address
            value = ops.ch.functions.getAccountValue(who).call()
            req = ops.account_balance.functions.getMarginRequirementForLiquidation(who).call()
            legs = ", ".join(
                f"{'long' if leg.is_long else 'short'} {leg.symbol} ${leg.notional_usd:,.0f}" for leg in trader.legs
            )
            lines.append(
                f"  trader {who} (anvil key {trader.key_index}): {legs}; account value "
                f"{value / 1e18:,.2f}, maintenance requirement {req / 1e18:,.2f}"
            )
        lines.append(
            f"  maker (open orders) anvil key {MAKER}; market mover key {MOVER}; keeper key {KEEPER}; "
            f"liquidator key {LIQUIDATOR}"
        )
    return lines
