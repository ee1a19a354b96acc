"""The local chain: anvil launcher, deployment, deployment file checks and `keeper devchain`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from web3 import Web3

from keeper.chain.anvil import Anvil, find_tool
from keeper.dev.reference import MULTICALL3_ADDRESS, Deployment
from keeper.domain import Market, Position, Side
from keeper.errors import ChainMismatchError, InputError


@pytest.mark.chain
class TestAnvil:
    def test_avoids_a_port_in_use(self, monkeypatch):
        """When the port the OS offered is taken by the time anvil binds, another port is tried."""
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = iter([taken])
        import keeper.chain.anvil as anvil_mod

        real_free_port = anvil_mod.free_port
        monkeypatch.setattr(anvil_mod, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port())
        try:
            with Anvil.start(timeout_s=5) as node:
                assert node.port != taken
                assert int(node.request("eth_chainId"), 16) == 31337
        finally:
            busy.close()

    def test_stop_kills_the_process(self):
        """stop() terminates anvil by its pid and the port stops answering."""
        node = Anvil.start()
        node.stop()
        assert node.process.poll() is not None
        with pytest.raises(OSError):
            node.request("eth_chainId")

    def test_missing_tool_says_how_to_install(self, monkeypatch, tmp_path):
        """A missing Foundry tool raises a ToolchainError naming `npm ci`."""
        import keeper.chain.anvil as anvil_mod
        from keeper.errors import ToolchainError

        monkeypatch.setattr(anvil_mod, "PROJECT_ROOT", tmp_path)
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(ToolchainError, match="npm ci"):
            find_tool("anvil")


@pytest.mark.chain
class TestDeployment:
    def test_deploys_markets_feeds_and_multicall(self, devchain):
        """The protocol, both feeds and Multicall3 at its canonical address have code; markets are ETH=0, BTC=1."""
        d = devchain.deployment
        assert d.markets == {"ETH": 0, "BTC": 1}
        assert len(devchain.w3.eth.get_code(MULTICALL3_ADDRESS)) > 0
        d.verify(devchain.w3)
        assert devchain.engine.functions.marketCount().call() == 2
        assert devchain.latest_price_e8("ETH") == 3000 * 10**8

    def test_file_round_trip(self, devchain, tmp_path):
        """A saved deployment file loads back equal."""
        path = devchain.deployment.save(tmp_path / "d.json")
        assert Deployment.load(path) == devchain.deployment

    def test_wrong_chain_id_refused(self, devchain):
        """A deployment for another chain id is refused with both ids named."""
        bad = replace(devchain.deployment, chain_id=1)
        with pytest.raises(ChainMismatchError, match="chain id 1 .*chain id 31337"):
            bad.verify(devchain.w3)

    def test_no_code_refused(self, devchain):
        """A deployment naming an address without code is refused, naming which contract."""
        bad = replace(devchain.deployment, engine="0x000000000000000000000000000000000000dEaD")
        with pytest.raises(ChainMismatchError, match="engine at 0x0000"):
            bad.verify(devchain.w3)

    def test_bad_files(self, tmp_path):
        """Missing, malformed and incomplete deployment files raise InputError saying what is wrong."""
        with pytest.raises(InputError, match="does not exist"):
            Deployment.load(tmp_path / "nope.json")
        (tmp_path / "bad.json").write_text("{not json")
        with pytest.raises(InputError, match="not valid JSON"):
            Deployment.load(tmp_path / "bad.json")
        (tmp_path / "part.json").write_text(json.dumps({"rpc_url": "x", "chain_id": 1}))
        with pytest.raises(InputError, match="lacks collateral, engine"):
            Deployment.load(tmp_path / "part.json")


@pytest.mark.chain
class TestProtocolMatchesCore:
    def test_views_match_domain_formulas(self, chain):
        """The engine's equity, maintenance margin and liquidation price match keeper.domain within rounding."""
        trader = chain.keys[1]
        chain.mint(chain.addresses[1], 10_000 * 10**6)
        chain.approve_engine(trader)
        size = 5 * 10**18
        chain.open_position(trader, "ETH", True, size, 1_000 * 10**6)
        chain.push_price("ETH", 2_950 * 10**8)
        view = chain.position(chain.addresses[1], "ETH")
        mv = chain.engine.functions.getMarket(0).call()
        params = mv[0]
        market = Market(0, "ETH", params[1], params[2], params[3], params[4], params[5])
        pos = Position(chain.addresses[1], 0, Side.LONG, view[2], view[3], view[4], view[5])
        price = view[9]
        assert view[6] == pos.equity_e6(price)
        assert view[7] == pos.maintenance_margin_e6(market, price)
        assert view[8] / 1e8 == pytest.approx(pos.liquidation_price(market), rel=1e-9)
        assert view[11] is pos.is_liquidatable(market, price)


@pytest.mark.chain
def test_devchain_command_once(tmp_path):
    """`keeper devchain --once` deploys, writes a deployment file, prints the trader's book and stops anvil; the
    example configuration's engine and collateral are the addresses it deploys to."""
    out = tmp_path / "devchain.json"
    proc = subprocess.run(
        [sys.executable, "-m", "keeper", "devchain", "--once", "--out", str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    d = Deployment.load(out)
    assert d.chain_id == 31337 and set(d.feeds) == {"ETH", "BTC"}
    assert "positions of" in proc.stdout
    example = tomllib.loads((Path(__file__).resolve().parents[1] / "examples" / "keeper.toml").read_text())
    assert (example["protocol"]["engine"], example["protocol"]["collateral"]) == (d.engine, d.collateral)
    w3 = Web3(Web3.HTTPProvider(d.rpc_url, request_kwargs={"timeout": 2}))
    assert not w3.is_connected()  # its anvil was stopped on exit
