"""Stops that stop at the scheduler level (issue 10, finding 4): no deadlock between shutdown and a head job that
brings a cycle forward, a bounded wait for a hung cycle, and a halt on a wrong-chain error instead of a retry."""

from __future__ import annotations

import threading
import time

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN

from keeper.errors import ChainMismatchError
from keeper.runtime.scheduler import CycleScheduler, HeadNews


def _news_with_new_round() -> HeadNews:
    return HeadNews(block_number=1, block_timestamp_s=0, oracle_changed=True)


class TestSchedulerStops:
    def test_stop_while_head_job_brings_cycle_forward_does_not_deadlock(self):
        """A head poll still running at shutdown (a slow RPC) that then brings the cycle forward: run_until_stopped
        returns (the issue's hang: shutdown joined the pool under the job-store lock the head job needed)."""
        started, stop_asked, head_entered = threading.Event(), threading.Event(), threading.Event()
        shut_down, returned_after_shutdown = threading.Event(), threading.Event()

        def cycle() -> None:
            started.set()

        def head() -> HeadNews:
            head_entered.set()
            # the poll answers only once the main thread has been through APScheduler's shutdown (the event it
            # dispatches at its end); the old code never got there while a job ran, and this wait then times out
            if stop_asked.wait(10) and shut_down.wait(3):
                returned_after_shutdown.set()
            return _news_with_new_round()

        s = CycleScheduler(cycle, head, initial_interval_s=600, head_poll_s=0.05)
        s._scheduler.add_listener(lambda _event: shut_down.set(), EVENT_SCHEDULER_SHUTDOWN)
        t = threading.Thread(target=s.run_until_stopped, daemon=True)
        t.start()
        assert started.wait(5)
        assert head_entered.wait(5)  # a head poll is in flight (a stand-in for a slow request)
        s.stop()
        stop_asked.set()
        t.join(8)
        assert not t.is_alive()
        assert returned_after_shutdown.is_set()  # the precondition: the poll ended after the shutdown, not before

    def test_hung_cycle_is_left_behind_at_the_bound(self):
        """A cycle hung for 30 s: run_until_stopped(1 s) returns False within 2 s, having called on_deadline once."""
        started, release = threading.Event(), threading.Event()
        deadline_calls = []

        def cycle() -> None:
            started.set()
            release.wait(30)

        s = CycleScheduler(cycle, initial_interval_s=600)
        result: list[bool] = []
        t = threading.Thread(
            target=lambda: result.append(s.run_until_stopped(1.0, lambda: deadline_calls.append(1))), daemon=True
        )
        t.start()
        assert started.wait(5)
        stopped_at = time.monotonic()
        s.stop()
        t.join(5)
        took_s = time.monotonic() - stopped_at
        release.set()
        assert result == [False] and deadline_calls == [1] and took_s < 2.0
        assert s.running_jobs() in (["cycle"], [])

    def test_wrong_chain_in_a_cycle_halts_instead_of_retrying(self):
        """A cycle raising ChainMismatchError stops the scheduler once: halt_reason set, on_halt called, no retry."""
        calls, halts = [], []

        def cycle() -> None:
            calls.append(1)
            raise ChainMismatchError("http://node serves chain id 999, expected 31337")

        s = CycleScheduler(
            cycle, initial_interval_s=0.05, min_interval_s=0.05, halt_on=(ChainMismatchError,), on_halt=halts.append
        )
        t = threading.Thread(target=s.run_until_stopped, daemon=True)
        t.start()
        t.join(5)
        assert not t.is_alive() and len(calls) == 1 and len(halts) == 1
        assert s.halt_reason == "ChainMismatchError: http://node serves chain id 999, expected 31337"

    def test_control_calls_after_stop_are_no_ops(self):
        """run_now and poll_head_now after stop neither raise nor block (the job store is gone)."""
        s = CycleScheduler(lambda: None, _news_with_new_round, initial_interval_s=600)
        t = threading.Thread(target=s.run_until_stopped, daemon=True)
        t.start()
        s.stop()
        t.join(5)
        before = s.early_cycles
        s.run_now()
        s.poll_head_now()
        assert not t.is_alive() and s.early_cycles == before
