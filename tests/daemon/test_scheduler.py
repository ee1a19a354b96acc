"""The cycle scheduler: adaptive interval, no overlap, early checks on oracle rounds, watchdog, clean stop."""

from __future__ import annotations

import threading
import time

from keeper.runtime.scheduler import CycleScheduler, HeadNews


class TestCycleScheduler:
    def test_cycles_never_overlap(self, wait_for):
        """A cycle slower than its interval never runs twice at once (max_instances=1, coalesce)."""
        running = 0
        peak = 0
        runs = 0
        lock = threading.Lock()

        def cycle():
            nonlocal running, peak, runs
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.3)  # a slow cycle (longer than its interval): time passing is the point
            with lock:
                running -= 1
                runs += 1

        s = CycleScheduler(cycle, initial_interval_s=0.05, min_interval_s=0.05)
        s.start()
        try:
            wait_for(lambda: runs >= 3, 5, "three cycles")
        finally:
            s.stop()
            s._scheduler.shutdown(wait=True)
        assert peak == 1

    def test_interval_follows_the_cycle_suggestion(self, wait_for):
        """When the cycle asks for a shorter interval the scheduler reschedules and runs more often."""
        runs = []
        s = CycleScheduler(lambda: runs.append(time.monotonic()) or 0.1, initial_interval_s=30, min_interval_s=0.05)
        s.start()
        try:
            wait_for(lambda: len(runs) >= 4, 5, "four cycles")
        finally:
            s.stop()
            s._scheduler.shutdown(wait=True)
        assert s.interval_s == 0.1

    def test_suggestion_is_clipped(self):
        """A suggestion outside [min, max] is clipped to the bounds."""
        s = CycleScheduler(lambda: None, initial_interval_s=10, min_interval_s=2, max_interval_s=20)
        s.start()
        try:
            s._maybe_reschedule(0.001)
            assert s.interval_s == 2
            s._maybe_reschedule(1e9)
            assert s.interval_s == 20
        finally:
            s._scheduler.shutdown(wait=False)

    def test_oracle_round_triggers_an_immediate_cycle(self, wait_for):
        """A changed oracle round brings the next cycle forward even with a long interval."""
        runs = []
        rounds = iter([HeadNews(1, 0, False), HeadNews(2, 0, True)])

        def head():
            return next(rounds, HeadNews(2, 0, False))

        s = CycleScheduler(lambda: runs.append(1), head, initial_interval_s=600, head_poll_s=0.05)
        s.start()
        try:
            wait_for(lambda: len(runs) >= 2, 5, "a second, early cycle")
        finally:
            s.stop()
            s._scheduler.shutdown(wait=True)
        assert s.early_cycles == 1

    def test_watchdog_alerts_once_and_recovers(self, wait_for):
        """No new block for stall_after_s raises exactly one stall, and a new block one recovery."""
        block = {"n": 1}
        stalls, recoveries = [], []
        s = CycleScheduler(
            lambda: None,
            lambda: HeadNews(block["n"], 0, False),
            initial_interval_s=600,
            head_poll_s=0.05,
            stall_after_s=0.3,
            on_stall=stalls.append,
            on_recover=recoveries.append,
        )
        s.start()
        try:
            wait_for(lambda: len(stalls) == 1, 5, "a stall")
            time.sleep(0.3)  # another stall_after_s with no block (about six head polls): no second stall
            assert len(stalls) == 1
            block["n"] = 2
            wait_for(lambda: len(recoveries) == 1, 5, "a recovery")
            assert recoveries[0] >= 0.3
        finally:
            s.stop()
            s._scheduler.shutdown(wait=True)

    def test_stop_waits_for_the_running_cycle(self):
        """run_until_stopped returns only after a cycle in progress has finished."""
        started, finished = threading.Event(), threading.Event()

        def cycle():
            started.set()
            time.sleep(0.5)  # a cycle still running when stop is asked: time passing is the point
            finished.set()

        s = CycleScheduler(cycle, initial_interval_s=600)
        t = threading.Thread(target=s.run_until_stopped)
        t.start()
        assert started.wait(5)
        s.stop()
        t.join(10)
        assert not t.is_alive()
        assert finished.is_set()

    def test_failed_cycle_is_counted_and_retried(self, wait_for):
        """An exception in a cycle is recorded and the next tick runs again."""
        calls = []

        def cycle():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")

        s = CycleScheduler(cycle, initial_interval_s=0.1, min_interval_s=0.05)
        s.start()
        try:
            wait_for(lambda: len(calls) >= 2, 5, "a second cycle after the failed one")
        finally:
            s.stop()
            s._scheduler.shutdown(wait=True)
        assert s.cycles_failed == 1 and s.cycles_run >= 1
