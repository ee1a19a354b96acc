#!/usr/bin/env python
"""Benchmark the keeper's read of Perp v2 accounts: PerpV2Adapter.read (one Multicall3 read) on real Curie.

Starts a local anvil, deploys Curie 2.8.4 from npm (keeper.dev.perp_v2), seeds the maker and the default
book, then opens --traders fresh cross-margin taker accounts (each: deposit, an ETH position and a BTC
position the other way, alternating — every one a real signed EIP-1559 transaction). The watched list is
those accounts repeated --replicate times (``--traders 1000 --replicate 1`` = 1,000 distinct accounts; ``--traders 100
--replicate 10`` = 100 real accounts read 10 times each: the same calls and gas, stated in the output).

Per read: every account's getAccountInfo + pending funding per market, getPnlAndPendingFee, getBaseTokens,
hasOrder, vault balance, free collateral, the contract's account value and requirement (11 calls with 2
markets) and every market's mark, index, TWAP, round, market info, pool slot0 and liquidity. Reported:
median wall time of --repeat reads, JSON-RPC round trips and requests per read (counted by the client), and
whether the keeper's numbers equal the contract's for every account.

Usage: .venv/bin/python scripts/bench_perp_reads.py [--traders 1000] [--replicate 1] [--repeat 5]
(reads are timed twice: with the contract's own account value and requirement, and with the keeper's inputs only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from eth_account import Account
from web3 import Web3

from keeper.chain.rpc import ChainClient
from keeper.dev.perp_v2 import DEFAULT_PERP_MARKETS, MAX_UINT, start_perp_devchain
from keeper.dev.reference import Sender
from keeper.protocols.perp_v2 import PerpV2Adapter


def _revert_reason(w3: Web3) -> str:
    """Why the latest block's transaction reverted: replayed as an eth_call on the block before."""
    block = w3.eth.get_block("latest", full_transactions=True)
    tx = block["transactions"][-1]
    try:
        w3.eth.call({"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}, block["number"] - 1)
    except Exception as exc:  # noqa: BLE001 - report whatever the node says
        return str(exc)
    return "replay did not revert (the revert depended on the block's time)"


def seed_accounts(anvil, ops, n: int) -> list[str]:
    """``n`` fresh traders: 2,000 USDC each, $4,000 of ETH one way and $4,000 of BTC the other (alternating)."""
    w3 = ops.w3
    keys = [Web3.keccak(text=f"perp-bench-{i}").hex() for i in range(n)]
    accounts = [Account.from_key(k) for k in keys]
    for a in accounts:
        anvil.request("anvil_setBalance", [a.address, hex(10**20)])
    minter = Sender(w3, ops.deployer_key)
    for a in accounts:
        minter.transact(ops.usdc.functions.mint(a.address, 2_000 * 10**6), gas=120_000)
    minter.wait()
    eth, btc = ops.bases["ETH"].address, ops.bases["BTC"].address
    for i, k in enumerate(keys):
        if i % 50 == 0:  # fresh index rounds: ChainlinkPriceFeedV3 times out 2,400 s after the last one
            for spec in DEFAULT_PERP_MARKETS:
                ops.push_index(spec.symbol, spec.price)
        long_eth = i % 2 == 0  # alternate sides so the pools stay near the index (EX_OPB, EX_OPLAS)
        s = Sender(w3, k)
        s.transact(ops.usdc.functions.approve(ops.vault.address, MAX_UINT), gas=80_000)
        s.transact(ops.vault.functions.deposit(ops.usdc.address, 2_000 * 10**6), gas=400_000)
        for base, is_long in ((eth, long_eth), (btc, not long_eth)):  # long: exact quote in; short: exact out
            params = (base, not is_long, is_long, 4_000 * 10**18, 0, MAX_UINT, 0, b"\0" * 32)
            s.transact(ops.ch.functions.openPosition(params), gas=2_000_000)
        try:
            s.wait()
        except RuntimeError:
            print(f"account {i}: {_revert_reason(w3)}", file=sys.stderr)
            raise
        if (i + 1) % 100 == 0:
            print(f"seeded {i + 1}/{n} accounts", file=sys.stderr)
    return [a.address for a in accounts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traders", type=int, default=1000, help="fresh accounts to open (default 1000)")
    ap.add_argument("--replicate", type=int, default=1, help="times each account appears in the watched list")
    ap.add_argument("--repeat", type=int, default=5, help="reads to time (median reported)")
    args = ap.parse_args()
    if args.traders < 1 or args.replicate < 1 or args.repeat < 1:
        ap.error("--traders, --replicate and --repeat must be >= 1")
    t0 = time.perf_counter()
    anvil, ops = start_perp_devchain(seed=True)
    try:
        traders = seed_accounts(anvil, ops, args.traders)
        seed_s = time.perf_counter() - t0
        client = ChainClient.connect(anvil.url, 31337, timeout_s=300.0)
        adapter = PerpV2Adapter(client, ops.deployment)
        watched = traders * args.replicate
        n_markets = len(ops.deployment.markets)
        modes = {}
        for cross_check in (True, False):
            times, trips, requests = [], [], []
            snap = None
            for _ in range(args.repeat):
                client.stats.reset()
                start = time.perf_counter()
                snap = adapter.read(watched, cross_check=cross_check)
                times.append(time.perf_counter() - start)
                trips.append(client.stats.round_trips)
                requests.append(client.stats.requests)
            assert snap is not None
            mode = {
                "calls_per_read": 5 + n_markets * 8 + len(watched) * ((7 if cross_check else 3) + 2 * n_markets),
                "median_ms": round(statistics.median(times) * 1000, 1),
                "min_ms": round(min(times) * 1000, 1),
                "round_trips": max(trips),
                "json_rpc_requests": max(requests),
                "failed": len(snap.failed),
            }
            if cross_check:
                mode["keeper_equals_contract"] = all(
                    snap.margin(t).account_value_x18 == s.contract_account_value_x18
                    and snap.margin(t).requirement_x18 == s.contract_requirement_x18
                    for t, s in snap.traders.items()
                )
            modes["with_contract_cross_check" if cross_check else "keeper_inputs_only"] = mode
        print(
            json.dumps(
                {
                    "distinct_accounts": args.traders,
                    "replicate": args.replicate,
                    "accounts_read": len(watched),
                    **modes,
                    "seed_s": round(seed_s, 1),
                    "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
                    f"{platform.python_version()}",
                },
                indent=2,
            )
        )
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
