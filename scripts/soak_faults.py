"""Soak the keeper under seeded random fault schedules: does any schedule pay twice, lose a top-up or hang?

Each schedule runs real ``keeper run`` daemon processes against a real anvil with the reference protocol,
through the project's JSON-RPC fault proxy (keeper/chain/testing.py), over one crash: the trader's 20 ETH long
(3,000 entry, $15,000 collateral) sees ETH fall to $2,500, which needs exactly one top-up. On top of the crash a
schedule draws, from its own seed:

* block production: automine, or a block every 0.3-1.5 s (transactions wait in the pool);
* an RPC fault while the crash is handled: HTTP 503 or connection resets for 1-4 s, every request stalled 1-3 s,
  receipts answered null for 1-4 s, a backend 2-6 blocks behind (always, or every other answer), or the endpoint
  switched to a chain without the protocol (a reset chain: the daemon must halt, exit 1, and is restarted);
* a crash of the daemon: SIGKILL right after it logs ``action_sent``, or 0-3 s after the price drop;
* the journal at the restart: kept, deleted, or replaced by a backup taken before the crash;
* ``keeper check --execute`` started beside the daemon (it must refuse: one writer per journal);
* SIGTERM while every request stalls 3 s (the stop must finish within the configured bound).

Then the faults are healed, the daemon (restarted if it is down) is given time to settle, a new oracle round is
pushed at the crash price, and the daemon is stopped. Counted from the chain: rescues landed (``MarginAdded`` paid
by the keeper's key, or ``MarginMoved``: a lagging backend can show the wallet empty, and moving margin from the
healthy BTC short is then the planner's answer; intended: 1), duplicates (landed - 1), lost (none landed),
reverted transactions of the keeper's key, hangs (a stop that took longer than the bound + 10 s), and any secret
found in the logs.

    python scripts/soak_faults.py --schedules 200 --seed 1 --jobs 3 --out .keeper/soak.json

Needs the contracts built (``make setup``). A schedule takes 15-40 s of wall time on a 2-core machine (most of
it waiting: outages, block times, daemon start-up); ``--jobs`` runs several at once, each with its own anvil.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing.util
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from eth_account import Account
from web3 import Web3

from keeper.chain.anvil import Anvil
from keeper.chain.testing import FaultProxy
from keeper.dev.reference import ANVIL_KEYS, DevChainOps, deploy_protocol

TRADER_KEY = ANVIL_KEYS[1]
TRADER = Account.from_key(TRADER_KEY).address
CRASH_E8 = 2_500 * 10**8
SHUTDOWN_BOUND_S = 10.0
HANG_SLACK_S = 10.0


@dataclass
class Schedule:
    seed: int
    block_time_s: float | None  # None: automine
    fault: str
    fault_s: float
    lag_blocks: int
    lag_every: int
    kill: str  # none | after_action_sent | after_delay
    kill_delay_s: float
    journal: str  # kept | deleted | restored
    second_process: bool
    sigterm_stalled: bool

    @classmethod
    def draw(cls, seed: int) -> Schedule:
        rng = random.Random(seed)
        return cls(
            seed=seed,
            block_time_s=None if rng.random() < 0.5 else round(rng.uniform(0.3, 1.5), 2),
            fault=rng.choice(["none", "503", "reset", "stall", "null_receipts", "lag", "lag_alternate", "reset_chain"]),
            fault_s=round(rng.uniform(1.0, 4.0), 2),
            lag_blocks=rng.randint(2, 6),
            lag_every=1,
            kill=rng.choice(["none", "none", "after_action_sent", "after_delay"]),
            kill_delay_s=round(rng.uniform(0.0, 3.0), 2),
            journal=rng.choice(["kept", "kept", "deleted", "restored"]),
            second_process=rng.random() < 0.15,
            sigterm_stalled=rng.random() < 0.2,
        )


@dataclass
class Outcome:
    schedule: Schedule
    landed: int = 0
    moves: int = 0
    reverted: int = 0
    hang: bool = False
    stop_s: float = 0.0
    halted_on_reset: bool | None = None
    second_refused: bool | None = None
    secrets: list[str] = field(default_factory=list)
    error: str | None = None
    kept: str | None = None  # where a bad schedule's logs were kept

    @property
    def duplicated(self) -> int:
        return max(0, self.landed - 1)

    @property
    def lost(self) -> int:
        return 1 if self.landed == 0 else 0


CONFIG = """
[chain]
rpc_urls = ["{rpc}"]
chain_id = 31337

[protocol]
deployment = "{deployment}"

[[accounts]]
address = "{trader}"
mode = "protect"

[risk]
check_interval_min_s = 1.0

[limits]
max_top_up_usd = 50000
max_per_day_usd = 200000

[schedule]
head_poll_s = 0.2
initial_interval_s = 2.0
shutdown_timeout_s = {shutdown}

[journal]
path = "{journal}"

[http]
port = 0

[log]
format = "json"
"""


class Soak:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.anvil = Anvil.start()
        self.blank = Anvil.start()  # a chain without the protocol: what a reset chain looks like
        w3 = Web3(Web3.HTTPProvider(self.anvil.url, request_kwargs={"timeout": 30}))
        self.deployment = deploy_protocol(w3, ANVIL_KEYS[0], rpc_url=self.anvil.url)
        self.ops = DevChainOps(w3, self.deployment, ANVIL_KEYS[0])
        self.w3 = w3
        eth, btc, reserve = 15_000 * 10**6, 60_000 * 10**6, 30_000 * 10**6
        self.ops.mint(TRADER, eth + btc + reserve)
        self.ops.approve_engine(TRADER_KEY)
        self.ops.open_position(TRADER_KEY, "ETH", True, 20 * 10**18, eth)
        self.ops.open_position(TRADER_KEY, "BTC", False, 2 * 10**18, btc)
        self.deployment_path = self.deployment.save(workdir / "deployment.json")
        self.snapshot = self.anvil.request("evm_snapshot")
        self._ticks = 0  # waits polled while settling (an empty block every 10 on an automine chain)

    def close(self) -> None:
        self.anvil.stop()
        self.blank.stop()

    def reset(self) -> None:
        self.anvil.request("anvil_dropAllTransactions")  # the pool survives evm_revert
        self.anvil.request("evm_revert", [self.snapshot])
        self.snapshot = self.anvil.request("evm_snapshot")
        self.anvil.request("evm_setAutomine", [True])
        self.ops.reset_nonces()

    # ---- one schedule --------------------------------------------------------------------------------

    def run(self, sched: Schedule) -> Outcome:
        out = Outcome(sched)
        self.reset()
        start_block = self.w3.eth.block_number
        run_dir = Path(tempfile.mkdtemp(prefix=f"s{sched.seed}-", dir=self.workdir))
        journal = run_dir / "journal.sqlite"
        logs: list[Path] = []
        with FaultProxy(self.anvil.url) as proxy:
            cfg = run_dir / "keeper.toml"
            cfg.write_text(
                CONFIG.format(
                    rpc=proxy.url,
                    deployment=self.deployment_path,
                    trader=TRADER,
                    journal=journal,
                    shutdown=SHUTDOWN_BOUND_S,
                )
            )
            miner = _Miner(self.anvil, sched.block_time_s)
            daemon = self._start(cfg, run_dir, logs)
            try:
                _wait(lambda: _events(logs[-1], "cycle_finished"), 60, "first cycle")
                _backup(journal, run_dir / "backup.sqlite")  # an operator's backup, taken before the crash
                self.ops.push_price("ETH", CRASH_E8, wait=sched.block_time_s is None)
                self._fault(proxy, sched, out, daemon, logs)
                if sched.second_process:
                    out.second_refused = self._second_process(cfg)
                daemon = self._crash(sched, daemon, cfg, run_dir, logs, journal)
                self._heal(proxy)
                if daemon.poll() is not None:
                    daemon = self._start(cfg, run_dir, logs)
                # a real chain keeps producing blocks (the daemon advances its transactions once per block); with
                # automine nothing comes unless someone sends, so the soak mines an empty block now and then
                _wait(
                    lambda: (self._rescues(start_block) and not _open_intents(journal)) or self._tick(sched),
                    90,
                    "the rescue final",
                )
                rounds = len(_events(logs[-1], "cycle_finished"))
                self.ops.push_price("ETH", CRASH_E8, wait=sched.block_time_s is None)  # a new round: one more cycle
                _wait(lambda: len(_events(logs[-1], "cycle_finished")) > rounds, 60, "a cycle after the heal")
                if sched.sigterm_stalled:
                    proxy.delay_s = 3.0
            except AssertionError as exc:
                out.error = str(exc)
            finally:
                out.stop_s, out.hang = _stop(daemon)
                proxy.delay_s = 0.0
                miner.stop()
        out.moves = len(self.ops.engine.events.MarginMoved().get_logs(from_block=start_block))
        out.landed = len(self._margin_added(start_block)) + out.moves
        out.reverted = self._reverted(start_block)
        for path in logs:
            text = path.read_text(errors="replace").lower()
            if TRADER_KEY.lower().removeprefix("0x") in text:
                out.secrets.append(path.name)
        if (out.duplicated, out.lost, out.hang, out.reverted, out.secrets) == (0, 0, False, 0, []):
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            out.kept = str(run_dir)  # logs and journal of a bad schedule, for the post-mortem
        return out

    def _start(self, cfg: Path, run_dir: Path, logs: list[Path]) -> subprocess.Popen:
        log_path = run_dir / f"run{len(logs) + 1}.log"
        logs.append(log_path)
        env = {**os.environ, "KEEPER_PRIVATE_KEY": TRADER_KEY}
        with open(log_path, "w") as sink:
            return subprocess.Popen(
                [sys.executable, "-m", "keeper", "run", "--config", str(cfg)],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _fault(self, proxy: FaultProxy, sched: Schedule, out: Outcome, daemon, logs: list[Path]) -> None:
        fault = sched.fault
        if fault in ("503", "reset"):
            proxy.mode = fault
            time.sleep(sched.fault_s)  # the outage lasts this long (the point of the schedule)
            proxy.mode = "pass"
        elif fault == "stall":
            proxy.delay_s = round(1.0 + sched.fault_s / 2, 2)
            time.sleep(sched.fault_s)
            proxy.delay_s = 0.0
        elif fault == "null_receipts":
            proxy.null_methods = {"eth_getTransactionReceipt", "eth_getTransactionByHash"}
            time.sleep(sched.fault_s)
            proxy.null_methods = set()
        elif fault in ("lag", "lag_alternate"):
            proxy.lag_blocks, proxy.lag_every = sched.lag_blocks, 2 if fault == "lag_alternate" else 1
        elif fault == "reset_chain":
            proxy.serve(self.blank.url)
            try:
                daemon.wait(30)
                out.halted_on_reset = daemon.returncode == 1
            except subprocess.TimeoutExpired:
                out.halted_on_reset = False
            proxy.serve(self.anvil.url)

    def _second_process(self, cfg: Path) -> bool:
        env = {**os.environ, "KEEPER_PRIVATE_KEY": TRADER_KEY}
        done = subprocess.run(
            [sys.executable, "-m", "keeper", "check", "--config", str(cfg), "--execute", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        return done.returncode != 0 and "in use by another sending keeper" in done.stderr

    def _crash(self, sched: Schedule, daemon, cfg: Path, run_dir: Path, logs: list[Path], journal: Path):
        if sched.kill == "none" or daemon.poll() is not None:
            return daemon
        if sched.kill == "after_action_sent":
            try:
                _wait(lambda: _events(logs[-1], "action_sent"), 20, "action_sent")
            except AssertionError:
                pass  # the outage kept it from sending: kill it anyway
        else:
            time.sleep(sched.kill_delay_s)  # a kill at a random moment of the crash (the point of the schedule)
        daemon.kill()
        daemon.wait(10)
        if sched.journal != "kept":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{journal}{suffix}").unlink(missing_ok=True)
            if sched.journal == "restored":
                shutil.copy(run_dir / "backup.sqlite", journal)
        return self._start(cfg, run_dir, logs)

    @staticmethod
    def _heal(proxy: FaultProxy) -> None:
        proxy.mode, proxy.delay_s, proxy.null_methods, proxy.lag_blocks = "pass", 0.0, set(), 0

    def _margin_added(self, start_block: int) -> list:
        logs = self.ops.engine.events.MarginAdded().get_logs(from_block=start_block)
        return [lg for lg in logs if lg["args"]["payer"] == TRADER]

    def _tick(self, sched: Schedule) -> bool:
        if sched.block_time_s is None:
            self._ticks += 1
            if self._ticks % 10 == 0:  # every ~1 s of waiting
                self.anvil.request("evm_mine", [])
        return False

    def _rescues(self, start_block: int) -> int:
        moved = self.ops.engine.events.MarginMoved().get_logs(from_block=start_block)
        return len(self._margin_added(start_block)) + len(moved)

    def _reverted(self, start_block: int) -> int:
        n = 0
        for number in range(start_block + 1, self.w3.eth.block_number + 1):
            block = self.w3.eth.get_block(number, full_transactions=True)
            for tx in block["transactions"]:
                if tx["from"] == TRADER and self.w3.eth.get_transaction_receipt(tx["hash"])["status"] == 0:
                    n += 1
        return n


class _Miner:
    """Automine, or a block every ``block_time_s`` with transactions waiting in the pool until then."""

    def __init__(self, anvil: Anvil, block_time_s: float | None) -> None:
        self._stop = threading.Event()
        self._thread = None
        if block_time_s is not None:
            anvil.request("evm_setAutomine", [False])

            def mine() -> None:
                while not self._stop.wait(block_time_s):
                    anvil.request("evm_mine", [])

            self._thread = threading.Thread(target=mine, daemon=True)
            self._thread.start()
        self._anvil = anvil

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._anvil.request("evm_setAutomine", [True])


def _backup(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)


def _open_intents(journal: Path) -> int:
    if not journal.exists():
        return 0
    with sqlite3.connect(journal) as c:
        return int(
            c.execute("SELECT COUNT(*) FROM intents WHERE state IN ('intent','signed','sent','mined')").fetchone()[0]
        )


def _events(path: Path, event: str) -> list[str]:
    if not path.exists():
        return []
    return [line for line in path.read_text(errors="replace").splitlines() if f'"event": "{event}"' in line]


def _wait(probe, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout_s:.0f} s")


def _stop(daemon: subprocess.Popen) -> tuple[float, bool]:
    """SIGTERM and time the exit; a stop slower than the bound + slack is a hang (then SIGKILL)."""
    if daemon.poll() is not None:
        return 0.0, False
    t0 = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(SHUTDOWN_BOUND_S + HANG_SLACK_S)
        return time.monotonic() - t0, False
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(10)
        return time.monotonic() - t0, True


_SOAK: Soak | None = None  # one per worker process (its own anvils)


def _worker_init() -> None:
    global _SOAK
    _SOAK = Soak(Path(tempfile.mkdtemp(prefix="keeper-soak-")))
    # a pool worker leaves through multiprocessing's exit path, which runs Finalize hooks but not atexit
    multiprocessing.util.Finalize(None, _SOAK.close, exitpriority=10)


def _worker_run(seed: int) -> Outcome:
    assert _SOAK is not None
    return _SOAK.run(Schedule.draw(seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schedules", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1, help="schedule i uses seed + i")
    ap.add_argument("--jobs", type=int, default=1, help="schedules run at once (each worker has its own anvil)")
    ap.add_argument("--out", type=Path, default=None, help="write every schedule and its outcome as JSON here")
    args = ap.parse_args(argv)
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    seeds = [args.seed + i for i in range(args.schedules)]
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_worker_init) as pool:
        for i, o in enumerate(pool.map(_worker_run, seeds)):
            outcomes.append(o)
            sched = o.schedule
            flag = "" if (o.duplicated, o.lost, o.hang, o.reverted, o.secrets) == (0, 0, False, 0, []) else "  <-- "
            print(
                f"[{i + 1}/{args.schedules}] seed={sched.seed} fault={sched.fault} kill={sched.kill}"
                f" journal={sched.journal} blocks={sched.block_time_s or 'auto'}: landed={o.landed}"
                f" reverted={o.reverted} stop={o.stop_s:.1f}s{' HANG' if o.hang else ''}"
                f"{' error=' + o.error if o.error else ''}{flag}",
                flush=True,
            )
    summary = {
        "schedules": len(outcomes),
        "top_ups_intended": len(outcomes),
        "landed": sum(o.landed for o in outcomes),
        "duplicated": sum(o.duplicated for o in outcomes),
        "lost": sum(o.lost for o in outcomes),
        "hangs": sum(o.hang for o in outcomes),
        "reverted_transactions": sum(o.reverted for o in outcomes),
        "margin_moves": sum(o.moves for o in outcomes),
        "secrets_in_logs": sum(bool(o.secrets) for o in outcomes),
        "schedules_not_settled_in_90_s": sum(o.error is not None for o in outcomes),
        "reset_chain_halts": f"{sum(o.halted_on_reset is True for o in outcomes)}"
        f"/{sum(o.halted_on_reset is not None for o in outcomes)}",
        "second_process_refused": f"{sum(o.second_refused is True for o in outcomes)}"
        f"/{sum(o.second_refused is not None for o in outcomes)}",
        "max_stop_s": round(max((o.stop_s for o in outcomes), default=0.0), 2),
        "wall_s": round(time.monotonic() - t0, 1),
        "seed": args.seed,
        "jobs": args.jobs,
    }
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [{**asdict(o.schedule), **{k: v for k, v in asdict(o).items() if k != "schedule"}} for o in outcomes]
        args.out.write_text(json.dumps({"summary": summary, "schedules": rows}, indent=2))
    bad = summary["duplicated"] or summary["lost"] or summary["hangs"] or summary["secrets_in_logs"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
