"""Incremental reads of real Aave v3 on anvil: after the first (full) read, a read at "latest" reads again only
the accounts the logs of the Pool and the reserves' tokens name (plus the must-reads), and equals a fresh full
read of the same block account by account; a full read is forced past ``full_read_after_blocks``, after
``full_read_every_s`` of chain time, after a reorg and when ``eth_getLogs`` fails.

Every change is a real signed transaction: supply, borrow, repay, withdraw, an aToken transfer to another
watched account, a collateral toggle, an e-mode switch and a liquidation. The only wrapper is the fault
transport that makes ``eth_getLogs`` fail (a real anvil cannot be told to refuse it)."""

from __future__ import annotations

import pytest
from aavechain import assert_equal_to_a_fresh_full_read
from eth_account import Account
from eth_utils import keccak
from web3 import Web3

from keeper.chain.rpc import ChainClient, HttpTransport, RetryPolicy
from keeper.chain.testing import FaultTransport
from keeper.dev.aave_v3 import SeedAccount, aave_artifact

pytestmark = pytest.mark.chain

LIQUIDATOR = "LIQUIDATOR"


def _key(name: str) -> str:
    return "0x" + keccak(b"incremental-read:" + name.encode()).hex()


def _funded(aave, name: str) -> str:
    key = _key(name)
    aave.anvil.request("anvil_setBalance", [Account.from_key(key).address, hex(10**20)])
    return key


def _mine(aave, blocks: int) -> None:
    aave.anvil.request("anvil_mine", [hex(blocks)])


OPEN = {
    "A": SeedAccount((("WETH", 10.0),), (("USDC", 5_000.0),)),  # supplies more, sends aWETH to E
    "B": SeedAccount((("WETH", 10.0),), (("USDC", 5_000.0),)),  # borrows DAI
    "C": SeedAccount((("USDC", 10_000.0),), (("DAI", 2_000.0),)),  # repays DAI
    "W": SeedAccount((("WETH", 5.0),), ()),  # withdraws WETH
    "G": SeedAccount((("WETH", 1.0), ("WBTC", 0.1)), ()),  # WBTC off as collateral
    "H": SeedAccount((("USDC", 1_000.0),), ()),  # enters e-mode 1
    "D": SeedAccount((("WETH", 10.0),), (("USDC", 22_000.0),)),  # liquidated after WETH falls to $2,500
    "P": SeedAccount((("WETH", 2.0),), (("USDC", 1_000.0),)),  # passive: no transaction after the first read
}
WATCHED = (*OPEN, "E", "F")  # E: receives aWETH; F: never holds anything
TOUCHED = {"A", "B", "C", "W", "G", "H", "D", "E"}


@pytest.fixture
def book(aave):
    keys = {name: _funded(aave, name) for name in (*WATCHED, LIQUIDATOR)}
    for name, seed in OPEN.items():
        aave.open_account(keys[name], seed)
    _mine(aave, 40)  # past the reorg depth: the first read's overlap holds no account's event
    return keys, {name: Account.from_key(keys[name]).address for name in WATCHED}


def _change_every_way(aave, keys: dict[str, str], users: dict[str, str]) -> None:
    """One real transaction of each kind that changes an Aave account."""
    tokens = aave.deployment.tokens
    aave.supply(keys["A"], "WETH", aave.units("WETH", 2.0))
    a_weth = aave.w3.eth.contract(address=aave.deployment.a_tokens["WETH"], abi=aave_artifact("AToken")["abi"])
    aave._do(keys["A"], a_weth.functions.transfer(users["E"], aave.units("WETH", 1.0)))
    aave.borrow(keys["B"], "DAI", aave.units("DAI", 1_000.0))
    aave.approve(keys["C"], "DAI")
    aave._do(keys["C"], aave.pool.functions.repay(tokens["DAI"], aave.units("DAI", 500.0), 2, users["C"]))
    aave._do(keys["W"], aave.pool.functions.withdraw(tokens["WETH"], aave.units("WETH", 1.0), users["W"]))
    aave._do(keys["G"], aave.pool.functions.setUserUseReserveAsCollateral(tokens["WBTC"], False))
    aave.set_emode(keys["H"], 1)
    aave.set_price("WETH", 2_500 * 10**8)
    aave.liquidate(keys[LIQUIDATOR], "WETH", "USDC", users["D"], aave.units("USDC", 5_000.0))


def test_incremental_read_reads_only_the_accounts_the_logs_name_and_equals_a_full_read(aave, book):
    keys, by_name = book
    users = [by_name[n] for n in WATCHED]
    client = aave.client()
    adapter = aave.adapter(client, reorg_depth=30)  # the overlap holds all of _change_every_way's blocks

    first = adapter.read_accounts(users, cross_check=False)
    assert first.full_read == "first read" and set(first.read) == set(users)
    _change_every_way(aave, keys, by_name)

    snap = adapter.read_accounts(users, cross_check=False)
    assert snap.full_read is None
    assert set(snap.read) == {by_name[n] for n in TOUCHED}
    assert snap.block_number > first.block_number
    for name in TOUCHED:  # every one of them did change (the test would prove nothing otherwise)
        assert first.accounts[by_name[name]] != snap.accounts[by_name[name]], name
    assert_equal_to_a_fresh_full_read(aave, client, snap, users)

    # nothing happened since: the overlap of reorg_depth blocks names the same accounts again, no others
    again = adapter.read_accounts(users, cross_check=False, must_read=[by_name["P"].lower()])
    assert again.full_read is None
    assert set(again.read) == {by_name[n] for n in TOUCHED | {"P"}}
    assert_equal_to_a_fresh_full_read(aave, client, again, users)

    # past the overlap: the accounts the last read's logs named in its last reorg_depth blocks once more (a reorg
    # could have undone their transactions), the must-read account and a new one (read on its first read)
    _mine(aave, 31)
    newcomer = Account.from_key(_funded(aave, "N")).address
    later = adapter.read_accounts([*users, newcomer], cross_check=False, must_read=[by_name["F"]])
    assert later.full_read is None
    assert set(later.read) == {by_name[n] for n in TOUCHED} | {by_name["F"], newcomer}
    assert_equal_to_a_fresh_full_read(aave, client, later, [*users, newcomer])
    _mine(aave, 1)
    quiet = adapter.read_accounts([*users, newcomer], cross_check=False, must_read=[by_name["F"]])
    assert quiet.full_read is None and quiet.read == (by_name["F"],)
    assert quiet.round_trips == 5  # head, market, logs, the two accounts passes (every one a JSON-RPC batch)
    later = quiet
    assert_equal_to_a_fresh_full_read(aave, client, later, [*users, newcomer])


def test_full_read_after_blocks_and_after_full_read_every_s(aave, book):
    _, by_name = book
    users = [by_name[n] for n in WATCHED]
    adapter = aave.adapter(aave.client(), full_read_after_blocks=5, full_read_every_s=600)
    assert adapter.read_accounts(users, cross_check=False).full_read == "first read"

    _mine(aave, 5)
    at_bound = adapter.read_accounts(users, cross_check=False)
    assert at_bound.full_read is None and at_bound.read == ()
    _mine(aave, 6)
    past = adapter.read_accounts(users, cross_check=False)
    assert past.full_read == "6 blocks since the last read (full_read_after_blocks = 5)"
    assert set(past.read) == set(users)

    aave.advance(590)
    assert adapter.read_accounts(users, cross_check=False).full_read is None
    aave.advance(20)
    timed = adapter.read_accounts(users, cross_check=False)
    assert timed.full_read is not None and "full_read_every_s = 600" in timed.full_read
    assert set(timed.read) == set(users)
    assert_equal_to_a_fresh_full_read(aave, aave.client(), timed, users)

    # cross_check keeps reading every account with the contract's own figures, every time
    checked = adapter.read_accounts(users, cross_check=True)
    assert checked.full_read is not None and "cross-check" in checked.full_read
    assert set(checked.read) == set(users) and checked.onchain.keys() == set(users)


def test_a_reorg_that_drops_a_transaction_forces_a_full_read(aave, book):
    keys, by_name = book
    users = [by_name[n] for n in WATCHED]
    client = aave.client()
    adapter = aave.adapter(client)
    adapter.read_accounts(users, cross_check=False)
    aave.supply(keys["P"], "WETH", aave.units("WETH", 3.0))  # mint, approve, supply: three blocks
    with_supply = adapter.read_accounts(users, cross_check=False)
    assert with_supply.full_read is None and with_supply.read == (by_name["P"],)

    aave.anvil.request("anvil_reorg", [1, []])  # the supply's block replaced by an empty one (same height)
    aave.reset_nonces()
    after = adapter.read_accounts(users, cross_check=False)
    assert after.full_read == f"block {with_supply.block_number} of the last read was replaced (reorg)"
    assert after.accounts[by_name["P"]] != with_supply.accounts[by_name["P"]]  # the supply is gone
    assert_equal_to_a_fresh_full_read(aave, client, after, users)


def test_a_failing_get_logs_forces_a_full_read(aave, book):
    """A wrapper (the real anvil cannot be made to fail eth_getLogs): every request with eth_getLogs fails."""
    keys, by_name = book
    users = [by_name[n] for n in WATCHED]
    transport = FaultTransport(HttpTransport(aave.anvil.url))
    client = ChainClient([transport], retry=RetryPolicy(attempts=1))
    adapter = aave.adapter(client)
    adapter.read_accounts(users, cross_check=False)

    aave.supply(keys["P"], "WETH", aave.units("WETH", 1.0))
    transport.fail_methods = {"eth_getLogs"}
    failed = adapter.read_accounts(users, cross_check=False)
    assert failed.full_read is not None and failed.full_read.startswith("eth_getLogs ")
    assert set(failed.read) == set(users)
    assert transport.seen["eth_getLogs"] == 2  # the first read's (its last blocks) and this one's
    assert_equal_to_a_fresh_full_read(aave, client, failed, users)

    transport.fail_methods = set()
    unknown = adapter.read_accounts(users, cross_check=False)  # the failed read's own logs are unknown
    assert unknown.full_read == "the logs of the last read's blocks are unknown (its eth_getLogs failed)"
    assert adapter.read_accounts(users, cross_check=False).full_read is None


def test_web3_sees_the_same_logs_the_read_matched(aave, book):
    """Independent of the adapter: web3's own eth_getLogs for the market's contracts names exactly the accounts
    of the transactions, which are the ones an incremental read reads (no event list in either)."""
    keys, by_name = book
    users = [by_name[n] for n in WATCHED]
    adapter = aave.adapter(aave.client())
    first = adapter.read_accounts(users, cross_check=False)
    _change_every_way(aave, keys, by_name)
    snap = adapter.read_accounts(users, cross_check=False)
    d = aave.deployment
    contracts = [d.pool, *d.a_tokens.values(), *d.variable_debt_tokens.values()]
    logs = aave.w3.eth.get_logs(
        {"address": [Web3.to_checksum_address(c) for c in contracts], "fromBlock": first.block_number - 11}
    )
    words = {bytes(12) + bytes.fromhex(u[2:]): u for u in users}
    named = set()
    for lg in logs:
        chunks = [bytes(t) for t in lg["topics"]] + [
            bytes(lg["data"])[i : i + 32] for i in range(0, len(lg["data"]), 32)
        ]
        named |= {words[c] for c in chunks if c in words}
    assert named == set(snap.read) == {by_name[n] for n in TOUCHED}
