"""When the keeper looks: an adaptive check interval, immediate checks on new oracle rounds, a watchdog.

Built on APScheduler 3.11 (``BackgroundScheduler``):

* job ``cycle`` — the keeper cycle, ``max_instances=1`` and ``coalesce=True`` (a cycle that overruns is
  never run twice at once, and missed runs collapse into one). The cycle returns the interval it wants
  next (the risk engine's suggestion: shorter with volatility and leverage); the job is rescheduled when
  that differs from the current interval by more than 10 %.
* job ``head`` — every ``head_poll_s`` the head watcher is asked for news (new block, oracle round ids);
  when an oracle round changed since the last cycle, ``cycle`` is brought forward to run now. It also
  feeds the watchdog: no new block for ``stall_after_s`` raises one alert (and one recovery note).
* :meth:`CycleScheduler.run_until_stopped` blocks until :meth:`stop` (SIGTERM/SIGINT handlers call it),
  then waits for running jobs for at most ``shutdown_timeout_s`` and returns whether they drained. It never
  joins the pool under APScheduler's job-store lock (``shutdown(wait=True)`` there deadlocks with a job that
  calls ``get_job``): jobs are counted here, every job and control method is a no-op once stopped, and
  ``on_deadline`` runs halfway through the bound so the caller can make in-flight work fail fast.
* halt: an exception of a type in ``halt_on`` (a wrong chain, a halt condition) raised by a cycle or by the
  head watcher stops the scheduler instead of being retried; :attr:`halt_reason` says why and
  ``on_halt(exc)`` is called once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HeadNews:
    """What the head watcher saw: the latest block and whether an oracle round changed since last asked."""

    block_number: int
    block_timestamp_s: int
    oracle_changed: bool


class CycleScheduler:
    """Runs ``cycle`` on an adaptive interval and as soon as an oracle round changes."""

    def __init__(
        self,
        cycle: Callable[[], float | None],
        watch_head: Callable[[], HeadNews] | None = None,
        *,
        initial_interval_s: float = 30.0,
        min_interval_s: float = 1.0,
        max_interval_s: float = 3600.0,
        head_poll_s: float = 1.0,
        stall_after_s: float = 120.0,
        on_stall: Callable[[float], None] | None = None,
        on_recover: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        halt_on: tuple[type[BaseException], ...] = (),
        on_halt: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not 0 < min_interval_s <= max_interval_s:
            raise ValueError("need 0 < min_interval_s <= max_interval_s")
        if head_poll_s <= 0 or stall_after_s <= 0:
            raise ValueError("head_poll_s and stall_after_s must be > 0")
        self._cycle = cycle
        self._watch_head = watch_head
        self._min = min_interval_s
        self._max = max_interval_s
        self.interval_s = self._clip(initial_interval_s)
        self._head_poll_s = head_poll_s
        self._stall_after_s = stall_after_s
        self._on_stall = on_stall or (lambda age: None)
        self._on_recover = on_recover or (lambda age: None)
        self._clock = clock
        self._stopped = threading.Event()
        self._halt_on = halt_on
        self._on_halt = on_halt or (lambda exc: None)
        self.halt_reason: str | None = None
        self._jobs = threading.Condition()
        self._running: dict[str, int] = {}
        self._last_block: int | None = None
        self._last_block_seen_at = clock()
        self._stalled = False
        self.cycles_run = 0
        self.cycles_failed = 0
        self.early_cycles = 0
        self.last_error: str | None = None
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(2)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC,
        )

    def _clip(self, seconds: float) -> float:
        return min(self._max, max(self._min, float(seconds)))

    # ---- jobs ---------------------------------------------------------------------------------------

    def _job(self, name: str, body: Callable[[], None]) -> None:
        """Run a job body unless stopped, counted so that shutdown can wait for it without any lock held."""
        if self._stopped.is_set():
            return
        with self._jobs:
            self._running[name] = self._running.get(name, 0) + 1
        try:
            body()
        except self._halt_on as exc:
            self._halt(exc)
        finally:
            with self._jobs:
                self._running[name] -= 1
                if not self._running[name]:
                    del self._running[name]
                self._jobs.notify_all()

    def _halt(self, exc: BaseException) -> None:
        with self._jobs:
            first = self.halt_reason is None
            if first:
                self.halt_reason = f"{type(exc).__name__}: {exc}"
        if first:
            log.critical("keeper_halting", reason=self.halt_reason)
            try:
                self._on_halt(exc)
            finally:
                self.stop()

    def running_jobs(self) -> list[str]:
        """Names of the jobs running right now."""
        with self._jobs:
            return sorted(self._running)

    def _run_cycle(self) -> None:
        self._job("cycle", self._cycle_body)

    def _cycle_body(self) -> None:
        try:
            wanted = self._cycle()
            self.cycles_run += 1
            self.last_error = None
        except self._halt_on:
            self.cycles_failed += 1
            raise
        except Exception as exc:  # a failed cycle is logged and retried at the next tick
            self.cycles_failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("cycle_failed", error=self.last_error)
            return
        if wanted is not None and not self._stopped.is_set():
            self._maybe_reschedule(wanted)

    def _maybe_reschedule(self, wanted_s: float) -> None:
        new = self._clip(wanted_s)
        if abs(new - self.interval_s) <= 0.1 * self.interval_s:
            return
        log.info("check_interval_changed", old_s=round(self.interval_s, 2), new_s=round(new, 2))
        self.interval_s = new
        start = datetime.now(UTC) + timedelta(seconds=new)
        self._modify(
            "cycle",
            lambda: self._scheduler.reschedule_job("cycle", trigger=IntervalTrigger(seconds=new, start_date=start)),
        )

    def _run_head(self) -> None:
        self._job("head", self._head_body)

    def _head_body(self) -> None:
        if self._watch_head is None:
            return
        try:
            news = self._watch_head()
        except self._halt_on:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed head poll must not stop the scheduler
            log.warning("head_poll_failed", error=f"{type(exc).__name__}: {exc}")
            news = None
        now = self._clock()
        if news is not None and news.block_number != self._last_block:
            gap = now - self._last_block_seen_at
            self._last_block = news.block_number
            self._last_block_seen_at = now
            if self._stalled:
                self._stalled = False
                self._on_recover(gap)
        age = now - self._last_block_seen_at
        if age > self._stall_after_s and not self._stalled:
            self._stalled = True
            self._on_stall(age)
        if news is not None and news.oracle_changed:
            self.run_now()

    # ---- control ------------------------------------------------------------------------------------

    def _modify(self, job_id: str, change: Callable[[], object]) -> bool:
        """Apply ``change`` to a scheduled job unless stopped; a job or scheduler already gone is not an error."""
        if self._stopped.is_set():
            return False
        try:
            change()
        except (JobLookupError, SchedulerNotRunningError):
            return False
        return True

    def run_now(self) -> None:
        """Bring the next cycle forward to now (coalesced with one already due or running); no-op once stopped."""
        if self._modify("cycle", lambda: self._scheduler.modify_job("cycle", next_run_time=datetime.now(UTC))):
            self.early_cycles += 1

    def poll_head_now(self) -> None:
        """Run the head watcher now (a newHeads notification arrived); coalesced with a running poll."""
        self._modify("head", lambda: self._scheduler.modify_job("head", next_run_time=datetime.now(UTC)))

    def start(self) -> None:
        now = datetime.now(UTC)
        self._scheduler.add_job(
            self._run_cycle,
            IntervalTrigger(seconds=self.interval_s, start_date=now),
            id="cycle",
            next_run_time=now,
            name="keeper cycle",
        )
        if self._watch_head is not None:
            self._scheduler.add_job(
                self._run_head,
                IntervalTrigger(seconds=self._head_poll_s, start_date=now),
                id="head",
                name="head watcher",
            )
        self._scheduler.start()

    def stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def run_until_stopped(
        self, shutdown_timeout_s: float = 10.0, on_deadline: Callable[[], None] | None = None
    ) -> bool:
        """Start, block until :meth:`stop`, then wait up to ``shutdown_timeout_s`` for running jobs.

        Returns True when every job finished in time, False when some are still running (the caller
        decides: the daemon exits anyway, the journal holds what they did). ``on_deadline`` is called once
        when half the bound has passed with jobs still running (the daemon makes RPC calls fail fast then).
        """
        if shutdown_timeout_s <= 0:
            raise ValueError("shutdown_timeout_s must be > 0")
        self.start()
        try:
            while not self._stopped.wait(0.2):
                pass
        finally:
            try:
                self._scheduler.shutdown(wait=False)  # never join the pool under the job-store lock
            except SchedulerNotRunningError:
                pass
        return self.wait_idle(shutdown_timeout_s, on_deadline)

    def wait_idle(self, timeout_s: float, on_deadline: Callable[[], None] | None = None) -> bool:
        """Wait until no job runs, for at most ``timeout_s``; ``on_deadline`` fires at half of it."""
        deadline = time.monotonic() + timeout_s
        halfway = time.monotonic() + timeout_s / 2
        cancel = on_deadline
        with self._jobs:
            while self._running:
                now = time.monotonic()
                if now >= deadline:
                    log.warning("shutdown_timed_out", running=sorted(self._running), timeout_s=timeout_s)
                    return False
                if cancel is not None and now >= halfway:
                    log.info("shutdown_cancelling", running=sorted(self._running))
                    self._jobs.release()
                    try:
                        cancel()
                    finally:
                        self._jobs.acquire()
                    cancel = None
                    continue
                self._jobs.wait(min(0.1, (halfway if cancel is not None else deadline) - now))
        return True
