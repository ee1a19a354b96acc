"""The read path's concurrent batches return exactly what one batch after another returns (real Aave v3 on anvil).

A book of templates and storage copies (the benchmark's way: ``anvil_setStorageAt`` of the Pool's and the
tokens' user slots) is read with Multicall batches so small that each pass takes many JSON-RPC batches, sent
up to four at once (:meth:`keeper.chain.rpc.ChainClient.call_many`, a pre-encoded body), and compared with
the same read in one batch at a time, with the generic ``ChainClient.batch`` (``json.dumps`` body) and eth_abi
decoding of the Multicall3 answers, and with per-account direct ``eth_call`` views of the contracts.
"""

from __future__ import annotations

import pytest
from aavechain import assert_equal_to_a_fresh_full_read
from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

from keeper.accounts.aave_v3 import account_data
from keeper.chain.multicall import Multicall, Result
from keeper.chain.rpc import RpcErrorResponse
from keeper.dev.aave_v3 import SeedAccount
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.aave_v3 import F_SCALED_BALANCE, F_USER_CONFIG, F_USER_EMODE

pytestmark = pytest.mark.chain

TEMPLATES = (
    SeedAccount((("WETH", 10.0), ("WBTC", 0.5)), (("USDC", 30_000.0),)),
    SeedAccount((("WETH", 10.0),), (("USDC", 10_000.0), ("DAI", 8_000.0))),
    SeedAccount((("USDC", 100_000.0),), (("DAI", 90_000.0),), emode=1),
)


def _slot(user: str, index: int) -> str:
    return "0x" + keccak(bytes(12) + bytes.fromhex(user[2:]) + index.to_bytes(32, "big")).hex()


def _clone(aave, templates: list[str], n: int) -> list[str]:
    """``n`` new accounts, each a storage copy of a template (round robin) in the pool and the tokens."""
    d = aave.deployment
    contracts = [d.pool, *d.a_tokens.values(), *d.variable_debt_tokens.values()]
    plan = {}
    for t in templates:
        entries = []
        for c in contracts:
            for i in range(120):
                value = aave.anvil.request("eth_getStorageAt", [c, _slot(t, i), "latest"])
                if int(value, 16):
                    entries.append((c, i, value))
        plan[t] = entries
    users = []
    for k in range(n):
        user = to_checksum_address("0x" + keccak(b"concurrent" + k.to_bytes(8, "big"))[:20].hex())
        for c, i, value in plan[templates[k % len(templates)]]:
            aave.anvil.request("anvil_setStorageAt", [c, _slot(user, i), value])
        users.append(user)
    return users


class SequentialGenericMulticall(Multicall):
    """The read as it was before the concurrent batches: one ``ChainClient.batch`` after another (its JSON body
    from ``json.dumps``), every Multicall3 answer decoded by eth_abi."""

    def _send(self, group, block):
        tag = hex(block) if isinstance(block, int) else block
        answers = self.client.batch(
            [("eth_call", [{"to": self.address, "data": "0x" + q.hex()}, tag]) for q in group], raise_errors=False
        )
        return [a if isinstance(a, RpcErrorResponse) else bytes.fromhex(a[2:]) for a in answers]

    def _decode_into(self, answer, block, results, numbers, stamps):
        assert isinstance(answer, bytes) and answer
        decoded = [Result(ok, data) for ok, data in abi_decode(["(bool,bytes)[]"], answer)[0]]
        numbers.append(int.from_bytes(decoded[0].data, "big"))
        stamps.append(int.from_bytes(decoded[1].data, "big"))
        results.append(decoded[2:])


@pytest.fixture
def book(aave):
    keys = ANVIL_KEYS[3 : 3 + len(TEMPLATES)]
    for key, t in zip(keys, TEMPLATES, strict=True):
        aave.open_account(key, t)
    templates = [aave.address(k) for k in keys]
    return templates + _clone(aave, templates, 57)


def test_concurrent_small_batches_read_exactly_the_sequential_generic_read(aave, book):
    client = aave.client()
    small = {"max_calls": 7, "max_calldata_bytes": 1_000, "max_request_bytes": 6_000}
    concurrent = aave.adapter(client)
    concurrent.multicall = Multicall(client, concurrent.multicall.address, concurrency=4, **small)
    reference = aave.adapter(client)
    reference.multicall = SequentialGenericMulticall(client, reference.multicall.address, concurrency=1, **small)
    default = aave.adapter(client)  # production settings: each pass of this book in one batch

    client.stats.reset()
    got = concurrent.read_accounts(book)
    trips = client.stats.round_trips
    want = reference.read_accounts(book)
    one = default.read_accounts(book)

    assert trips > 10  # many batches, sent concurrently
    assert not got.failed and len(got.accounts) == len(book)
    for snap in (want, one):
        assert snap.block_number == got.block_number
        assert snap.accounts == got.accounts
        assert snap.market == got.market
        assert snap.onchain == got.onchain
        assert snap.rounds == got.rounds
    # the keeper's exact arithmetic on the concurrent read equals the contract's own getUserAccountData
    assert all(account_data(a, got.market) == got.onchain[u] for u, a in got.accounts.items())
    # and the balances are the contracts' own, read one eth_call at a time
    for u in book[::9]:
        word = bytes(12) + bytes.fromhex(u[2:])
        assert int.from_bytes(client.call(concurrent.pool, F_USER_EMODE.selector + word), "big") == (
            got.accounts[u].emode_category
        )
        bits = int.from_bytes(client.call(concurrent.pool, F_USER_CONFIG.selector + word), "big")
        for ur in got.accounts[u].reserves:
            state = got.market.reserves[ur.asset]
            assert ur.using_as_collateral == bool(bits >> (2 * state.reserve_id + 1) & 1)
            if ur.using_as_collateral:
                direct = client.call(state.a_token, F_SCALED_BALANCE.selector + word)
                assert int.from_bytes(direct, "big") == ur.scaled_a_balance
            if ur.borrowing:
                direct = client.call(state.variable_debt_token, F_SCALED_BALANCE.selector + word)
                assert int.from_bytes(direct, "big") == ur.scaled_variable_debt


def test_a_full_read_sends_the_last_balances_pass_ahead_and_equals_a_fresh_read(aave, book):
    """A full read sends the last read's balances pass with the market pass (one round trip when no account's
    configuration bitmap changed); an account whose bitmap changed, or a new one, is read in a pass of its own;
    a changed layout (stable debt appears on a reserve) reads the balances pass afresh. Each read equals a fresh
    adapter's read of its block (no pass sent ahead) and the contract's own getUserAccountData."""
    client = aave.client()
    adapter = aave.adapter(client, full_read_every_s=0)
    first = adapter.read_accounts(book, cross_check=False)
    assert first.round_trips == 2  # nothing to send ahead yet: market + configurations, then balances

    aave.anvil.request("evm_mine", [])
    same = adapter.read_accounts(book, cross_check=False)
    assert same.round_trips == 1 and same.block_number > first.block_number
    assert_equal_to_a_fresh_full_read(aave, client, same, book)

    aave.borrow(ANVIL_KEYS[3], "DAI", aave.units("DAI", 500.0))  # template 0: a new borrowing bit
    aave.supply(ANVIL_KEYS[4], "WBTC", aave.units("WBTC", 0.2))  # template 1: a new collateral bit
    newcomer = ANVIL_KEYS[7]
    aave.open_account(newcomer, SeedAccount((("LINK", 100.0),), ()))
    users = [*book, aave.address(newcomer)]
    changed = adapter.read_accounts(users, cross_check=False)
    assert changed.round_trips == 2  # the market with the balances sent ahead, then the three others' balances
    dai = aave.token("DAI")
    assert changed.accounts[book[0]].reserve(dai) is not None and first.accounts[book[0]].reserve(dai) is None
    assert_equal_to_a_fresh_full_read(aave, client, changed, users)

    usdc = aave.token("USDC")
    aave._do(aave.deployer_key, aave.configurator.functions.setReserveStableRateBorrowing(usdc, True))
    borrower = aave.address(ANVIL_KEYS[6])
    aave.supply(ANVIL_KEYS[6], "WETH", aave.units("WETH", 5.0))
    aave._do(ANVIL_KEYS[6], aave.pool.functions.borrow(usdc, aave.units("USDC", 1_000.0), 1, 0, borrower))
    users.append(borrower)
    stable = adapter.read_accounts(users, cross_check=False)
    assert stable.round_trips == 2  # the layout changed (USDC has stable debt now): the balances pass afresh
    assert_equal_to_a_fresh_full_read(aave, client, stable, users)
    aave.anvil.request("evm_mine", [])
    again = adapter.read_accounts(users, cross_check=False)
    assert again.round_trips == 1
    assert_equal_to_a_fresh_full_read(aave, client, again, users)

    # with the contract's getUserAccountData (the daemon's read of books up to 1,000 accounts): one round trip too
    checked = adapter.read_accounts(users, cross_check=True)
    assert checked.round_trips == 1 and checked.onchain.keys() == set(users)
    assert all(account_data(a, checked.market) == checked.onchain[u] for u, a in checked.accounts.items())
    assert checked.accounts == again.accounts  # nothing happened between them (interest accrues by index only)
