"""Helpers the daemon tests share, as fixtures: a keeper configuration for the dev chain, the trader's book,
the engine's margin events (read back from the chain)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keeper.dev.reference import ANVIL_KEYS

TRADER = 1  # anvil key index; the keeper signs as the trader (own account)


def write_config(chain, tmp_path: Path, **overrides: str) -> Path:
    dep = chain.deployment.save(tmp_path / "deployment.json")
    rpc = overrides.pop("rpc", chain.anvil.url)
    head_poll_s = overrides.pop("head_poll_s", "0.2")
    risk = overrides.pop("risk", "")
    limits = overrides.pop("limits", "")
    text = f"""
[chain]
rpc_urls = ["{rpc}"]
chain_id = {overrides.pop("chain_id", chain.deployment.chain_id)}

[protocol]
deployment = "{dep}"

[[accounts]]
address = "{chain.addresses[TRADER]}"
mode = "protect"

[risk]
check_interval_min_s = 1.0
{risk}

[limits]
max_top_up_usd = 50000
max_per_day_usd = 200000
{limits}

[schedule]
head_poll_s = {head_poll_s}
initial_interval_s = 2.0

[journal]
path = "{tmp_path / "journal.sqlite"}"

[http]
port = 0

[log]
format = "json"
"""
    path = tmp_path / "keeper.toml"
    path.write_text(text)
    return path


def open_book(chain, reserve_e6: int, eth_collateral_e6: int = 3_000 * 10**6, btc_collateral_e6: int = 20_000 * 10**6):
    """Trader: ETH long 20 ETH at 3,000 (20x with $3k) and BTC short 2 BTC at 60,000; `reserve_e6` left in the
    wallet."""
    key = ANVIL_KEYS[TRADER]
    chain.mint(chain.addresses[TRADER], eth_collateral_e6 + btc_collateral_e6 + reserve_e6)
    chain.approve_engine(key)
    chain.open_position(key, "ETH", True, 20 * 10**18, eth_collateral_e6)
    chain.open_position(key, "BTC", False, 2 * 10**18, btc_collateral_e6)


def margin_events(chain, name: str) -> list[dict]:
    event = getattr(chain.engine.events, name)
    return [dict(e["args"]) for e in event.get_logs(from_block=chain.deployment.start_block)]


@pytest.fixture(name="write_config")
def _write_config_fixture():
    """``write_config(chain, tmp_path, **overrides) -> Path``: a keeper.toml for the dev chain."""
    return write_config


@pytest.fixture(name="open_book")
def _open_book_fixture():
    """``open_book(chain, reserve_e6, ...)``: the trader's ETH long and BTC short."""
    return open_book


@pytest.fixture(name="margin_events")
def _margin_events_fixture():
    """``margin_events(chain, name) -> list[dict]``: the engine's events of ``name`` since deployment."""
    return margin_events
