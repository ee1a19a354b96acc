"""The market table, the revert words and the pure arithmetic checked against outside references (no chain)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keeper.accounts.aave_v3 import (
    RAY,
    SECONDS_PER_YEAR,
    compounded_interest,
    decode_reserve_configuration,
    percent_div,
    percent_mul,
    wad_div,
)
from keeper.errors import InputError
from keeper.protocols.aave_v3 import AAVE_ERRORS, AAVE_V3_MARKETS, aave_error, resolve_provider

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "node_modules" / "@aave-dao" / "aave-address-book" / "src"
ERRORS_SOL = (
    ROOT / "node_modules" / "@aave" / "core-v3" / "contracts" / "protocol" / "libraries" / "helpers" / "Errors.sol"
)
FILES = {
    "ethereum": "AaveV3Ethereum.sol",
    "arbitrum": "AaveV3Arbitrum.sol",
    "base": "AaveV3Base.sol",
    "optimism": "AaveV3Optimism.sol",
    "polygon": "AaveV3Polygon.sol",
    "avalanche": "AaveV3Avalanche.sol",
}


class TestMarketTable:
    @pytest.mark.parametrize("market", sorted(FILES))
    def test_provider_matches_address_book(self, market):
        """Each market's PoolAddressesProvider equals the one @aave-dao/aave-address-book publishes."""
        text = (BOOK / FILES[market]).read_text()
        found = re.search(r"POOL_ADDRESSES_PROVIDER\s*=\s*IPoolAddressesProvider\(\s*(0x[0-9a-fA-F]{40})\s*\)", text)
        assert found is not None
        assert AAVE_V3_MARKETS[market][1] == found.group(1)

    def test_market_name_and_bad_input(self):
        """A market name resolves case-insensitively; an unknown name or a non-address fails with a clear message."""
        assert resolve_provider("Ethereum") == (1, AAVE_V3_MARKETS["ethereum"][1])
        with pytest.raises(InputError, match="unknown Aave v3 market 'mars'"):
            resolve_provider("mars")
        with pytest.raises(InputError, match="not an address"):
            resolve_provider(provider="0x1234")


class TestErrors:
    def test_table_matches_errors_sol(self):
        """Every numeric code of core-v3's Errors.sol is in the table under its constant's name."""
        rows = re.findall(r"string public constant (\w+) = '(\d+)';", ERRORS_SOL.read_text())
        assert len(rows) == len(AAVE_ERRORS) == 90
        for name, code in rows:
            assert AAVE_ERRORS[int(code)].startswith(name + ":")

    def test_revert_message_in_words(self):
        """'execution reverted: 45' becomes the code and its name; other messages pass unchanged."""
        assert aave_error("execution reverted: 45").startswith("45 HEALTH_FACTOR_NOT_BELOW_THRESHOLD")
        assert aave_error("out of gas") == "out of gas"


class TestArithmetic:
    def test_configuration_bitmap(self):
        """Fields composed at ReserveConfiguration.sol's bit positions decode back to the same values."""
        bitmap = (
            8000
            | 8250 << 16
            | 10500 << 32
            | 18 << 48
            | 1 << 56
            | 1 << 58
            | 1 << 60
            | 1 << 61
            | 1500 << 64
            | 1_400_000 << 80
            | 2_000_000 << 116
            | 1000 << 152
            | 1 << 168
            | 12_000_000_00 << 212
        )
        c = decode_reserve_configuration(bitmap)
        assert (c.ltv_bps, c.liquidation_threshold_bps, c.liquidation_bonus_bps, c.decimals) == (8000, 8250, 10500, 18)
        assert c.active and not c.frozen and c.borrowing_enabled and c.paused and c.borrowable_in_isolation
        assert (c.reserve_factor_bps, c.borrow_cap, c.supply_cap) == (1500, 1_400_000, 2_000_000)
        assert (c.liquidation_protocol_fee_bps, c.emode_category, c.debt_ceiling_e2) == (1000, 1, 12_000_000_00)

    def test_rounding_half_up(self):
        """percentMul/percentDiv/wadDiv round half up like PercentageMath/WadRayMath."""
        assert percent_mul(3, 5000) == 2  # 1.5 -> 2
        assert percent_mul(1, 4999) == 0
        assert percent_div(1, 20000) == 1  # 0.5 -> 1
        assert wad_div(1, 3) == 333333333333333333
        assert wad_div(2, 3) == 666666666666666667

    def test_compounded_interest_close_to_exponential(self):
        """The 3rd-order expansion is within 1e-6 (relative) of exp(r t) for 10 %/yr over 30 days, and below it."""
        import math

        rate = RAY // 10
        dt = 30 * 86_400
        got = compounded_interest(rate, 0, dt) / RAY
        exact = math.exp(0.1 * dt / SECONDS_PER_YEAR)
        assert got < exact and abs(got / exact - 1) < 1e-6
        assert compounded_interest(rate, 5, 5) == RAY

    def test_single_collateral_liquidation_price_reference(self):
        """10 WETH (LT 82.5 %) against 12,692.307692 USDC: P* = $1,538.46153843, the closed form D 1e4/(LT q)
        rounded up to the next e8 unit (reference value verified on the real pool, issue 12)."""
        from keeper.accounts.aave_v3 import AaveAccount, Market, ReserveState, UserReserve, liquidation_price

        def reserve(asset: str, bitmap: int, rid: int) -> ReserveState:
            return ReserveState(asset, decode_reserve_configuration(bitmap), RAY, 0, RAY, 0, 0, rid)

        weth = reserve("WETH", 8000 | 8250 << 16 | 10500 << 32 | 18 << 48 | 1 << 56, 0)
        usdc = reserve("USDC", 7700 | 8000 << 16 | 10450 << 32 | 6 << 48 | 1 << 56, 1)
        account = AaveAccount(
            "trader",
            0,
            (
                UserReserve("WETH", 10 * 10**18, 0, 0, True, False),
                UserReserve("USDC", 0, 12_692_307_692, 0, False, True),
            ),
        )
        market = Market({"WETH": weth, "USDC": usdc}, {"WETH": 3000 * 10**8, "USDC": 10**8}, {}, 0)
        assert liquidation_price(account, market, "WETH") == 153846153843

    def test_margin_account_view(self):
        """The neutral view weights collateral by the LT: 10 WETH at $3,000 x 82.5 % - $12,692.307692 debt."""
        from keeper.accounts.aave_v3 import AaveAccount, Market, ReserveState, UserReserve, margin_account
        from keeper.accounts.base import LegKind

        weth = ReserveState(
            "WETH", decode_reserve_configuration(8000 | 8250 << 16 | 18 << 48 | 1 << 56), RAY, 0, RAY, 0, 0, 0
        )
        usdc = ReserveState(
            "USDC", decode_reserve_configuration(7700 | 8000 << 16 | 6 << 48 | 1 << 56), RAY, 0, RAY, 0, 0, 1
        )
        account = AaveAccount(
            "trader",
            0,
            (
                UserReserve("WETH", 10 * 10**18, 0, 0, True, False),
                UserReserve("USDC", 0, 12_692_307_692, 0, False, True),
            ),
        )
        prices = {"WETH": 3000 * 10**8, "USDC": 10**8}
        view = margin_account(account, Market({"WETH": weth, "USDC": usdc}, prices, {}, 0))
        assert [leg.kind for leg in view.legs] == [LegKind.COLLATERAL, LegKind.DEBT]
        assert view.margin_excess_e8(prices) == 30_000 * 10**8 * 8250 // 10_000 - 1_269_230_769_200


def test_describe_transaction_reads_back_supply_and_repay():
    """A supply or repay calldata to the pool decodes into its journal meta; other calls are not ours."""
    from keeper.protocols.aave_v3 import AaveV3Adapter

    adapter = AaveV3Adapter.__new__(AaveV3Adapter)  # decoding needs only the pool address
    adapter.pool = "0x" + "11" * 20
    asset, user = "0x" + "22" * 20, "0x" + "33" * 20
    supply = adapter.supply_call(asset, 5 * 10**18, user)
    repay = adapter.repay_call(asset, 7 * 10**6, user)
    assert adapter.describe_transaction(supply.to, supply.data) == {
        "kind": "add_collateral",
        "account": user,
        "asset": "0x" + "22" * 20,
        "amount": str(5 * 10**18),
    }
    assert adapter.describe_transaction(repay.to, repay.data)["kind"] == "repay_debt"
    assert adapter.describe_transaction("0x" + "44" * 20, supply.data) is None
