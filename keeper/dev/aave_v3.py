"""Real Aave v3 (``@aave/core-v3`` 1.19.3 compiled artifacts) deployed on a local chain, with seeded positions.

Order of deployment (the one the contracts accept; see ``@aave/deploy-v3``'s hardhat scripts for the
official one): ``PoolAddressesProvider`` -> ``setACLAdmin`` (before ``ACLManager``, whose constructor reads
it) -> ``ACLManager`` + roles -> the logic libraries (FlashLoanLogic linked to BorrowLogic) -> ``Pool`` linked
to seven libraries, ``PoolConfigurator`` linked to ConfiguratorLogic -> ``setPoolImpl`` (creates and
initialises the pool proxy) THEN ``setPoolConfiguratorImpl`` (the configurator reads the pool address at
initialisation) -> tokens and Chainlink ``MockV3Aggregator`` feeds (8 decimals: AaveOracle does not rescale)
-> ``AaveOracle`` and ``AaveProtocolDataProvider`` -> token implementations built with the pool PROXY address
-> interest strategies -> ``initReserves`` -> collateral parameters, borrowing, reserve factor, caps, e-mode
and debt ceiling, all before anyone supplies (an asset supplied while its LTV is 0 is not enabled as the
supplier's collateral).

Every transaction is a real signed EIP-1559 transaction (``keeper.dev.reference.Sender``). Multicall3 is installed
at its canonical address the way ``keeper.dev.reference.deploy_protocol`` does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3

from keeper.dev.reference import ANVIL_KEYS, MULTICALL3_ADDRESS, Sender, install_multicall3
from keeper.errors import InputError, ToolchainError
from keeper.protocols.reference import write_atomically

PROJECT_ROOT = Path(__file__).resolve().parents[2]
AAVE_ARTIFACTS = PROJECT_ROOT / "node_modules" / "@aave" / "core-v3" / "artifacts" / "contracts"
CHAINLINK_MOCK = PROJECT_ROOT / "node_modules" / "@chainlink" / "contracts" / "abi" / "v0.7" / "MockV3Aggregator.json"
RAY = 10**27

LIBRARIES = (
    "BorrowLogic",
    "SupplyLogic",
    "LiquidationLogic",
    "EModeLogic",
    "BridgeLogic",
    "ConfiguratorLogic",
    "PoolLogic",
    "FlashLoanLogic",
)  # FlashLoanLogic last: it links BorrowLogic


@dataclass(frozen=True, slots=True)
class RateStrategy:
    """``DefaultReserveInterestRateStrategy`` parameters in percent (Aave's presets, ``@aave/deploy-v3``
    ``rateStrategies.ts``: rateStrategyVolatileOne / rateStrategyStableOne)."""

    optimal_usage: float
    base_variable: float
    slope1: float
    slope2: float

    def args(self, provider: str) -> tuple:
        def ray(pct: float) -> int:
            return round(pct * 100) * RAY // 10_000

        # stable borrowing stays disabled: its slopes only need to be valid
        return (
            provider,
            ray(self.optimal_usage),
            ray(self.base_variable),
            ray(self.slope1),
            ray(self.slope2),
            ray(self.slope1),
            ray(self.slope2),
            ray(2),
            ray(8),
            ray(20),
        )


VOLATILE = RateStrategy(optimal_usage=45, base_variable=0, slope1=7, slope2=300)
STABLE = RateStrategy(optimal_usage=90, base_variable=0, slope1=4, slope2=60)


@dataclass(frozen=True, slots=True)
class ReserveSpec:
    """One reserve of the local market: token, feed price, and the risk parameters (bps, whole tokens)."""

    symbol: str
    decimals: int
    price_e8: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int  # 10500 = 5 % bonus
    reserve_factor_bps: int
    supply_cap: int
    borrow_cap: int
    strategy: RateStrategy
    borrowable: bool = True
    emode_category: int = 0
    debt_ceiling_e2: int = 0  # isolation mode: ceiling in USD with 2 decimals (0 = not isolated)
    borrowable_in_isolation: bool = False
    liquidation_protocol_fee_bps: int = 1000


# Parameters modelled on Aave v3 Ethereum's WETH / WBTC / USDC / DAI listings (LTV/LT/bonus), LINK isolated.
DEFAULT_RESERVES = (
    ReserveSpec("WETH", 18, 3_000 * 10**8, 8000, 8250, 10500, 1500, 2_000_000, 1_400_000, VOLATILE),
    ReserveSpec("WBTC", 8, 60_000 * 10**8, 7300, 7800, 10500, 2000, 50_000, 30_000, VOLATILE),
    ReserveSpec(
        "USDC",
        6,
        10**8,
        7700,
        8000,
        10450,
        1000,
        2_000_000_000,
        1_500_000_000,
        STABLE,
        emode_category=1,
        borrowable_in_isolation=True,
    ),
    ReserveSpec(
        "DAI",
        18,
        10**8,
        6300,
        7700,
        10400,
        1000,
        2_000_000_000,
        1_500_000_000,
        STABLE,
        emode_category=1,
        borrowable_in_isolation=True,
    ),
    ReserveSpec(
        "LINK",
        18,
        15 * 10**8,
        5300,
        6800,
        10700,
        2000,
        15_000_000,
        8_000_000,
        VOLATILE,
        debt_ceiling_e2=12_000_000 * 100,
    ),
)


@dataclass(frozen=True, slots=True)
class EModeSpec:
    category_id: int
    ltv_bps: int
    liquidation_threshold_bps: int
    liquidation_bonus_bps: int
    label: str


DEFAULT_EMODES = (EModeSpec(1, 9300, 9500, 10100, "Stablecoins"),)


@dataclass(frozen=True)
class AaveDeployment:
    """Where the local Aave v3 market lives (JSON-serialisable)."""

    rpc_url: str
    chain_id: int
    start_block: int
    provider: str
    pool: str
    configurator: str
    oracle: str
    data_provider: str
    acl_manager: str
    multicall: str
    treasury: str
    deployer: str
    tokens: dict[str, str] = field(default_factory=dict)  # symbol -> underlying
    feeds: dict[str, str] = field(default_factory=dict)  # symbol -> MockV3Aggregator
    a_tokens: dict[str, str] = field(default_factory=dict)
    variable_debt_tokens: dict[str, str] = field(default_factory=dict)
    decimals: dict[str, int] = field(default_factory=dict)
    isolated: tuple[str, ...] = ()  # symbols with a debt ceiling (collateral must be enabled explicitly)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_atomically(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> AaveDeployment:
        try:
            data = json.loads(Path(path).read_text())
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            raise InputError(
                f"Aave deployment file {path} is unreadable ({exc}): run `keeper devchain --protocol aave-v3`"
            ) from exc
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ---- artifacts ---------------------------------------------------------------------------------


def aave_artifact(name: str) -> dict[str, Any]:
    """ABI, unlinked bytecode and link references of an ``@aave/core-v3`` contract."""
    found = list(AAVE_ARTIFACTS.glob(f"**/{name}.sol/{name}.json"))
    if not found:
        raise ToolchainError(f"{name} is not in {AAVE_ARTIFACTS}: run `npm ci` (installs @aave/core-v3 1.19.3)")
    data = json.loads(found[0].read_text())
    return {"abi": data["abi"], "bytecode": data["bytecode"], "links": data.get("linkReferences", {})}


def link(artifact: dict[str, Any], libraries: dict[str, str]) -> dict[str, Any]:
    """Bytecode with each library placeholder replaced by its address (at every linkReferences offset)."""
    code = artifact["bytecode"].removeprefix("0x")
    for libs in artifact["links"].values():
        for lib, refs in libs.items():
            if lib not in libraries:
                raise ToolchainError(f"library {lib} must be deployed before it is linked")
            addr = libraries[lib].lower().removeprefix("0x")
            for ref in refs:
                start = 2 * ref["start"]
                code = code[:start] + addr + code[start + 2 * ref["length"] :]
    return {**artifact, "bytecode": "0x" + code}


def chainlink_mock() -> dict[str, Any]:
    data = json.loads(CHAINLINK_MOCK.read_text())
    return {
        "abi": data["compilerOutput"]["abi"],
        "bytecode": "0x" + data["compilerOutput"]["evm"]["bytecode"]["object"].removeprefix("0x"),
    }


def _contract(w3: Web3, name: str, address: str):
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=aave_artifact(name)["abi"])


# ---- deployment --------------------------------------------------------------------------------


def deploy_aave(
    w3: Web3,
    deployer_key: str = ANVIL_KEYS[0],
    *,
    reserves: tuple[ReserveSpec, ...] = DEFAULT_RESERVES,
    emodes: tuple[EModeSpec, ...] = DEFAULT_EMODES,
    rpc_url: str | None = None,
) -> AaveDeployment:
    """Deploy an Aave v3 market with ``reserves`` and ``emodes`` on a local chain; return its addresses."""
    start_block = w3.eth.block_number
    d = Sender(w3, deployer_key)
    install_multicall3(w3)

    provider = d.deploy(aave_artifact("PoolAddressesProvider"), "0", d.address)
    prov = _contract(w3, "PoolAddressesProvider", provider)
    d.wait(d.transact(prov.functions.setACLAdmin(d.address)))
    acl = d.deploy(aave_artifact("ACLManager"), provider)
    d.wait(d.transact(prov.functions.setACLManager(acl)))
    aclc = _contract(w3, "ACLManager", acl)
    for fn in (aclc.functions.addPoolAdmin, aclc.functions.addEmergencyAdmin, aclc.functions.addRiskAdmin):
        d.transact(fn(d.address))
    d.wait()

    libs: dict[str, str] = {}
    for lib in LIBRARIES:
        libs[lib] = d.deploy(link(aave_artifact(lib), libs))
    pool_impl = d.deploy(link(aave_artifact("Pool"), libs), provider)
    conf_impl = d.deploy(link(aave_artifact("PoolConfigurator"), libs))
    d.wait(d.transact(prov.functions.setPoolImpl(pool_impl)))
    pool = prov.functions.getPool().call()
    d.wait(d.transact(prov.functions.setPoolConfiguratorImpl(conf_impl)))
    configurator = prov.functions.getPoolConfigurator().call()

    token_art = aave_artifact("MintableERC20")
    feed_art = chainlink_mock()
    tokens: dict[str, str] = {}
    feeds: dict[str, str] = {}
    for r in reserves:
        tokens[r.symbol] = d.deploy(token_art, r.symbol, r.symbol, r.decimals)
        feeds[r.symbol] = d.deploy(feed_art, 8, r.price_e8)
    zero = "0x" + "00" * 20
    oracle = d.deploy(
        aave_artifact("AaveOracle"),
        provider,
        [tokens[r.symbol] for r in reserves],
        [feeds[r.symbol] for r in reserves],
        zero,
        zero,
        10**8,
    )
    d.transact(prov.functions.setPriceOracle(oracle))
    data_provider = d.deploy(aave_artifact("AaveProtocolDataProvider"), provider)
    d.transact(prov.functions.setPoolDataProvider(data_provider))
    a_impl = d.deploy(aave_artifact("AToken"), pool)
    s_impl = d.deploy(aave_artifact("StableDebtToken"), pool)
    v_impl = d.deploy(aave_artifact("VariableDebtToken"), pool)
    strategies: dict[RateStrategy, str] = {}
    for r in reserves:
        if r.strategy not in strategies:
            strategies[r.strategy] = d.deploy(
                aave_artifact("DefaultReserveInterestRateStrategy"), *r.strategy.args(provider)
            )
    treasury = d.address
    conf = _contract(w3, "PoolConfigurator", configurator)
    inputs = [
        (
            a_impl,
            s_impl,
            v_impl,
            r.decimals,
            strategies[r.strategy],
            tokens[r.symbol],
            treasury,
            zero,
            f"Aave {r.symbol}",
            f"a{r.symbol}",
            f"Aave variable debt {r.symbol}",
            f"variableDebt{r.symbol}",
            f"Aave stable debt {r.symbol}",
            f"stableDebt{r.symbol}",
            b"",
        )
        for r in reserves
    ]
    d.wait(d.transact(conf.functions.initReserves(inputs), gas=3_000_000 * len(reserves) + 1_000_000))
    for e in emodes:
        d.transact(
            conf.functions.setEModeCategory(
                e.category_id, e.ltv_bps, e.liquidation_threshold_bps, e.liquidation_bonus_bps, zero, e.label
            )
        )
    for r in reserves:
        t = tokens[r.symbol]
        d.transact(
            conf.functions.configureReserveAsCollateral(
                t, r.ltv_bps, r.liquidation_threshold_bps, r.liquidation_bonus_bps
            )
        )
        d.transact(conf.functions.setReserveBorrowing(t, r.borrowable))
        d.transact(conf.functions.setReserveFactor(t, r.reserve_factor_bps))
        d.transact(conf.functions.setSupplyCap(t, r.supply_cap))
        d.transact(conf.functions.setBorrowCap(t, r.borrow_cap))
        d.transact(conf.functions.setLiquidationProtocolFee(t, r.liquidation_protocol_fee_bps))
        if r.emode_category:
            d.transact(conf.functions.setAssetEModeCategory(t, r.emode_category))
        if r.debt_ceiling_e2:
            d.transact(conf.functions.setDebtCeiling(t, r.debt_ceiling_e2))
        if r.borrowable_in_isolation:
            d.transact(conf.functions.setBorrowableInIsolation(t, True))
    d.wait()
    poolc = _contract(w3, "Pool", pool)
    a_tokens: dict[str, str] = {}
    v_tokens: dict[str, str] = {}
    for r in reserves:
        data = poolc.functions.getReserveData(tokens[r.symbol]).call()
        a_tokens[r.symbol], v_tokens[r.symbol] = data[8], data[10]
    return AaveDeployment(
        rpc_url=rpc_url or getattr(w3.provider, "endpoint_uri", "") or "",
        chain_id=w3.eth.chain_id,
        start_block=start_block,
        provider=provider,
        pool=pool,
        configurator=configurator,
        oracle=oracle,
        data_provider=data_provider,
        acl_manager=acl,
        multicall=MULTICALL3_ADDRESS,
        treasury=treasury,
        deployer=d.address,
        tokens=tokens,
        feeds=feeds,
        a_tokens=a_tokens,
        variable_debt_tokens=v_tokens,
        decimals={r.symbol: r.decimals for r in reserves},
        isolated=tuple(r.symbol for r in reserves if r.debt_ceiling_e2),
    )


# ---- operations on the deployed market (seeding, tests, demo) -----------------------------------


@dataclass(frozen=True, slots=True)
class SeedAccount:
    """A leveraged account to open: supplies and variable borrows in whole tokens, optional e-mode."""

    supplies: tuple[tuple[str, float], ...]
    borrows: tuple[tuple[str, float], ...]
    emode: int = 0


DEFAULT_ACCOUNTS = (
    SeedAccount((("WETH", 10.0),), (("USDC", 22_000.0),)),  # HF 1.125 at $3,000
    SeedAccount((("WETH", 5.0), ("WBTC", 0.5)), (("USDC", 20_000.0), ("DAI", 12_000.0))),
    SeedAccount((("USDC", 100_000.0),), (("DAI", 90_000.0),), emode=1),  # e-mode stablecoins, LT 95 %
    SeedAccount((("LINK", 5_000.0),), (("USDC", 30_000.0),)),  # isolation mode (LINK has a debt ceiling)
)
LIQUIDITY_USD = 50_000_000


class AaveOps:
    """Convenience operations on a deployed local Aave market (each a real signed transaction)."""

    def __init__(self, w3: Web3, deployment: AaveDeployment, deployer_key: str = ANVIL_KEYS[0]) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.deployer_key = deployer_key
        self.pool = _contract(w3, "Pool", deployment.pool)
        self.configurator = _contract(w3, "PoolConfigurator", deployment.configurator)
        self.erc20 = {s: _contract(w3, "MintableERC20", a) for s, a in deployment.tokens.items()}
        feed_abi = chainlink_mock()["abi"]
        self.feeds = {
            s: w3.eth.contract(address=Web3.to_checksum_address(a), abi=feed_abi) for s, a in deployment.feeds.items()
        }
        self._senders: dict[str, Sender] = {}

    def sender(self, key: str) -> Sender:
        s = self._senders.get(key)
        if s is None or s.nonce != self.w3.eth.get_transaction_count(Account.from_key(key).address, "pending"):
            s = Sender(self.w3, key)
            self._senders[key] = s
        return s

    def reset_nonces(self) -> None:
        self._senders.clear()

    def units(self, symbol: str, amount: float) -> int:
        return round(amount * 10**6) * 10 ** self.deployment.decimals[symbol] // 10**6

    def _do(self, key: str, fn: Any, gas: int | None = None) -> dict[str, Any]:
        s = self.sender(key)
        return s.wait(s.transact(fn, gas=gas))

    def mint(self, symbol: str, to: str, amount: int) -> None:
        fn = self.erc20[symbol].get_function_by_signature("mint(address,uint256)")
        self._do(self.deployer_key, fn(Web3.to_checksum_address(to), amount))

    def approve(self, key: str, symbol: str, spender: str | None = None, amount: int = 2**256 - 1) -> None:
        self._do(
            key, self.erc20[symbol].functions.approve(Web3.to_checksum_address(spender or self.pool.address), amount)
        )

    def supply(self, key: str, symbol: str, amount: int, on_behalf: str | None = None) -> None:
        me = Account.from_key(key).address
        self.mint(symbol, me, amount)
        self.approve(key, symbol, amount=amount)
        self._do(
            key,
            self.pool.functions.supply(
                self.deployment.tokens[symbol], amount, Web3.to_checksum_address(on_behalf or me), 0
            ),
        )

    def borrow(self, key: str, symbol: str, amount: int) -> None:
        me = Account.from_key(key).address
        self._do(key, self.pool.functions.borrow(self.deployment.tokens[symbol], amount, 2, 0, me))

    def enable_collateral(self, key: str, symbol: str) -> None:
        self._do(key, self.pool.functions.setUserUseReserveAsCollateral(self.deployment.tokens[symbol], True))

    def set_emode(self, key: str, category: int) -> None:
        self._do(key, self.pool.functions.setUserEMode(category))

    def set_price(self, symbol: str, price_e8: int) -> None:
        self._do(self.deployer_key, self.feeds[symbol].functions.updateAnswer(int(price_e8)), gas=200_000)

    def price_e8(self, symbol: str) -> int:
        return self.feeds[symbol].functions.latestAnswer().call()

    def set_frozen(self, symbol: str, frozen: bool) -> None:
        self._do(
            self.deployer_key, self.configurator.functions.setReserveFreeze(self.deployment.tokens[symbol], frozen)
        )

    def set_paused(self, symbol: str, paused: bool) -> None:
        self._do(self.deployer_key, self.configurator.functions.setReservePause(self.deployment.tokens[symbol], paused))

    def account_data(self, user: str) -> tuple[int, int, int, int, int, int]:
        return tuple(self.pool.functions.getUserAccountData(Web3.to_checksum_address(user)).call())

    def provide_liquidity(self, key: str, usd: int = LIQUIDITY_USD) -> None:
        """Supply ``usd`` worth of every reserve from ``key`` so borrowers find liquidity."""
        for symbol in self.deployment.tokens:
            price = self.price_e8(symbol)
            self.supply(key, symbol, usd * 10**8 * 10 ** self.deployment.decimals[symbol] // price)

    def open_account(self, key: str, account: SeedAccount) -> None:
        if account.emode:
            self.set_emode(key, account.emode)
        for symbol, amount in account.supplies:
            self.supply(key, symbol, self.units(symbol, amount))
            if symbol in self.deployment.isolated:
                # an isolated asset is not enabled as collateral on supply (1.19.3's
                # validateAutomaticUseAsCollateral wants ISOLATED_COLLATERAL_SUPPLIER_ROLE): enable it
                self.enable_collateral(key, symbol)
        for symbol, amount in account.borrows:
            self.borrow(key, symbol, self.units(symbol, amount))

    def liquidate(self, key: str, collateral: str, debt: str, user: str, debt_to_cover: int) -> dict[str, Any]:
        """``liquidationCall`` from ``key`` (minted the debt asset first); returns the receipt."""
        me = Account.from_key(key).address
        self.mint(debt, me, debt_to_cover)
        self.approve(key, debt, amount=debt_to_cover)
        fn = self.pool.functions.liquidationCall(
            self.deployment.tokens[collateral],
            self.deployment.tokens[debt],
            Web3.to_checksum_address(user),
            debt_to_cover,
            False,
        )
        return self._do(key, fn)  # estimated: a refused liquidation raises ContractLogicError("... 45")


def seed_market(
    ops: AaveOps, lp_key: str, trader_keys: tuple[str, ...], accounts: tuple[SeedAccount, ...] = DEFAULT_ACCOUNTS
) -> list[str]:
    """Provide liquidity from ``lp_key`` and open ``accounts`` (one per trader key); return the traders."""
    ops.provide_liquidity(lp_key)
    traders = []
    for key, account in zip(trader_keys, accounts, strict=False):
        ops.open_account(key, account)
        traders.append(Account.from_key(key).address)
    return traders
