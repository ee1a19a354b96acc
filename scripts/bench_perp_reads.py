#!/usr/bin/env python
"""Benchmark the keeper's read of Perp v2 accounts (PerpV2Adapter.read and .read_book) on real Curie.

Starts a local anvil, deploys Curie 2.8.4 from npm (keeper.dev.perp_v2), seeds the maker and the default
book, then opens --traders fresh cross-margin taker accounts (each: 2,000 USDC deposited, $4,000 of ETH one
way and $4,000 of BTC the other, sides alternating so the pools stay at the index — every one a real signed
EIP-1559 transaction). The watched list is those accounts repeated --replicate times (``--traders 1000
--replicate 1`` = 1,000 distinct accounts; ``--traders 100 --replicate 10`` = 100 real accounts read 10 times
each: the same calls and gas, stated in the output).

Seeding in bulk: the transactions are signed here (nonces counted locally, fixed gas) and sent in JSON-RPC
batches without waiting for each receipt; anvil automines each one. Traders go in batches of --batch that
share one block timestamp (``anvil_setBlockTimestampInterval 0``), then the clock moves 16 s and the index
rounds are refreshed. Why: every swap in a new second writes one Uniswap v3 observation, the pools keep 500
(``increaseObservationCardinalityNext(500)``) and Curie's mark price reads the pool's 30-min TWAP, so about
500 distinct seconds of trading within 30 minutes leave no observation old enough and ``openPosition``
reverts ``OLD``: seeding one receipt at a time trades every second for 5 minutes or more, and 1,000 traders
failed that way on a busy machine.

Timed per read (median of --repeat): ``read(cross_check=False)`` — the keeper's inputs: per account
getPnlAndPendingFee, hasOrder, vault balance and, per market, getAccountInfo and pending funding (7 calls with
2 markets), plus every market's mark, index, TWAP, round, market info, pool slot0 and liquidity — and
``read_book(cross_check=False)``, what the daemon runs each cycle (the same read turned into the AccountBook:
margin views, premium gaps). Once: ``read(cross_check=True)`` (adds getBaseTokens, free collateral and the
contract's own account value and requirement: 11 calls per account) and whether the keeper's account value and
requirement equal the contract's for every account. Round trips and JSON-RPC requests are counted by the
keeper's ChainClient (one HTTP POST = one round trip; its periodic endpoint re-check is turned off here).

Usage: .venv/bin/python scripts/bench_perp_reads.py [--traders 1000] [--replicate 1] [--repeat 5] [--batch 100]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import requests
from eth_account import Account
from web3 import Web3

from keeper.chain.anvil import find_tool
from keeper.chain.rpc import ChainClient
from keeper.dev.perp_v2 import DEFAULT_PERP_MARKETS, MAX_UINT, PRICE_LIMIT_INTERVAL_S, start_perp_devchain
from keeper.protocols.perp_v2 import PerpV2Adapter, explain

DEPOSIT_E6 = 2_000 * 10**6
NOTIONAL_E18 = 4_000 * 10**18
GAS = {"mint": 120_000, "approve": 80_000, "deposit": 400_000, "open": 2_000_000}
RPC_CHUNK = 250  # JSON-RPC requests per HTTP POST while seeding (well under anvil's 2 MiB body cap)


class Rpc:
    """Raw JSON-RPC batches to anvil (seeding only; the timed reads go through the keeper's ChainClient)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.ids = itertools.count(1)

    def batch(self, calls: list[tuple[str, list]], *, allow_errors: bool = False) -> list[Any]:
        out: list[Any] = []
        for k in range(0, len(calls), RPC_CHUNK):
            chunk = [
                {"jsonrpc": "2.0", "id": next(self.ids), "method": m, "params": p} for m, p in calls[k : k + RPC_CHUNK]
            ]
            answers = {a["id"]: a for a in self.http.post(self.url, json=chunk, timeout=300).json()}
            for req in chunk:
                a = answers[req["id"]]
                if "error" in a and not allow_errors:
                    raise RuntimeError(f"{req['method']} failed: {a['error']}")
                out.append(a.get("result"))
        return out


class BulkSigner:
    """EIP-1559 transactions from one key, signed locally with a local nonce and a fixed gas limit."""

    def __init__(self, key: str, nonce: int, chain_id: int, max_fee: int) -> None:
        self.account = Account.from_key(key)
        self.nonce = nonce
        self.chain_id = chain_id
        self.max_fee = max_fee

    def sign(self, to: str, data: str, gas: int) -> str:
        tx = {
            "chainId": self.chain_id,
            "nonce": self.nonce,
            "to": to,
            "data": data,
            "value": 0,
            "gas": gas,
            "maxPriorityFeePerGas": 10**9,
            "maxFeePerGas": self.max_fee,
            "type": 2,
        }
        self.nonce += 1
        return "0x" + self.account.sign_transaction(tx).raw_transaction.hex().removeprefix("0x")


def _revert_reason(w3: Web3, tx_hash: str, block_number: int) -> str:
    """Why ``tx_hash`` reverted: replayed as an eth_call on the state before its block, the code explained."""
    tx = w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    try:
        w3.eth.call({"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}, block_number - 1)
    except Exception as exc:  # noqa: BLE001 - report whatever the node says
        text = str(exc)
        code = text.split("execution reverted: ", 1)[-1].split("'", 1)[0].strip() if "reverted: " in text else text
        return explain(code)
    return "the replay did not revert (the revert depended on the block it was mined in)"


def send_and_wait(rpc: Rpc, w3: Web3, raw: list[tuple[str, str]], timeout_s: float = 600.0) -> None:
    """Send ``raw`` (label, signed tx) in batches, wait for every receipt, raise on the first revert."""
    hashes = rpc.batch([("eth_sendRawTransaction", [r]) for _, r in raw])
    deadline = time.monotonic() + timeout_s
    receipts: list[Any] = [None] * len(hashes)
    missing = len(hashes) + 1
    while True:
        todo = [i for i, r in enumerate(receipts) if r is None]
        if not todo:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(todo)} of {len(hashes)} seeding transactions not mined after {timeout_s:.0f} s")
        if len(todo) == missing:
            # anvil 1.7.1's automine can leave transactions that arrived while it mined in the pool until the
            # next one arrives: a block mined by hand takes them (same timestamp while the clock is frozen)
            rpc.batch([("evm_mine", [])])
        missing = len(todo)
        for i, r in zip(todo, rpc.batch([("eth_getTransactionReceipt", [hashes[i]]) for i in todo]), strict=True):
            receipts[i] = r
        if any(r is None for r in receipts):
            time.sleep(0.5)
    for (label, _), h, r in zip(raw, hashes, receipts, strict=True):
        if int(r["status"], 16) != 1:
            block = int(r["blockNumber"], 16)
            raise RuntimeError(f"{label} reverted in block {block}: {_revert_reason(w3, h, block)}")


def seed_accounts(anvil, ops, n: int, batch: int) -> list[str]:
    """``n`` fresh traders, ``batch`` per block timestamp; returns their addresses."""
    w3 = ops.w3
    rpc = Rpc(anvil.url)
    chain_id = w3.eth.chain_id
    keys = [Web3.keccak(text=f"perp-bench-{i}").hex() for i in range(n)]
    addresses = [Account.from_key(k).address for k in keys]
    rpc.batch([("anvil_setBalance", [a, hex(10**20)]) for a in addresses])  # ETH for gas

    def max_fee() -> int:
        return 2 * int(w3.eth.get_block("latest")["baseFeePerGas"]) + 10**9

    # settlement tokens: the deployer's mint (what PerpOps.mint sends), 2,000 USDC to every trader
    deployer_nonce = w3.eth.get_transaction_count(Account.from_key(ops.deployer_key).address, "pending")
    deployer = BulkSigner(ops.deployer_key, deployer_nonce, chain_id, max_fee())
    usdc, vault, ch = ops.usdc.address, ops.vault.address, ops.ch.address
    send_and_wait(
        rpc,
        w3,
        [
            (f"mint to trader {i}", deployer.sign(usdc, ops.usdc.encode_abi("mint", [a, DEPOSIT_E6]), GAS["mint"]))
            for i, a in enumerate(addresses)
        ],
    )
    ops.reset_nonces()
    approve = ops.usdc.encode_abi("approve", [vault, MAX_UINT])
    deposit = ops.vault.encode_abi("deposit", [usdc, DEPOSIT_E6])

    def open_data(symbol: str, is_long: bool) -> str:  # long: exact quote in; short: exact quote out
        params = (ops.bases[symbol].address, not is_long, is_long, NOTIONAL_E18, 0, MAX_UINT, 0, b"\0" * 32)
        return ops.ch.encode_abi("openPosition", [params])

    opens = {(s, side): open_data(s, side) for s in ("ETH", "BTC") for side in (True, False)}
    for start in range(0, n, batch):
        for spec in DEFAULT_PERP_MARKETS:  # fresh index rounds (ChainlinkPriceFeedV3 times out after 2,400 s)
            ops.push_index(spec.symbol, spec.price)
        fee = max_fee()
        raw = []
        for i in range(start, min(n, start + batch)):
            s = BulkSigner(keys[i], 0, chain_id, fee)
            long_eth = i % 2 == 0  # alternate sides: the pools come back to the index (EX_OPB, EX_OPLAS)
            raw += [
                (f"trader {i} approve", s.sign(usdc, approve, GAS["approve"])),
                (f"trader {i} deposit", s.sign(vault, deposit, GAS["deposit"])),
                (f"trader {i} ETH open", s.sign(ch, opens[("ETH", long_eth)], GAS["open"])),
                (f"trader {i} BTC open", s.sign(ch, opens[("BTC", not long_eth)], GAS["open"])),
            ]
        anvil.request("anvil_setBlockTimestampInterval", [0])  # the batch shares one second: one observation
        try:
            send_and_wait(rpc, w3, raw)
        finally:
            anvil.request("anvil_removeBlockTimestampInterval", [])
        ops.advance(PRICE_LIMIT_INTERVAL_S + 1)  # the next batch: a new observation, a new EX_OPLAS window
        print(f"seeded {min(n, start + batch)}/{n} accounts", file=sys.stderr, flush=True)
    for spec in DEFAULT_PERP_MARKETS:
        ops.push_index(spec.symbol, spec.price)
    return addresses


def timed(client: ChainClient, fn: Callable[[], Any], repeat: int) -> tuple[dict[str, Any], Any]:
    """Run ``fn`` ``repeat`` times; wall time, round trips and JSON-RPC requests per run."""
    times, trips, reqs = [], [], []
    out = None
    for _ in range(repeat):
        client.stats.reset()
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        trips.append(client.stats.round_trips)
        reqs.append(client.stats.requests)
    stats = {
        "median_ms": round(statistics.median(times) * 1000, 1),
        "min_ms": round(min(times) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "round_trips": sorted(set(trips)) if len(set(trips)) > 1 else trips[0],
        "json_rpc_requests": sorted(set(reqs)) if len(set(reqs)) > 1 else reqs[0],
    }
    return stats, out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        anvil = subprocess.run([find_tool("anvil"), "--version"], capture_output=True, text=True, check=False)
        anvil_version = anvil.stdout.splitlines()[0] if anvil.stdout else "anvil ?"
    except Exception:  # noqa: BLE001 - informational only
        anvil_version = "anvil ?"
    load = "n/a"
    if hasattr(os, "getloadavg"):
        load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.release()} {platform.machine()}, {cpu}, {os.cpu_count()} cpus, "
        f"load avg {load} (1/5/15 min), {platform.python_implementation()} {platform.python_version()}, "
        f"{anvil_version}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--traders", type=int, default=1000, help="fresh accounts to open (default 1000)")
    ap.add_argument("--replicate", type=int, default=1, help="times each account appears in the watched list")
    ap.add_argument("--repeat", type=int, default=5, help="reads to time (median reported)")
    ap.add_argument("--batch", type=int, default=100, help="traders seeded per block timestamp (default 100)")
    args = ap.parse_args()
    if min(args.traders, args.replicate, args.repeat, args.batch) < 1:
        ap.error("--traders, --replicate, --repeat and --batch must be >= 1")
    command = " ".join([".venv/bin/python", *sys.argv])
    t0 = time.perf_counter()
    anvil, ops = start_perp_devchain(seed=True)
    try:
        deploy_s = time.perf_counter() - t0
        traders = seed_accounts(anvil, ops, args.traders, args.batch)
        seed_s = time.perf_counter() - t0 - deploy_s
        client = ChainClient.connect(anvil.url, 31337, timeout_s=300.0, reverify_s=None)
        adapter = PerpV2Adapter(client, ops.deployment)
        watched = traders * args.replicate
        n_markets = len(ops.deployment.markets)
        adapter.read(watched[:10], cross_check=False)  # warm-up (anvil's caches, Python imports)

        def calls(cross_check: bool) -> int:
            return 5 + n_markets * 8 + len(watched) * ((7 if cross_check else 3) + 2 * n_markets)

        inputs, snap = timed(client, lambda: adapter.read(watched, cross_check=False), args.repeat)
        inputs |= {"calls_per_read": calls(False), "failed": len(snap.failed), "accounts": len(snap.traders)}
        book_stats, book = timed(client, lambda: adapter.read_book(watched, cross_check=False), args.repeat)
        book_stats |= {"calls_per_read": calls(False), "failed": len(book.failed), "accounts": len(book.accounts)}
        checked_stats, checked = timed(client, lambda: adapter.read(watched, cross_check=True), 1)
        mismatched = [
            t
            for t, s in checked.traders.items()
            if checked.margin(t).account_value_x18 != s.contract_account_value_x18
            or checked.margin(t).requirement_x18 != s.contract_requirement_x18
        ]
        checked_stats |= {
            "calls_per_read": calls(True),
            "failed": len(checked.failed),
            "accounts": len(checked.traders),
            "keeper_equals_contract": not mismatched and not checked.failed,
            "mismatched": len(mismatched),
        }
        with_positions = sum(1 for s in checked.traders.values() if len(s.account.legs) == n_markets)
        print(
            json.dumps(
                {
                    "command": command,
                    "distinct_accounts": args.traders,
                    "replicate": args.replicate,
                    "accounts_read": len(watched),
                    "accounts_with_a_position_in_every_market": with_positions,
                    "read_keeper_inputs": inputs,
                    "read_book": book_stats,
                    "read_with_contract_cross_check": checked_stats,
                    "deploy_s": round(deploy_s, 1),
                    "seed_s": round(seed_s, 1),
                    "machine": machine(),
                },
                indent=2,
            )
        )
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
