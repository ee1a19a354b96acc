"""``keeper run``: the daemon.

Stopping (SIGTERM / SIGINT): no new cycle and no new transaction starts; work already running gets
``schedule.shutdown_timeout_s`` to finish (after half of it every further RPC call fails fast, so a cycle
stuck behind a slow node unwinds through its journal writes); at the bound the daemon exits anyway (exit 1,
``shutdown_timed_out``): every transaction it signed is in the journal before it was sent, and the next
start reconciles the journal with the chain. A second signal exits at once (128 + signal number).

Halting: when no RPC endpoint serves the configured chain any more (another chain id, or no code at the
protocol or Multicall3: a reset chain), or the keeper raises :class:`~keeper.errors.HaltError`, it stops
acting, sends a critical alert, reports ``halted`` on ``/healthz`` while the alert is delivered, and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
import typer

from keeper.chain.heads import NewHeadsSubscription
from keeper.commands._common import CONFIG_OPTION, ENV_FILE_OPTION, check_http_port, load, service_class
from keeper.errors import ChainMismatchError, HaltError, TransientRpcError
from keeper.runtime.health import HealthServer, HealthState
from keeper.runtime.metrics import KeeperMetrics
from keeper.runtime.scheduler import CycleScheduler, HeadNews
from keeper.runtime.service import KeeperService

log = structlog.get_logger("keeper")

EXIT_SHUTDOWN_TIMED_OUT = 1
T = TypeVar("T")
HALT_ON = (ChainMismatchError, HaltError)


def required_code(service: KeeperService) -> dict[str, str]:
    """Addresses that must hold code on every endpoint: the protocol's contracts and Multicall3."""
    return service.adapter.contract_addresses()


def _exit_now(signum: int) -> None:
    """Second signal: leave at once. Async-signal-safe enough: one write(2), no lock, no logger."""
    line = json.dumps(
        {"event": "shutdown_forced", "level": "warning", "signal": signal.Signals(signum).name, "why": "second signal"}
    )
    try:
        os.write(2, (line + "\n").encode())
    finally:
        os._exit(128 + signum)


def run_daemon(config_path: Path | None, env_file: Path | None) -> None:
    cfg = load(config_path, env_file)
    check_http_port(cfg)  # before the journal is opened or reconciled: a busy port stops us with nothing done
    metrics = KeeperMetrics()
    health = HealthState(cfg.http.max_cycle_age_s, cfg.http.max_head_age_s)
    service = service_class(cfg.protocol.name).from_config(cfg, execute=True, metrics=metrics, health=health)
    service.client.require_code(required_code(service))
    server = None
    heads = None
    scheduler: CycleScheduler | None = None
    try:
        service.start()
        if cfg.http.enabled:
            server = HealthServer(health, metrics, cfg.http.host, cfg.http.port).start()
        policy = service.policy

        def on_stall(age_s: float) -> None:
            service.alerts.send(
                "chain:stalled",
                f"no new block for {age_s:.0f} s",
                severity="critical",
                fields={"head_age_s": round(age_s, 1)},
            )

        def on_recover(age_s: float) -> None:
            log.info("chain_recovered", stalled_for_s=round(age_s, 1))

        def on_halt(exc: BaseException) -> None:
            reason = str(exc)
            service.stopping.set()
            health.mark_halted(reason)
            service.alerts.send(
                "keeper:halted",
                f"keeper halted, no further action will be taken: {reason}",
                severity="critical",
                fields={"reason": reason, "error": type(exc).__name__},
            )

        def guarded(step: Callable[[], T]) -> T:
            """Run a cycle or head poll; follow the error tree for answers that look like another chain."""
            try:
                return step()
            except ChainMismatchError as exc:
                # evidence from above the client (no code at Multicall3): verify the endpoint, fail over if it
                # is wrong; only when no endpoint serves the chain does this raise again, and the keeper halts
                service.client.confirm_chain()
                raise TransientRpcError(f"{exc}; endpoint verified again, now using {service.client.url}") from exc
            except (TransientRpcError, HaltError):
                raise
            except Exception:
                # an answer that makes no sense may come from another chain behind the same URL: verify the
                # endpoint (chain id, code) before its next request
                service.client.suspect()
                raise

        def cycle() -> float:
            return guarded(lambda: service.cycle(execute=True).next_interval_s)

        def watch_head() -> HeadNews:
            return guarded(service.watch_head)

        scheduler = CycleScheduler(
            cycle,
            watch_head,
            initial_interval_s=cfg.schedule.initial_interval_s,
            min_interval_s=policy.check_interval_min_s,
            max_interval_s=policy.check_interval_max_s,
            head_poll_s=cfg.schedule.head_poll_s,
            stall_after_s=cfg.schedule.stall_after_s,
            on_stall=on_stall,
            on_recover=on_recover,
            halt_on=HALT_ON,
            on_halt=on_halt,
        )
        sched = scheduler

        ws_urls = [u for u in cfg.chain.rpc_urls if u.startswith(("ws://", "wss://"))]
        if ws_urls:
            heads = NewHeadsSubscription(ws_urls[0], lambda _n, _ts: sched.poll_head_now()).start()

        def stop(signum: int, _frame: object) -> None:
            if sched.stopped:
                _exit_now(signum)
            log.info(
                "shutdown_requested", signal=signal.Signals(signum).name, timeout_s=cfg.schedule.shutdown_timeout_s
            )
            service.stopping.set()
            sched.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info(
            "daemon_started", dry_run=cfg.dry_run, alert_only=cfg.limits.alert_only, executing=service.txm is not None
        )
        drained = scheduler.run_until_stopped(cfg.schedule.shutdown_timeout_s, on_deadline=service.client.abort)
        if not drained:
            log.warning(
                "daemon_stopped",
                forced=True,
                running=scheduler.running_jobs(),
                cycles=scheduler.cycles_run,
                failed_cycles=scheduler.cycles_failed,
            )
            service.alerts.close(timeout_s=1.0)
            sys.stdout.flush()
            sys.stderr.flush()
            # a worker is still inside an RPC call: joining it (interpreter exit) could take a request timeout
            # per retry; the journal is committed after every step, so leaving now loses nothing
            os._exit(EXIT_SHUTDOWN_TIMED_OUT)
        log.info(
            "daemon_stopped",
            cycles=scheduler.cycles_run,
            failed_cycles=scheduler.cycles_failed,
            open_transactions=len(service.journal.open_intents()),
            halted=scheduler.halt_reason is not None,
        )
    finally:
        if heads is not None:
            heads.stop(timeout_s=2.0)
        service.alerts.close(timeout_s=5.0)  # while /healthz still answers (``halted`` after a halt)
        if server is not None:
            server.stop()
        service.close()
    if scheduler is not None and scheduler.halt_reason is not None:
        raise HaltError(f"keeper halted: {scheduler.halt_reason}")


def register(app: typer.Typer) -> None:
    @app.command()
    def run(config: Path = CONFIG_OPTION, env_file: Path = ENV_FILE_OPTION) -> None:
        """Run the keeper daemon: check on a risk-driven schedule and on every new oracle round, act, explain."""
        run_daemon(config, env_file)
