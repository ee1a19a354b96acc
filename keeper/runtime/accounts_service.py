"""The keeper for margin-account protocols (Aave v3, Perp v2): one cycle = read accounts, assess, decide, act.

:class:`AccountKeeperService` is the account-level sibling of :class:`keeper.runtime.service.KeeperService`,
driven by the same scheduler and ``keeper run`` (it reuses the sibling's construction, head watching,
transaction polling, gas checks and alerts)::

    adapter.read_book         the protocol's AccountBook at one block, two Multicall3 round trips at most (Aave:
                              reserves, e-mode, price source rounds, every account's configuration and balances;
                              Perp v2: every trader's legs, vault balance and funding, marks, index rounds and
                              pool depth) (+ the wallet: one more)
    VolatilityCache           oracle history per asset -> sigma (EWMA) and stress gaps (down, up), plus the
                              book's premium gap where the liquidating price is not the oracle's (Perp's mark)
    decide_accounts           account risk (closed form / screen / Monte Carlo), the cheapest action that survives
    TransactionManager        approval per asset, then the protective call: journal, simulate, sign, send

Safety rules on top of the decision's caps: an account with an open transaction gets no new action; a stale
price source (latest round older than ``protocol.stale_after_s``) is danger (alert, protective action still
sent: supply, repay and deposit need no price); frozen or paused reserves are never supplied to (the alert
says why);
accounts discovered with ``watch_all`` and accounts in ``watch`` mode are alerted, never acted on; every
decision that is not a hold is one ``account_decision`` event with its reason (holds too in books of at most
``HOLDS_AT_INFO_MAX`` accounts, at debug in larger ones), and the book's top ten by breach probability are
ranked. The cyclic garbage collector is paused for the cycle (:func:`_cyclic_gc_paused`).
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, cast

import numpy as np
import structlog

from keeper.accounts.base import LegKind
from keeper.accounts.costs import GAS_USED_MEASURED, liquidation_penalty
from keeper.decision import AccountBookDecision, AccountBookState, decide_accounts
from keeper.domain import AccountAction, AccountActionKind, ActionKind, Plan, PriceRound
from keeper.errors import (
    ChainMismatchError,
    ConfigError,
    LaneBlocked,
    RpcRejectedError,
    SimulationRevert,
    TransactionError,
    TransientRpcError,
)
from keeper.protocols.base import AccountAdapter, AccountBook
from keeper.risk.accounts import (
    AccountMonteCarlo,
    AccountStress,
    account_stress_grid,
    account_var_es,
    correlation_from_histories,
)
from keeper.risk.policy import RiskPolicy
from keeper.runtime.config import AssetConfig
from keeper.runtime.service import CycleReport, KeeperService
from keeper.tx.fees import FeeCapExceeded
from keeper.tx.manager import TransactionManager

log = structlog.get_logger("keeper")

MAX_UINT256 = 2**256 - 1
SPENDING_KINDS = (AccountActionKind.ADD_COLLATERAL.value, AccountActionKind.REPAY_DEBT.value)  # from the wallet
ACCOUNT_KINDS = (*SPENDING_KINDS, AccountActionKind.REDUCE_EXPOSURE.value, AccountActionKind.RELEASE.value)
GAS_LIMIT_DEFAULT = {"aave-v3": 200_000, "perp-v2": 400_000}  # above the measured gas (GAS_USED_MEASURED)
RANKED_IN_LOG = 10
HOLDS_AT_INFO_MAX = 100
"""Books up to this many accounts log every decision at info; larger ones log the held accounts at debug."""
WAD = 10**18


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for one cycle. A 10,000-account cycle allocates millions of
    short-lived objects (reads, integers, risks, decisions: no reference cycles, freed as they go), and each
    full collection it would trigger walks the whole heap: 3 or 4 a cycle, ~0.3 s each, a third of the cycle.
    Whatever cyclic garbage a cycle leaves is collected once the collector is back on."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _enabled_for(logger: Any, level: int) -> bool:
    """Whether ``logger`` emits ``level`` (structlog's filtering loggers say; any other: assume it does)."""
    check = getattr(logger.bind(), "is_enabled_for", None)
    return True if check is None else bool(check(level))


def _below_one(rules: Any, user: str, prices_e8: Mapping[str, int]) -> bool:
    return bool(rules.health_at(user, prices_e8) < WAD)


class AssetEstimates(NamedTuple):
    """What one decision was taken under, per asset: sigma (annual), stress gaps (down, up) and the pairwise
    correlations (:meth:`AccountKeeperService.estimate_assets`)."""

    sigmas_annual: dict[str, float]
    stress_gaps: dict[str, tuple[float, float]]
    correlation: dict[tuple[str, str], float]


@dataclass
class AccountCycleReport(CycleReport):
    """What one account cycle saw and did (``risks``/``plan`` of the position sibling stay empty)."""

    outcome: AccountBookDecision | None = None
    wallet: dict[str, int] = field(default_factory=dict)  # asset -> units the signer holds
    asset_sigmas: dict[str, float] = field(default_factory=dict)
    stale: dict[str, int] = field(default_factory=dict)  # asset -> age of its latest round (s)
    round_trips: int = 0
    symbols: dict[str, str] = field(default_factory=dict)  # asset -> token symbol
    price_basis: dict[str, dict[str, object]] = field(default_factory=dict)  # asset -> what its price is
    # the decision's other inputs (status prices protection from them: keeper.commands._accounts_view)
    book: AccountBook | None = None
    stress_gaps: dict[str, tuple[float, float]] = field(default_factory=dict)  # asset -> (down, up)
    correlation: dict[tuple[str, str], float] = field(default_factory=dict)
    decision_interval_s: float = 0.0  # the check interval the decision's horizon was taken at


class AccountKeeperService(KeeperService):
    """The keeper's cycle over one margin-account protocol (the adapter is an :class:`AccountAdapter`)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.top_up_gas_limit = GAS_LIMIT_DEFAULT.get(self.accounts_adapter.name, 300_000)
        self.top_up_gas_used = GAS_USED_MEASURED.get(self.accounts_adapter.name, self.top_up_gas_used)
        self._symbols: dict[str, str] = {}
        self._discovered_accounts: set[str] = set()
        self._not_held: set[str] = set()  # the accounts the last decision did not hold: read afresh next cycle
        self._alerted: set[str] = set()  # the alert keys of the last cycle (resolved when a cycle does not repeat them)

    @property
    def accounts_adapter(self) -> AccountAdapter:
        return cast(AccountAdapter, self.adapter)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the deployment's contracts, load its assets, reconcile the journal with the chain."""
        adapter = self.accounts_adapter
        adapter.check_deployment()
        self.native_price.check()
        self._symbols = adapter.load()
        if not self._symbols:
            raise ChainMismatchError(f"the {adapter.name} deployment lists no assets: wrong deployment?")
        unknown = set(self.config.protocol.assets) - set(self._symbols.values()) - set(self._symbols)
        if unknown:
            raise ConfigError(
                f"protocol.assets names {', '.join(sorted(unknown))}, not assets of this deployment "
                f"(its assets: {', '.join(self._symbols.values())})",
                field="protocol.assets",
            )
        known = {sym.upper() for sym in self._symbols.values()}
        unknown_tails = sorted(sym for sym in self.long_tails if sym not in known)
        if unknown_tails:
            raise ConfigError(
                f"risk.long_history names {', '.join(unknown_tails)}, not assets of this deployment "
                f"(its assets: {', '.join(self._symbols.values())})",
                field="risk.long_history",
            )
        log.info(
            "keeper_starting",
            protocol=adapter.name,
            contracts=adapter.contract_addresses(),
            assets=list(self._symbols.values()),
            accounts=len(self.config.accounts),
            watch_all=self.config.watch_all,
            executing=self.txm is not None,
            signer=self.signer_address,
        )
        if self.txm is not None:
            self._reconcile_journal(self.txm)
        signer = (self.signer_address or "").lower()
        owner = frozenset({signer}) if signer and signer in self._protected() else frozenset()
        # the keeper's key is the account's own: it may reduce or release it when the limits allow
        adapter.reducible = owner if self.limits.allow_reduce else frozenset()
        adapter.releasable = owner if self.limits.allow_release else frozenset()
        if owner and (adapter.reducible or adapter.releasable):
            log.info(
                "owner_actions_enabled",
                account=signer,
                reduce=bool(adapter.reducible),
                release=bool(adapter.releasable),
            )

    # ---- what to watch ---------------------------------------------------------------------------

    def watched_users(self) -> list[str]:
        users = [a.address.lower() for a in self.config.accounts]
        if self.config.watch_all:
            self._discovered_accounts |= self.accounts_adapter.discover_accounts()
            users += sorted(self._discovered_accounts)
        return list(dict.fromkeys(users))

    def _watch_only_users(self, users: list[str]) -> frozenset[str]:
        protected = self._protected()
        return frozenset(u.lower() for u in users if u.lower() not in protected)

    # ---- estimates -------------------------------------------------------------------------------

    def estimate_assets(
        self, book: AccountBook, policy: RiskPolicy | None = None
    ) -> tuple[dict[str, float], dict[str, tuple[float, float]], dict[tuple[str, str], float]]:
        """Sigma and stress gaps (down, up) per asset from its oracle's rounds (read incrementally; the worse of
        them and the asset's long-history tail where ``risk.long_history`` names its symbol, read at its
        cost-optimal level under ``policy``'s cost bands with the protocol's liquidation penalty), the book's
        premium gap added where the liquidating price can gap away from the oracle's (log moves add), and the
        assets' pairwise correlations. ``policy``: :meth:`policy_now` when not given."""
        policy = policy or self.policy_now()
        sigmas: dict[str, float] = {}
        gaps: dict[str, tuple[float, float]] = {}
        histories: dict[str, tuple[list[int], list[int]]] = {}
        for asset, latest in book.rounds.items():
            rid = book.history_ids[asset]
            if self.vol.last_round_id(rid) != latest.round_id:
                self.vol.add(rid, self._history(asset, rid, latest))
            est = self.vol.estimate(rid)
            sigmas[asset] = est.sigma_annual
            own = self._asset_config(asset)
            if est.fallback_reason and own is not None and own.sigma_fallback_annual is not None:
                sigmas[asset] = max(own.sigma_fallback_annual, self.policy.sigma_floor_annual)
            rounds = self.vol.rounds(rid)
            times, prices = [r.updated_at_s for r in rounds], [r.price_e8 for r in rounds]
            gap = policy.estimate_stress_gap(
                times,
                prices,
                self.check_interval_s,
                now_s=book.timestamp_s,
                long_tail=self.long_tails.get(self._symbols.get(asset, asset).upper()),
                penalty=liquidation_penalty(book.rules, asset),
            )
            push_down, push_up = book.premium_gaps.get(asset, (0.0, 0.0))
            gaps[asset] = (gap.side_gaps[0] + push_down, gap.side_gaps[1] + push_up)
            histories[asset] = (times, prices)
        return sigmas, gaps, correlation_from_histories(histories)

    def _asset_config(self, asset: str) -> AssetConfig | None:
        symbol = self._symbols.get(asset, asset)
        assets = self.config.protocol.assets
        return assets.get(symbol) or assets.get(symbol.upper()) or assets.get(asset)

    def _stale_after(self, asset: str) -> int:
        own = self._asset_config(asset)
        if own is not None and own.stale_after_s is not None:
            return own.stale_after_s
        return self.config.protocol.stale_after_s

    def _history(self, asset: str, history_id: int, latest: PriceRound) -> list[PriceRound]:
        known = self.vol.last_round_id(history_id)
        want = self.vol.window if known is None else max(1, min(self.vol.window, latest.round_id - known))
        try:
            return self.accounts_adapter.source_history(asset, want, latest)
        except TransientRpcError as exc:
            log.warning("price_history_unavailable", asset=self._symbols.get(asset, asset), error=str(exc))
            return [latest]

    # ---- the cycle -------------------------------------------------------------------------------

    def spent_today_e6(self, now_s: float) -> int:
        """Supplies and repays since 00:00 UTC that may have moved money (the sibling's rule, these kinds)."""
        midnight = datetime.fromtimestamp(now_s, UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        spent = 0
        for rec in self.journal.intents_since(midnight):
            if rec.meta.get("kind") not in SPENDING_KINDS or rec.state in ("rejected", "cancelled", "reverted"):
                continue
            if rec.state == "abandoned" and self.journal.attempt_count(rec.id) == 0:
                continue
            spent += int(rec.meta.get("cost_e6") or 0)
        return spent

    def _busy_accounts(self) -> dict[str, str]:
        return {
            str(rec.meta["account"]).lower(): rec.state
            for rec in self.journal.open_intents()
            if rec.meta.get("kind") in ACCOUNT_KINDS and rec.meta.get("account")
        }

    def decide_snapshot(
        self, book: AccountBook, wallet: dict[str, int], *, busy: dict[str, str] | None = None
    ) -> tuple[AccountBookDecision, AssetEstimates, dict[str, int]]:
        """The daemon's decision over one read: estimates, stale sources, then :func:`decide_accounts` (with
        ``risk.cost_aware`` under the cost bands of the moment, :meth:`policy_now`: the protocol's own gas per
        action x the gas price now x the gas token's price)."""
        policy = self.policy_now()
        estimates = AssetEstimates(*self.estimate_assets(book, policy))
        sigmas, gaps, corr = estimates
        now = book.timestamp_s
        stale = {a: r.age_s(now) for a, r in book.rounds.items() if r.is_stale(now, self._stale_after(a))}
        stale |= {a: now for a in book.prices_e8 if a not in book.rounds}  # no round at all: unknown
        users = sorted(a.account.lower() for a in book.accounts)
        state = AccountBookState(
            wallet=wallet,
            spent_today_e6=self.spent_today_e6(self.clock()),
            stale_assets=stale,
            watch_only=self._watch_only_users(users),
            busy=busy or {},
            symbols=self._symbols,
            decimals=book.decimals,
        )
        outcome = decide_accounts(
            list(book.accounts),
            book.rules,
            state,
            prices_e8=book.prices_e8,
            sigmas_annual=sigmas,
            policy=policy,
            limits=self.limits,
            check_interval_s=self.check_interval_s,
            stress_gaps=gaps,
            correlation=corr,
            # multi-factor accounts: correlated fat-tailed paths, reproducible per block
            monte_carlo=AccountMonteCarlo(np.random.default_rng(book.block_number)),
        )
        return outcome, estimates, stale

    def cycle(self, *, execute: bool = True) -> AccountCycleReport:
        try:
            with _cyclic_gc_paused():
                return self._account_cycle(execute)
        except TransientRpcError:
            self.metrics.count_rpc_error("cycle")
            raise

    def _account_cycle(self, execute: bool) -> AccountCycleReport:
        started = time.perf_counter()
        users = self.watched_users()
        adapter = self.accounts_adapter
        busy = self._busy_accounts() if self.txm is not None else {}
        snap = adapter.read_book(
            users, cross_check=len(users) <= adapter.cross_check_max_accounts, must_read=self._not_held | set(busy)
        )
        self._update_native_price({self._symbols.get(a, a): p for a, p in snap.prices_e8.items()})
        wallet, allowances = adapter.wallet(self.signer_address) if self.signer_address else ({}, {})
        outcome, estimates, stale = self.decide_snapshot(snap, wallet, busy=busy)
        self._not_held = {d.key for d in outcome.decisions if d.band != "hold"}
        report = AccountCycleReport(
            snap.block_number,
            snap.timestamp_s,
            [],
            Plan(),
            outcome=outcome,
            wallet=wallet,
            asset_sigmas=estimates.sigmas_annual,
            stale=stale,
            symbols=dict(self._symbols),
            price_basis=snap.price_basis,
            book=snap,
            stress_gaps=estimates.stress_gaps,
            correlation=estimates.correlation,
            decision_interval_s=self.check_interval_s,
        )
        report.round_trips = snap.round_trips
        self._explain_accounts(snap, outcome)
        txm = self.txm if execute and not self.config.dry_run else None
        if txm is not None:
            self._report_blocked_lanes(txm)
        self._alert_actions(outcome.actions)
        for action in outcome.actions:
            if action.kind is AccountActionKind.ALERT or action.needs_approval:
                continue
            skip = None
            if txm is None:
                skip = "not executing (check without --execute, dry run or watch-only)"
            elif self.stopping.is_set():
                skip = "shutting down or halted: no new transaction"
            if skip is not None or txm is None:
                report.skipped.append({"action": action.kind.value, "account": action.account, "why": skip})
                continue
            report.sent.append(self._send_account(txm, action, snap, allowances))
        self._check_gas(execute)
        intervals = [r.suggested_check_interval_s for r in outcome.risks if r.has_debt]
        report.next_interval_s = max(
            self.policy.check_interval_min_s, min(min(intervals, default=1e18), self.policy.check_interval_max_s)
        )
        self.check_interval_s = report.next_interval_s
        self._last_rounds = {snap.history_ids[a]: r.round_id for a, r in snap.rounds.items()}
        report.duration_s = time.perf_counter() - started
        now = self.clock()
        self.metrics.observe_cycle(report.duration_s, now)
        if self.health is not None:
            self.health.mark_cycle(now)
        log.info(
            "cycle_finished",
            protocol=adapter.name,
            block=snap.block_number,
            accounts=len(outcome.decisions),
            endangered=sum(1 for d in outcome.decisions if d.band == "trigger"),
            held=sum(1 for d in outcome.decisions if d.band == "hold"),
            actions=len(outcome.actions),
            sent=sum(1 for s in report.sent if s.get("state") not in ("rejected", "error")),
            worst_breach_probability=max((r.breach_probability for r in outcome.risks), default=0.0),
            stale_sources=[self._symbols.get(a, a) for a in stale],
            round_trips=snap.round_trips,
            accounts_read=len(snap.accounts) if snap.accounts_read is None else snap.accounts_read,
            next_check_s=round(report.next_interval_s, 2),
            duration_ms=round(report.duration_s * 1e3, 1),
        )
        return report

    def stress(self) -> tuple[int, dict[str, list[AccountStress]]]:
        """(block, account -> its stress grid) for every watched account with debt, at the exact health factor."""
        book = self.accounts_adapter.read_book(self.watched_users(), cross_check=False)
        rules = book.rules
        out = {}
        for view in book.accounts:
            user = view.account
            if not any(leg.kind is LegKind.DEBT for leg in view.legs) and view.cash_e8 >= 0:
                continue
            out[user] = account_stress_grid(
                view,
                book.prices_e8,
                health_at=partial(rules.health_at, user),
                liquidated_at=partial(_below_one, rules, user),
                names=self._symbols,
            )
        return book.block_number, out

    def _alert(self, action: AccountAction) -> str:
        """Alert ``action`` (an alert or an action that needs approval) under its account and kind, with its
        ``cause`` as the alert's state: the sink sends it when that is news (a new cause, a worse severity, the
        reminder after ``alerts.dedup_window_s``), and suppresses it without a line otherwise (the account's
        ``account_decision`` line has the reason every cycle). Returns the key."""
        key = f"{action.account.lower()}:{action.kind.value}"
        self.alerts.send(
            key,
            f"{action.account}: {action.reason}",
            severity="critical" if action.urgent else "warning",
            fields={"account": action.account, "breach_probability": action.breach_probability},
            state=action.cause,
        )
        return key

    def _alert_actions(self, actions: Iterable[AccountAction]) -> None:
        """:meth:`_alert` for this cycle's alerts; the keys alerted last cycle and not this one are resolved (their
        account is out of danger or acted on: its return is news), and the rate-limit digest goes out."""
        alerted = {self._alert(a) for a in actions if a.kind is AccountActionKind.ALERT or a.needs_approval}
        self.alerts.resolve(self._alerted - alerted)
        self._alerted = alerted
        self.alerts.send_digest()

    def _explain_accounts(self, snap: AccountBook, outcome: AccountBookDecision) -> None:
        """One ``account_decision`` per account that is not held (every trigger, release and open transaction,
        with its reason); the held ones too when the book has at most ``HOLDS_AT_INFO_MAX`` accounts, else at
        debug only (a risk team's 10,000-account watch book would write 10,000 hold lines a cycle). With
        ``watch_all`` or a larger book, ``accounts_ranked``: the watch list's top ten by breach probability."""
        debug = _enabled_for(log, logging.DEBUG)
        holds_at_info = len(outcome.decisions) <= HOLDS_AT_INFO_MAX
        bound = log.bind()  # the configured logger, made once (the module's lazy proxy makes one per call)
        info, at_debug = bound.info, bound.debug
        risks = {r.account.lower(): r for r in outcome.risks} if outcome.decisions else {}
        chain_id = self.config.chain.chain_id
        symbols = self._symbols

        for d in outcome.decisions:
            held = d.band == "hold"
            if held and not holds_at_info and not debug:
                continue
            onchain = snap.onchain_health.get(d.key)
            risk = risks[d.key]
            tail = account_var_es(risk) if risk.has_debt else None
            emit = at_debug if held and not holds_at_info else info
            emit(  # the context as fields of the line (a bound logger per line cost as much as the JSON)
                "account_decision",
                chain_id=chain_id,
                account=d.account.lower(),
                protocol=d.protocol,
                health_factor=d.health_wad / 1e18 if d.health_wad else None,
                health_factor_onchain=(onchain / 1e18) if onchain is not None and d.health_wad else None,
                debt_usd=round(d.debt_usd, 2),
                margin_excess_usd=round(d.margin_excess_usd, 2),
                dominant_asset=symbols.get(d.dominant_asset, d.dominant_asset),
                liquidation_price=d.liquidation_price_e8 / 1e8,
                log_distance=round(d.log_distance, 6),
                breach_probability=d.breach_probability,
                method=d.method,
                horizon_s=d.horizon_s,
                stale=[symbols.get(a, a) for a in d.stale_assets],
                # which price liquidates and what the risk model forecast (Perp v2: the mark, index, premium gap)
                price_basis={symbols.get(a, a): snap.price_basis[a] for a in risk.gradient_usd if a in snap.price_basis}
                or None,
                exposure_usd={symbols.get(a, a): round(g, 2) for a, g in risk.gradient_usd.items()},
                var_99_usd=round(tail.var, 2) if tail else None,
                es_99_usd=round(tail.es, 2) if tail else None,
                vega=risk.vega,  # d breach_probability / d sigma (every asset's volatility shifted alike)
                band=d.band,
                action=d.action,
                amount=d.amount,
                cost_usd=d.cost_e6 / 1e6,
                reason=d.reason,
            )
        if (self.config.watch_all or not holds_at_info) and outcome.decisions:
            ranked = heapq.nlargest(RANKED_IN_LOG, outcome.decisions, key=lambda d: d.breach_probability)
            log.info(
                "accounts_ranked",
                top=[{"account": d.account, "breach_probability": d.breach_probability} for d in ranked],
            )

    def _send_account(
        self, txm: TransactionManager, action: AccountAction, snap: AccountBook, allowances: dict[str, int]
    ) -> dict:
        rules = snap.rules
        stake = rules.value_at_stake_e6(action.account)
        adapter = self.accounts_adapter
        out: dict[str, object] = {
            "action": action.kind.value,
            "account": action.account,
            "asset": action.asset,
            "amount": action.amount,
            "cost_e6": action.cost_e6,
        }
        try:
            if action.kind.value in SPENDING_KINDS and allowances.get(action.asset, 0) < action.amount:
                approve = adapter.approve_call(action.asset, MAX_UINT256)
                signer = (self.signer_address or "").lower()
                intent = txm.submit(approve, f"approve:{action.asset.lower()}:{signer}", stake, "urgent")
                final = txm.wait(intent.id, timeout_s=60)
                log.info("asset_approved", asset=self._symbols.get(action.asset), state=final.state)
                allowances[action.asset] = MAX_UINT256 if final.state == "confirmed" else 0
            hf = rules.health(action.account)
            key = f"{action.idempotency_key}:hf{hf}"
            intent = txm.submit(adapter.call_for_account_action(action), key, stake, "urgent")
        except LaneBlocked as exc:
            out.update(state="waiting", reason=str(exc))
            self.metrics.count_action(action.kind.value, "lane_blocked")
            log.warning("action_waits_for_unknown_transactions", account=action.account, reason=str(exc))
            return out
        except SimulationRevert as exc:
            out.update(state="rejected", reason=exc.reason)
            self.metrics.count_action(action.kind.value, "simulation_revert")
            log.warning("action_refused_by_simulation", account=action.account, reason=exc.reason)
            self.alerts.send(
                f"{action.account.lower()}:revert",
                f"{action.kind.value} for {action.account} would revert: {exc.reason}",
                severity="critical",
                fields=out,
            )
            return out
        except (FeeCapExceeded, TransactionError, TransientRpcError, RpcRejectedError) as exc:
            out.update(state="error", reason=str(exc))
            self.metrics.count_action(action.kind.value, "error")
            log.warning("action_send_failed", account=action.account, error=str(exc))
            self.alerts.send(
                f"{action.account.lower()}:send_failed",
                f"{action.kind.value} for {action.account} could not be sent: {exc}",
                severity="critical",
                fields=out,
            )
            return out
        attempts = self.journal.attempts(intent.id)
        tx_hash = intent.tx_hash or (attempts[-1].tx_hash if attempts else None)
        out.update(state=intent.state, tx_hash=tx_hash, intent=intent.id, nonce=intent.nonce)
        self.metrics.count_action(action.kind.value, "sent")
        log.bind(account=action.account.lower()).info(
            "action_sent",
            kind=action.kind.value,
            asset=self._symbols.get(action.asset, action.asset),
            amount=action.amount,
            cost_usd=action.cost_e6 / 1e6,
            tx_hash=tx_hash,
            nonce=intent.nonce,
            intent=intent.id,
            reason=action.reason,
        )
        return out

    def _count_gas(self, tx_hash: str | None, kind: str = "other") -> None:
        """The sibling's gas accounting; a mined supply or repay sizes the gas-left alert like a top-up does."""
        super()._count_gas(tx_hash, ActionKind.TOP_UP.value if kind in ACCOUNT_KINDS else kind)

    def still_needed(self, intent: Any) -> bool:
        """A stuck supply/repay/deposit/reduction is still needed while its account is endangered, a release
        while the account is still in the release band (errors answer yes)."""
        account = intent.meta.get("account")
        if intent.meta.get("kind") not in ACCOUNT_KINDS or not account:
            return True
        try:
            snap = self.accounts_adapter.read_book([account])
            wallet = self.accounts_adapter.wallet(self.signer_address)[0] if self.signer_address else {}
            outcome, _, _ = self.decide_snapshot(snap, wallet)
        except Exception as exc:  # noqa: BLE001 - keep the transaction when in doubt, as the sibling does
            log.warning("still_needed_unknown", intent=intent.id, error=str(exc))
            return True
        d = outcome.decision(account)
        # a stuck release is wanted only while the account is still safe enough to release from
        wanted = "release" if intent.meta.get("kind") == AccountActionKind.RELEASE.value else "trigger"
        needed = d is not None and d.band == wanted
        if not needed:
            log.info("tx_purpose_gone", intent=intent.id, why="account no longer endangered")
        return needed
