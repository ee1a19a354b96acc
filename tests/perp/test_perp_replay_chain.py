"""The fast Perp v2 account replay against the real Curie contracts on a short window of real bars.

FTX crash, 2022-11-08 17:45 UTC (ETH -10.7 %, BTC -7 % within 40 minutes, ``tests/data``): a 2 h warm-up, then
10 bars = 40 oracle rounds. The fast model (:mod:`keeper.replay.perp_model`, mark = index, fills without price
impact, no funding) replays the window for ``none``, ``risk`` (the daemon's ``decide_accounts`` over
``PerpRules``) and ``fixed:1.5:2``; then real Curie (``@perp/curie-contract`` 2.8.4 on anvil, markets opened at
the window's first prices with deep maker liquidity) replays it: the traders deposit and open the book's
positions by quote, and at every round the keeper's ``Vault.depositFor`` of the fast model land (from the
keeper's wallet), the index is pushed and the pool traded to it (so the mark follows, 20 s later), the accounts
are read, the liquidator calls ``ClearingHouse.liquidate`` where the fast model's liquidator did, and the
accounts are read again.

Checked, per round and account: ``ClearingHouse.getAccountValue`` and ``getMarginRequirementForLiquidation``
against the model's within ``VALUE_TOL`` of the account's position value (the mark is a median of pool TWAPs,
not exactly the index; the fills paid a little price impact; funding accrues), liquidatable or not the same on
both (where the model's health is not within ``BAND`` of 1), every liquidation the model makes accepted by the
contract, and the account value after it within the same tolerance.
"""

from __future__ import annotations

import statistics

import pytest
from eth_account import Account
from web3 import Web3

from keeper.accounts.costs import PERP_DEPOSIT_FOR_GAS
from keeper.accounts.perp_v2 import ONE_E18
from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.dev.perp_v2 import LIQUIDATOR, MAKER, MAX_UINT, MOVER, PerpMarketSpec, PerpOps, deploy_perp_v2
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.perp_v2 import PerpV2Adapter
from keeper.replay.accounts_fast import AccountsConfig, AccountsRisk, NoKeeperAccounts
from keeper.replay.perp_accounts import MarginTarget, run_perp_fast
from keeper.replay.perp_book import parse_perp_book
from keeper.replay.prices import build_round_grid

pytestmark = pytest.mark.chain

OPEN_S = 1_667_929_500  # 2022-11-08 17:45 UTC
WARMUP_S = 2 * 3600
BARS = 10
VALUE_TOL = 0.006  # |chain - model| account value and requirement, as a share of the account's position value
BAND = 0.03  # liquidatable-or-not is compared where the model's health is outside 1 +/- BAND
KEEPER_KEY = ANVIL_KEYS[2]
SYMBOL = {"vETH": "ETH", "vBTC": "BTC"}

BOOK = {
    "perp": {"markets": {"vETH": {"price": "ETH"}, "vBTC": {"price": "BTC"}}, "wallet": {"per_account_usd": 6_000.0}},
    "perp_accounts": [
        {"name": "eth-long-{leverage}x", "collateral_usd": 10_000.0, "positions": {"vETH": 1.0},
         "leverages": [6.0, 8.0, 9.0]},
        {"name": "btc-long-{leverage}x", "collateral_usd": 10_000.0, "positions": {"vBTC": 1.0},
         "leverages": [9.0]},
        {"name": "mixed-8x", "collateral_usd": 10_000.0, "positions": {"vETH": 0.5, "vBTC": 0.5}, "leverage": 8.0},
        {"name": "spread", "collateral_usd": 10_000.0, "positions_usd": {"vBTC": 40_000.0, "vETH": -30_000.0},
         "wallet_usd": 1_000.0},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def window(ftx_fall_window):
    return ftx_fall_window  # tests/conftest.py: OPEN_S - WARMUP_S .. BARS bars after OPEN_S


class _Chain:
    def __init__(self, anvil: Anvil, prices: dict[str, float]) -> None:
        self.anvil = anvil
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        # deep maker liquidity within +/- 35 % of the opening price: the fills' price impact stays small
        specs = (
            PerpMarketSpec("ETH", prices["ETH"], 200_000.0, 3000),
            PerpMarketSpec("BTC", prices["BTC"], 15_000.0, 3000),
        )
        self.ops = PerpOps(w3, deploy_perp_v2(w3, markets=specs, rpc_url=anvil.url, request=anvil.request),
                           request=anvil.request)  # fmt: skip
        ops = self.ops
        ops.deposit(ANVIL_KEYS[MAKER], 3_000_000_000 * 10**6)
        for s in specs:
            ops.add_liquidity(ANVIL_KEYS[MAKER], s.symbol, s.maker_base, s.range_ticks)
        ops.deposit(ANVIL_KEYS[MOVER], 1_000_000_000 * 10**6)
        ops.deposit(ANVIL_KEYS[LIQUIDATOR], 100_000_000 * 10**6)
        keeper = Account.from_key(KEEPER_KEY).address
        ops.mint(keeper, 10**15)
        ops.send(KEEPER_KEY, ops.usdc.functions.approve(ops.vault.address, MAX_UINT))
        client = ChainClient.connect(anvil.url, 31337, timeout_s=60.0)
        self.adapter = PerpV2Adapter(client, ops.deployment)
        self.gas: dict[str, list[int]] = {"deposit": [], "liquidation": [], "open": []}

    def read(self, addrs: dict[str, str]) -> dict[str, tuple[int, int]]:
        snap = self.adapter.read(list(addrs.values()))
        assert not snap.failed
        return {
            n: (snap.traders[a.lower()].contract_account_value_x18, snap.traders[a.lower()].contract_requirement_x18)
            for n, a in addrs.items()
        }


def _key(name: str) -> str:
    return Web3.keccak(text=f"perp-replay-test:{name}").hex()


def _round_prices(window, start_s: int) -> list[dict[str, int]]:
    grid = build_round_grid(window, "adverse")
    k0 = int(list(grid.t_s).index(start_s))
    return [dict(r.prices_e8) for r in grid.iter_rounds(k0, None)]


def test_fast_model_follows_real_curie_round_by_round(window):
    book = parse_perp_book(BOOK, "test")
    policies = [NoKeeperAccounts(), AccountsRisk(), MarginTarget(1.5, 2.0)]
    fast = run_perp_fast(book, window, policies, AccountsConfig(warmup_s=WARMUP_S, trace=True, record=False))
    assert fast.start_s == OPEN_S and 36 <= fast.t_s.size <= 44
    assert fast.results["none"].liquidations > 0  # the window liquidates without a keeper
    opening = fast.extra["_opening"]
    prices = _round_prices(window, fast.start_s)
    anvil = Anvil.start()
    worst = {"value": 0.0, "requirement": 0.0, "open_size": 0.0}
    compared = skipped = 0
    divergences: dict[str, list[str]] = {}
    try:
        chain = _Chain(anvil, {s: p / 1e8 for s, p in prices[0].items()})
        ops = chain.ops
        addrs = {n: Account.from_key(_key(n)).address for n in opening}
        for n, o in opening.items():  # the traders open what the fast model opened, by the same quote
            key = _key(n)
            anvil.request("anvil_setBalance", [addrs[n], hex(10**21)])
            ops.deposit(key, o["deposit"])
            for base, is_long, notional, size in o["positions"]:
                r = ops.open_position(key, SYMBOL[base], is_long, notional)
                chain.gas["open"].append(r["gasUsed"])
                got = ops.account_balance.functions.getTakerPositionSize(addrs[n], ops.bases[SYMBOL[base]].address)
                worst["open_size"] = max(worst["open_size"], abs(got.call() / size - 1))
        opened = anvil.request("evm_snapshot", [])
        for policy, trace in fast.trace.items():
            anvil.request("evm_revert", [opened])
            opened = anvil.request("evm_snapshot", [])
            ops.reset_nonces()
            liquidations = not_followed = 0
            diverged: set[str] = set()  # accounts the contract did not liquidate where the model did (near 1)
            for row in trace:
                k = row["k"]
                for _k, n, _kind, _asset, amount in row["actions"]:  # 1. the keeper's deposits land
                    fn = ops.vault.functions.depositFor(addrs[n], ops.usdc.address, amount)
                    chain.gas["deposit"].append(ops.send(KEEPER_KEY, fn)["gasUsed"])
                ops.set_prices({s: p / 1e8 for s, p in prices[k].items()})  # 2. index, pool, mark
                for phase in ("before", "after"):
                    got = chain.read({n: addrs[n] for n in row[phase]})  # 3. the contract's own numbers
                    for n, (value, req) in row[phase].items():
                        if n in diverged:
                            continue
                        c_value, c_req = got[n]
                        scale = max(req / 0.0625, ONE_E18)  # the position value at the mark
                        worst["value"] = max(worst["value"], abs(c_value - value) / scale)
                        worst["requirement"] = max(worst["requirement"], abs(c_req - req) / scale)
                        assert abs(c_value - value) <= VALUE_TOL * scale, (policy, k, phase, n, c_value, value)
                        assert abs(c_req - req) <= VALUE_TOL * scale, (policy, k, phase, n, c_req, req)
                        if req and abs(value / req - 1) > BAND:
                            assert (c_value < c_req) == (value < req), (policy, k, phase, n)
                            compared += 1
                        else:
                            skipped += 1
                    if phase == "before":  # 4. the liquidator where the model's did
                        for n, base, _size, _penalty in row["liquidations"]:
                            if n in diverged:
                                not_followed += 1
                                continue
                            if not got[n][0] < got[n][1]:  # near 1 the contract's mark says not yet (CH_EAV)
                                value, req = row["before"][n]
                                assert abs(value / req - 1) <= BAND, (policy, k, n)
                                diverged.add(n)
                                not_followed += 1
                                continue
                            fn = ops.ch.functions.liquidate(addrs[n], ops.bases[SYMBOL[base]].address)
                            chain.gas["liquidation"].append(
                                ops.send(ANVIL_KEYS[LIQUIDATOR], fn, gas=3_000_000)["gasUsed"]
                            )
                            liquidations += 1
            assert liquidations + not_followed == fast.results[policy].liquidations
            if diverged:
                divergences[policy] = sorted(diverged)
        print(  # the figures docs/replay.md quotes (pytest -s)
            "perp chain check:",
            {p: (r.liquidations, r.transactions) for p, r in fast.results.items()},
            {k: (len(v), statistics.median(v) if v else None) for k, v in chain.gas.items()},
            worst,
            {"compared": compared, "near_one": skipped, "diverged": divergences},
        )
        assert sum(len(v) for v in divergences.values()) <= 3
        assert worst["open_size"] < 0.003  # the fills' price impact
        assert chain.gas["deposit"], "no deposit on the window: the check would not cover it"
        assert abs(statistics.median(chain.gas["deposit"]) / PERP_DEPOSIT_FOR_GAS - 1) < 0.1, chain.gas["deposit"]
    finally:
        anvil.stop()
