"""The full-read triggers of incremental Aave v3 reads that change the market itself, and the accounts re-read
every cycle whatever the logs say, on a real Aave v3 (anvil, npm bytecode, real signed transactions through the
real PoolConfigurator, AaveOracle and ACL roles the deployer holds):

* a reserve listed (``initReserves`` + its configuration): the next read is full, reason "the reserve list
  changed", and equals a fresh full read (an account that supplied the new reserve included);
* a reserve dropped and listed again (``dropReserve`` + ``initReserves``: the same list, new token proxies):
  "a reserve's token address changed";
* an e-mode category changed or added (``setEModeCategory``, ``setAssetEModeCategory``);
* a token upgraded (``updateAToken`` / ``updateVariableDebtToken`` to the package's own revision-2
  implementations ``MockAToken`` / ``MockVariableDebtToken``), and the Pool (``setPoolImpl`` of the
  PoolAddressesProvider to the package's revision-3 ``MockPoolInherited``): the proxy logs ``Upgraded``;
* a provider that refuses the range of the logs since the last read (the only wrapper: anvil never refuses;
  the providers' real codes and texts): the read is full, and the next one incremental again;
* a stable-rate borrower (``setReserveStableRateBorrowing``, ``borrow(..., 1, ...)``) is re-read by every
  incremental read though no log names it (its balance accrues every second) and equals a fresh full read."""

from __future__ import annotations

import json

import pytest
from aavechain import assert_equal_to_a_fresh_full_read
from eth_account import Account
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import ContractLogicError

from keeper.chain.rpc import ChainClient, HttpTransport, RetryPolicy
from keeper.chain.testing import FaultTransport
from keeper.dev.aave_v3 import (
    AAVE_ARTIFACTS,
    LIBRARIES,
    VOLATILE,
    SeedAccount,
    aave_artifact,
    chainlink_mock,
    link,
)

pytestmark = pytest.mark.chain

ZERO = "0x" + "00" * 20
OPEN = {
    "A": SeedAccount((("WETH", 10.0),), (("USDC", 5_000.0),)),
    "B": SeedAccount((("USDC", 10_000.0),), (("DAI", 2_000.0),), emode=1),  # e-mode 1 (stablecoins)
    "C": SeedAccount((("WETH", 2.0), ("WBTC", 0.1)), (("DAI", 1_000.0),)),
}


def _key(name: str) -> str:
    return "0x" + keccak(b"full-read-triggers:" + name.encode()).hex()


def _mine(aave, blocks: int) -> None:
    aave.anvil.request("anvil_mine", [hex(blocks)])


@pytest.fixture
def book(aave):
    keys = {name: _key(name) for name in (*OPEN, "S", "N")}
    for key in keys.values():
        aave.anvil.request("anvil_setBalance", [Account.from_key(key).address, hex(10**20)])
    for name, seed in OPEN.items():
        aave.open_account(keys[name], seed)
    _mine(aave, 20)  # past the reorg depth: the first read's overlap names no account
    return keys, {name: Account.from_key(keys[name]).address for name in keys}


def _reader(aave, book):
    """(keys, addresses by name, the watched accounts, a client, an adapter on it)."""
    keys, by_name = book
    client = aave.client()
    return keys, by_name, [by_name[n] for n in OPEN], client, aave.adapter(client)


def _contract(aave, name: str, address: str):
    return aave.w3.eth.contract(address=Web3.to_checksum_address(address), abi=aave_artifact(name)["abi"])


def _init_reserve(aave, token: str, symbol: str) -> None:
    """``initReserves`` for ``token`` with fresh token implementations (built on the pool proxy) and a rate
    strategy, then its risk parameters (collateral before anyone supplies: the guide's trap)."""
    d, deployer = aave.deployment, aave.sender(aave.deployer_key)
    impls = [deployer.deploy(aave_artifact(n), d.pool) for n in ("AToken", "StableDebtToken", "VariableDebtToken")]
    strategy = deployer.deploy(aave_artifact("DefaultReserveInterestRateStrategy"), *VOLATILE.args(d.provider))
    names = (f"Aave {symbol}", f"a{symbol}", f"Aave variable debt {symbol}", f"variableDebt{symbol}")
    names += (f"Aave stable debt {symbol}", f"stableDebt{symbol}")
    conf = aave.configurator.functions
    aave._do(aave.deployer_key, conf.initReserves([(*impls, 18, strategy, token, d.treasury, ZERO, *names, b"")]))
    aave._do(aave.deployer_key, conf.configureReserveAsCollateral(token, 5000, 6500, 10800))
    aave._do(aave.deployer_key, conf.setReserveBorrowing(token, True))


def _list_reserve(aave, symbol: str, price_e8: int) -> str:
    """A new token listed as the real listings do: its price source on the AaveOracle first, then the reserve."""
    deployer = aave.sender(aave.deployer_key)
    token = deployer.deploy(aave_artifact("MintableERC20"), symbol, symbol, 18)
    feed = deployer.deploy(chainlink_mock(), 8, price_e8)
    oracle = _contract(aave, "AaveOracle", aave.deployment.oracle)
    aave._do(aave.deployer_key, oracle.functions.setAssetSources([token], [feed]))
    _init_reserve(aave, token, symbol)
    return token


def _supply_new(aave, key: str, token: str, amount: int) -> None:
    me = Account.from_key(key).address
    erc20 = _contract(aave, "MintableERC20", token)
    aave._do(aave.deployer_key, erc20.get_function_by_signature("mint(address,uint256)")(me, amount))
    aave._do(key, erc20.functions.approve(aave.pool.address, amount))
    aave._do(key, aave.pool.functions.supply(token, amount, me, 0))


def test_a_listed_reserve_forces_a_full_read_equal_to_a_fresh_one(aave, book):
    keys, by_name, users, client, adapter = _reader(aave, book)
    first = adapter.read_accounts(users, cross_check=False)
    assert first.full_read == "first read" and len(first.market.reserves) == 5

    token = _list_reserve(aave, "NEWT", 20 * 10**8)
    amount = 1_000 * 10**18
    _supply_new(aave, keys["A"], token, amount)
    snap = adapter.read_accounts(users, cross_check=False)
    assert snap.full_read == "the reserve list changed (5 -> 6 reserves)"
    assert set(snap.read) == set(users)
    assert snap.market.reserves[token].reserve_id == 5 and snap.market.prices_e8[token] == 20 * 10**8
    held = snap.accounts[by_name["A"]].reserve(token)
    # the first supply of a reserve: liquidity index 1 ray, so the scaled balance is the amount; LTV was set first
    assert held is not None and held.scaled_a_balance == amount and held.using_as_collateral
    assert_equal_to_a_fresh_full_read(aave, client, snap, users)
    after = adapter.read_accounts(users, cross_check=False)
    assert after.full_read is None and after.read == (by_name["A"],)  # its supply is within the reorg overlap


def test_a_reserve_listed_again_with_new_tokens_forces_a_full_read(aave, book):
    """``dropReserve`` (allowed while nothing is supplied or borrowed) then ``initReserves`` of the same asset:
    the same reserve list (the freed id is reused), new aToken and debt-token proxies."""
    keys, by_name, users, client, adapter = _reader(aave, book)
    token = _list_reserve(aave, "NEWT", 20 * 10**8)
    before = adapter.read_accounts(users, cross_check=False)
    assert before.full_read == "first read"
    a_token = before.market.reserves[token].a_token

    aave._do(aave.deployer_key, aave.configurator.functions.dropReserve(token))
    _init_reserve(aave, token, "NEWT")
    _supply_new(aave, keys["C"], token, 500 * 10**18)
    snap = adapter.read_accounts(users, cross_check=False)
    assert snap.full_read == "a reserve's token address changed"
    assert list(snap.market.reserves) == list(before.market.reserves)
    assert snap.market.reserves[token].reserve_id == before.market.reserves[token].reserve_id
    assert snap.market.reserves[token].a_token != a_token
    held = snap.accounts[by_name["C"]].reserve(token)
    assert held is not None and held.scaled_a_balance == 500 * 10**18
    assert_equal_to_a_fresh_full_read(aave, client, snap, users)


def test_an_emode_category_changed_or_added_forces_a_full_read(aave, book):
    _, _, users, client, adapter = _reader(aave, book)
    first = adapter.read_accounts(users, cross_check=False)
    assert first.market.emode_categories[1].liquidation_threshold_bps == 9500
    conf = aave.configurator.functions

    aave._do(aave.deployer_key, conf.setEModeCategory(1, 9300, 9600, 10100, ZERO, "Stablecoins"))
    changed = adapter.read_accounts(users, cross_check=False)
    assert changed.full_read == "the e-mode categories changed" and set(changed.read) == set(users)
    assert changed.market.emode_categories[1].liquidation_threshold_bps == 9600
    assert_equal_to_a_fresh_full_read(aave, client, changed, users)  # B (e-mode 1) against the contract
    assert adapter.read_accounts(users, cross_check=False).full_read is None

    weth = aave.token("WETH")
    aave._do(aave.deployer_key, conf.setEModeCategory(2, 8500, 9000, 10200, ZERO, "ETH correlated"))
    aave._do(aave.deployer_key, conf.setAssetEModeCategory(weth, 2))
    added = adapter.read_accounts(users, cross_check=False)
    assert added.full_read == "the e-mode categories changed" and set(added.read) == set(users)
    assert set(added.market.emode_categories) == {1, 2}
    assert added.market.reserves[weth].config.emode_category == 2
    assert_equal_to_a_fresh_full_read(aave, client, added, users)


def test_an_upgraded_token_forces_a_full_read(aave, book):
    """The package's own upgrade implementations (revision 2), through the configurator. A fresh implementation
    of the same artifact cannot be installed: its ``initialize`` (``initializer``: revision 1 is not above the
    proxy's) fails inside the proxy's ``upgradeToAndCall``, which reverts without a reason."""
    _, _, users, client, adapter = _reader(aave, book)
    first = adapter.read_accounts(users, cross_check=False)
    d, deployer, conf = aave.deployment, aave.sender(aave.deployer_key), aave.configurator.functions
    weth, usdc = aave.token("WETH"), aave.token("USDC")

    same = deployer.deploy(aave_artifact("AToken"), d.pool)
    with pytest.raises(ContractLogicError, match="execution reverted"):
        aave._do(aave.deployer_key, conf.updateAToken((weth, d.treasury, ZERO, "Aave WETH", "aWETH", same, b"")))
    a_impl = deployer.deploy(aave_artifact("MockAToken"), d.pool)
    aave._do(aave.deployer_key, conf.updateAToken((weth, d.treasury, ZERO, "Aave WETH", "aWETH", a_impl, b"")))
    upgraded = adapter.read_accounts(users, cross_check=False)
    assert upgraded.full_read == "a contract of the market was upgraded (Upgraded event)"
    assert set(upgraded.read) == set(users)
    assert upgraded.market.reserves[weth].a_token == first.market.reserves[weth].a_token  # the same proxy
    assert_equal_to_a_fresh_full_read(aave, client, upgraded, users)

    # the Upgraded log is in the next read's overlap (the last read's last 12 blocks): that read, full, saw it
    assert adapter.read_accounts(users, cross_check=False).full_read is None
    v_impl = deployer.deploy(aave_artifact("MockVariableDebtToken"), d.pool)
    update = (usdc, ZERO, "Aave variable debt USDC", "variableDebtUSDC", v_impl, b"")
    aave._do(aave.deployer_key, conf.updateVariableDebtToken(update))
    again = adapter.read_accounts(users, cross_check=False)
    assert again.full_read == "a contract of the market was upgraded (Upgraded event)"
    assert_equal_to_a_fresh_full_read(aave, client, again, users)

    # the Pool itself, by the PoolAddressesProvider: the package's revision-3 MockPoolInherited on new libraries
    libraries: dict[str, str] = {}
    for lib in LIBRARIES:
        libraries[lib] = deployer.deploy(link(aave_artifact(lib), libraries))
    found = json.loads((AAVE_ARTIFACTS / "mocks/helpers/MockPool.sol/MockPoolInherited.json").read_text())
    artifact = {"abi": found["abi"], "bytecode": found["bytecode"], "links": found["linkReferences"]}
    pool_impl = deployer.deploy(link(artifact, libraries), d.provider)
    provider = _contract(aave, "PoolAddressesProvider", d.provider)
    aave._do(aave.deployer_key, provider.functions.setPoolImpl(pool_impl))
    assert provider.functions.getPool().call() == d.pool  # the same proxy, a new implementation
    pool_upgraded = adapter.read_accounts(users, cross_check=False)
    assert pool_upgraded.full_read == "a contract of the market was upgraded (Upgraded event)"
    assert_equal_to_a_fresh_full_read(aave, client, pool_upgraded, users)


REFUSALS = [
    (-32005, "query returned more than 10000 results"),  # Infura (documented)
    (-32602, "range 1000000 exceeds limit of 10000"),  # Infura (live)
    (-32614, "eth_getLogs is limited to a 10,000 range"),  # QuickNode
    (-32603, "block range is too wide (maximum 1024)"),  # Moonbeam / Frontier
]


@pytest.mark.parametrize(("code", "message"), REFUSALS, ids=[str(c) for c, _ in REFUSALS])
def test_a_provider_refusing_the_range_gets_a_full_read_then_incremental_again(aave, book, code, message):
    """The one wrapper: a provider that refuses ``eth_getLogs`` over more than 20 blocks (anvil never refuses)."""
    keys, by_name = book
    users = [by_name[n] for n in OPEN]
    transport = FaultTransport(HttpTransport(aave.anvil.url))
    transport.refuse_logs_wider_than = 20
    transport.log_refusal = (code, message)
    client = ChainClient([transport], retry=RetryPolicy(attempts=3, base_s=0))
    adapter = aave.adapter(client)  # reorg_depth 12: a full read's own range is 12 blocks
    adapter.read_accounts(users, cross_check=False)
    assert transport.refused == 0

    aave.supply(keys["A"], "WETH", aave.units("WETH", 1.0))
    _mine(aave, 30)  # the range since the last read: 12 + 33 blocks
    logs_before = transport.seen["eth_getLogs"]
    refused = adapter.read_accounts(users, cross_check=False)
    assert refused.full_read is not None and refused.full_read.startswith("eth_getLogs refused the range: ")
    assert message in refused.full_read
    assert set(refused.read) == set(users)
    # asked once (a refusal is not retried: the same range gets the same answer), then its own last 12 blocks
    assert transport.refused == 1 and transport.seen["eth_getLogs"] - logs_before == 2
    assert_equal_to_a_fresh_full_read(aave, client, refused, users)

    _mine(aave, 1)
    after = adapter.read_accounts(users, cross_check=False)
    assert after.full_read is None and after.read == ()
    assert transport.refused == 1


def test_a_stable_rate_borrower_is_read_every_cycle_without_a_log(aave, book):
    """Aave 1.19.3 still has stable-rate debt: ``StableDebtToken.balanceOf`` grows every second with no event,
    so every incremental read reads its holders again."""
    keys, by_name = book
    usdc = aave.token("USDC")
    aave._do(aave.deployer_key, aave.configurator.functions.setReserveStableRateBorrowing(usdc, True))
    aave.supply(keys["S"], "WETH", aave.units("WETH", 10.0))
    stable_borrow = aave.pool.functions.borrow(usdc, aave.units("USDC", 4_000.0), 1, 0, by_name["S"])
    aave._do(keys["S"], stable_borrow)
    users = [by_name[n] for n in (*OPEN, "S")]
    client = aave.client()
    adapter = aave.adapter(client)
    _mine(aave, 20)  # past the overlap: no log of the last 12 blocks names S
    first = adapter.read_accounts(users, cross_check=False)
    stable = first.accounts[by_name["S"]].reserve(usdc)
    assert stable is not None and stable.borrowing and stable.stable_debt >= aave.units("USDC", 4_000.0)
    assert stable.scaled_variable_debt == 0

    aave.advance(240)  # four minutes of interest (under full_read_every_s = 300), one empty block
    _mine(aave, 2)
    snap = adapter.read_accounts(users, cross_check=False)
    assert snap.full_read is None
    assert snap.read == (by_name["S"],)  # the others (variable debt only) are held: no log names anyone
    grown = snap.accounts[by_name["S"]].reserve(usdc)
    assert grown is not None and grown.stable_debt > stable.stable_debt
    assert_equal_to_a_fresh_full_read(aave, client, snap, users)
