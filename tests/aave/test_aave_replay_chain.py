"""The fast Aave account replay against the real Aave v3 contracts on a short window of real bars.

FTX crash, 2022-11-08 17:45 UTC (ETH -10.7 %, BTC -7 % within 40 minutes, ``tests/data``): a 2 h warm-up, then
10 bars = 40 oracle rounds. The fast model replays the window for ``none``, ``risk`` (the daemon's
``decide_accounts``) and a fixed health-factor rule; then real Aave v3 (``@aave/core-v3`` 1.19.3, deployed with
the book's reserve parameters on anvil, genesis before the window) replays it: the accounts are opened with the
fast model's units at the opening round's time, and at every round, in blocks mined at exactly the round's time,
the same keeper transactions land (from each account's own key and wallet), the feeds push the round's prices,
``getUserAccountData`` is read, the liquidator calls ``liquidationCall(collateral, debt, user, max, false)`` on every
account below HF 1 (the collateral and the debt of largest value, chosen from the chain's balances), and the
account data are read again. The health factors before and after the liquidator, the liquidations and the
collateral each one paid the liquidator must equal the fast model's to the wei, round by round.

The chain's USDC borrow rate is constant (a rate strategy with zero slopes, base = the book's 5 %) and the supply
rates are 0 (no WETH/WBTC borrows; USDC's reserve factor 100 %), so the book's constant rates are exact.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from keeper.accounts.aave_v3 import MAX_UINT256
from keeper.accounts.costs import AAVE_REPAY_GAS, AAVE_SUPPLY_GAS
from keeper.chain.anvil import Anvil
from keeper.dev.aave_v3 import VOLATILE, AaveOps, RateStrategy, ReserveSpec, deploy_aave
from keeper.dev.reference import ANVIL_KEYS
from keeper.domain import AccountAction, AccountActionKind
from keeper.replay.aave_book import parse_aave_book
from keeper.replay.accounts_fast import (
    AccountObservation,
    AccountsConfig,
    AccountsRisk,
    HealthTarget,
    NoKeeperAccounts,
    run_accounts_fast,
)

pytestmark = pytest.mark.chain

DATA = Path(__file__).resolve().parents[1] / "data"
OPEN_S = 1_667_929_500  # 2022-11-08 17:45 UTC
WARMUP_S = 2 * 3600
BARS = 10
CONST_5 = RateStrategy(optimal_usage=90, base_variable=5, slope1=0, slope2=0)
LIQUIDATOR = ANVIL_KEYS[8]
LP = ANVIL_KEYS[9]

BOOK = {
    "aave": {
        "reserves": {
            "WETH": {"price": "ETH", "decimals": 18, "ltv": 0.80, "liquidation_threshold": 0.825,
                     "liquidation_bonus": 0.05},
            "WBTC": {"price": "BTC", "decimals": 8, "ltv": 0.73, "liquidation_threshold": 0.78,
                     "liquidation_bonus": 0.05},
            "USDC": {"price_usd": 1.0, "decimals": 6, "ltv": 0.77, "liquidation_threshold": 0.80,
                     "liquidation_bonus": 0.045, "borrow_rate": 0.05},
        },
        "wallet": {"asset": "USDC", "per_account_usd": 20_000.0},
    },
    "aave_accounts": [
        {"name": "weth-{hf}", "collateral": {"WETH": 100_000.0}, "debt_asset": "USDC",
         "health_factors": [1.04, 1.07, 1.11]},
        {"name": "wbtc-{hf}", "collateral": {"WBTC": 80_000.0}, "debt_asset": "USDC", "health_factors": [1.07, 1.09]},
        {"name": "mixed", "collateral": {"WETH": 60_000.0, "WBTC": 40_000.0}, "debt_asset": "USDC",
         "health_factor": 1.06, "wallet_usd": 5_000.0},
    ],
}  # fmt: skip


@dataclass(slots=True)
class SupplyWallet:
    """A test policy that supplies (the keeper repays): below HF ``trigger``, supply $2,000 of the wallet's USDC
    as collateral (a first USDC supply: enabled as collateral, the average LT moves)."""

    trigger: float = 1.06
    name: str = "supply-test"

    def decide(self, obs: AccountObservation) -> list[AccountAction]:
        out = []
        for n in sorted(obs.rules):
            if obs.rules[n].health(n) < round(self.trigger * 10**18) and obs.wallets.get(n, 0) >= 2_000 * 10**6:
                out.append(AccountAction(AccountActionKind.ADD_COLLATERAL, n, "USDC", 2_000 * 10**6, 2_000 * 10**6))
        return out


def _reserves(book) -> tuple[ReserveSpec, ...]:
    out = []
    for asset, r in book.reserves.items():
        p = r.params
        usdc = asset == "USDC"
        out.append(
            ReserveSpec(
                asset,
                p.decimals,
                r.fixed_price_e8 or 10**8,
                p.ltv_bps,
                p.liquidation_threshold_bps,
                p.liquidation_bonus_bps,
                10_000 if usdc else 1_500,  # USDC: the whole interest to the treasury, supply rate 0
                10**9,  # supply cap (whole tokens; 36 bits)
                10**9,
                CONST_5 if usdc else VOLATILE,
                liquidation_protocol_fee_bps=p.liquidation_protocol_fee_bps,
            )
        )
    return tuple(out)


def _key(name: str) -> str:
    return Web3.keccak(text=f"aave-replay-test:{name}").hex()


class _Chain:
    def __init__(self, anvil: Anvil, book) -> None:
        self.anvil = anvil
        self.w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        self.ops = AaveOps(self.w3, deploy_aave(self.w3, reserves=_reserves(book), emodes=(), rpc_url=anvil.url))
        self.ops.provide_liquidity(LP, 20_000_000)
        self.tok = self.ops.deployment.tokens
        self.keys = {a.name: _key(a.name) for a in book.accounts}
        self.addr = {n: Account.from_key(k).address for n, k in self.keys.items()}
        pool = self.ops.pool.address
        for n, key in self.keys.items():
            self.req("anvil_setBalance", [self.addr[n], hex(10**21)])
            for sym in self.tok:
                self.ops.approve(key, sym, pool)
        self.ops.mint("USDC", Account.from_key(LIQUIDATOR).address, 10**16)
        self.ops.approve(LIQUIDATOR, "USDC", pool)
        abi = self.ops.erc20["USDC"].abi  # balanceOf
        self.a_tokens = {s: self.w3.eth.contract(address=a, abi=abi) for s, a in self.ops.deployment.a_tokens.items()}
        self.d_tokens = {
            s: self.w3.eth.contract(address=a, abi=abi) for s, a in self.ops.deployment.variable_debt_tokens.items()
        }
        self.gas: dict[str, list[int]] = {"supply": [], "repay": [], "liquidation": []}

    def req(self, method: str, params: list):
        return self.anvil.request(method, params)

    def at(self, t_s: int) -> None:
        """Every block from here on is mined at ``t_s`` (until the next call)."""
        self.req("evm_setNextBlockTimestamp", [t_s])
        self.req("anvil_setBlockTimestampInterval", [0])

    def hf(self, name: str) -> int:
        return self.ops.account_data(self.addr[name])[5]

    def call(self, key: str, fn) -> dict:
        return self.ops._do(key, fn)

    def pair(self, name: str) -> tuple[str, str] | None:
        """The liquidator's rule (as the fast model's): the collateral and the debt of largest value."""
        user, dec = self.addr[name], self.ops.deployment.decimals
        colls, debts = [], []
        for s in self.tok:
            price = self.ops.price_e8(s)
            a = self.a_tokens[s].functions.balanceOf(user).call()
            d = self.d_tokens[s].functions.balanceOf(user).call()
            if a:
                colls.append((a * price // 10 ** dec[s], s))
            if d:
                debts.append((d * price // 10 ** dec[s], s))
        if not colls or not debts:
            return None
        return max(colls)[1], max(debts)[1]


@pytest.fixture(scope="module")
def window(ftx_fall_window):
    return ftx_fall_window  # tests/conftest.py: OPEN_S - WARMUP_S .. BARS bars after OPEN_S


def test_fast_model_equals_real_aave_round_by_round(window):
    book = parse_aave_book(BOOK, "test")
    policies = [NoKeeperAccounts(), AccountsRisk(), HealthTarget(1.05, 1.15), SupplyWallet()]
    fast = run_accounts_fast(book, window, policies, AccountsConfig(warmup_s=WARMUP_S, trace=True, record=False))
    opening = fast.extra["_opening"]
    t_open = fast.start_s
    assert t_open == OPEN_S and 36 <= fast.t_s.size <= 44
    assert fast.results["none"].liquidations > 0  # the window liquidates without a keeper
    anvil = Anvil.start(extra_args=["--timestamp", str(t_open - 3 * 3600)])
    try:
        chain = _Chain(anvil, book)
        ops, tok = chain.ops, chain.tok
        # the opening round: its prices, the wallets and collateral minted, then supply and borrow at t_open
        prices_e8 = _round_prices(window, fast)
        assert fast.trace["none"][0]["t_s"] == t_open and set(prices_e8[0]) == {"WETH", "WBTC"}
        for a, p in prices_e8[0].items():
            ops.set_price(a, p)
        for n, o in opening.items():
            spec = next(s for s in book.accounts if s.name == n)
            wallet = round(spec.wallet_usd * 1e8) * 10**6 // 10**8
            ops.mint("USDC", chain.addr[n], wallet)
            for a, units in o["supply"].items():
                ops.mint(a, chain.addr[n], units)
        chain.at(t_open)
        for n, o in opening.items():
            for a, units in o["supply"].items():
                chain.call(chain.keys[n], ops.pool.functions.supply(tok[a], units, chain.addr[n], 0))
            d_asset, d_units = o["borrow"]
            chain.call(chain.keys[n], ops.pool.functions.borrow(tok[d_asset], d_units, 2, 0, chain.addr[n]))
        opened = chain.req("evm_snapshot", [])
        for policy, trace in fast.trace.items():
            chain.req("evm_revert", [opened])
            opened = chain.req("evm_snapshot", [])
            ops.reset_nonces()
            liquidations = 0
            for row in trace:
                k, t_s = row["k"], row["t_s"]
                chain.at(t_s)
                for _k, n, kind, asset, amount in row["actions"]:  # 1. the keeper's transactions land
                    fn = (
                        ops.pool.functions.supply(tok[asset], amount, chain.addr[n], 0)
                        if kind == "supply"
                        else ops.pool.functions.repay(tok[asset], amount, 2, chain.addr[n])
                    )
                    chain.gas[kind].append(chain.call(chain.keys[n], fn)["gasUsed"])
                for a, p in prices_e8[k].items():  # 2. the oracle
                    if ops.price_e8(a) != p:
                        ops.set_price(a, p)
                chain.req("evm_mine", [])  # the reads below run at t_k (a round may push no new price)
                got = {n: chain.hf(n) for n in row["hf_before"]}  # 3. the account data
                assert got == row["hf_before"], (policy, k)
                taken = []
                for n in chain.addr:  # 4. the liquidator, in the book's order
                    if n not in got or got[n] >= 10**18:
                        continue
                    pair = chain.pair(n)
                    if pair is None:
                        continue
                    c, d = pair
                    me = Account.from_key(LIQUIDATOR).address
                    before = ops.erc20[c].functions.balanceOf(me).call()
                    fn = ops.pool.functions.liquidationCall(tok[c], tok[d], chain.addr[n], MAX_UINT256, False)
                    chain.gas["liquidation"].append(chain.call(LIQUIDATOR, fn)["gasUsed"])
                    seized = ops.erc20[c].functions.balanceOf(me).call() - before
                    taken.append((n, c, d, seized))
                    liquidations += 1
                want = [(n, c, d, seized) for n, c, d, _covered, seized in row["liquidations"]]
                assert taken == want, (policy, k)
                after = {n: chain.hf(n) for n in row["hf_after"]}
                assert after == row["hf_after"], (policy, k)
            assert liquidations == fast.results[policy].liquidations
        print(  # the figures docs/replay.md quotes (pytest -s)
            "aave chain check:",
            {p: (r.liquidations, r.transactions) for p, r in fast.results.items()},
            {k: (len(v), statistics.median(v) if v else None) for k, v in chain.gas.items()},
        )
        # what the fast replay charges per action (the daemon's measured figures) is what the contracts use, within
        # 15 % (a first supply of an asset writes more storage than the later ones)
        for kind, want in (("repay", AAVE_REPAY_GAS), ("supply", AAVE_SUPPLY_GAS)):
            assert chain.gas[kind], f"no {kind} on the window: the check would not cover it"
            assert abs(statistics.median(chain.gas[kind]) / want - 1) < 0.15, (kind, chain.gas[kind])
    finally:
        anvil.stop()


def _round_prices(window, fast) -> dict[int, dict[str, int]]:
    """Round k -> the oracle answers pushed at it (asset -> e8), as the fast replay pushed them."""
    from keeper.replay.prices import build_round_grid

    grid = build_round_grid(window, "adverse")
    k0 = int(list(grid.t_s).index(fast.start_s))
    names = {"ETH": "WETH", "BTC": "WBTC"}
    return {i: {names[s]: p for s, p in r.prices_e8.items()} for i, r in enumerate(grid.iter_rounds(k0, None))}
