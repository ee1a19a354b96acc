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

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from keeper.chain.rpc import ChainClient
from keeper.decision import BookDecision, decide
from keeper.domain import Action, ActionKind, Plan
from keeper.errors import (
    ChainMismatchError,
    LaneBlocked,
    RpcRejectedError,
    SenderConflict,
    SimulationRevert,
    TransactionError,
    TransientRpcError,
)
from keeper.planner import BookState, PlanLimits
from keeper.protocols import registry
from keeper.protocols.base import BookSnapshot, PositionKey, ProtocolAdapter
from keeper.risk.gaps import SideGaps
from keeper.risk.policy import CostBands, PositionRisk, RiskPolicy, is_endangered
from keeper.runtime.alerts import AlertSink, alert_from_action, gas_alert, top_ups_of_gas_left
from keeper.runtime.config import KeeperConfig
from keeper.runtime.health import HealthState
from keeper.runtime.implied_vol import ImpliedVolSource
from keeper.runtime.long_history import load_long_tails
from keeper.runtime.metrics import KeeperMetrics
from keeper.runtime.native_price import NativePrice
from keeper.runtime.scheduler import HeadNews
from keeper.runtime.volatility_cache import VolatilityCache
from keeper.tx.fees import FeeCapExceeded, FeePolicy
from keeper.tx.journal import Journal
from keeper.tx.manager import GAS_EXTRA, GAS_MARGIN_DEN, GAS_MARGIN_NUM, LANDED, Lane, TransactionManager

log = structlog.get_logger("keeper")

PROTECTIVE = (ActionKind.TOP_UP, ActionKind.MOVE_MARGIN, ActionKind.REDUCE_SIZE)
# gas limit assumed for a top-up until one is mined (then: its gasUsed with the manager's margin); a reference
# engine addMargin measured ~60-80k gas on anvil, so this errs on the side of an early alert
TOP_UP_GAS_LIMIT_DEFAULT = 150_000
TOP_UP_GAS_USED_DEFAULT = 80_000  # a reference-protocol addMargin (72.6k-78.3k measured), until one is mined
NOT_SENT = ("rejected", "error", "waiting")  # CycleReport.sent states of actions that never reached the chain
FAILED = ("rejected", "error")  # ... of those, the ones refused (``waiting``: the lane is blocked, retried)


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
        self.stopping = threading.Event()  # set on shutdown or halt: no new transaction is started
        self.top_up_gas_limit = TOP_UP_GAS_LIMIT_DEFAULT  # updated from mined top-ups (gas-left alert)
        self.native_price = NativePrice(client, config.fees)  # the gas token's USD price, each cycle
        self.top_up_gas_used = TOP_UP_GAS_USED_DEFAULT  # the last mined top-up's gas (cost-aware bands)
        self._gas_price_wei: int | None = None  # what a transaction pays per gas now (next base fee + tip)
        self._logged_gas_usd: float | None = None
        self._last_rounds: dict[int, int] = {}
        self._last_head: int | None = None
        self._discovered: set[PositionKey] = set()
        self._allowance_pending = False  # the approval could not be sent at start (lane blocked): retried
        self.stress_gaps: dict[int, SideGaps] = {}  # per market: (down for longs, up for shorts)
        self.implied_vol: ImpliedVolSource | None = None
        if config.implied_vol.source:
            self.implied_vol = ImpliedVolSource(
                config.implied_vol.source,
                refresh_s=config.implied_vol.refresh_s,
                timeout_s=config.implied_vol.timeout_s,
            )
            self.implied_vol.load()  # a bad source is a configuration error, found at start
        self.long_tails = load_long_tails(
            config.risk.long_history, clock(), self.policy.stress_tail_probability or self.policy.p_trigger
        )  # a missing or short history file is a configuration error, found at start

    # ---- construction ----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: KeeperConfig,
        *,
        execute: bool,
        metrics: KeeperMetrics | None = None,
        health: HealthState | None = None,
        send_alerts: bool = True,
    ) -> KeeperService:
        """Connect, check the chain, open the journal and (when executing) the signer lanes."""
        client = ChainClient.connect(
            list(config.chain.rpc_urls),
            config.chain.chain_id,
            timeout_s=config.chain.request_timeout_s,
            max_head_lag_blocks=config.chain.max_head_lag_blocks or None,
        )
        journal = Journal(str(config.journal.path))
        adapter = registry.create(client, config, journal)
        metrics = metrics or KeeperMetrics()
        alerts = (
            AlertSink.from_config(config.alerts, metrics=metrics)
            if send_alerts
            else AlertSink(None, metrics=metrics, background=False)
        )
        txm = None
        signer_address = None
        if config.signer.configured and config.protected_accounts:
            from keeper.runtime.signer import load_routine_signer, load_signer

            account = load_signer(config.signer)  # a wrong key or keystore password fails here, at start
            routine = load_routine_signer(config.signer) or account
            signer_address = account.address
            if execute and not config.dry_run and not config.limits.alert_only:
                tip = config.fees.priority_fee_wei  # a floor under the lane's percentile of recent tips
                fees = FeePolicy(
                    max_fee_per_gas_cap_wei=config.fees.max_fee_wei,
                    min_tip_wei=tip,
                    max_tip_wei=max(FeePolicy().max_tip_wei, tip),
                )
                # Protective actions (top-ups, moves, reductions) use the urgent lane; releases the routine
                # lane. With a second key the lanes have separate nonce queues, so a stuck release can never
                # hold back a top-up; with one key they share the queue (the manager keeps that safe).
                lanes = [
                    Lane(
                        "urgent",
                        account,
                        stuck_blocks=config.fees.replace_after_blocks,
                        stuck_s=config.fees.replace_after_s,
                        tip_percentile=75.0,
                    ),
                    Lane(
                        "routine",
                        routine,
                        stuck_blocks=config.fees.replace_after_blocks * 2,
                        stuck_s=config.fees.replace_after_s * 2,
                    ),
                ]
                journal.lock_for_sending()  # one writer per journal: a second sender refuses here (JournalBusy)
                txm = TransactionManager(
                    client,
                    journal,
                    lanes,
                    fees,
                    confirmations=config.fees.confirmations,
                    error_decoder=adapter.errors,
                    describe_transaction=adapter.describe_transaction,
                )
        service = cls(
            config,
            client=client,
            adapter=adapter,
            journal=journal,
            txm=txm,
            signer_address=signer_address,
            metrics=metrics,
            alerts=alerts,
            health=health,
        )
        if txm is not None:
            txm._still_needed_default = service.still_needed
        return service

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the deployment, reconcile the journal with the chain, make sure top-ups can be paid."""
        self.adapter.check_deployment()
        self.native_price.check()
        markets = self.adapter.load_markets()
        if not markets:
            raise ChainMismatchError("the protocol reports no markets: wrong engine address?")
        log.info(
            "keeper_starting",
            markets={m.market_id: m.symbol for m in markets.values()},
            accounts=len(self.config.accounts),
            watch_all=self.config.watch_all,
            executing=self.txm is not None,
            signer=self.signer_address,
        )
        if self.txm is not None:
            self._reconcile_journal(self.txm)
            self._ensure_allowance(self.txm, self.signer_address or "")

    def _update_native_price(self, prices_by_symbol: Mapping[str, int]) -> None:
        """The gas token's price this cycle (keeper.runtime.native_price) into the fee policy: fee caps tied to
        the value at stake are then right whatever the token trades at."""
        price = self.native_price.update(prices_by_symbol)
        if price is not None and self.txm is not None and self.txm.fees.native_usd_e8 != price:
            self.txm.fees = dataclasses.replace(self.txm.fees, native_usd_e8=price)

    def _reconcile_journal(self, txm: TransactionManager) -> None:
        """The chain as the source of truth before anything new is sent (TransactionManager.reconcile)."""
        report = txm.reconcile()
        for rec in report.finalized:
            log.info(
                "journal_intent_final", intent=rec.id, key=rec.idempotency_key, state=rec.state, tx_hash=rec.tx_hash
            )
        self._report_blocked_lanes(txm)

    def _ensure_allowance(self, txm: TransactionManager, signer: str) -> None:
        """Approve the protocol to pull top-ups, once; postponed (retried each cycle) while the lane is blocked."""
        self._allowance_pending = False
        call = self.adapter.approval_call(signer)
        if call is None:
            return
        try:
            intent = txm.submit(
                call, call.meta.get("key") or f"approve:{call.to.lower()}:{signer.lower()}", 0, "routine"
            )
        except LaneBlocked as exc:
            self._allowance_pending = True
            log.warning("collateral_approval_postponed", why=str(exc))
            return
        final = txm.wait(intent.id, timeout_s=120)
        log.info("collateral_approved", state=final.state, tx_hash=final.tx_hash)

    def _report_blocked_lanes(self, txm: TransactionManager) -> None:
        """Alert while a lane waits for transactions of its key that the journal does not know."""
        by_reason: dict[str, list[str]] = {}
        for lane, why in txm.blocked_lanes().items():
            by_reason.setdefault(why, []).append(lane)  # lanes sharing a key share the reason: one alert
        for why, lanes in by_reason.items():
            self.alerts.send(
                f"tx:lane_blocked:{'+'.join(lanes)}", f"{'/'.join(lanes)} lane waits: {why}", severity="critical"
            )

    def close(self) -> None:
        self.alerts.close()
        self.journal.close()
        self.client.close()

    # ---- what to watch ---------------------------------------------------------------------------

    def watched_keys(self) -> list[PositionKey]:
        markets = sorted(self.adapter.known_markets())
        keys = [(a.address.lower(), m) for a in self.config.accounts for m in markets]
        if self.config.watch_all:
            self._discovered |= self.adapter.discover_accounts()
            keys += sorted(self._discovered)
        return list(dict.fromkeys(keys))

    def _protected(self) -> set[str]:
        """Accounts the keeper may act for: the configured ``protect`` accounts, none without a signer or in
        alert-only mode."""
        if self.signer_address is None or self.config.limits.alert_only:
            return set()
        return {a.lower() for a in self.config.protected_accounts}

    def _watch_only(self, keys: Sequence[PositionKey]) -> set[str]:
        protected = self._protected()
        return {a for a, _ in keys if a not in protected}

    # ---- head watching (the scheduler's fast loop) -------------------------------------------------

    def watch_head(self) -> HeadNews:
        """New block? Oracle round changed? Also advances pending transactions once per new block."""
        probe = self.adapter.probe_head()
        changed = any(self._last_rounds.get(mid) != rid for mid, rid in probe.rounds.items())
        if probe.block_number != self._last_head:
            self._last_head = probe.block_number
            if self.health is not None:
                self.health.mark_head(probe.block_number, probe.block_timestamp)
            self.metrics.set_head_lag(max(0.0, self.clock() - probe.block_timestamp))
            if self.txm is not None:
                self._poll_transactions(self.txm)
        return HeadNews(probe.block_number, probe.block_timestamp, changed)

    def _poll_transactions(self, txm: TransactionManager) -> None:
        try:
            report = txm.poll()
        except TransientRpcError as exc:
            self.metrics.count_rpc_error("poll")
            log.warning("tx_poll_failed", error=str(exc))
            return
        if txm.halted is not None:
            self.alerts.send(
                "tx:second_sender",
                f"sending stopped: {txm.halted}",
                severity="critical",
                fields={"signer": self.signer_address},
            )
            if self.health is not None and hasattr(self.health, "mark_unsafe"):
                self.health.mark_unsafe(f"sending stopped: {txm.halted}")
            # the daemon stops here (the scheduler halts on it: exit 1, /healthz "halted") rather than at the
            # next action, so an operator learns of the second sender now, not at the next price crash
            raise SenderConflict(txm.halted)
        for rec in report.finalized:
            kind = rec.meta.get("kind", "other")
            self.metrics.count_action(kind, rec.state)
            self._count_gas(rec.tx_hash, kind)
            log.info(
                "tx_final",
                intent=rec.id,
                kind=kind,
                state=rec.state,
                tx_hash=rec.tx_hash,
                block=rec.block_number,
                reason=rec.reason,
                account=rec.meta.get("account"),
                market_id=rec.meta.get("market_id"),
                amount_e6=rec.meta.get("amount_e6"),
            )
            if rec.state not in ("confirmed", "cancelled"):
                self.alerts.send(
                    f"tx:{rec.idempotency_key}",
                    f"transaction {rec.state}: {rec.meta.get('description')} ({rec.reason})",
                    severity="critical",
                    fields={"tx_hash": rec.tx_hash, "state": rec.state},
                )

    def _count_gas(self, tx_hash: str | None, kind: str = "other") -> None:
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
            if kind == ActionKind.TOP_UP.value:
                self.top_up_gas_limit = gas * GAS_MARGIN_NUM // GAS_MARGIN_DEN + GAS_EXTRA
                self.top_up_gas_used = gas

    def _check_gas(self, execute: bool = True) -> None:
        """Native balance gauge, and an alert when it pays for fewer than ``alerts.min_gas_top_ups`` top-ups
        at the current fee (next base fee x the fee policy's multiplier + the configured tip). The block read
        here prices the next cycle's gas (:meth:`gas_price_wei`); a cycle that reads none (not executing, no
        signer, the node not answering) leaves the next cycle to read the fee afresh rather than keep an old one."""
        self._gas_price_wei = None
        if not execute or self.signer_address is None or self.txm is None:
            return
        try:  # one round trip for both
            balance_hex, block = self.client.batch(
                [("eth_getBalance", [self.signer_address, "latest"]), ("eth_getBlockByNumber", ["latest", False])]
            )
        except TransientRpcError as exc:
            self.metrics.count_rpc_error("balance")
            log.warning("native_balance_unknown", error=str(exc))
            return
        balance = int(balance_hex, 16)
        tip = self.config.fees.priority_fee_wei
        base_fee = int((block or {}).get("baseFeePerGas", "0x0"), 16)
        self._gas_price_wei = base_fee + tip
        max_fee = max(1, self.txm.fees.base_multiplier * base_fee + tip)
        self.metrics.set_native(
            self.signer_address, balance, top_ups_of_gas_left(balance, self.top_up_gas_limit, max_fee)
        )
        alert = gas_alert(
            self.signer_address, balance, self.top_up_gas_limit, max_fee, self.config.alerts.min_gas_top_ups
        )
        if alert is not None:
            key, text, severity, fields = alert
            self.alerts.send(key, text, severity=severity, fields=fields)

    def still_needed(self, intent) -> bool | str:
        """Is a stuck transaction's purpose still there? Re-reads its position (the manager cancels it if not).

        A top-up or move is needed while the target position exists, is endangered and has not received the
        amount yet; a release while the source still holds more than its target; a reduction while the position is
        endangered. Errors answer "needed" (never cancel on doubt)."""
        kind, account, market_id = intent.meta.get("kind"), intent.meta.get("account"), intent.meta.get("market_id")
        if kind is None or account is None or market_id is None:
            return True
        try:
            snap = self.adapter.read_book([(account, int(market_id))])
            risks, _ = self.assess(snap)
        except Exception as exc:  # noqa: BLE001 - keep the transaction when in doubt, whatever failed
            log.warning("still_needed_unknown", intent=intent.id, error=str(exc))
            return True
        if not risks:
            log.info("tx_purpose_gone", intent=intent.id, kind=kind, why="position closed or liquidated")
            return False
        r = risks[0]
        if kind in (ActionKind.TOP_UP.value, ActionKind.MOVE_MARGIN.value):
            # Needed while the keeper would top this position up now (the planner's own rule), and only while
            # the collateral has not already risen by the amount (a landed attempt whose receipt an endpoint
            # hides). "Below the target" would be wrong: a top-up restores exactly the target, and the fee
            # accrued a second later puts it a few micro-dollars below again.
            before, amount = intent.meta.get("collateral_before_e6"), int(intent.meta.get("amount_e6") or 0)
            landed = before is not None and r.position.collateral_e6 >= int(before) + amount * 99 // 100
            if landed:
                log.info("tx_effect_on_chain", intent=intent.id, kind=kind, collateral_e6=r.position.collateral_e6)
                return LANDED
            needed = is_endangered(r, self.policy.p_trigger)
        elif kind == ActionKind.RELEASE.value:
            needed = r.excess_e6 > 0
        else:
            needed = is_endangered(r, self.policy.p_trigger)
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
        return 0 if self.signer_address is None else self.adapter.wallet_balance_e6(self.signer_address)

    def assess(self, snap: BookSnapshot) -> tuple[list[PositionRisk], dict[int, float]]:
        """Volatility and stress gap per market from the oracle history, then the risk verdicts."""
        sigmas, gaps = self.estimate(snap)
        return list(self.decide(snap, sigmas, gaps, wallet_e6=0, busy={}).risks), sigmas

    def estimate(self, snap: BookSnapshot) -> tuple[dict[int, float], dict[int, SideGaps]]:
        """Volatility and stress gaps (down, up) per market from the oracle history (read only past the last
        cached round); remembered in ``self.stress_gaps``."""
        sigmas: dict[int, float] = {}
        gaps: dict[int, SideGaps] = {}
        floors = self.implied_vol.floors() if self.implied_vol is not None else {}
        policy = self.policy_now()  # cost-aware: the capital rate also prices the long-history tail's gap
        for mid, latest in snap.prices.items():
            new_round = self._last_rounds.get(mid) != latest.round_id
            if self.vol.last_round_id(mid) != latest.round_id:
                self.vol.add(mid, self.adapter.oracle_history(mid, max_rounds=self.vol.window, latest=latest))
            est = self.vol.estimate(mid)
            sigmas[mid] = est.sigma_annual
            if est.fallback_reason and new_round:
                log.info(
                    "volatility_fallback",
                    market_id=mid,
                    sigma_annual=est.sigma_annual,
                    model=est.model,
                    reason=est.fallback_reason,
                )
            implied = floors.get(snap.markets[mid].symbol.upper()) if mid in snap.markets else None
            if implied is not None and implied > sigmas[mid]:
                if new_round:
                    log.info("implied_vol_floor", market_id=mid, history_sigma=round(sigmas[mid], 4), implied=implied)
                sigmas[mid] = implied
            rounds = self.vol.rounds(mid)
            market = snap.markets.get(mid)
            gap = policy.estimate_stress_gap(
                [r.updated_at_s for r in rounds],
                [r.price_e8 for r in rounds],
                self.check_interval_s,
                now_s=snap.block_timestamp,
                long_tail=self.long_tails.get(market.symbol.upper()) if market is not None else None,
                penalty=market.liquidation_penalty_ratio if market is not None else 0.0,
            )
            gaps[mid] = gap.side_gaps
            if gap.fallback_reason and new_round:
                log.info("stress_gap_fallback", market_id=mid, stress_gap=gap.stress_gap, reason=gap.fallback_reason)
        self.stress_gaps = gaps
        return sigmas, gaps

    def decide(
        self,
        snap: BookSnapshot,
        sigmas: dict[int, float],
        gaps: dict[int, SideGaps],
        *,
        wallet_e6: int,
        busy: dict[PositionKey, str],
    ) -> BookDecision:
        """The daemon's decision: the book as read, the signer's wallet as the payer of every top-up, the
        day budget from the journal, then the one decision function (:func:`keeper.decision.decide`)."""
        keys = list(snap.positions)
        payer = self.signer_address.lower() if self.signer_address else None
        state = BookState.from_reads(
            markets=snap.markets.values(),
            prices=snap.prices,
            wallet_e6={payer: wallet_e6} if payer else {},
            now_s=snap.block_timestamp,
            spent_today_e6=self.spent_today_e6(self.clock()),
            payers={a: payer for a, _ in keys} if payer else {},
            watch_only=self._watch_only(keys),
        )
        return decide(
            state,
            list(snap.positions.values()),
            sigmas_annual=sigmas,
            policy=self.policy_now(),
            limits=self.limits,
            check_interval_s=self.check_interval_s,
            now_s=snap.block_timestamp,
            stress_gaps=gaps,
            busy=busy,
        )

    def policy_now(self) -> RiskPolicy:
        """The risk policy, with ``risk.cost_aware`` the cost bands of this moment: one top-up's gas x what gas
        costs now (the chain's next base fee + the tip) x the gas token's price, and ``risk.capital_rate_annual``
        on idle collateral (:func:`keeper.risk.policy.cost_aware_bands`)."""
        risk = self.config.risk
        if not risk.cost_aware:
            return self.policy
        gas_price_wei = self.gas_price_wei()
        if gas_price_wei is None:
            return self.policy
        native_e8 = self.native_usd_e8()
        gas_usd = self.top_up_gas_used * gas_price_wei / 10**18 * native_e8 / 1e8
        if self._logged_gas_usd is None or abs(gas_usd - self._logged_gas_usd) > 0.1 * self._logged_gas_usd:
            self._logged_gas_usd = gas_usd
            log.info(
                "cost_bands",
                gas_usd_per_tx=round(gas_usd, 6),
                gas_price_gwei=gas_price_wei / 1e9,
                top_up_gas=self.top_up_gas_used,
                native_usd=native_e8 / 1e8,
                capital_rate_annual=risk.capital_rate_annual,
            )
        return dataclasses.replace(
            self.policy, cost_bands=CostBands(gas_usd_per_tx=gas_usd, capital_rate_annual=risk.capital_rate_annual)
        )

    def gas_price_wei(self) -> int | None:
        """What a transaction pays per gas now: the chain's next base fee + the tip (the last fee read of this
        cycle, else one ``eth_feeHistory``); ``None`` when the node does not answer (logged)."""
        if self._gas_price_wei is None:
            try:
                market = FeePolicy().market(self.client, 50.0)
            except TransientRpcError as exc:
                log.warning("gas_price_unknown", error=str(exc), why="cost bands off this cycle")
                return None
            self._gas_price_wei = market.base_fee_next_wei + max(market.tip_wei, self.config.fees.priority_fee_wei)
        return self._gas_price_wei

    def native_usd_e8(self) -> int:
        """The gas token's USD price this cycle (keeper.runtime.native_price), else the fee policy's default."""
        return self.native_price.price_e8 or FeePolicy().native_usd_e8

    def spent_today_e6(self, now_s: float) -> int:
        """Top-ups since 00:00 UTC that may have moved money: every state except those the chain proved moved
        nothing (``rejected``: never signed or refused; ``cancelled``/``reverted``: the nonce mined without the
        transfer) and ``abandoned`` intents that never signed anything. An abandoned intent with a signed
        attempt counts: it may have landed."""
        midnight = datetime.fromtimestamp(now_s, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        spent = 0
        for rec in self.journal.intents_since(midnight):
            if rec.meta.get("kind") != ActionKind.TOP_UP.value or rec.state in ("rejected", "cancelled", "reverted"):
                continue
            if rec.state == "abandoned" and self.journal.attempt_count(rec.id) == 0:
                continue
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
        self._update_native_price(
            {m.symbol: snap.prices[mid].price_e8 for mid, m in snap.markets.items() if mid in snap.prices}
        )
        sigmas, gaps = self.estimate(snap)
        busy = self._busy_positions() if self.txm is not None else {}
        outcome = self.decide(snap, sigmas, gaps, wallet_e6=wallet, busy=busy)
        risks, plan = list(outcome.risks), outcome.plan
        report = CycleReport(snap.block_number, snap.block_timestamp, risks, plan, wallet_e6=wallet, sigmas=sigmas)
        self._explain(snap, plan)
        txm = self.txm if execute and not self.config.dry_run else None
        if txm is not None:
            self._report_blocked_lanes(txm)
            if self._allowance_pending and not txm.blocked_lanes():
                self._ensure_allowance(txm, self.signer_address or "")
        for action in plan.actions:
            if action.kind is ActionKind.ALERT or action.needs_approval:
                key, text, severity, fields = alert_from_action(action)
                self.alerts.send(key, text, severity=severity, fields=fields)
                continue
            if txm is not None and self.stopping.is_set():
                report.skipped.append(
                    {
                        "action": action.kind.value,
                        "account": action.account,
                        "market_id": action.market_id,
                        "amount_e6": action.amount_e6,
                        "why": "shutting down or halted: no new transaction",
                    }
                )
                continue
            if txm is None:
                report.skipped.append(
                    {
                        "action": action.kind.value,
                        "account": action.account,
                        "market_id": action.market_id,
                        "amount_e6": action.amount_e6,
                        "why": "not executing (check without --execute, dry run or watch-only)",
                    }
                )
                continue
            report.sent.append(self._send(txm, action, snap))
        self._check_gas(execute)
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
        out: dict[str, object] = {
            "action": action.kind.value,
            "account": action.account,
            "market_id": action.market_id,
            "amount_e6": action.amount_e6,
            "key": key,
            "lane": lane,
        }
        try:
            intent = txm.submit(call, key, stake, lane, meta={"collateral_before_e6": pos.collateral_e6 if pos else 0})
        except LaneBlocked as exc:
            out.update(state="waiting", reason=str(exc))
            self.metrics.count_action(action.kind.value, "lane_blocked")
            log.warning("action_waits_for_unknown_transactions", key=key, reason=str(exc))
            return out
        except SimulationRevert as exc:
            out.update(state="rejected", reason=exc.reason)
            self.metrics.count_action(action.kind.value, "simulation_revert")
            log.warning("action_refused_by_simulation", key=key, reason=exc.reason)
            self.alerts.send(
                f"{action.account.lower()}:{action.market_id}:revert",
                f"{action.kind.value} would revert: {exc.reason}",
                severity="critical",
                fields=out,
            )
            return out
        except FeeCapExceeded as exc:
            out.update(state="rejected", reason=str(exc))
            self.metrics.count_action(action.kind.value, "fee_cap")
            self.alerts.send(f"{action.account.lower()}:{action.market_id}:fees", str(exc), severity="critical")
            return out
        except (TransactionError, TransientRpcError, RpcRejectedError) as exc:
            out.update(state="error", reason=str(exc))
            self.metrics.count_action(action.kind.value, "error")
            log.warning("action_send_failed", key=key, error=str(exc))
            self.alerts.send(
                f"{action.account.lower()}:{action.market_id}:send_failed",
                f"{action.kind.value} of ${action.amount_e6 / 1e6:,.2f} for {action.account} market "
                f"{action.market_id} could not be sent: {exc}",
                severity="critical",
                fields=out,
            )
            return out
        attempts = self.journal.attempts(intent.id)
        tx_hash = intent.tx_hash or (attempts[-1].tx_hash if attempts else None)
        out.update(state=intent.state, tx_hash=tx_hash, intent=intent.id, nonce=intent.nonce)
        self.metrics.count_action(action.kind.value, "sent")
        self._position_log(action.account, action.market_id, snap).info(
            "action_sent",
            kind=action.kind.value,
            amount_e6=action.amount_e6,
            tx_hash=tx_hash,
            nonce=intent.nonce,
            lane=lane,
            intent=intent.id,
            reason=action.reason,
        )
        return out

    def _next_interval(self, risks: Sequence[PositionRisk]) -> float:
        if not risks:
            return self.policy.check_interval_max_s
        return max(
            self.policy.check_interval_min_s,
            min(min(r.suggested_check_interval_s for r in risks), self.policy.check_interval_max_s),
        )

    def _explain(self, snap: BookSnapshot, plan: Plan) -> None:
        for d in plan.decisions:
            self._position_log(d.account, d.market_id, snap).info(
                "position_decision",
                side=d.side,
                price=d.price_e8 / 1e8,
                oracle_round=snap.prices[d.market_id].round_id,
                collateral=d.collateral_e6 / 1e6,
                liquidation_price=d.liquidation_price_e8 / 1e8,
                log_distance=round(d.log_distance, 6),
                sigma_annual=round(d.sigma_annual, 4),
                horizon_s=d.horizon_s,
                breach_probability=d.breach_probability,
                required_collateral=d.required_collateral_e6 / 1e6,
                band=d.band,
                action=d.action,
                reason=d.reason,
            )

    def _position_log(self, account: str, market_id: int, snap: BookSnapshot) -> structlog.typing.FilteringBoundLogger:
        """The logger for one position: chain id, account, market id and symbol bound once (log fields: ``market``
        is always a symbol, ``market_id`` always an id)."""
        market = snap.markets.get(market_id)
        return log.bind(
            chain_id=self.config.chain.chain_id,
            account=account.lower(),
            market_id=market_id,
            market=market.symbol if market else None,
        )

    def _observe(self, snap: BookSnapshot, risks: Sequence[PositionRisk], wallet: int, report: CycleReport) -> None:
        for r in risks:
            symbol = snap.markets[r.position.market_id].symbol
            self.metrics.observe_position(
                r.position.account,
                symbol,
                breach_probability=r.breach_probability,
                log_distance=r.log_distance,
                collateral_e6=r.position.collateral_e6,
            )
        self.metrics.forget_positions_except(
            {(r.position.account, snap.markets[r.position.market_id].symbol) for r in risks}
        )
        if self.signer_address:
            self.metrics.set_wallet(self.signer_address, wallet)
        now = self.clock()
        self.metrics.observe_cycle(report.duration_s, now)
        if self.health is not None:
            self.health.mark_cycle(now)
        worst = max((r.breach_probability for r in risks), default=0.0)
        log.info(
            "cycle_finished",
            block=snap.block_number,
            positions=len(risks),
            actions=len(report.plan.actions),
            sent=sum(1 for s in report.sent if s.get("state") not in NOT_SENT),
            failed=sum(1 for s in report.sent if s.get("state") in FAILED),
            waiting=sum(1 for s in report.sent if s.get("state") == "waiting"),
            worst_breach_probability=worst,
            wallet=wallet / 1e6,
            next_check_s=round(report.next_interval_s, 2),
            duration_ms=round(report.duration_s * 1e3, 1),
        )
