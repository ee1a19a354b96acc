"""A local chain with the reference protocol deployed: deployment, seeding and the deployment file.

Development tooling (``keeper devchain``, the demo, tests, the on-chain replay): never imported by the daemon.
The deployment file's type, :class:`~keeper.protocols.reference.Deployment`, lives with the adapter that
reads it.

``deploy_protocol`` deploys MockUSD (6 decimals), one Chainlink-compatible feed per market, the
PerpEngine with ETH and BTC markets, seeds the engine's counterparty pool, and installs Multicall3 at its
canonical address with ``anvil_setCode`` (anvil does not predeploy it). Every transaction is a real
signed EIP-1559 transaction from the deployer's key. The compiled artifacts come from ``contracts/out``
(``forge build --offline``, run by ``make``).

The deployment file (JSON) records what keeper configuration needs: RPC URL, chain id, addresses and
the start block for event discovery. :meth:`Deployment.verify` refuses a file that does not match the
chain it is pointed at (another chain id, no code at an address).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from eth_account import Account
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.types import Nonce, RPCEndpoint, TxParams

from keeper.chain.multicall import MULTICALL3_ADDRESS
from keeper.domain import SECONDS_PER_YEAR, WAD, Side
from keeper.protocols.reference import UNLIMITED_ALLOWANCE, Deployment
from keeper.resources import contract_artifact_path

# anvil's default accounts (mnemonic "test test ... junk"): public test keys, never real funds.
ANVIL_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


@dataclass(frozen=True)
class MarketSpec:
    """Parameters of a market the devchain creates (human units; converted to WAD on deploy)."""

    symbol: str
    initial_price: float
    maintenance_margin: float = 0.005
    max_leverage: float = 50.0
    liquidation_penalty: float = 0.01
    fee_rate_annual: float = 0.10
    heartbeat_s: int = 3600

    def params(self, feed: str) -> tuple:
        return (
            Web3.to_checksum_address(feed),
            round(self.maintenance_margin * WAD),
            round(self.max_leverage * WAD),
            round(self.liquidation_penalty * WAD),
            int(self.fee_rate_annual * WAD) // SECONDS_PER_YEAR,
            self.heartbeat_s,
        )


DEFAULT_MARKETS = (MarketSpec("ETH", 3000.0), MarketSpec("BTC", 60000.0))
POOL_LIQUIDITY_E6 = 100_000_000 * 10**6  # the engine's counterparty pool pays winning PnL


# ---- artifacts and transactions ----------------------------------------------------------------


def load_artifact(name: str) -> dict[str, Any]:
    """ABI and bytecode of contract ``name`` from the forge build (in the wheel, or contracts/out in a checkout)."""
    data = json.loads(contract_artifact_path(name).read_text())
    return {
        "abi": data["abi"],
        "bytecode": data["bytecode"]["object"],
        "runtime": data["deployedBytecode"]["object"],
    }


class Sender:
    """Signs and sends EIP-1559 transactions from one key with a local nonce (setup use only)."""

    def __init__(self, w3: Web3, key: str) -> None:
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(key)
        self.nonce = w3.eth.get_transaction_count(self.account.address, "pending")
        self.pending: list[HexBytes] = []

    @property
    def address(self) -> str:
        return self.account.address

    def send(self, tx: dict[str, Any], *, gas: int | None = None) -> HexBytes:
        base = self.w3.eth.get_block("latest")["baseFeePerGas"]
        tx = {
            "chainId": self.w3.eth.chain_id,
            "from": self.account.address,
            "nonce": self.nonce,
            "maxPriorityFeePerGas": 10**9,
            "maxFeePerGas": 2 * base + 10**9,
            "type": 2,
            **tx,
        }
        # Generous margin: the engine's fee index writes depend on block.timestamp, so an estimate made in
        # the same second as the previous block can miss two cold SSTOREs (~44k gas) when mined a second later.
        tx["gas"] = gas or int(self.w3.eth.estimate_gas(cast(TxParams, tx)) * 1.5) + 60_000
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        self.nonce = Nonce(self.nonce + 1)
        self.pending.append(tx_hash)
        return tx_hash

    def transact(self, fn, *, gas: int | None = None) -> HexBytes:
        """Send a web3 contract function call."""
        return self.send(_call_tx(fn, self.account.address), gas=gas)

    def deploy(self, artifact: dict[str, Any], *args: Any) -> str:
        contract = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        data = contract.constructor(*args).data_in_transaction
        tx_hash = self.send({"data": data})
        return self.wait(tx_hash)["contractAddress"]

    def wait(self, tx_hash: bytes | None = None) -> dict[str, Any]:
        """Wait for ``tx_hash`` (default: every pending one); raise if any reverted."""
        hashes = [HexBytes(tx_hash)] if tx_hash is not None else list(self.pending)
        receipt: dict[str, Any] = {}
        for h in hashes:
            # The public return type stays dict[str, Any] (callers in perp_v2 rely on it); the receipt is a TxReceipt.
            receipt = cast(dict[str, Any], self.w3.eth.wait_for_transaction_receipt(h, timeout=30))
            if receipt["status"] != 1:
                tx = self.w3.eth.get_transaction(h)
                raise RuntimeError(
                    f"setup transaction {h.to_0x_hex()} to {tx['to']} (selector {bytes(tx['input'][:4]).hex()}) "
                    f"reverted in block {receipt['blockNumber']}: gas used {receipt['gasUsed']} of {tx['gas']}"
                )
            if h in self.pending:
                self.pending.remove(h)
        return receipt


def _call_tx(fn, sender: str) -> dict[str, Any]:
    return {"to": fn.address, "data": fn._encode_transaction_data(), "from": sender}


def multicall3_code() -> str:
    """Runtime code of our Multicall3 build (0x-prefixed), for ``anvil_setCode`` at the canonical address."""
    return "0x" + load_artifact("Multicall3")["runtime"].removeprefix("0x")


def install_multicall3(w3: Web3) -> None:
    """Put Multicall3 at its canonical address on a local anvil (anvil does not predeploy it)."""
    w3.provider.make_request(RPCEndpoint("anvil_setCode"), [MULTICALL3_ADDRESS, multicall3_code()])


def contract(w3: Web3, name: str, address: str):
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"])


def deploy_protocol(
    w3: Web3,
    deployer_key: str = ANVIL_KEYS[0],
    *,
    markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS,
    rpc_url: str | None = None,
) -> Deployment:
    """Deploy the reference protocol and Multicall3 on a local chain; return where it lives."""
    start_block = w3.eth.block_number
    d = Sender(w3, deployer_key)
    install_multicall3(w3)
    usd = d.deploy(load_artifact("MockUSD"))
    feed_art = load_artifact("PriceFeed")
    feeds: dict[str, str] = {}
    for spec in markets:
        feeds[spec.symbol] = d.deploy(feed_art, f"{spec.symbol} / USD", round(spec.initial_price * 1e8))
    engine = d.deploy(load_artifact("PerpEngine"), usd)
    eng = contract(w3, "PerpEngine", engine)
    usd_c = contract(w3, "MockUSD", usd)
    market_ids: dict[str, int] = {}
    for i, spec in enumerate(markets):
        d.transact(eng.functions.createMarket(spec.params(feeds[spec.symbol])))
        market_ids[spec.symbol] = i
    d.transact(usd_c.functions.mint(d.address, POOL_LIQUIDITY_E6))
    d.transact(usd_c.functions.approve(engine, POOL_LIQUIDITY_E6))
    d.wait()
    d.transact(eng.functions.depositLiquidity(POOL_LIQUIDITY_E6))
    d.wait()
    for symbol, market_id in market_ids.items():
        view = eng.functions.getMarket(market_id).call()
        if view[0][0].lower() != feeds[symbol].lower():
            raise RuntimeError(f"market {market_id} is not {symbol}: the engine numbered markets differently")
    return Deployment(
        rpc_url=rpc_url or getattr(w3.provider, "endpoint_uri", "") or "",
        chain_id=w3.eth.chain_id,
        start_block=start_block,
        engine=engine,
        collateral=usd,
        multicall=MULTICALL3_ADDRESS,
        feeds=feeds,
        markets=market_ids,
        deployer=d.address,
    )


@dataclass(frozen=True)
class SeedPosition:
    """A position to open on the devchain (human units)."""

    symbol: str
    side: Side
    leverage: float
    notional_usd: float


DEFAULT_BOOK = (
    SeedPosition("ETH", Side.LONG, 20.0, 60_000.0),
    SeedPosition("BTC", Side.SHORT, 10.0, 120_000.0),
)


class DevChainOps:
    """Convenience operations on a deployed devchain: prices, tokens, positions (tests, demo, replay)."""

    def __init__(self, w3: Web3, deployment: Deployment, deployer_key: str = ANVIL_KEYS[0]) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.deployer_key = deployer_key
        self.engine = contract(w3, "PerpEngine", deployment.engine)
        self.usd = contract(w3, "MockUSD", deployment.collateral)
        self.feeds = {s: contract(w3, "PriceFeed", a) for s, a in deployment.feeds.items()}
        self._senders: dict[str, Sender] = {}

    def sender(self, key: str) -> Sender:
        s = self._senders.get(key)
        if s is None or s.nonce < self.w3.eth.get_transaction_count(Account.from_key(key).address, "pending"):
            s = Sender(self.w3, key)
            self._senders[key] = s
        return s

    def reset_nonces(self) -> None:
        """Forget cached nonces (after evm_revert the chain's nonces move back)."""
        self._senders.clear()

    def push_price(self, symbol: str, price_e8: int, *, wait: bool = True) -> bytes:
        s = self.sender(self.deployer_key)
        tx = s.transact(self.feeds[symbol].functions.pushPrice(int(price_e8)), gas=150_000)
        if wait:
            s.wait(tx)
        return tx

    def mint(self, to: str, amount_e6: int) -> None:
        s = self.sender(self.deployer_key)
        s.wait(s.transact(self.usd.functions.mint(Web3.to_checksum_address(to), amount_e6)))

    def approve_engine(self, key: str, allowance: int = UNLIMITED_ALLOWANCE) -> None:
        s = self.sender(key)
        s.wait(s.transact(self.usd.functions.approve(self.engine.address, allowance)))

    def open_position(self, key: str, symbol: str, is_long: bool, size_e18: int, collateral_e6: int) -> None:
        s = self.sender(key)
        market_id = self.deployment.markets[symbol]
        s.wait(s.transact(self.engine.functions.openPosition(market_id, is_long, size_e18, collateral_e6)))

    def latest_price_e8(self, symbol: str) -> int:
        return self.feeds[symbol].functions.latestRoundData().call()[1]

    def seed_book(self, key: str, book: tuple[SeedPosition, ...] = DEFAULT_BOOK, reserve_e6: int = 0) -> None:
        """Fund ``key``'s wallet, approve the engine and open ``book`` at current prices."""
        account = Account.from_key(key).address
        total = sum(int(p.notional_usd / p.leverage * 1e6) for p in book) + reserve_e6
        self.mint(account, total)
        self.approve_engine(key)
        for p in book:
            price_e8 = self.latest_price_e8(p.symbol)
            size_e18 = int(p.notional_usd * 1e8 * 1e18) // price_e8
            self.open_position(key, p.symbol, p.side is Side.LONG, size_e18, int(p.notional_usd / p.leverage * 1e6))

    def position(self, account: str, symbol: str) -> tuple:
        return self.engine.functions.getPosition(
            Web3.to_checksum_address(account), self.deployment.markets[symbol]
        ).call()
