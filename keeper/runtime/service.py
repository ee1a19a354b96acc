"""The keeper itself: one cycle = read the book, estimate risk, plan, act, explain.

:class:`KeeperService` wires the shell around the pure core::

    adapter.read_book        one Multicall3 read: positions, markets, latest oracle rounds (+ wallet)
    VolatilityCache          oracle history read incrementally -> sigma per market (EWMA)
    assess_positions         closed-form breach probability, collateral that restores p_target
    plan_actions             top-ups, moves, releases, reductions, alerts (deterministic)
    TransactionManager       journal -> simulate -> sign -> send; replaced/cancelled/confirmed later

Safety rules enforced here (on top of the planner's caps):

* the journal is reconciled with the chain before anything new is sent (:meth:`start`);
* a position with an open (unconfirmed) transaction gets no new action until that one is final, so a
  slow top-up is never doubled by the next cycle;
* the idempotency key of an action includes the state it was decided on (oracle round, collateral), so
  a restart that re-plans from the same state maps onto the journaled intent instead of a new one;
* the day budget counts every top-up the journal knows of since 00:00 UTC that was not rejected;
* ``execute=False`` (``keeper check`` without ``--execute``, ``dry_run``) never signs anything.

Every decision is logged as one ``position_decision`` event with its inputs; each cycle ends with one
``cycle_finished`` line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from eth_abi import decode as abi_decode
from eth_utils import to_checksum_address

from keeper.chain.abi import selector
from keeper.chain.multicall import Call
from keeper.chain.rpc import ChainClient
from keeper.devchain import Deployment
from keeper.domain import Action, ActionKind, Plan
from keeper.errors import ChainMismatchError, SimulationRevert, TransactionError, TransientRpcError
from keeper.planner import BookState, PlanLimits, plan_actions
from keeper.protocols.base import BookSnapshot, PositionKey, ProtocolAdapter
from keeper.protocols.reference import ReferenceAdapter
from keeper.risk.gaps import SideGaps
from keeper.risk.policy import PositionRisk, RiskPolicy, assess_positions
from keeper.runtime.alerts import AlertSink, alert_from_action
from keeper.runtime.config import KeeperConfig
from keeper.runtime.health import HealthState
from keeper.runtime.implied_vol import ImpliedVolSource
from keeper.runtime.metrics import KeeperMetrics
from keeper.runtime.scheduler import HeadNews
from keeper.runtime.volatility_cache import VolatilityCache
from keeper.tx.fees import FeeCapExceeded, FeePolicy
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager

log = structlog.get_logger("keeper")

BALANCE_OF = selector("balanceOf(address)")
ALLOWANCE = selector("allowance(address,address)")
MAX_APPROVAL_E6 = 2**255
PROTECTIVE = (ActionKind.TOP_UP, ActionKind.MOVE_MARGIN, ActionKind.REDUCE_SIZE)


@dataclass
class CycleReport:
    """What one cycle saw and did."""

    block_number: int
    block_timestamp: int
    risks: list[PositionRisk]
    plan: Plan
    sent: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    wallet_e6: int = 0
    sigmas: dict[int, float] = field(default_factory=dict)
    duration_s: float = 0.0
    next_interval_s: float = 0.0


class KeeperService:
    """The keeper's cycle over one protocol deployment."""

    def __init__(
        self,
        config: KeeperConfig,
        *,
        client: ChainClient,
        adapter: ProtocolAdapter,
        journal: Journal,
        txm: TransactionManager | None,
        signer_address: str | None,
        metrics: KeeperMetrics | None = None,
        alerts: AlertSink | None = None,
        health: HealthState | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.client = client
        self.adapter = adapter
        self.journal = journal
        self.txm = txm
        self.signer_address = signer_address
        self.metrics = metrics or KeeperMetrics()
        self.alerts = alerts or AlertSink(None, metrics=self.metrics, background=False)
        self.health = health
        self.clock = clock
        self.policy: RiskPolicy = config.risk_policy()
        self.limits: PlanLimits = config.plan_limits()
        self.vol = VolatilityCache(
            sigma_floor_annual=self.policy.sigma_floor_annual,
            sigma_fallback_annual=self.policy.sigma_fallback_annual,
        )
        self.check_interval_s = self.policy.check_interval_max_s
        self._last_rounds: dict[int, int] = {}
        self._last_head: int | None = None
        self._discovered: set[PositionKey] = set()
        self.stress_gaps: dict[int, SideGaps] = {}  # per market: (down for longs, up for shorts)
        self.implied_vol: ImpliedVolSource | None = None
        if config.implied_vol.source:
            self.implied_vol = ImpliedVolSource(config.implied_vol.source, refresh_s=config.implied_vol.refresh_s,
                                                timeout_s=config.implied_vol.timeout_s)
            self.implied_vol.load()  # a bad source is a configuration error, found at start

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: KeeperConfig, *, execute: bool, metrics: KeeperMetrics | None = None,
                    health: HealthState | None = None, send_alerts: bool = True) -> KeeperService:
        """Connect, check the chain, open the journal and (when executing) the signer lanes."""
        client = ChainClient.connect(list(config.chain.rpc_urls), config.chain.chain_id,
                                     timeout_s=config.chain.request_timeout_s,
                                     max_head_lag_blocks=config.chain.max_head_lag_blocks or None)
        journal = Journal(str(config.journal.path))
        deployment = Deployment.load(config.protocol.deployment) if config.protocol.deployment else None
        adapter = _adapter(client, config, deployment, journal)
        metrics = metrics or KeeperMetrics()
        alerts = (AlertSink.from_config(config.alerts, metrics=metrics) if send_alerts
                  else AlertSink(None, metrics=metrics, background=False))
        txm = None
        signer_address = None
        if config.signer.configured and config.protected_accounts:
            from keeper.runtime.signer import load_routine_signer, load_signer

            account = load_signer(config.signer)  # a wrong key or keystore password fails here, at start
            routine = load_routine_signer(config.signer) or account
            signer_address = account.address
            if execute and not config.dry_run and not config.limits.alert_only:
                tip = config.fees.priority_fee_wei  # a floor under the lane's percentile of recent tips
                fees = FeePolicy(max_fee_per_gas_cap_wei=config.fees.max_fee_wei, min_tip_wei=tip,
                                 max_tip_wei=max(FeePolicy().max_tip_wei, tip))
                # Protective actions (top-ups, moves, reductions) use the urgent lane; releases the routine
                # lane. With a second key the lanes have separate nonce queues, so a stuck release can never
                # hold back a top-up; with one key they share the queue (the manager keeps that safe).
                lanes = [
                    Lane("urgent", account, stuck_blocks=config.fees.replace_after_blocks,
                         stuck_s=config.fees.replace_after_s, tip_percentile=75.0),
                    Lane("routine", routine, stuck_blocks=config.fees.replace_after_blocks * 2,
                         stuck_s=config.fees.replace_after_s * 2),
                ]
                txm = TransactionManager(client, journal, lanes, fees, confirmations=config.fees.confirmations,
                                         error_decoder=adapter.errors)
        service = cls(config, client=client, adapter=adapter, journal=journal, txm=txm,
                      signer_address=signer_address, metrics=metrics, alerts=alerts, health=health)
        if txm is not None:
            txm._still_needed_default = service.still_needed
        return service

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the deployment, reconcile the journal with the chain, make sure top-ups can be paid."""
        for name in ("engine", "collateral"):
            address = getattr(self.adapter, name, None)
            if address is not None and not self.client.get_code(address):
                raise ChainMismatchError(f"no contract at the configured {name} address {address} on chain id "
                                         f"{self.config.chain.chain_id}: wrong deployment or a restarted chain?")
        multicall = self.adapter.multicall.address
        if not self.client.get_code(multicall):
            raise ChainMismatchError(f"no Multicall3 at {multicall}: set protocol.multicall (on a local anvil, "
                                     "`keeper devchain` installs it)")
        markets = self.adapter.load_markets()
        if not markets:
            raise ChainMismatchError("the protocol reports no markets: wrong engine address?")
        log.info("keeper_starting", markets={m.market_id: m.symbol for m in markets.values()},
                 accounts=len(self.config.accounts), watch_all=self.config.watch_all,
                 executing=self.txm is not None, signer=self.signer_address)
        if self.txm is not None:
            report = self.txm.reconcile()
            for rec in report.finalized:
                log.info("journal_intent_final", intent=rec.id, key=rec.idempotency_key, state=rec.state,
                         tx_hash=rec.tx_hash)
            self._ensure_allowance(self.txm, self.signer_address or "")

    def _ensure_allowance(self, txm: TransactionManager, signer: str) -> None:
        engine = getattr(self.adapter, "engine", None)
        collateral = getattr(self.adapter, "collateral", None)
        if engine is None or collateral is None:
            return
        data = ALLOWANCE + _addr_word(signer) + _addr_word(engine)
        allowance = int.from_bytes(self.client.call(collateral, data) or b"\0", "big")
        if allowance >= 2**128:
            return
        call = self.adapter.approve_collateral_call(MAX_APPROVAL_E6)
        intent = txm.submit(call, f"approve:{engine.lower()}:{signer.lower()}", 0, "routine")
        final = txm.wait(intent.id, timeout_s=120)
        log.info("collateral_approved", state=final.state, tx_hash=final.tx_hash)

    def close(self) -> None:
        self.alerts.close()
        self.journal.close()
        self.client.close()

    # ---- what to watch ---------------------------------------------------------------------------

    def watched_keys(self) -> list[PositionKey]:
        markets = sorted(self.adapter.markets or self.adapter.load_markets())
        keys = [(a.address.lower(), m) for a in self.config.accounts for m in markets]
        if self.config.watch_all:
            self._discovered |= self.adapter.discover_accounts()
            keys += sorted(self._discovered)
        return list(dict.fromkeys(keys))

    def _watch_only(self, keys: Sequence[PositionKey]) -> set[str]:
        protected = {a.lower() for a in self.config.protected_accounts}
        if self.signer_address is None or self.config.limits.alert_only:
            protected = set()
        return {a for a, _ in keys if a not in protected}

    # ---- head watching (the scheduler's fast loop) -------------------------------------------------

    def watch_head(self) -> HeadNews:
        """New block? Oracle round changed? Also advances pending transactions once per new block."""
        markets = self.adapter.markets or self.adapter.load_markets()
        feeds = [(mid, m.feed) for mid, m in sorted(markets.items())]
        res = self.adapter.multicall.aggregate3(
            [Call(feed, selector("latestRoundData()"), True) for _, feed in feeds])
        rounds = {}
        for (mid, _), r in zip(feeds, res.results, strict=True):
            if r.success:
                rounds[mid] = abi_decode(["uint80"], r.data[:32])[0]
        changed = any(self._last_rounds.get(mid) != rid for mid, rid in rounds.items())
        if res.block_number != self._last_head:
            self._last_head = res.block_number
            if self.health is not None:
                self.health.mark_head(res.block_number, res.block_timestamp)
            self.metrics.set_head_lag(max(0.0, self.clock() - res.block_timestamp))
            if self.txm is not None:
                self._poll_transactions(self.txm)
        return HeadNews(res.block_number, res.block_timestamp, changed)

    def _poll_transactions(self, txm: TransactionManager) -> None:
        try:
            report = txm.poll()
        except TransientRpcError as exc:
            self.metrics.count_rpc_error("poll")
            log.warning("tx_poll_failed", error=str(exc))
            return
        for rec in report.finalized:
            kind = rec.meta.get("kind", "other")
            self.metrics.count_action(kind, rec.state)
            self._count_gas(rec.tx_hash)
            log.info("tx_final", intent=rec.id, kind=kind, state=rec.state, tx_hash=rec.tx_hash,
                     block=rec.block_number, reason=rec.reason, account=rec.meta.get("account"),
                     market=rec.meta.get("market_id"), amount_e6=rec.meta.get("amount_e6"))
            if rec.state not in ("confirmed", "cancelled"):
                self.alerts.send(f"tx:{rec.idempotency_key}", f"transaction {rec.state}: {rec.meta.get('description')}"
                                 f" ({rec.reason})", severity="critical",
                                 fields={"tx_hash": rec.tx_hash, "state": rec.state})

    def _count_gas(self, tx_hash: str | None) -> None:
        if not tx_hash:
            return
        try:
            receipt = self.client.get_receipt(tx_hash)
        except TransientRpcError:
            self.metrics.count_rpc_error("receipt")
            return
        if receipt:
            gas = int(receipt["gasUsed"], 16)
            self.metrics.add_gas(gas, gas * int(receipt.get("effectiveGasPrice", "0x0"), 16))

    def still_needed(self, intent) -> bool:
        """Is a stuck transaction's purpose still there? Re-reads its position (the manager cancels it if not).

        A top-up or move is needed while the target position exists and sits below its target buffer; a
        release while the source still holds more than its target; a reduction while the position is
        endangered. Errors answer "needed" (never cancel on doubt)."""
        kind, account, market_id = intent.meta.get("kind"), intent.meta.get("account"), intent.meta.get("market_id")
        if kind is None or account is None or market_id is None:
            return True
        try:
            snap = self.adapter.read_book([(account, int(market_id))])
            risks, _ = self.assess(snap)
        except Exception as exc:  # keep the transaction when in doubt
            log.warning("still_needed_unknown", intent=intent.id, error=str(exc))
            return True
        if not risks:
            log.info("tx_purpose_gone", intent=intent.id, kind=kind, why="position closed or liquidated")
            return False
        r = risks[0]
        if kind in (ActionKind.TOP_UP.value, ActionKind.MOVE_MARGIN.value):
            needed = r.position.collateral_e6 < r.required_collateral_e6
        elif kind == ActionKind.RELEASE.value:
            needed = r.excess_e6 > 0
        else:
            needed = r.liquidatable or r.breach_probability > self.policy.p_trigger or r.stress_breach
        if not needed:
            log.info("tx_purpose_gone", intent=intent.id, kind=kind, why="position already at its target")
        return needed

    # ---- the cycle -------------------------------------------------------------------------------

    def read(self) -> tuple[BookSnapshot, int]:
        keys = self.watched_keys()
        snap = self.adapter.read_book(keys)
        wallet = self._wallet_balance()
        return snap, wallet

    def _wallet_balance(self) -> int:
        if self.signer_address is None or getattr(self.adapter, "collateral", None) is None:
            return 0
        out = self.client.call(self.adapter.collateral, BALANCE_OF + _addr_word(self.signer_address))
        return int.from_bytes(out or b"\0", "big")

    def assess(self, snap: BookSnapshot) -> tuple[list[PositionRisk], dict[int, float]]:
        """Volatility and stress gap per market from the oracle history (read only past the last cached
        round), then the risk verdicts."""
        sigmas: dict[int, float] = {}
        gaps: dict[int, SideGaps] = {}
        floors = self.implied_vol.floors() if self.implied_vol is not None else {}
        for mid, latest in snap.prices.items():
            new_round = self._last_rounds.get(mid) != latest.round_id
            if self.vol.last_round_id(mid) != latest.round_id:
                self.vol.add(mid, self.adapter.oracle_history(mid, max_rounds=self.vol.window, latest=latest))
            est = self.vol.estimate(mid)
            sigmas[mid] = est.sigma_annual
            if est.fallback_reason and new_round:
                log.info("volatility_fallback", market=mid, sigma_annual=est.sigma_annual, model=est.model,
                         reason=est.fallback_reason)
            implied = floors.get(snap.markets[mid].symbol.upper()) if mid in snap.markets else None
            if implied is not None and implied > sigmas[mid]:
                if new_round:
                    log.info("implied_vol_floor", market=mid, history_sigma=round(sigmas[mid], 4), implied=implied)
                sigmas[mid] = implied
            rounds = self.vol.rounds(mid)
            gap = self.policy.estimate_stress_gap([r.updated_at_s for r in rounds], [r.price_e8 for r in rounds],
                                                  self.check_interval_s, now_s=snap.block_timestamp)
            gaps[mid] = gap.side_gaps
            if gap.fallback_reason and new_round:
                log.info("stress_gap_fallback", market=mid, stress_gap=gap.stress_gap, reason=gap.fallback_reason)
        positions = [p for p in snap.positions.values() if p.market_id in snap.prices]
        prices = {mid: r.price_e8 for mid, r in snap.prices.items()}
        risks = assess_positions(positions, snap.markets, prices, sigmas, self.policy, self.check_interval_s,
                                 snap.block_timestamp, gaps)
        self.stress_gaps = gaps
        return risks, sigmas

    def spent_today_e6(self, now_s: float) -> int:
        midnight = datetime.fromtimestamp(now_s, UTC).replace(hour=0, minute=0, second=0,
                                                                       microsecond=0).timestamp()
        spent = 0
        for rec in self.journal.intents_since(midnight):
            if rec.meta.get("kind") == ActionKind.TOP_UP.value \
                    and rec.state not in ("rejected", "abandoned", "cancelled", "reverted"):
                spent += int(rec.meta.get("amount_e6") or 0)
        return spent

    def _busy_positions(self) -> dict[PositionKey, str]:
        """Positions with an open transaction: no new action until it is final."""
        busy: dict[PositionKey, str] = {}
        for rec in self.journal.open_intents():
            acct, mid = rec.meta.get("account"), rec.meta.get("market_id")
            if acct is not None and mid is not None:
                busy[(acct.lower(), int(mid))] = rec.state
                if rec.meta.get("from_market_id") is not None:
                    busy[(acct.lower(), int(rec.meta["from_market_id"]))] = rec.state
        return busy

    def cycle(self, *, execute: bool = True) -> CycleReport:
        try:
            return self._cycle(execute)
        except TransientRpcError:
            self.metrics.count_rpc_error("cycle")
            raise

    def _cycle(self, execute: bool) -> CycleReport:
        started = time.perf_counter()
        snap, wallet = self.read()
        risks, sigmas = self.assess(snap)
        busy = self._busy_positions() if self.txm is not None else {}
        plannable = [r for r in risks if r.position.key not in busy]
        keys = list(snap.positions)
        payer = self.signer_address.lower() if self.signer_address else None
        state = BookState.from_reads(
            markets=snap.markets.values(),
            prices=snap.prices,
            wallet_e6={payer: wallet} if payer else {},
            now_s=snap.block_timestamp,
            spent_today_e6=self.spent_today_e6(self.clock()),
            payers={a: payer for a, _ in keys} if payer else {},
            watch_only=self._watch_only(keys),
        )
        plan = plan_actions(state, plannable, self.limits)
        report = CycleReport(snap.block_number, snap.block_timestamp, risks, plan, wallet_e6=wallet, sigmas=sigmas)
        self._explain(snap, risks, plan, busy)
        txm = self.txm if execute and not self.config.dry_run else None
        for action in plan.actions:
            if action.kind is ActionKind.ALERT or action.needs_approval:
                key, text, severity, fields = alert_from_action(action)
                self.alerts.send(key, text, severity=severity, fields=fields)
                continue
            if txm is None:
                report.skipped.append({"action": action.kind.value, "account": action.account,
                                       "market_id": action.market_id, "amount_e6": action.amount_e6,
                                       "why": "not executing (check without --execute, dry run or watch-only)"})
                continue
            report.sent.append(self._send(txm, action, snap))
        report.next_interval_s = self._next_interval(risks)
        self.check_interval_s = report.next_interval_s
        self._last_rounds = {mid: r.round_id for mid, r in snap.prices.items()}
        report.duration_s = time.perf_counter() - started
        self._observe(snap, risks, wallet, report)
        return report

    def _send(self, txm: TransactionManager, action: Action, snap: BookSnapshot) -> dict:
        pos = snap.positions.get((action.account.lower(), action.market_id))
        price = snap.prices[action.market_id]
        basis = f"r{price.round_id}:c{pos.collateral_e6 if pos else 0}"
        key = f"{action.idempotency_key}:{basis}"
        market = snap.markets[action.market_id]
        stake = self.adapter.value_at_stake_e6(pos, market, price.price_e8) if pos else 0
        call = self.adapter.call_for_action(action)
        lane = "routine" if action.kind is ActionKind.RELEASE else "urgent"
        out = {"action": action.kind.value, "account": action.account, "market_id": action.market_id,
               "amount_e6": action.amount_e6, "key": key, "lane": lane}
        try:
            intent = txm.submit(call, key, stake, lane)
        except SimulationRevert as exc:
            out.update(state="rejected", reason=exc.reason)
            self.metrics.count_action(action.kind.value, "simulation_revert")
            log.warning("action_refused_by_simulation", key=key, reason=exc.reason)
            self.alerts.send(f"{action.account.lower()}:{action.market_id}:revert", f"{action.kind.value} would"
                             f" revert: {exc.reason}", severity="critical", fields=out)
            return out
        except FeeCapExceeded as exc:
            out.update(state="rejected", reason=str(exc))
            self.metrics.count_action(action.kind.value, "fee_cap")
            self.alerts.send(f"{action.account.lower()}:{action.market_id}:fees", str(exc), severity="critical")
            return out
        except (TransactionError, TransientRpcError) as exc:
            out.update(state="error", reason=str(exc))
            self.metrics.count_action(action.kind.value, "error")
            log.warning("action_send_failed", key=key, error=str(exc))
            return out
        attempts = self.journal.attempts(intent.id)
        tx_hash = intent.tx_hash or (attempts[-1].tx_hash if attempts else None)
        out.update(state=intent.state, tx_hash=tx_hash, intent=intent.id, nonce=intent.nonce)
        self.metrics.count_action(action.kind.value, "sent")
        log.info("action_sent", kind=action.kind.value, account=action.account, market=action.market_id,
                 amount_e6=action.amount_e6, tx_hash=tx_hash, nonce=intent.nonce, lane=lane,
                 intent=intent.id, reason=action.reason)
        return out

    def _next_interval(self, risks: Sequence[PositionRisk]) -> float:
        if not risks:
            return self.policy.check_interval_max_s
        return max(self.policy.check_interval_min_s,
                   min(min(r.suggested_check_interval_s for r in risks), self.policy.check_interval_max_s))

    def _explain(self, snap: BookSnapshot, risks: Sequence[PositionRisk], plan: Plan,
                 busy: dict[PositionKey, str]) -> None:
        by_key = {(d.get("account", "").lower(), d.get("market_id")): d for d in plan.decisions}
        for r in risks:
            p = r.position
            d = by_key.get(p.key, {})
            log.info(
                "position_decision",
                account=p.account, market=snap.markets[p.market_id].symbol, side=p.side.value,
                price=snap.prices[p.market_id].price_e8 / 1e8, oracle_round=snap.prices[p.market_id].round_id,
                collateral=p.collateral_e6 / 1e6, liquidation_price=r.liquidation_price_e8 / 1e8,
                distance=round(r.distance, 6), sigma_annual=round(r.sigma_annual, 4), horizon_s=r.horizon_s,
                breach_probability=r.breach_probability, required_collateral=r.required_collateral_e6 / 1e6,
                action=("awaiting_tx:" + busy[p.key]) if p.key in busy else d.get("action", "hold"),
                reason=d.get("reason", ""),
            )

    def _observe(self, snap: BookSnapshot, risks: Sequence[PositionRisk], wallet: int, report: CycleReport) -> None:
        for r in risks:
            symbol = snap.markets[r.position.market_id].symbol
            self.metrics.observe_position(r.position.account, symbol, breach_probability=r.breach_probability,
                                          distance=r.distance, collateral_e6=r.position.collateral_e6)
        self.metrics.forget_positions_except({(r.position.account, snap.markets[r.position.market_id].symbol)
                                              for r in risks})
        if self.signer_address:
            self.metrics.set_wallet(self.signer_address, wallet)
        now = self.clock()
        self.metrics.observe_cycle(report.duration_s, now)
        if self.health is not None:
            self.health.mark_cycle(now)
        worst = max((r.breach_probability for r in risks), default=0.0)
        log.info("cycle_finished", block=snap.block_number, positions=len(risks), actions=len(report.plan.actions),
                 sent=len(report.sent), worst_breach_probability=worst, wallet=wallet / 1e6,
                 next_check_s=round(report.next_interval_s, 2), duration_ms=round(report.duration_s * 1e3, 1))


def _addr_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(to_checksum_address(address)[2:])


def _adapter(client: ChainClient, config: KeeperConfig, deployment: Deployment | None,
             journal: Journal) -> ProtocolAdapter:
    if config.protocol.name != "reference":  # pragma: no cover - config validation allows only these
        raise ValueError(f"unknown protocol {config.protocol.name}")
    symbols = {m.symbol: mid for mid, m in config.protocol.markets.items()}
    if deployment is not None:
        if deployment.chain_id != config.chain.chain_id:
            raise ChainMismatchError(f"deployment file is for chain id {deployment.chain_id}, config expects "
                                     f"{config.chain.chain_id}")
        return ReferenceAdapter.from_deployment(client, deployment, journal=journal)
    return ReferenceAdapter(client, config.protocol.engine, config.protocol.collateral,
                            multicall=config.protocol.multicall, journal=journal, symbols=symbols)
