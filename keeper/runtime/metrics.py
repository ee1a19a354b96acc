"""Prometheus metrics of the keeper, in a registry of their own (no process-global state).

Names (all prefixed ``keeper_``):

=====================================  =========  ======================  ==========================================
metric                                 type       labels                  meaning
=====================================  =========  ======================  ==========================================
position_breach_probability            gauge      account, market         risk engine's breach probability (horizon)
position_distance_to_liquidation       gauge      account, market         ln(price / liquidation price), signed safe > 0
position_collateral_usd                gauge      account, market         collateral in USD
wallet_balance_usd                     gauge      account                 collateral-token balance of a paying wallet
native_balance_eth                     gauge      account                 gas-token balance of the signing key
gas_top_ups_left                       gauge      account                 top-ups that balance pays at the current fee
actions_total                          counter    kind, outcome           actions by kind (top_up, ...) and outcome
gas_used_total                         counter                            gas units of mined keeper transactions
gas_spent_eth_total                    counter                            fees paid (ETH)
cycle_duration_seconds                 histogram                          wall time of one check cycle
rpc_errors_total                       counter    kind                    RPC failures by kind (timeout, http_5xx, ...)
head_lag_seconds                       gauge                              now minus the newest block's timestamp
last_cycle_timestamp_seconds           gauge                              unix time the last cycle finished
alerts_total                           counter    outcome                 webhook alerts: sent, deduplicated, ...
=====================================  =========  ======================  ==========================================
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "KeeperMetrics"]

_CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class KeeperMetrics:
    """All keeper metrics bound to one ``CollectorRegistry`` (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "keeper") -> None:
        self.registry = CollectorRegistry(auto_describe=True) if registry is None else registry
        ns, reg = namespace, self.registry
        pos = ("account", "market")
        self.breach_probability = Gauge(
            "position_breach_probability", "Breach probability within the risk horizon", pos, namespace=ns, registry=reg
        )
        self.distance_to_liquidation = Gauge(
            "position_distance_to_liquidation",
            "ln-distance from price to liquidation price",
            pos,
            namespace=ns,
            registry=reg,
        )
        self.collateral_usd = Gauge(
            "position_collateral_usd", "Position collateral (USD)", pos, namespace=ns, registry=reg
        )
        self.wallet_balance_usd = Gauge(
            "wallet_balance_usd",
            "Collateral-token balance of a paying wallet (USD)",
            ("account",),
            namespace=ns,
            registry=reg,
        )
        self.native_balance_eth = Gauge(
            "native_balance_eth", "Gas-token balance of the signing key", ("account",), namespace=ns, registry=reg
        )
        self.gas_top_ups_left = Gauge(
            "gas_top_ups_left",
            "Top-ups the signer's gas balance pays at the current fee",
            ("account",),
            namespace=ns,
            registry=reg,
        )
        self.actions = Counter(
            "actions", "Actions by kind and outcome", ("kind", "outcome"), namespace=ns, registry=reg
        )
        self.gas_used = Counter("gas_used", "Gas units used by keeper transactions", namespace=ns, registry=reg)
        self.gas_spent_eth = Counter("gas_spent_eth", "Transaction fees paid (ETH)", namespace=ns, registry=reg)
        self.cycle_duration = Histogram(
            "cycle_duration_seconds", "Duration of one check cycle", namespace=ns, registry=reg, buckets=_CYCLE_BUCKETS
        )
        self.rpc_errors = Counter("rpc_errors", "RPC errors by kind", ("kind",), namespace=ns, registry=reg)
        self.head_lag = Gauge(
            "head_lag_seconds", "Seconds since the newest block's timestamp", namespace=ns, registry=reg
        )
        self.last_cycle = Gauge(
            "last_cycle_timestamp_seconds", "Unix time the last cycle finished", namespace=ns, registry=reg
        )
        self.alerts = Counter("alerts", "Webhook alerts by outcome", ("outcome",), namespace=ns, registry=reg)
        self._positions: set[tuple[str, str]] = set()

    # ---- recording helpers (the daemon calls these; each is one line at the call site) ----------------

    def observe_position(
        self, account: str, market: str, *, breach_probability: float, log_distance: float, collateral_e6: int
    ) -> None:
        labels = (account.lower(), str(market))
        self._positions.add(labels)
        self.breach_probability.labels(*labels).set(breach_probability)
        self.distance_to_liquidation.labels(*labels).set(log_distance)
        self.collateral_usd.labels(*labels).set(collateral_e6 / 1e6)

    def forget_positions_except(self, live: set[tuple[str, str]]) -> None:
        """Drop series of positions that no longer exist (closed or liquidated); keys are (account, market)."""
        live = {(a.lower(), str(m)) for a, m in live}
        for labels in sorted(self._positions - live):
            for g in (self.breach_probability, self.distance_to_liquidation, self.collateral_usd):
                try:
                    g.remove(*labels)
                except KeyError:
                    pass
        self._positions &= live

    def set_wallet(self, account: str, balance_e6: int) -> None:
        self.wallet_balance_usd.labels(account.lower()).set(balance_e6 / 1e6)

    def set_native(self, account: str, balance_wei: int, top_ups_left: int) -> None:
        self.native_balance_eth.labels(account.lower()).set(balance_wei / 1e18)
        self.gas_top_ups_left.labels(account.lower()).set(top_ups_left)

    def count_action(self, kind: str, outcome: str) -> None:
        self.actions.labels(kind, outcome).inc()

    def add_gas(self, gas_used: int, fee_wei: int) -> None:
        self.gas_used.inc(gas_used)
        self.gas_spent_eth.inc(fee_wei / 1e18)

    def observe_cycle(self, duration_s: float, finished_at_s: float) -> None:
        self.cycle_duration.observe(duration_s)
        self.last_cycle.set(finished_at_s)

    def count_rpc_error(self, kind: str) -> None:
        self.rpc_errors.labels(kind).inc()

    def set_head_lag(self, lag_s: float) -> None:
        self.head_lag.set(lag_s)

    def count_alert(self, outcome: str) -> None:
        self.alerts.labels(outcome).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's current value (for tests and the status command), ``None`` when absent."""
        return self.registry.get_sample_value(name, labels or {})
