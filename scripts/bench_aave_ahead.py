#!/usr/bin/env python
"""A/B in one process on one anvil: full reads of 10,000 accounts (bench_aave_reads.py's storage copies of two
templates) alternate between an adapter that sends the last balances pass ahead with the market pass and one
that does not (two passes, as before), after a new block each, the cyclic collector paused as in the daemon's
cycle. Both see the same machine load, so the difference is the change's.

Usage: .venv/bin/python scripts/bench_aave_ahead.py [reads per adapter, default 10]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_aave_reads as bench
from web3 import Web3

from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.dev.aave_v3 import AaveOps, deploy_aave
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.aave_v3 import AaveV3Adapter


class TwoPasses(AaveV3Adapter):
    """The read as before: the market pass without the last balances pass."""

    def _market_pass(self, *a: Any, **kw: Any) -> Any:
        kept, self._second_pass = self._second_pass, None
        try:
            return super()._market_pass(*a, **kw)
        finally:
            self._second_pass = kept


def main() -> None:
    reads = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    anvil = Anvil.start()
    try:
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 60}))
        ops = AaveOps(w3, deploy_aave(w3, rpc_url=anvil.url))
        ops.provide_liquidity(ANVIL_KEYS[9])
        for key, template in zip(ANVIL_KEYS[3:5], bench.TEMPLATES[:2], strict=True):
            ops.open_account(key, template)
        templates = [w3.eth.account.from_key(k).address for k in ANVIL_KEYS[3:5]]
        d = ops.deployment
        contracts = [d.pool, *d.a_tokens.values(), *d.variable_debt_tokens.values()]
        client = ChainClient.connect(anvil.url)
        users = templates + bench.clone_accounts(anvil, client, templates, contracts, 10_000 - len(templates))
        kinds: dict[str, AaveV3Adapter] = {
            "ahead": AaveV3Adapter(ChainClient.connect(anvil.url), d.provider, full_read_every_s=0),
            "two passes": TwoPasses(ChainClient.connect(anvil.url), d.provider, full_read_every_s=0),
        }
        for adapter in kinds.values():  # warm: the calls prepared, the balances pass held
            adapter.load()
            adapter.read_book(users, cross_check=False)
            adapter.read_book(users, cross_check=False)
        wall: dict[str, list[float]] = {k: [] for k in kinds}
        cpu: dict[str, list[float]] = {k: [] for k in kinds}
        node: dict[str, list[float]] = {k: [] for k in kinds}
        gc.disable()
        try:
            for i in range(reads):
                anvil.request("evm_mine", [])
                for k in list(kinds) if i % 2 == 0 else list(reversed(kinds)):
                    n0, c0, t0 = bench.process_cpu_s(anvil.pid), time.process_time(), time.perf_counter()
                    kinds[k].read_book(users, cross_check=False)
                    wall[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() - c0)
                    node[k].append(bench.process_cpu_s(anvil.pid) - n0)
        finally:
            gc.enable()
        for k in kinds:
            print(
                f"{k:11s} read_book median {statistics.median(wall[k]) * 1e3:.0f} ms wall (runs "
                f"{min(wall[k]) * 1e3:.0f}-{max(wall[k]) * 1e3:.0f}), CPU {statistics.median(cpu[k]) * 1e3:.0f} ms, "
                f"anvil {statistics.median(node[k]) * 1e3:.0f} ms"
            )
    finally:
        anvil.stop()


if __name__ == "__main__":
    main()
