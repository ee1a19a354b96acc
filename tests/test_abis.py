"""abis/ must equal what scripts/export_abis.py writes from the current forge build (drift test).

The build is reused when contracts/out is newer than every source under contracts/src; otherwise
`forge build --offline` runs first (forge's cache then recompiles only what changed).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_exporter():
    spec = importlib.util.spec_from_file_location("export_abis", ROOT / "scripts" / "export_abis.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_abis = _load_exporter()


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    """The abis/ texts the exporter would write now, building the contracts first when needed."""
    if export_abis.build_is_stale():
        export_abis.forge_build()
    return export_abis.render_all()


def _signatures(abi: list[dict], kind: str) -> set[str]:
    def typ(param: dict) -> str:
        if param["type"].startswith("tuple"):
            return "(" + ",".join(typ(c) for c in param["components"]) + ")" + param["type"][len("tuple") :]
        return param["type"]

    return {f"{e['name']}({','.join(typ(i) for i in e['inputs'])})" for e in abi if e["type"] == kind}


class TestAbiDrift:
    def test_committed_abis_match_build(self, rendered):
        """Every committed abis/*.json file is byte-identical to the export of the current build."""
        stale = export_abis.drifted(rendered)
        assert stale == [], (
            f"abis/ drifted from the build: {stale}; run `.venv/bin/python scripts/export_abis.py` and commit abis/"
        )

    def test_changed_abi_is_reported(self, rendered, tmp_path):
        """A copy of abis/ with one ABI entry changed is reported as drifted, and only that file."""
        for name, text in rendered.items():
            (tmp_path / name).write_text(text)
        assert export_abis.drifted(rendered, tmp_path) == []

        abi = json.loads(rendered["PerpEngine.json"])
        victim = next(e for e in abi if e.get("name") == "addMargin")
        victim["inputs"][2]["type"] = "uint128"
        (tmp_path / "PerpEngine.json").write_text(export_abis.render_abi(abi))
        (tmp_path / "ERC20.json").unlink()
        assert export_abis.drifted(rendered, tmp_path) == ["ERC20.json", "PerpEngine.json"]

    def test_files_are_canonical_json_arrays(self, rendered):
        """Each exported file is a bare ABI array, pretty-printed with sorted keys and a trailing newline."""
        for name, text in rendered.items():
            abi = json.loads(text)
            assert isinstance(abi, list) and abi, name
            assert text == json.dumps(abi, indent=2, sort_keys=True) + "\n", name


class TestDesignInterface:
    """The exported ABIs carry the exact signatures fixed in docs/design.md (what the Python side encodes)."""

    def test_perp_engine_functions(self, rendered):
        """PerpEngine exposes every design.md function with its exact parameter types."""
        functions = _signatures(json.loads(rendered["PerpEngine.json"]), "function")
        params = "(address,uint256,uint256,uint256,uint256,uint256)"
        expected = {
            f"createMarket({params})",
            "setFeeRate(uint256,uint256)",
            "setOperator(address,bool)",
            "openPosition(uint256,bool,uint256,uint256)",
            "decreasePosition(address,uint256,uint256)",
            "closePosition(uint256)",
            "addMargin(address,uint256,uint256)",
            "removeMargin(address,uint256,uint256)",
            "moveMargin(address,uint256,uint256,uint256)",
            "liquidate(address,uint256)",
            "depositLiquidity(uint256)",
            "marketCount()",
            "getMarket(uint256)",
            "getPosition(address,uint256)",
            "getPositions(address[],uint256[])",
            "isOperator(address,address)",
            "collateralToken()",
            "owner()",
        }
        assert expected <= functions, sorted(expected - functions)

    def test_perp_engine_view_struct_order(self, rendered):
        """PositionView and MarketView fields come in design.md order (the Python decoder relies on it)."""
        abi = json.loads(rendered["PerpEngine.json"])
        get_position = next(e for e in abi if e.get("name") == "getPosition")
        fields = [c["name"] for c in get_position["outputs"][0]["components"]]
        assert fields == [
            "exists",
            "isLong",
            "size",
            "entryPrice",
            "collateral",
            "pendingFee",
            "equity",
            "maintenanceMargin",
            "liquidationPrice",
            "markPrice",
            "markUpdatedAt",
            "liquidatable",
        ]
        get_market = next(e for e in abi if e.get("name") == "getMarket")
        market = get_market["outputs"][0]["components"]
        assert [c["name"] for c in market] == [
            "params",
            "cumulativeFeeIndexWad",
            "longOpenInterest",
            "shortOpenInterest",
        ]
        assert [c["name"] for c in market[0]["components"]] == [
            "feed",
            "maintenanceMarginWad",
            "maxLeverageWad",
            "liquidationPenaltyWad",
            "feeRatePerSecondWad",
            "heartbeat",
        ]

    def test_perp_engine_events_and_errors(self, rendered):
        """PerpEngine declares the design.md events and custom errors with their exact types."""
        abi = json.loads(rendered["PerpEngine.json"])
        events = _signatures(abi, "event")
        assert events == {
            "MarketCreated(uint256,address)",
            "FeeRateSet(uint256,uint256)",
            "OperatorSet(address,address,bool)",
            "PositionOpened(address,uint256,bool,uint256,uint256,uint256)",
            "PositionIncreased(address,uint256,uint256,uint256,uint256)",
            "PositionDecreased(address,uint256,uint256,uint256,int256)",
            "PositionClosed(address,uint256,uint256,int256)",
            "MarginAdded(address,uint256,address,uint256)",
            "MarginRemoved(address,uint256,address,uint256)",
            "MarginMoved(address,uint256,uint256,uint256)",
            "FeeSettled(address,uint256,uint256)",
            "Liquidated(address,uint256,address,uint256,uint256,uint256)",
        }
        errors = _signatures(abi, "error")
        assert errors == {
            "StalePrice(uint256,uint256,uint256)",
            "NotLiquidatable(address,uint256,int256,uint256)",
            "NotAuthorized(address)",
            "NoPosition(address,uint256)",
            "UnknownMarket(uint256)",
            "LeverageTooHigh(uint256,int256,uint256)",
            "InvalidAmount()",
            "SideMismatch()",
            "InvalidPrice(int256)",
        }

    def test_feed_multicall_and_token(self, rendered):
        """PriceFeed, Multicall3 and the ERC-20 subset expose the functions the keeper calls."""
        feed = _signatures(json.loads(rendered["PriceFeed.json"]), "function")
        assert {
            "pushPrice(int256)",
            "latestRound()",
            "getRoundData(uint80)",
            "latestRoundData()",
            "decimals()",
            "description()",
            "version()",
        } <= feed
        multicall = _signatures(json.loads(rendered["Multicall3.json"]), "function")
        assert {
            "aggregate((address,bytes)[])",
            "aggregate3((address,bool,bytes)[])",
            "aggregate3Value((address,bool,uint256,bytes)[])",
            "tryAggregate(bool,(address,bytes)[])",
            "tryBlockAndAggregate(bool,(address,bytes)[])",
            "blockAndAggregate((address,bytes)[])",
            "getBlockNumber()",
            "getCurrentBlockTimestamp()",
            "getEthBalance(address)",
            "getBasefee()",
            "getChainId()",
            "getLastBlockHash()",
            "getBlockHash(uint256)",
        } <= multicall
        erc20 = _signatures(json.loads(rendered["ERC20.json"]), "function")
        assert erc20 == {
            "name()",
            "symbol()",
            "decimals()",
            "totalSupply()",
            "balanceOf(address)",
            "allowance(address,address)",
            "transfer(address,uint256)",
            "approve(address,uint256)",
            "transferFrom(address,address,uint256)",
        }
        assert "mint(address,uint256)" in _signatures(json.loads(rendered["MockUSD.json"]), "function")
