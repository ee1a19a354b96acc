"""Shared fixtures for runtime tests that need no chain: a configuration pointing at the in-memory adapter."""

from __future__ import annotations

import pytest

from keeper.protocols.testing import FAKE_COLLATERAL, FAKE_ENGINE
from keeper.runtime.config import KeeperConfig, load_config

TRADER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil's account 1 (public test key below)
TRADER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


@pytest.fixture
def fake_config(tmp_path):
    """``fake_config(name="reference", mode="protect") -> KeeperConfig``: one trader account, the fake adapter's
    addresses, a journal in ``tmp_path``; ``mode="protect"`` signs with the trader's public anvil key."""

    def make(name: str = "reference", mode: str = "protect") -> KeeperConfig:
        path = tmp_path / "keeper.toml"
        path.write_text(f"""
[chain]
rpc_urls = ["http://127.0.0.1:1"]
chain_id = 31337

[protocol]
name = "{name}"
engine = "{FAKE_ENGINE}"
collateral = "{FAKE_COLLATERAL}"

[[accounts]]
address = "{TRADER}"
mode = "{mode}"

[limits]
max_top_up_usd = 50000
max_per_day_usd = 200000

[journal]
path = "{tmp_path / "journal.sqlite"}"
""")
        return load_config(path, env={"KEEPER_PRIVATE_KEY": TRADER_KEY} if mode == "protect" else {}, dotenv_path=None)

    return make
