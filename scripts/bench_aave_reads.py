#!/usr/bin/env python
"""Benchmark one keeper cycle on real Aave v3: read N accounts (2-3 reserves each) + exact arithmetic.

Starts a local anvil, deploys Aave v3 1.19.3 (keeper.dev.aave_v3), opens three TEMPLATE accounts by real
signed transactions (WETH+WBTC / USDC; WETH / USDC+DAI; e-mode USDC / DAI), then creates N-3 more accounts by
copying each template's storage with ``anvil_setStorageAt``: the Pool's user-configuration and e-mode slots
and the aToken / variable-debt-token ``_userState`` slots (found by probing the template's mapping keys).
The copies are verified through the contracts' own views: every account's ``getUserAccountData`` read in
the batch must equal its template's, and the keeper's recomputation must equal it to the wei.

For each N in --sizes: ``AaveV3Adapter.read_accounts`` (two Multicall3 passes at one block; HTTP round trips
counted by the client), then ``account_data`` for every account (the pure arithmetic), median of --repeat;
then the same read without the contract's ``getUserAccountData`` (``cross_check=False``) plus the arithmetic,
then the daemon's risk + plan on that read (``decide_accounts``).
Naive: per account ``getUserAccountData``, ``getUserConfiguration``, ``getUserEMode`` and the balances of
its reserves through web3 contract objects, timed on --naive-sample accounts and extrapolated linearly.

The daemon's whole cycle: ``AccountKeeperService`` from a configuration naming the N accounts (protect mode,
the keeper's key holding 1M USDC, $5,000 per transaction, $1M a day), JSON logs at info to a file, one
warm-up cycle (it reads the sources' round history once, and every account), then --repeat cycles of
``cycle(execute=False)``, each after a new (empty) block, twice: with ``full_read_every_s = 0`` (every account
read every cycle) and with the default (the steady state: only the accounts the logs name, the ones the last
decision did not hold and the stable-debt holders are read again; ``accounts read`` says how many)
(what ``keeper check`` runs: read, estimates, risk, plan, explain, alerts; nothing sent). Reported: the
median wall time, this process's CPU time, anvil's CPU time (from /proc), round trips, log lines, and where
the time went (HTTP round trips, JSON encode/decode, Multicall3 ABI encode/decode, the adapter's read,
the decision, the explanation lines and the alerts). --templates picks which template accounts the book
copies (default all three: the e-mode stablecoin account is endangered under the policy's fallback
volatility and stress gap, so a third of the book needs an action or an alert).

Usage: .venv/bin/python scripts/bench_aave_reads.py [--sizes 1000,10000] [--repeat 3] [--naive-sample 100]
       [--templates 0,1,2] [--no-cycle]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from eth_utils import keccak, to_checksum_address
from web3 import Web3

from keeper.accounts.aave_v3 import AaveRules, account_data
from keeper.chain import multicall as multicall_module
from keeper.chain import rpc as rpc_module
from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.decision import AccountBookState, decide_accounts
from keeper.dev.aave_v3 import AaveOps, SeedAccount, aave_artifact, deploy_aave
from keeper.dev.reference import ANVIL_KEYS
from keeper.planner import PlanLimits
from keeper.protocols.aave_v3 import AaveV3Adapter
from keeper.risk.policy import RiskPolicy
from keeper.runtime import accounts_service as service_module
from keeper.runtime.accounts_service import AccountKeeperService
from keeper.runtime.config import load_config
from keeper.runtime.logging import configure_logging

TEMPLATES = (
    SeedAccount((("WETH", 10.0), ("WBTC", 0.5)), (("USDC", 30_000.0),)),
    SeedAccount((("WETH", 10.0),), (("USDC", 10_000.0), ("DAI", 8_000.0))),
    SeedAccount((("USDC", 100_000.0),), (("DAI", 90_000.0),), emode=1),
)


def _slot(user: str, index: int) -> bytes:
    return keccak(bytes(12) + bytes.fromhex(user[2:]) + index.to_bytes(32, "big"))


def mapping_slots(anvil: Anvil, contract: str, user: str, max_index: int = 200) -> list[int]:
    """Indices i where storage[keccak(user . i)] of ``contract`` is non-zero (the user's mapping entries)."""
    found = []
    for i in range(max_index):
        value = anvil.request("eth_getStorageAt", [contract, "0x" + _slot(user, i).hex(), "latest"])
        if int(value, 16):
            found.append(i)
    return found


def clone_accounts(anvil: Anvil, client: ChainClient, templates: list[str], contracts: list[str], n: int) -> list[str]:
    """``n`` new addresses, each a storage copy of a template (round robin) in every contract given."""
    plan = {}
    for t in templates:
        plan[t] = [
            (c, i, anvil.request("eth_getStorageAt", [c, "0x" + _slot(t, i).hex(), "latest"]))
            for c in contracts
            for i in mapping_slots(anvil, c, t)
        ]
    users = []
    writes: list[tuple[str, list]] = []
    for k in range(n):
        template = templates[k % len(templates)]
        user = to_checksum_address("0x" + keccak(b"bench" + k.to_bytes(8, "big"))[:20].hex())
        writes += [("anvil_setStorageAt", [c, "0x" + _slot(user, i).hex(), v]) for c, i, v in plan[template]]
        users.append(user)
    for j in range(0, len(writes), 2_000):
        client.batch(writes[j : j + 2_000])
    return users


POLICY = RiskPolicy()
LIMITS = PlanLimits.from_policy(POLICY, max_per_tx_e6=5_000 * 10**6, max_per_day_e6=10**12)


def decide_lean(snap):
    """The daemon's decision over one read (no price history: the policy's fallbacks), a USDC wallet."""
    rules = AaveRules(snap.accounts, snap.market)
    usdc = next(a for a, r in snap.market.reserves.items() if r.config.decimals == 6)
    return decide_accounts(
        [rules.margin_account(u) for u in snap.accounts],
        rules,
        AccountBookState(wallet={usdc: 10**12}),
        prices_e8=snap.market.prices_e8,
        sigmas_annual={},
        policy=POLICY,
        limits=LIMITS,
        check_interval_s=60.0,
    )


KEEPER_KEY = ANVIL_KEYS[2]


class Split:
    """Wall time spent inside chosen functions while installed (the bench's own instrumentation)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[Any, str, bool, Any]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        own = name in vars(owner)
        inner: Callable[..., Any] = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                self.wall[label] += time.perf_counter() - t

        self._undo.append((owner, name, own, vars(owner).get(name)))
        setattr(owner, name, timed)

    def remove(self) -> None:
        for owner, name, own, original in reversed(self._undo):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._undo.clear()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_cycles(
    anvil: Anvil, provider: str, users: list[str], repeat: int, workdir: Path, full_read_every_s: int
) -> dict[str, Any]:
    """``repeat`` cycles of the daemon on ``users`` (after one warm-up, a full read), each after one new block
    (no transaction in it): medians and the split of the last. ``full_read_every_s = 0``: every cycle reads
    every account; else the steady state reads only the accounts the logs name (none here)."""
    accounts = "".join(f'[[accounts]]\naddress = "{u}"\nmode = "protect"\n' for u in users)
    (workdir / "keeper.toml").write_text(
        f"""[chain]
rpc_urls = ["{anvil.url}"]
chain_id = 31337

[protocol]
name = "aave-v3"
provider = "{provider}"
full_read_every_s = {full_read_every_s}

{accounts}
[limits]
max_top_up_usd = 5000
max_per_day_usd = 1000000

[journal]
path = "{workdir / "journal.sqlite"}"

[http]
enabled = false
"""
    )
    config = load_config(workdir / "keeper.toml", env={"KEEPER_PRIVATE_KEY": KEEPER_KEY}, dotenv_path=None)
    log_path = workdir / "keeper.log"
    with log_path.open("w") as log_file:
        configure_logging("json", "info", stream=log_file)
        service = cast(AccountKeeperService, AccountKeeperService.from_config(config, execute=True, send_alerts=False))
        wire = SimpleNamespace(dumps=json.dumps, loads=json.loads)  # the client's JSON alone (not the logs')
        rpc_module.json = wire  # type: ignore[assignment]
        try:
            service.start()
            service.cycle(execute=False)  # warm-up: the sources' round history is read once
            walls, cpus, nodes, trips, lines, splits, fresh = [], [], [], [], [], [], []
            for _ in range(repeat):
                anvil.request("evm_mine", [])  # a new block: the steady state reads at a new head each cycle
                split = Split()
                adapter = service.accounts_adapter
                split.wrap(rpc_module.HttpTransport, "send", "HTTP round trips (node + transfer)")
                split.wrap(wire, "dumps", "JSON encode")
                split.wrap(wire, "loads", "JSON decode")
                split.wrap(multicall_module, "encode_aggregate3", "Multicall3 ABI encode")
                split.wrap(multicall_module, "decode_aggregate3", "Multicall3 ABI decode")
                split.wrap(adapter, "read_book", "read_book (all of the read)")
                split.wrap(service, "estimate_assets", "estimates (sigma, gaps, correlation)")
                split.wrap(service_module, "decide_accounts", "decide_accounts (risk + plan)")
                split.wrap(service, "_explain_accounts", "account_decision lines")
                split.wrap(service, "_alert", "alerts")
                log_file.flush()
                before = log_path.stat().st_size
                node0, cpu0, t0 = process_cpu_s(anvil.pid), time.process_time(), time.perf_counter()
                report = service.cycle(execute=False)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - cpu0)
                nodes.append(process_cpu_s(anvil.pid) - node0)
                split.remove()
                trips.append(report.round_trips)
                assert report.book is not None
                read = report.book.accounts_read
                fresh.append(len(report.book.accounts) if read is None else read)
                log_file.flush()
                with log_path.open("rb") as f:
                    f.seek(before)
                    lines.append(f.read().count(b"\n"))
                splits.append(split.wall)
        finally:
            rpc_module.json = json
            service.close()
            configure_logging("pretty", "info")
    assert report.outcome is not None
    last = splits[-1]
    return {
        "wall": statistics.median(walls),
        "walls": walls,
        "cpu": statistics.median(cpus),
        "node_cpu": statistics.median(nodes),
        "trips": statistics.median(trips),
        "accounts_read": statistics.median(fresh),
        "lines": statistics.median(lines),
        "endangered": sum(d.band == "trigger" for d in report.outcome.decisions),
        "actions": len(report.outcome.actions),
        "split": {k: statistics.median(sp.get(k, 0.0) for sp in splits) for k in last},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--naive-sample", type=int, default=100, help="accounts the naive loop reads (0: skip it)")
    ap.add_argument("--templates", default="0,1,2", help="which template accounts the book copies (0, 1, 2)")
    ap.add_argument("--no-cycle", action="store_true", help="skip the daemon's whole cycle")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    chosen = [int(i) for i in args.templates.split(",")]
    anvil = Anvil.start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        ops = AaveOps(w3, deploy_aave(w3, rpc_url=anvil.url))
        ops.provide_liquidity(ANVIL_KEYS[9])
        keys = ANVIL_KEYS[3 : 3 + len(TEMPLATES)]
        for key, t in zip(keys, TEMPLATES, strict=True):
            ops.open_account(key, t)
        templates = [w3.eth.account.from_key(k).address for k in keys]
        templates = [templates[i] for i in chosen]
        d = ops.deployment
        ops.mint("USDC", w3.eth.account.from_key(KEEPER_KEY).address, 10**12)  # the daemon's wallet: 1M USDC
        contracts = [d.pool, *d.a_tokens.values(), *d.variable_debt_tokens.values()]
        client = ChainClient.connect(anvil.url)
        t0 = time.perf_counter()
        clones = clone_accounts(anvil, client, templates, contracts, max(sizes) - len(templates))
        print(f"cloned {len(clones)} accounts by anvil_setStorageAt in {time.perf_counter() - t0:.1f} s")
        users_all = templates + clones
        template_of = {u: templates[i % len(templates)] for i, u in enumerate(clones)}
        adapter = AaveV3Adapter(client, d.provider, full_read_every_s=0)  # every read in full (the read's cost)
        adapter.load_reserves()
        print(
            f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        for n in sizes:
            users = users_all[:n]
            reads, computes, trips = [], [], []
            for _ in range(args.repeat):
                client.stats.reset()
                t = time.perf_counter()
                snap = adapter.read_accounts(users)
                reads.append(time.perf_counter() - t)
                trips.append(client.stats.round_trips)
                t = time.perf_counter()
                mine = {u: account_data(a, snap.market) for u, a in snap.accounts.items()}
                computes.append(time.perf_counter() - t)
            assert len(snap.accounts) == n and not snap.failed
            mismatches = sum(mine[u].as_tuple() != snap.onchain[u].as_tuple() for u in users)
            bad_clones = sum(snap.onchain[u] != snap.onchain[template_of[u]] for u in users if u in template_of)
            print(
                f"N={n}: batched read median {statistics.median(reads) * 1e3:.0f} ms, round trips "
                f"{statistics.median(trips):.0f}; exact arithmetic {statistics.median(computes) * 1e3:.0f} ms; "
                f"keeper != contract: {mismatches}; clone != template: {bad_clones}"
            )
            lean, lean_trips = [], []
            for _ in range(args.repeat):  # production read: no getUserAccountData (the keeper computes it)
                client.stats.reset()
                t = time.perf_counter()
                lean_snap = adapter.read_accounts(users, cross_check=False)
                {u: account_data(a, lean_snap.market) for u, a in lean_snap.accounts.items()}
                lean.append(time.perf_counter() - t)
                lean_trips.append(client.stats.round_trips)
            print(
                f"N={n}: read without getUserAccountData + exact arithmetic median "
                f"{statistics.median(lean) * 1e3:.0f} ms, round trips {statistics.median(lean_trips):.0f}"
            )
            decides = []
            for _ in range(args.repeat):  # risk + plan: the daemon's decide_accounts on that read
                t = time.perf_counter()
                outcome = decide_lean(lean_snap)
                decides.append(time.perf_counter() - t)
            endangered = sum(dd.band == "trigger" for dd in outcome.decisions)
            print(
                f"N={n}: risk + plan (decide_accounts, wallet of 1M USDC) median "
                f"{statistics.median(decides) * 1e3:.0f} ms ({endangered} endangered); read + decide "
                f"{(statistics.median(lean) + statistics.median(decides)) * 1e3:.0f} ms"
            )
            if args.no_cycle:
                continue
            for every_s, what in ((0, "full read every cycle"), (300, "incremental (steady state)")):
                with tempfile.TemporaryDirectory(prefix="bench-aave-") as tmp:
                    c = daemon_cycles(anvil, d.provider, users, args.repeat, Path(tmp), every_s)
                walls = ", ".join(f"{w * 1e3:.0f}" for w in c["walls"])
                print(
                    f"N={n}: daemon cycle, {what} (full_read_every_s = {every_s}; AccountKeeperService.cycle, check "
                    f"mode) median {c['wall'] * 1e3:.0f} ms wall (runs {walls}), this process {c['cpu'] * 1e3:.0f} "
                    f"ms CPU, anvil {c['node_cpu'] * 1e3:.0f} ms CPU; {c['trips']:.0f} round trips; "
                    f"{c['accounts_read']:.0f} accounts read; {c['endangered']} endangered, {c['actions']} actions "
                    f"and alerts; {c['lines']:.0f} log lines"
                )
                for label, wall in c["split"].items():
                    print(f"    {label:40s} {wall * 1e3:7.0f} ms")
        if args.naive_sample <= 0:  # the naive loop skipped
            return
        # naive loop on a sample
        pool = w3.eth.contract(address=d.pool, abi=aave_artifact("Pool")["abi"])
        erc = aave_artifact("AToken")["abi"]
        tokens = {
            a: w3.eth.contract(address=a, abi=erc) for a in [*d.a_tokens.values(), *d.variable_debt_tokens.values()]
        }
        sample = users_all[: args.naive_sample]
        t = time.perf_counter()
        for u in sample:
            pool.functions.getUserAccountData(u).call()
            cfg = pool.functions.getUserConfiguration(u).call()[0]
            pool.functions.getUserEMode(u).call()
            for i, a in enumerate(d.a_tokens.values()):
                if cfg >> (2 * i + 1) & 1:
                    tokens[a].functions.scaledBalanceOf(u).call()
            for i, v in enumerate(d.variable_debt_tokens.values()):
                if cfg >> (2 * i) & 1:
                    tokens[v].functions.scaledBalanceOf(u).call()
        per = (time.perf_counter() - t) / len(sample)
        for n in sizes:
            print(
                f"N={n}: naive web3 loop ~{per * n:.1f} s (extrapolated from {len(sample)} accounts, "
                f"{per * 1e3:.1f} ms per account)"
            )
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
