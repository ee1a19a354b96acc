"""The on-chain replay: the same rounds as the fast replay, pushed through the real contracts on a local anvil.

One anvil (a fresh one, or ``anvil_url``'s ``Anvil``) holds the reference protocol, deployed with the book's
market parameters; every book account gets its own deterministic key (``account_key(name)``), its wallet
in MockUSD and an ``approve`` of the engine. Chain time IS the bars' time: anvil starts with its genesis at
the first round (``--timestamp``), every block of round ``k`` is mined at exactly ``t_k`` (``evm_mine`` with
a timestamp, ``anvil_setBlockTimestampInterval 0`` for the liquidator's automined blocks), so borrow fees
accrue second by second as they did in real time and the fast model's clock is reproduced to the second.

Accounting (mirrors the fast model, where each account's own wallet pays its top-ups): every account signs
its own transactions — top-ups come out of its own wallet, releases pay it back, liquidations return the
rest to it. For the ``risk`` policy that means one real :class:`keeper.runtime.service.KeeperService` per
account (self-custody: the trader's keeper signs with the trader's key), each configured with the
replayed :class:`~keeper.replay.policies.RiskSized`'s ``RiskPolicy`` and ``PlanLimits`` (checked equal).

Timeline of round ``k`` (the fast model's, :mod:`keeper.replay.fast`):

1. the transactions decided at round ``k-1`` (waiting in the mempool; automine is off while deciding) are
   mined in one block at ``t_k``; their receipts give the metrics (``MarginAdded`` / ``MarginRemoved`` /
   ``MarginMoved`` / ``PositionDecreased`` amounts, ``gasUsed``, ``status`` 0 = reverted); the keepers'
   transaction managers are polled until the intents are final;
2. the feeds' owner pushes round ``k``'s prices (one block at ``t_k``);
3. one Multicall read of the book (``ReferenceAdapter.read_book``): closest approach, liquidation prices,
   idle collateral, which positions are liquidatable;
4. :meth:`keeper.sim.liquidator.LiquidatorBot.sweep` liquidates them (automine on for its blocks, all at
   ``t_k``); its ``Liquidated`` events give penalty and returned equity (and must name exactly the
   positions step 3 found);
5. decisions: ``risk`` runs every account's ``KeeperService.cycle(execute=True)`` (reads at ``t_k``,
   assess, plan, simulate, sign, send) with its check interval set to the time to the next round; a
   baseline policy's ``decide`` sees the chain's positions and its actions are sent as signed
   transactions (fixed gas limit, no estimate: a call that reverts is mined and counted, as in the fast
   model).

Warm-up rounds (the first ``warmup_s``) are pushed too — they are the keeper's volatility history, which it
reads back from the feeds — and the feeds are deployed at the first round with its prices (the feed's
round 1), so the oracle history on chain is exactly the rounds the fast model's :class:`OracleVol` sees.
The book opens at the opening round; that state is snapshotted (``evm_snapshot``) and every policy starts
from it (``evm_revert``, then a new snapshot: an id is single-use).

Speed: every round is several RPC calls (and, for ``risk``, a full keeper cycle per account), so this is
for windows of hours, not days; see the README (crash replay section) for measured rounds per second.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from eth_account import Account
from eth_utils import keccak
from pydantic import SecretStr
from web3 import Web3

from keeper.chain.abi import Function, event_topic
from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.dev.reference import ANVIL_KEYS, DevChainOps, MarketSpec, deploy_protocol
from keeper.domain import SECONDS_PER_YEAR, WAD, ActionKind
from keeper.errors import InputError
from keeper.protocols.base import BookSnapshot
from keeper.protocols.reference import ReferenceAdapter
from keeper.replay.book import Book
from keeper.replay.fast import (
    OpenOrder,
    ReplayConfig,
    ReplayResult,
    Timeline,
    open_book,
    oracle_sigmas,
    plan_timeline,
    policy_sigma,
    price_columns,
)
from keeper.replay.metrics import WALLET_LEFT_MIN_E6, Event, PolicyResult
from keeper.replay.model import PerpModel
from keeper.replay.policies import Observation, Policy, RiskSized
from keeper.replay.prices import Bars, Round
from keeper.sim.liquidator import LIQUIDATOR_KEY, LiquidatorBot

DEPLOYER_KEY = ANVIL_KEYS[0]
ACCOUNT_SALT = b"keeper-replay:"
TX_GAS_LIMIT = 500_000  # baseline transactions: fixed limit, no estimate (a revert is mined and measured)
PUSH_GAS_LIMIT = 150_000
MAX_FEE_WEI = 50 * 10**9
TIP_WEI = 10**9
ACCOUNT_ETH_WEI = 10**21

F_PUSH = Function("pushPrice(int256)")
F_OPEN = Function("openPosition(uint256,bool,uint256,uint256)")
T_ADDED = event_topic("MarginAdded(address,uint256,address,uint256)")
T_REMOVED = event_topic("MarginRemoved(address,uint256,address,uint256)")
T_MOVED = event_topic("MarginMoved(address,uint256,uint256,uint256)")
T_DECREASED = event_topic("PositionDecreased(address,uint256,uint256,uint256,int256)")
EVENT_KIND = {T_ADDED: "top_up", T_REMOVED: "release", T_MOVED: "move_margin", T_DECREASED: "reduce_size"}


def account_key(name: str) -> str:
    """Deterministic private key of book account ``name`` on the replay chain: ``keccak(salt + name)``.

    Test keys for a throwaway local chain, never real funds.
    """
    return "0x" + keccak(ACCOUNT_SALT + name.lower().encode()).hex()


@dataclass
class OnchainStats:
    """What only the chain can tell: gas per transaction kind (receipts), speed, simulation refusals."""

    gas: dict[str, list[int]] = field(default_factory=dict)  # kind -> gasUsed of every receipt
    refused: dict[str, int] = field(default_factory=dict)  # policy -> actions the keeper's simulation refused
    wall_s: dict[str, float] = field(default_factory=dict)  # policy -> seconds for its rounds
    rounds: int = 0
    setup_s: float = 0.0
    warmup_rounds: int = 0

    def add_gas(self, kind: str, gas: int) -> None:
        self.gas.setdefault(kind, []).append(int(gas))

    def gas_summary(self) -> dict[str, dict[str, int]]:
        """kind -> n, median, min, max of gasUsed."""
        return {
            k: {"n": len(v), "median": int(statistics.median(v)), "min": min(v), "max": max(v)}
            for k, v in sorted(self.gas.items())
            if v
        }

    def rounds_per_s(self) -> dict[str, float]:
        return {p: (self.rounds / s if s > 0 else 0.0) for p, s in self.wall_s.items()}

    def to_dict(self) -> dict:
        return {
            "gas_measured": self.gas_summary(),
            "refused_by_simulation": dict(self.refused),
            "rounds": self.rounds,
            "warmup_rounds": self.warmup_rounds,
            "setup_s": round(self.setup_s, 2),
            "wall_s": {k: round(v, 2) for k, v in self.wall_s.items()},
            "rounds_per_s": {k: round(v, 2) for k, v in self.rounds_per_s().items()},
        }


@contextlib.contextmanager
def quiet_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Drop the keeper's per-position info lines while replaying (restores structlog's config after)."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    try:
        yield
    finally:
        structlog.configure(**old)


class _Signer:
    """A key that signs EIP-1559 transactions with a local nonce and fixed fees (replay use only)."""

    def __init__(self, client: ChainClient, key: str, chain_id: int) -> None:
        self.client = client
        self.account = Account.from_key(key)
        self.chain_id = chain_id
        self.nonce = 0
        self.sync()

    @property
    def address(self) -> str:
        return self.account.address

    def sync(self) -> None:
        self.nonce = int(self.client.request("eth_getTransactionCount", [self.address, "pending"]), 16)

    def send(self, to: str, data: bytes, gas: int = TX_GAS_LIMIT) -> str:
        tx = {
            "chainId": self.chain_id,
            "nonce": self.nonce,
            "to": to,
            "data": data,
            "value": 0,
            "gas": gas,
            "maxFeePerGas": MAX_FEE_WEI,
            "maxPriorityFeePerGas": TIP_WEI,
            "type": 2,
        }
        raw = self.account.sign_transaction(tx).raw_transaction
        h = self.client.request("eth_sendRawTransaction", ["0x" + raw.hex()])
        self.nonce += 1
        return h


class ReplayChain:
    """A local anvil with the book deployed, funded, warmed up and opened; snapshot/revert per policy."""

    def __init__(self, book: Book, timeline: Timeline, anvil: Anvil | None = None) -> None:
        self.book = book
        self.timeline = timeline
        t0 = timeline.rounds_all[0].t_s
        self._own_anvil = anvil is None
        self.anvil = anvil or Anvil.start(extra_args=["--timestamp", str(t0)])
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    # ---- setup ---------------------------------------------------------------------------------------

    def _setup(self) -> None:
        book, tl = self.book, self.timeline
        r0 = tl.rounds_all[0]
        self.request("anvil_setBlockTimestampInterval", [0])
        self.request("evm_setAutomine", [True])
        latest = int(self.request("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        if latest > r0.t_s:
            raise InputError(f"the chain at {self.anvil.url} is at {latest}, after the replay's first round {r0.t_s}")
        self.request("evm_setNextBlockTimestamp", [r0.t_s])
        by_id = sorted(book.markets.values(), key=lambda m: m.market_id)
        if [m.market_id for m in by_id] != list(range(len(by_id))):
            raise InputError("the on-chain replay needs market ids 0..n-1 in the book (the engine numbers markets so)")
        missing = [m.symbol for m in by_id if m.symbol not in r0.prices_e8]
        if missing:
            raise InputError(
                f"the first round carries no price for {', '.join(missing)}: the series must start together"
            )
        specs = tuple(
            MarketSpec(
                m.symbol,
                r0.prices_e8[m.symbol] / 1e8,
                m.maintenance_margin_wad / WAD,
                m.max_leverage_wad / WAD,
                m.liquidation_penalty_wad / WAD,
                m.fee_rate_per_s_wad * SECONDS_PER_YEAR / WAD,
                m.heartbeat_s,
            )
            for m in by_id
        )
        self.w3 = Web3(Web3.HTTPProvider(self.anvil.url, request_kwargs={"timeout": 60}))
        self.deployment = deploy_protocol(self.w3, DEPLOYER_KEY, markets=specs, rpc_url=self.anvil.url)
        self.ops = DevChainOps(self.w3, self.deployment, DEPLOYER_KEY)
        deployer = self.ops.sender(DEPLOYER_KEY)
        for m in by_id:  # the engine must hold exactly the book's parameters (fee rate: set exactly)
            params = self.ops.engine.functions.getMarket(m.market_id).call()[0]
            if params[4] != m.fee_rate_per_s_wad:
                deployer.wait(
                    deployer.transact(self.ops.engine.functions.setFeeRate(m.market_id, m.fee_rate_per_s_wad))
                )
                params = self.ops.engine.functions.getMarket(m.market_id).call()[0]
            want = (
                m.maintenance_margin_wad,
                m.max_leverage_wad,
                m.liquidation_penalty_wad,
                m.fee_rate_per_s_wad,
                m.heartbeat_s,
            )
            if tuple(params[1:]) != want:
                raise InputError(f"market {m.symbol}: deployed parameters {params[1:]} differ from the book's {want}")
            if self.ops.latest_price_e8(m.symbol) != r0.prices_e8[m.symbol]:
                raise InputError(f"feed {m.symbol} did not record the first round's price")
        self.markets_by_id = {m.market_id: m for m in by_id}
        self.client = ChainClient.connect(self.anvil.url, None, timeout_s=60)
        self.chain_id = int(self.request("eth_chainId"), 16)
        self.adapter = ReferenceAdapter.from_deployment(self.client, self.deployment)
        self.adapter.load_markets()
        self.keys = {a: account_key(a) for a in book.accounts}
        self.address = {a: Account.from_key(k).address for a, k in self.keys.items()}
        self.name_of = {addr.lower(): a for a, addr in self.address.items()}
        self.pos_keys = [(self.address[p.account].lower(), book.markets[p.symbol].market_id) for p in book.positions]
        # opening orders from the protocol model at the opening round's prices (same rule as the fast model)
        model = PerpModel.with_markets(list(book.markets.values()), r0.t_s)
        ro = tl.rounds_all[tl.open_k]
        for r in tl.rounds_all[: tl.open_k + 1]:
            for s, p in r.prices_e8.items():
                model.push_price(tl.sym_to_id[s], p, r.t_s)
        self.orders: list[OpenOrder] = open_book(model, book, ro.t_s)
        opening = {a: 0 for a in book.accounts}
        for o in self.orders:
            opening[o.position.account] += o.collateral_e6
        for a, addr in self.address.items():
            self.request("anvil_setBalance", [addr, hex(ACCOUNT_ETH_WEI)])
            self.ops.mint(addr, book.wallets_e6.get(a, 0) + opening[a])
            self.ops.approve_engine(self.keys[a])
        # warm-up: every round before the opening one (round 0 is the feeds' constructor round)
        self.request("evm_setAutomine", [False])
        self.pusher = _Signer(self.client, DEPLOYER_KEY, self.chain_id)
        for r in tl.rounds_all[1 : tl.open_k + 1]:
            self.push_round(r)
        signers = {a: _Signer(self.client, k, self.chain_id) for a, k in self.keys.items()}
        hashes = [
            signers[o.position.account].send(
                self.deployment.engine, F_OPEN.encode(o.market_id, o.is_long, o.size_e18, o.collateral_e6)
            )
            for o in self.orders
        ]
        self.mine(ro.t_s)
        bad = [h for h, rc in zip(hashes, self.receipts(hashes), strict=True) if int(rc["status"], 16) != 1]
        if bad:
            raise RuntimeError(f"opening the book failed on chain ({len(bad)} openPosition reverted)")
        self._snapshot = self.request("evm_snapshot")

    # ---- chain primitives ----------------------------------------------------------------------------

    def request(self, method: str, params: list | None = None):
        return self.anvil.request(method, params or [])

    def mine(self, t_s: int) -> None:
        """Mine one block at exactly ``t_s`` with whatever is pending."""
        self.request("evm_mine", [t_s])

    def push_round(self, r: Round) -> None:
        """The feeds' owner pushes the round's prices, mined in one block at the round's time."""
        for sym, p in r.prices_e8.items():
            self.pusher.send(self.deployment.feeds[sym], F_PUSH.encode(p), PUSH_GAS_LIMIT)
        self.mine(r.t_s)

    def receipts(self, hashes: Sequence[str]) -> list[dict]:
        if not hashes:
            return []
        out = self.client.batch([("eth_getTransactionReceipt", [h]) for h in hashes])
        if any(r is None for r in out):
            raise RuntimeError("a replay transaction was not mined (dropped from the pool?)")
        return out

    def read(self) -> BookSnapshot:
        return self.adapter.read_book(self.pos_keys)

    def balances(self) -> dict[str, int]:
        usd = self.ops.usd.functions
        return {a: usd.balanceOf(addr).call() for a, addr in self.address.items()}

    def restore(self) -> None:
        """Back to the opened book (and a new snapshot for the next policy)."""
        self.request("evm_revert", [self._snapshot])
        self._snapshot = self.request("evm_snapshot")
        self.request("evm_setAutomine", [False])
        self.request("anvil_setBlockTimestampInterval", [0])
        self.pusher.sync()

    def close(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self._own_anvil:
            self.anvil.stop()


# ---- the keeper (risk policy) as real daemons, one per account ------------------------------------------


def keeper_config(
    policy: RiskSized, *, rpc_url: str, chain_id: int, deployment_path: Path, account: str, key: str, journal_path: Path
):
    """The daemon configuration that reproduces ``policy`` (its RiskPolicy and PlanLimits, checked equal)."""
    from keeper.runtime.config import (
        AccountConfig,
        ChainConfig,
        FeesConfig,
        HttpConfig,
        JournalConfig,
        KeeperConfig,
        LimitsConfig,
        ProtocolConfig,
        RiskConfig,
        SignerConfig,
    )

    rp, lim = policy.risk_policy, policy.limits
    if lim is None:
        raise ValueError(f"policy {policy.name!r} has no plan limits: the on-chain replay runs the daemon with them")
    risk = {f: getattr(rp, f) for f in RiskConfig.model_fields if f != "min_action_usd" and hasattr(rp, f)}
    cfg = KeeperConfig(
        chain=ChainConfig(rpc_urls=(rpc_url,), chain_id=chain_id, request_timeout_s=60),
        protocol=ProtocolConfig(deployment=deployment_path),
        accounts=(AccountConfig(address=account),),
        signer=SignerConfig(private_key=SecretStr(key)),
        risk=RiskConfig(**risk, min_action_usd=Decimal(rp.min_action_e6) / 10**6),
        limits=LimitsConfig(
            max_top_up_usd=Decimal(lim.max_per_tx_e6) / 10**6,
            max_per_day_usd=Decimal(lim.max_per_day_e6) / 10**6,
            manual_approval_above_usd=None
            if lim.manual_approval_above_e6 is None
            else Decimal(lim.manual_approval_above_e6) / 10**6,
            allow_release=lim.allow_release,
            allow_reduce=lim.allow_reduce,
            alert_only=lim.alert_only,
            urgent_probability=lim.urgent_probability,
        ),
        fees=FeesConfig(confirmations=1),
        journal=JournalConfig(path=journal_path),
        http=HttpConfig(enabled=False),
    )
    if cfg.risk_policy() != rp:
        raise InputError(f"policy {policy.name}: its RiskPolicy is not expressible in the daemon's [risk] config")
    if cfg.plan_limits() != lim:
        raise InputError(f"policy {policy.name}: its PlanLimits are not expressible in the daemon's [limits] config")
    return cfg


# ---- one policy on the chain ----------------------------------------------------------------------------


class _ChainRun:
    """One policy replayed on the chain (private)."""

    def __init__(
        self, chain: ReplayChain, policy: Policy, config: ReplayConfig, stats: OnchainStats, workdir: Path
    ) -> None:
        self.chain = chain
        self.policy = policy
        self.config = config
        self.stats = stats
        book = chain.book
        n = len(chain.timeline.rounds)
        self.labels = [p.label for p in book.positions]
        self.keys = chain.pos_keys
        self.wallet = dict(book.wallets_e6)
        self.res = PolicyResult(name=policy.name)
        self.res.wallet_start_e6 = sum(self.wallet.values())
        self.res.wallet_min_e6 = self.res.wallet_start_e6
        if config.record:
            self.res.idle_e6 = np.zeros(n)
            self.res.ratio = np.full((n, len(self.keys)), np.nan, dtype=np.float32)
            self.res.liq_price = np.full((n, len(self.keys)), np.nan, dtype=np.float32)
        self.pending: list[tuple[str, str, str, int]] = []  # (tx hash, kind, account name, market id)
        self.refused = 0
        self.bot = LiquidatorBot(
            chain.anvil.url, chain.deployment, LIQUIDATOR_KEY, accounts=list(chain.address.values())
        )
        self.services = []
        self.signers: dict[str, _Signer] = {}
        if isinstance(policy, RiskSized):
            from keeper.runtime.service import KeeperService

            dep = workdir / "deployment.json"
            if not dep.exists():
                chain.deployment.save(dep)
            safe = "".join(c if c.isalnum() else "_" for c in policy.name)
            for a in book.accounts:
                cfg = keeper_config(
                    policy,
                    rpc_url=chain.anvil.url,
                    chain_id=chain.chain_id,
                    deployment_path=dep,
                    account=chain.address[a],
                    key=chain.keys[a],
                    journal_path=workdir / f"journal-{safe}-{a}.sqlite",
                )
                svc = KeeperService.from_config(cfg, execute=True, send_alerts=False)
                svc.start()
                self.services.append((a, svc))
        else:
            self.signers = {a: _Signer(chain.client, k, chain.chain_id) for a, k in chain.keys.items()}

    def close(self) -> None:
        for _, svc in self.services:
            svc.close()

    # ---- landing ---------------------------------------------------------------------------------------

    def land(self, k: int, t_s: int) -> None:
        """Mine what was decided last round at ``t_s``; account for it from the receipts."""
        if not self.pending:
            return
        self.chain.mine(t_s)
        res = self.res
        receipts = self.chain.receipts([p[0] for p in self.pending])
        for (h, kind, acct, mid), rc in zip(self.pending, receipts, strict=True):
            gas = int(rc["gasUsed"], 16)
            res.record_gas(t_s, gas)
            if int(rc["status"], 16) != 1:
                res.reverted += 1
                self.stats.add_gas("revert", gas)
                res.events.append(Event(t_s, k, "revert", acct, mid, 0, 0, f"{kind}: reverted on chain ({h})"))
                continue
            self.stats.add_gas(kind, gas)
            for lg in rc["logs"]:
                if lg["address"].lower() != self.chain.deployment.engine.lower() or lg["topics"][0] not in EVENT_KIND:
                    continue
                ev_kind = EVENT_KIND[lg["topics"][0]]
                data = bytes.fromhex(lg["data"][2:])
                words = [int.from_bytes(data[i : i + 32], "big") for i in range(0, len(data), 32)]
                if ev_kind == "top_up":
                    amount = words[0]
                    self.wallet[acct] -= amount
                    res.top_ups += 1
                    res.collateral_added_e6 += amount
                elif ev_kind == "release":
                    amount = words[0]
                    self.wallet[acct] += amount
                    res.releases += 1
                    res.collateral_released_e6 += amount
                elif ev_kind == "move_margin":
                    amount = words[2]
                    mid = words[1]
                    res.moves += 1
                    res.collateral_moved_e6 += amount
                else:
                    amount = 0
                    res.reductions += 1
                res.events.append(Event(t_s, k, ev_kind, acct, mid, amount, 0, h))
        self.pending = []
        for _, svc in self.services:  # the keepers see their intents final before they plan again
            if svc.txm is not None and svc.journal.open_intents():
                for _ in range(20):
                    svc.txm.poll()
                    if not svc.journal.open_intents():
                        break

    # ---- one round ---------------------------------------------------------------------------------------

    def step(self, k: int, rnd: Round, dt_next: float, sigma: dict[int, float], last: bool) -> None:
        chain, res = self.chain, self.res
        now = rnd.t_s
        if k > 0:
            self.land(k, now)  # 1
            chain.push_round(rnd)  # 2
        snap = chain.read()  # 3
        if snap.block_timestamp != now:
            raise RuntimeError(f"chain time {snap.block_timestamp} != round time {now}")
        to_liquidate = set()
        idle = idle_equity = 0
        for j, key in enumerate(self.keys):
            x = snap.extras.get(key)
            if x is None:
                continue
            res.record_position(k, j, self.labels[j], now, x.equity_e6, x.maintenance_margin_e6, x.liquidation_price_e8)
            if x.liquidatable:
                to_liquidate.add(key)
                res.bad_debt_e6 += max(0, -x.equity_e6)
            else:
                pos = snap.positions[key]
                idle += max(0, pos.collateral_e6 - pos.pending_fee_e6 - x.maintenance_margin_e6)
                idle_equity += max(0, x.equity_e6 - x.maintenance_margin_e6)
        if to_liquidate:  # 4
            chain.request("evm_setAutomine", [True])
            try:
                made = self.bot.sweep()
            finally:
                chain.request("evm_setAutomine", [False])
            got = {(m.account.lower(), m.market_id) for m in made}
            if got != to_liquidate:
                raise RuntimeError(f"liquidator took {sorted(got)}, the book read said {sorted(to_liquidate)}")
            made.sort(key=lambda m: self.keys.index((m.account.lower(), m.market_id)))  # book order
            for m in made:
                acct = chain.name_of[m.account.lower()]
                j = self.keys.index((m.account.lower(), m.market_id))
                res.liquidations += 1
                res.liquidations_wallet_left += self.wallet[acct] >= WALLET_LEFT_MIN_E6
                self.wallet[acct] += m.returned_e6
                res.liquidation_penalty_e6 += m.penalty_e6
                res.liquidated.append(self.labels[j])
                self.stats.add_gas("liquidation", m.gas_used)
                res.events.append(
                    Event(
                        now,
                        k,
                        "liquidation",
                        acct,
                        m.market_id,
                        m.penalty_e6,
                        m.price_e8,
                        f"{self.labels[j]} returned {m.returned_e6}",
                    )
                )
        res.record_idle(k, idle, idle_equity, dt_next)  # 5
        res.wallet_min_e6 = min(res.wallet_min_e6, sum(self.wallet.values()))
        self.last_snap, self.last_gone = snap, to_liquidate
        if last:  # what is decided at the last round never lands (as in the fast model)
            return
        if self.services:  # 6
            self._keepers(k, max(1.0, dt_next))
        else:
            self._baseline(k, now, snap, to_liquidate, sigma, max(1.0, dt_next))

    def _keepers(self, k: int, interval_s: float) -> None:
        for acct, svc in self.services:
            svc.check_interval_s = interval_s
            rep = svc.cycle(execute=True)
            for s in rep.sent:
                h = s.get("tx_hash")
                if s.get("state") in ("rejected", "error") or not h:
                    self.refused += 1
                    self.res.events.append(
                        Event(
                            self.chain.timeline.rounds[k].t_s,
                            k,
                            "refused",
                            acct,
                            int(s["market_id"]),
                            int(s.get("amount_e6") or 0),
                            0,
                            f"{s['action']}: {s.get('reason', '')}",
                        )
                    )
                    continue
                self.pending.append((h, s["action"], acct, int(s["market_id"])))

    def _baseline(
        self, k: int, now: int, snap: BookSnapshot, gone: set, sigma: dict[int, float], interval_s: float
    ) -> None:
        chain = self.chain
        positions = []
        for key, pos in snap.positions.items():
            if key in gone:
                continue
            positions.append(_renamed(pos, chain.name_of[key[0]]))
        order = {key: i for i, key in enumerate(self.keys)}
        positions.sort(key=lambda p: order[(chain.address[p.account].lower(), p.market_id)])
        obs = Observation(
            now_s=now,
            round_index=k,
            positions=tuple(positions),
            markets=dict(chain.markets_by_id),
            prices=dict(snap.prices),
            wallet_e6=dict(self.wallet),
            sigma_annual=sigma,
            check_interval_s=interval_s,
        )
        adapter = chain.adapter
        for a in self.policy.decide(obs):
            acct = a.account.lower()
            addr = chain.address[acct]
            if a.kind is ActionKind.TOP_UP:
                call = adapter.add_margin_call(addr, a.market_id, a.amount_e6)
            elif a.kind is ActionKind.RELEASE:
                call = adapter.remove_margin_call(addr, a.market_id, a.amount_e6)
            elif a.kind is ActionKind.MOVE_MARGIN:
                if a.from_market_id is None:
                    continue
                call = adapter.move_margin_call(addr, a.from_market_id, a.market_id, a.amount_e6)
            elif a.kind is ActionKind.REDUCE_SIZE:
                call = adapter.decrease_position_call(addr, a.market_id, a.size_delta_e18)
            else:
                continue
            h = self.signers[acct].send(call.to, call.data)
            self.pending.append((h, a.kind.value, acct, a.market_id))

    def finish(self) -> PolicyResult:
        res = self.res
        bal = self.chain.balances()
        mine = {a: self.wallet.get(a, 0) for a in bal}
        if bal != mine:
            raise RuntimeError(f"wallets on chain {bal} differ from the replay's accounting {mine}")
        res.wallet_end_e6 = sum(self.wallet.values())
        res.final_equity_e6 = sum(
            max(0, x.equity_e6) for key, x in self.last_snap.extras.items() if key not in self.last_gone
        )
        self.stats.refused[self.policy.name] = self.refused
        return res


def _renamed(pos, name: str):
    from dataclasses import replace

    return replace(pos, account=name)


# The default configuration (module-level: ReplayConfig is a frozen dataclass, shared like fast.run_fast's default).
_DEFAULT_CONFIG = ReplayConfig()


def run_onchain(
    book: Book,
    series: Sequence[Bars],
    policies: Sequence[Policy],
    config: ReplayConfig = _DEFAULT_CONFIG,
    progress: Callable[[int, int], None] | None = None,
    *,
    anvil: Anvil | None = None,
) -> tuple[ReplayResult, OnchainStats]:
    """Replay ``series`` on a local anvil for each policy (see the module docstring).

    Returns the same :class:`ReplayResult` as :func:`keeper.replay.fast.run_fast` plus the chain-only
    figures. ``anvil``: a running anvil whose chain is still at or before the first round (default: a new one,
    stopped at the end). Only ``inclusion_delay_rounds = 1`` exists on chain (the next round's block).
    """
    if config.inclusion_delay_rounds != 1:
        raise InputError("the on-chain replay lands every decision in the next round's block (--delay-rounds 1)")
    tl = plan_timeline(book, series, config)
    rounds = tl.rounds
    n = len(rounds)
    sigma_rows = oracle_sigmas(tl)
    dts = tl.dt_next()
    stats = OnchainStats(rounds=n, warmup_rounds=tl.open_k)
    results: dict[str, PolicyResult] = {}
    total = n * len(policies)
    done = 0
    t_setup = time.perf_counter()
    with quiet_logs(), tempfile.TemporaryDirectory(prefix="keeper-replay-") as tmp:
        chain = ReplayChain(book, tl, anvil)
        try:
            stats.setup_s = time.perf_counter() - t_setup
            for i, pol in enumerate(policies):
                if i > 0:
                    chain.restore()
                started = time.perf_counter()
                run = _ChainRun(chain, pol, config, stats, Path(tmp))
                try:
                    for k, r in enumerate(rounds):
                        sig = {
                            mid: policy_sigma(v, pol, config.sigma_fallback_annual) for mid, v in sigma_rows[k].items()
                        }
                        run.step(k, r, float(dts[k]), sig, last=k == n - 1)
                        if progress is not None:
                            progress(done + k + 1, total)
                    res = run.finish()
                finally:
                    run.close()
                stats.wall_s[pol.name] = time.perf_counter() - started
                done += n
                res.t_s = np.array([r.t_s for r in rounds], dtype=np.int64)
                results[pol.name] = res
        finally:
            chain.close()
    t_arr = np.array([r.t_s for r in rounds], dtype=np.int64)
    result = ReplayResult(
        book=book,
        config=config,
        start_s=int(t_arr[0]),
        end_s=int(t_arr[-1]),
        t_s=t_arr,
        prices=price_columns(book, rounds),
        labels=[p.label for p in book.positions],
        results=results,
        sources=dict(tl.sources),
    )
    return result, stats


def write_onchain_report(
    result: ReplayResult, stats: OnchainStats, out_dir: str | Path, command: str = "", plots: bool = True, **costs: Any
) -> dict[str, Path]:
    """:func:`keeper.replay.report.write_report` plus the chain-only figures: ``summary.json`` gains
    ``"mode": "onchain"`` and an ``"onchain"`` object (gas measured per kind from receipts, simulation
    refusals, rounds per second); ``report.md`` gains a section with the measured gas."""
    import json

    from keeper.replay.report import write_report

    paths = write_report(result, out_dir, command=command, plots=plots, **costs)  # cost_model=, native=
    summary = json.loads(paths["summary"].read_text(encoding="utf-8"))
    summary["mode"] = "onchain"
    summary["onchain"] = stats.to_dict()
    summary["config"]["gas_source"] = "receipts (policies' gas_used); gas_per_action = the fast mode's constants"
    paths["summary"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    lines = [
        "",
        "## On chain (anvil)",
        "",
        "Gas per policy is the sum of the keeper's transactions' receipts (`gasUsed`). Measured per kind:",
        "",
        "| kind | n | median | min | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, g in stats.gas_summary().items():
        lines.append(f"| {kind} | {g['n']} | {g['median']:,} | {g['min']:,} | {g['max']:,} |")
    lines += [
        "",
        "Rounds per second: "
        + ", ".join(f"`{k}` {v:.1f}" for k, v in stats.rounds_per_s().items())
        + f" (setup and warm-up {stats.setup_s:.1f} s).",
    ]
    refused = {k: v for k, v in stats.refused.items() if v}
    if refused:
        lines += [
            "",
            "Actions the keeper's simulation refused before signing (not sent, not counted as transactions): "
            + ", ".join(f"`{k}` {v}" for k, v in refused.items())
            + ".",
        ]
    with paths["report"].open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return paths


__all__ = [
    "OnchainStats",
    "ReplayChain",
    "account_key",
    "keeper_config",
    "quiet_logs",
    "run_onchain",
    "write_onchain_report",
]
