"""``keeper run``: the daemon."""

from __future__ import annotations

import signal
from pathlib import Path

import structlog
import typer

from keeper.chain.heads import NewHeadsSubscription
from keeper.commands._common import CONFIG_OPTION, ENV_FILE_OPTION, check_http_port, load
from keeper.runtime.health import HealthServer, HealthState
from keeper.runtime.metrics import KeeperMetrics
from keeper.runtime.scheduler import CycleScheduler
from keeper.runtime.service import KeeperService

log = structlog.get_logger("keeper")


def run_daemon(config_path: Path | None, env_file: Path | None) -> None:
    cfg = load(config_path, env_file)
    check_http_port(cfg)  # before the journal is opened or reconciled: a busy port stops us with nothing done
    metrics = KeeperMetrics()
    health = HealthState(cfg.http.max_cycle_age_s, cfg.http.max_head_age_s)
    service = KeeperService.from_config(cfg, execute=True, metrics=metrics, health=health)
    server = None
    heads = None
    try:
        service.start()
        if cfg.http.enabled:
            server = HealthServer(health, metrics, cfg.http.host, cfg.http.port).start()
        policy = service.policy

        def on_stall(age_s: float) -> None:
            service.alerts.send("chain:stalled", f"no new block for {age_s:.0f} s", severity="critical",
                                fields={"head_age_s": round(age_s, 1)})

        def on_recover(age_s: float) -> None:
            log.info("chain_recovered", stalled_for_s=round(age_s, 1))

        def cycle() -> float:
            return service.cycle(execute=True).next_interval_s

        scheduler = CycleScheduler(
            cycle, service.watch_head,
            initial_interval_s=cfg.schedule.initial_interval_s,
            min_interval_s=policy.check_interval_min_s, max_interval_s=policy.check_interval_max_s,
            head_poll_s=cfg.schedule.head_poll_s, stall_after_s=cfg.schedule.stall_after_s,
            on_stall=on_stall, on_recover=on_recover,
        )

        ws_urls = [u for u in cfg.chain.rpc_urls if u.startswith(("ws://", "wss://"))]
        if ws_urls:
            heads = NewHeadsSubscription(ws_urls[0], lambda _n, _ts: scheduler.poll_head_now()).start()

        def stop(signum: int, _frame: object) -> None:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            scheduler.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info("daemon_started", dry_run=cfg.dry_run, alert_only=cfg.limits.alert_only,
                 executing=service.txm is not None)
        scheduler.run_until_stopped()
        log.info("daemon_stopped", cycles=scheduler.cycles_run, failed_cycles=scheduler.cycles_failed,
                 open_transactions=len(service.journal.open_intents()))
    finally:
        if heads is not None:
            heads.stop()
        if server is not None:
            server.stop()
        service.close()


def register(app: typer.Typer) -> None:
    @app.command()
    def run(config: Path = CONFIG_OPTION, env_file: Path = ENV_FILE_OPTION) -> None:
        """Run the keeper daemon: check on a risk-driven schedule and on every new oracle round, act, explain."""
        run_daemon(config, env_file)
