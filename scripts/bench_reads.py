#!/usr/bin/env python
"""Benchmark one keeper cycle's reads: Multicall3 batch (ReferenceAdapter.read_book) vs a naive web3 loop.

Starts a local anvil, deploys the reference protocol, opens N real positions (N/2 accounts x 2 markets,
every position from a real signed transaction), then for each N in --sizes:

* batched: ``adapter.read_book(keys)`` = every position + every market + every latest oracle round,
  median of --repeat runs, with JSON-RPC requests and HTTP round trips counted by the client;
* naive: ``engine.functions.getPosition(a, m).call()`` per position (plus getMarket and latestRoundData per
  market) through a default ``Web3(HTTPProvider)``; for N above --naive-sample the loop is timed on a
  sample of that many positions and extrapolated linearly (stated in the output).

Usage: .venv/bin/python scripts/bench_reads.py [--sizes 1,100,1000,10000] [--repeat 5] [--naive-sample 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from eth_account import Account
from web3 import Web3

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.dev.reference import ANVIL_KEYS, contract, deploy_protocol
from keeper.protocols.reference import F_LATEST_ROUND, ReferenceAdapter  # noqa: F401 - selector warm-up

OPEN_E6 = 1_000 * 10**6  # $1,000 collateral per position, 5x leverage


def _post(url: str, payload) -> list:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())


def open_positions(anvil: Anvil, w3: Web3, dep, n_positions: int) -> list[tuple[str, int]]:
    """Open ``n_positions`` positions from fresh accounts (two markets each), signed txs sent in batches."""
    usd = contract(w3, "MockUSD", dep.collateral)
    engine = contract(w3, "PerpEngine", dep.engine)
    n_accounts = (n_positions + 1) // 2
    accounts = [Account.create() for _ in range(n_accounts)]
    deployer = Account.from_key(ANVIL_KEYS[0])
    base = w3.eth.get_block("latest")["baseFeePerGas"]
    fee = {"maxFeePerGas": 4 * base + 10**9, "maxPriorityFeePerGas": 10**9, "chainId": dep.chain_id, "type": 2}
    anvil.request("evm_setAutomine", [False])
    dn = w3.eth.get_transaction_count(deployer.address)
    prices = {0: 3000 * 10**8, 1: 60000 * 10**8}
    setup: list[str] = []
    opens: list[str] = []
    mint_sel = usd.functions.mint(deployer.address, 1)._encode_transaction_data()[:10]
    approve_data = usd.functions.approve(dep.engine, 2**255)._encode_transaction_data()
    for i, acct in enumerate(accounts):
        anvil.request("anvil_setBalance", [acct.address, hex(10**20)])
        mint = mint_sel + acct.address[2:].lower().rjust(64, "0") + hex(4 * OPEN_E6)[2:].rjust(64, "0")
        setup.append(
            deployer.sign_transaction(
                {**fee, "nonce": dn + i, "to": dep.collateral, "data": mint, "gas": 80_000}
            ).raw_transaction.hex()
        )
        setup.append(
            acct.sign_transaction(
                {**fee, "nonce": 0, "to": dep.collateral, "data": approve_data, "gas": 80_000}
            ).raw_transaction.hex()
        )
        for k, mid in enumerate((0, 1)):
            if 2 * i + k >= n_positions:
                break
            size = 5 * OPEN_E6 * 10**20 // prices[mid]
            data = engine.functions.openPosition(mid, k == 0, size, OPEN_E6)._encode_transaction_data()
            opens.append(
                acct.sign_transaction(
                    {**fee, "nonce": 1 + k, "to": dep.engine, "data": data, "gas": 400_000}
                ).raw_transaction.hex()
            )
    for raws in (setup, opens):  # funding first: an open must never share a block with its own mint
        for start in range(0, len(raws), 500):
            batch = [
                {"jsonrpc": "2.0", "id": j, "method": "eth_sendRawTransaction", "params": ["0x" + r.removeprefix("0x")]}
                for j, r in enumerate(raws[start : start + 500])
            ]
            errors = [a for a in _post(anvil.url, batch) if "error" in a]
            if errors:
                raise RuntimeError(f"send failed: {errors[:2]}")
            anvil.request("anvil_mine", ["0x1"])
        while int(anvil.request("txpool_status")["pending"], 16):
            anvil.request("anvil_mine", ["0x1"])
    anvil.request("evm_setAutomine", [True])
    keys = [(a.address.lower(), mid) for a in accounts for mid in (0, 1)][:n_positions]
    return keys


def bench_batched(adapter: ReferenceAdapter, client: ChainClient, keys, repeat: int) -> dict:
    times, trips, reqs = [], [], []
    for _ in range(repeat):
        client.stats.reset()
        t0 = time.perf_counter()
        book = adapter.read_book(keys)
        times.append(time.perf_counter() - t0)
        trips.append(client.stats.round_trips)
        reqs.append(client.stats.requests)
    if len(book.positions) != len(keys):
        raise RuntimeError(f"read {len(book.positions)} positions of {len(keys)}")
    return {"median_s": statistics.median(times), "round_trips": max(trips), "requests": max(reqs)}


def bench_naive(url: str, dep, keys, sample: int) -> dict:
    w3 = Web3(Web3.HTTPProvider(url))  # default middleware, as a straightforward keeper would
    engine = contract(w3, "PerpEngine", dep.engine)
    feeds = {mid: contract(w3, "PriceFeed", dep.feeds[sym]) for sym, mid in dep.markets.items()}
    measured = keys[:sample]
    t0 = time.perf_counter()
    for mid in sorted(feeds):
        engine.functions.getMarket(mid).call()
        feeds[mid].functions.latestRoundData().call()
    fixed = time.perf_counter() - t0
    t0 = time.perf_counter()
    for account, mid in measured:
        engine.functions.getPosition(Web3.to_checksum_address(account), mid).call()
    per = (time.perf_counter() - t0) / len(measured)
    # eth_call + 2 x eth_chainId from the validation middleware
    # (web3's validation middleware asks for eth_chainId twice per call)
    per_call_requests = 3
    return {
        "s": fixed + per * len(keys),
        "extrapolated": len(measured) < len(keys),
        "sampled": len(measured),
        "requests": per_call_requests * (len(keys) + 2 * len(feeds)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,100,1000,10000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--naive-sample", type=int, default=300)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    anvil = Anvil.start(extra_args=["--gas-limit", "100000000"])
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 120}))
        dep = deploy_protocol(w3, ANVIL_KEYS[0], rpc_url=anvil.url)
        t0 = time.perf_counter()
        keys = open_positions(anvil, w3, dep, max(sizes))
        setup_s = time.perf_counter() - t0
        client = ChainClient.connect([anvil.url], dep.chain_id)
        adapter = ReferenceAdapter.from_deployment(client, dep)
        adapter.load_markets()
        adapter.read_book(keys[:10])  # warm-up
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.platform()}"
        )
        print(f"setup: {len(keys)} positions opened by signed txs in {setup_s:.1f} s")
        print(
            f"{'N':>6} | {'batched ms':>10} | {'round trips':>11} | {'requests':>8} | {'naive ms':>10} | "
            f"{'naive requests':>14} | {'speed-up':>8} | naive"
        )
        for n in sizes:
            b = bench_batched(adapter, client, keys[:n], args.repeat)
            nv = bench_naive(anvil.url, dep, keys[:n], args.naive_sample)
            how = f"extrapolated from {nv['sampled']}" if nv["extrapolated"] else "measured"
            print(
                f"{n:>6} | {b['median_s'] * 1e3:>10.1f} | {b['round_trips']:>11} | {b['requests']:>8} | "
                f"{nv['s'] * 1e3:>10.1f} | {nv['requests']:>14} | {nv['s'] / b['median_s']:>7.1f}x | {how}"
            )
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
