"""Differential test: the Python protocol model (keeper/replay/model.py) against ``PerpEngine`` on anvil.

Hypothesis generates sequences of operations (open, increase, decrease, addMargin, removeMargin, moveMargin,
close, liquidate, oracle price pushes, time jumps). Each one is sent to the real contract as a signed
EIP-1559 transaction mined at a timestamp the test sets, and applied to the model at that timestamp; after
every step the contract's own views (``getPositions`` for every account and market, ``getMarket`` for the fee
index and open interest) must equal the model's, field by field, and a call reverts on chain exactly when
the model raises :class:`ModelRevert`. One anvil for the whole test; each example starts from the same
``evm_snapshot``.
"""

from __future__ import annotations

import os
import time

import pytest
from eth_account import Account
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from web3 import Web3

from keeper.dev.reference import ANVIL_KEYS
from keeper.domain import Market
from keeper.replay.model import MarketState, ModelRevert, PerpModel, PositionView

pytestmark = pytest.mark.chain

TRADER_KEYS = ANVIL_KEYS[6:8]
LIQUIDATOR_KEY = ANVIL_KEYS[5]
TX_GAS = 800_000
MAX_FEE_WEI = 50 * 10**9
EXAMPLES = int(os.environ.get("KEEPER_DIFF_EXAMPLES", "200"))


class Chain:
    """The devchain's engine and feeds driven with raw signed transactions at chosen timestamps."""

    def __init__(self, devchain) -> None:
        self.dc = devchain
        self.anvil = devchain.anvil
        self.w3: Web3 = devchain.w3
        self.engine = devchain.engine
        self.chain_id = self.w3.eth.chain_id
        self.symbols = sorted(devchain.deployment.markets, key=devchain.deployment.markets.get)
        self.market_ids = [devchain.deployment.markets[s] for s in self.symbols]
        self.feeds = [devchain.feeds[s] for s in self.symbols]
        self.traders = [Account.from_key(k) for k in TRADER_KEYS]
        self.liquidator = Account.from_key(LIQUIDATOR_KEY)
        self.owner = Account.from_key(devchain.deployer_key)
        self.nonces: dict[str, int] = {}
        self.now_s = 0

    def sync_nonces(self) -> None:
        for acct in (*self.traders, self.liquidator, self.owner):
            self.nonces[acct.address] = self.w3.eth.get_transaction_count(acct.address)

    def send(self, acct, fn, at_s: int) -> bool:
        """Mine ``fn`` from ``acct`` in a block of timestamp ``at_s``; True when it succeeded."""
        tx = {
            "chainId": self.chain_id,
            "nonce": self.nonces[acct.address],
            "to": fn.address,
            "value": 0,
            "data": fn._encode_transaction_data(),
            "gas": TX_GAS,
            "maxFeePerGas": MAX_FEE_WEI,
            "maxPriorityFeePerGas": 10**9,
            "type": 2,
        }
        raw = acct.sign_transaction(tx).raw_transaction
        self.anvil.request("evm_setNextBlockTimestamp", [at_s])
        tx_hash = self.anvil.request("eth_sendRawTransaction", ["0x" + raw.hex()])
        self.nonces[acct.address] += 1
        receipt = self.anvil.request("eth_getTransactionReceipt", [tx_hash])
        deadline = time.monotonic() + 10.0
        while receipt is None and time.monotonic() < deadline:  # automine: normally there at once
            receipt = self.anvil.request("eth_getTransactionReceipt", [tx_hash])
        assert receipt is not None, (
            f"not mined: {self.anvil.request('eth_getTransactionByHash', [tx_hash])}, "
            f"automine {self.anvil.request('anvil_getAutomine')}"
        )
        self.now_s = at_s
        return int(receipt["status"], 16) == 1

    def mine(self, at_s: int) -> None:
        self.anvil.request("evm_setNextBlockTimestamp", [at_s])
        self.anvil.request("evm_mine", [])
        self.now_s = at_s

    def latest(self) -> tuple[int, int]:
        block = self.anvil.request("eth_getBlockByNumber", ["latest", False])
        return int(block["number"], 16), int(block["timestamp"], 16)

    def views(self, block: int) -> tuple[list[tuple], list[tuple]]:
        accounts = [a.address for a in self.traders for _ in self.market_ids]
        mids = [m for _ in self.traders for m in self.market_ids]
        positions = self.engine.functions.getPositions(accounts, mids).call(block_identifier=block)
        markets = [self.engine.functions.getMarket(m).call(block_identifier=block) for m in self.market_ids]
        return [tuple(p) for p in positions], markets


@pytest.fixture(scope="module")
def rig(devchain):
    """Fund and approve the traders once, then hand out the chain with a base snapshot."""
    chain = Chain(devchain)
    for key in TRADER_KEYS:
        devchain.mint(Account.from_key(key).address, 10**9 * 10**6)
        devchain.approve_engine(key)
    devchain.reset_nonces()
    state = {"base": devchain.snapshot()}  # anvil drops a snapshot when reverting to it: renewed per example
    yield chain, state
    devchain.revert(state["base"])


def model_from_chain(chain: Chain, block: int, now_s: int) -> PerpModel:
    """The model of the chain's markets as of ``block`` (fee index and last price read there; no positions)."""
    model = PerpModel()
    for mid, feed in zip(chain.market_ids, chain.feeds, strict=True):
        mv = chain.engine.functions.getMarket(mid).call(block_identifier=block)
        params = mv[0]
        market = Market(mid, "", params[1], params[2], params[3], params[4], params[5])
        rnd = feed.functions.latestRoundData().call(block_identifier=block)
        model.markets[mid] = MarketState(
            market,
            fee_index_wad=mv[1],
            fee_updated_s=now_s,
            price_e8=rnd[1],
            price_updated_s=rnd[3],
            round_id=rnd[0],
            long_oi_e18=mv[2],
            short_oi_e18=mv[3],
        )
    return model


def view_tuple(v: PositionView) -> tuple:
    return (
        v.exists,
        v.is_long,
        v.size,
        v.entry_price,
        v.collateral,
        v.pending_fee,
        v.equity,
        v.maintenance_margin,
        v.liquidation_price,
        v.mark_price,
        v.mark_updated_at,
        v.liquidatable,
    )


trader = st.integers(0, len(TRADER_KEYS) - 1)
market = st.integers(0, 1)
open_op = st.tuples(st.just("open"), trader, market, st.booleans(), st.integers(50, 200_000), st.floats(0.5, 60.0))
ops = st.one_of(
    open_op,
    st.tuples(st.just("decrease"), trader, market, st.floats(0.01, 0.99)),
    st.tuples(st.just("add"), trader, market, st.integers(1, 5_000)),
    st.tuples(st.just("remove"), trader, market, st.integers(1, 5_000)),
    st.tuples(st.just("move"), trader, market, st.integers(1, 5_000)),
    st.tuples(st.just("close"), trader, market),
    st.tuples(st.just("liquidate"), trader, market),
    st.tuples(st.just("price"), market, st.floats(0.8, 1.2)),
    st.tuples(st.just("jump"), st.sampled_from([1, 13, 600, 3599, 3601, 7200, 86_400])),
)

# a large price move straight followed by a liquidation attempt on that market (liquidations are rare otherwise)
crash = st.tuples(trader, market, st.sampled_from([0.5, 0.7, 0.9, 0.97, 1.03, 1.1, 1.4, 1.8])).map(
    lambda t: [("price", t[1], t[2]), ("liquidate", t[0], t[1])]
)
sequences = st.lists(st.one_of(ops.map(lambda o: [o]), crash), min_size=1, max_size=8).map(
    lambda chunks: [op for chunk in chunks for op in chunk]
)


def apply(chain: Chain, model: PerpModel, op: tuple, at_s: int) -> tuple[bool, bool]:
    """Run ``op`` on both sides at ``at_s``; returns (chain succeeded, model succeeded)."""
    kind = op[0]
    if kind == "jump":
        chain.mine(at_s)
        return True, True
    if kind == "price":
        mid = chain.market_ids[op[1]]
        ms = model.markets[mid]
        new_price = max(1, int(ms.price_e8 * op[2]))
        ok = chain.send(chain.owner, chain.feeds[op[1]].functions.pushPrice(new_price), at_s)
        model.push_price(mid, new_price, at_s)
        return ok, True
    acct, mid = chain.traders[op[1]], chain.market_ids[op[2]]
    who = acct.address.lower()
    pos = model.positions.get((who, mid))
    fns = chain.engine.functions
    if kind == "open":
        _, _, _, is_long, notional_usd, leverage = op
        price = max(model.markets[mid].price_e8, 1)
        size = notional_usd * 10**26 // price
        collateral = int(notional_usd / leverage * 1e6)
        fn, call = (
            fns.openPosition(mid, is_long, size, collateral),
            lambda: model.open_position(who, mid, is_long, size, collateral, at_s),
        )
    elif kind == "decrease":
        delta = max(1, int((pos.size_e18 if pos else 10**18) * op[3]))
        fn, call = (
            fns.decreasePosition(acct.address, mid, delta),
            lambda: model.decrease_position(who, mid, delta, at_s),
        )
    elif kind in ("add", "remove", "move"):
        amount = op[3] * 10**6
        if kind == "add":
            fn, call = fns.addMargin(acct.address, mid, amount), lambda: model.add_margin(who, mid, amount, at_s)
        elif kind == "remove":
            fn, call = fns.removeMargin(acct.address, mid, amount), lambda: model.remove_margin(who, mid, amount, at_s)
        else:
            other = chain.market_ids[1 - op[2]]
            fn, call = (
                fns.moveMargin(acct.address, mid, other, amount),
                lambda: model.move_margin(who, mid, other, amount, at_s),
            )
    elif kind == "close":
        fn, call = fns.closePosition(mid), lambda: model.close_position(who, mid, at_s)
    else:
        fn, call = fns.liquidate(acct.address, mid), lambda: model.liquidate(who, mid, at_s)
    sender = chain.liquidator if kind == "liquidate" else acct
    ok = chain.send(sender, fn, at_s)
    trial = model.copy()  # a revert leaves the state untouched, as on chain
    try:
        call()
    except ModelRevert:
        model.markets, model.positions = trial.markets, trial.positions
        return ok, False
    return ok, True


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(open_op, min_size=1, max_size=4), sequences)
def test_model_matches_the_engine_step_by_step(rig, opens, rest):
    """After every generated operation the model's position views, fee indices and open interest equal the
    contract's, and an operation reverts on chain exactly when the model refuses it."""
    chain, state = rig
    steps = opens + rest
    try:
        chain.sync_nonces()
        block, now_s = chain.latest()
        model = model_from_chain(chain, block, now_s)
        t = now_s
        for i, op in enumerate(steps):
            t += op[1] if op[0] == "jump" else 1
            chain_ok, model_ok = apply(chain, model, op, t)
            event(f"{op[0]} {'ok' if chain_ok else 'reverted'}")
            assert chain_ok == model_ok, (
                f"step {i} {op}: chain {'ok' if chain_ok else 'reverted'}, model {'ok' if model_ok else 'reverted'}"
            )
            block, ts = chain.latest()
            assert ts == t
            positions, markets = chain.views(block)
            k = 0
            for acct in chain.traders:
                for mid in chain.market_ids:
                    expected = view_tuple(model.view(acct.address, mid, t))
                    got = positions[k]
                    if not expected[0]:
                        assert not got[0], f"step {i} {op}: chain has a position {got} the model has not"
                        # the view's mark price fields are filled even without a position
                        assert (got[9], got[10]) == (expected[9], expected[10]) or expected[9] == 0
                    else:
                        assert got == expected, f"step {i} {op}: {acct.address[:8]} market {mid}"
                    k += 1
            for mid, mv in zip(chain.market_ids, markets, strict=True):
                ms = model.markets[mid]
                assert (mv[1], mv[2], mv[3]) == (ms.index_at(t), ms.long_oi_e18, ms.short_oi_e18), f"step {i} {op}"
    finally:
        chain.dc.revert(state["base"])
        state["base"] = chain.dc.snapshot()
