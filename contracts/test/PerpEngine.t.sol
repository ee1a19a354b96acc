// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// Test values are small and known: casts between uint256 and int256 cannot truncate here.
// forge-lint: disable-start(unsafe-typecast)

import {Fixture} from "./Fixture.sol";
import {PerpEngine} from "../src/PerpEngine.sol";
import {PriceFeed} from "../src/PriceFeed.sol";

/// @notice Protocol rules of PerpEngine against docs/design.md: views, liquidation boundary, fees, margin.
contract PerpEngineTest is Fixture {
    // ------------------------------------------------------------ views and formulas

    /// Opening records the position and the view reports the design.md equity, maintenance and liquidation price.
    function test_OpenPositionView() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        PerpEngine.PositionView memory v = _pos(TRADER, ETH);
        vm.assertTrue(v.exists && v.isLong, "exists, long");
        vm.assertEq(v.size, 1e18, "size");
        vm.assertEq(v.entryPrice, 3000e8, "entry");
        vm.assertEq(v.collateral, 300e6, "collateral");
        vm.assertEq(v.pendingFee, 0, "no fee yet");
        vm.assertEq(v.equity, int256(300e6), "equity = collateral at entry");
        vm.assertEq(v.maintenanceMargin, 15e6, "0.5% of $3000");
        // (3000 - 300) / 0.995 = 2713.56783919... -> floor in e8
        vm.assertEq(v.liquidationPrice, 271356783919, "long liquidation price");
        vm.assertEq(v.markPrice, 3000e8, "mark");
        vm.assertEq(v.markUpdatedAt, T0, "mark time");
        vm.assertFalse(v.liquidatable, "healthy");

        _open(TRADER, BTC, false, 1e17, 600e6); // 0.1 BTC short at 60000, $600
        v = _pos(TRADER, BTC);
        // (60000 + 600/0.1) / 1.005 = 65671.64179104... -> floor in e8
        vm.assertEq(v.liquidationPrice, 6567164179104, "short liquidation price");

        PerpEngine.MarketView memory mv = engine.getMarket(ETH);
        vm.assertEq(mv.longOpenInterest, 1e18, "long OI in size units");
        vm.assertEq(mv.params.feed, address(ethFeed), "feed");
        vm.assertEq(engine.getMarket(BTC).shortOpenInterest, 1e17, "short OI");
        vm.assertEq(engine.marketCount(), 2, "two markets");
        vm.assertEq(engine.owner(), address(this), "owner");
        vm.assertEq(address(engine.collateralToken()), address(usd), "collateral token");
    }

    /// A long whose collateral exceeds its entry value per unit has no reachable liquidation price (0).
    function test_LiquidationPriceZeroForUnreachableLong() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _addMargin(TRADER, TRADER, ETH, 3000e6); // collateral 3300 > 3000 of notional
        vm.assertEq(_pos(TRADER, ETH).liquidationPrice, 0, "never liquidatable");
        ethFeed.pushPrice(1);
        vm.assertFalse(_pos(TRADER, ETH).liquidatable, "safe even at 1e-8 USD");
    }

    /// getPositions returns one view per (account, market) pair, including non-existent ones.
    function test_GetPositionsBatch() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER2, BTC, false, 1e17, 600e6);
        address[] memory accounts = new address[](3);
        uint256[] memory ids = new uint256[](3);
        (accounts[0], ids[0]) = (TRADER, ETH);
        (accounts[1], ids[1]) = (TRADER2, BTC);
        (accounts[2], ids[2]) = (TRADER, BTC);
        PerpEngine.PositionView[] memory vs = engine.getPositions(accounts, ids);
        vm.assertEq(vs.length, 3, "three views");
        vm.assertTrue(vs[0].exists && vs[0].isLong, "first");
        vm.assertTrue(vs[1].exists && !vs[1].isLong, "second");
        vm.assertEq(vs[1].markPrice, 60000e8, "second mark");
        vm.assertFalse(vs[2].exists, "third absent");
        vm.assertEq(vs[2].markPrice, 60000e8, "absent still reports the mark");

        uint256[] memory short_ = new uint256[](2);
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.getPositions(accounts, short_);
    }

    // ------------------------------------------------------------ liquidation boundary

    /// At the price where equity == maintenance the position is safe; one price unit lower it is liquidatable.
    function test_LiquidationExactlyAtMaintenanceBoundary() public {
        // 100 ETH long: one e8 price unit moves pnl by exactly one e6 unit.
        // p* = 2000e8 + 100: mm = floor(p* * 0.005) = 1e9, pnl = p* - 3000e8, so C = 1e9 - pnl gives equity == mm.
        uint256 pStar = 2000e8 + 100;
        uint256 c = 1e9 + (3000e8 - pStar);
        _open(TRADER, ETH, true, 100e18, c);

        ethFeed.pushPrice(int256(pStar));
        PerpEngine.PositionView memory v = _pos(TRADER, ETH);
        vm.assertEq(v.equity, int256(1e9), "equity at p*");
        vm.assertEq(v.maintenanceMargin, 1e9, "mm at p*");
        vm.assertFalse(v.liquidatable, "equity == mm is not liquidatable");
        vm.expectRevert(
            abi.encodeWithSelector(PerpEngine.NotLiquidatable.selector, TRADER, ETH, int256(1e9), uint256(1e9))
        );
        vm.prank(LIQUIDATOR);
        engine.liquidate(TRADER, ETH);

        ethFeed.pushPrice(int256(pStar - 1));
        v = _pos(TRADER, ETH);
        vm.assertEq(v.equity, int256(1e9 - 1), "equity one unit lower");
        vm.assertEq(v.maintenanceMargin, 1e9, "mm unchanged (floor)");
        vm.assertTrue(v.liquidatable, "one unit worse is liquidatable");

        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.Liquidated(TRADER, ETH, LIQUIDATOR, pStar - 1, 1e9 - 1, 0);
        vm.prank(LIQUIDATOR);
        engine.liquidate(TRADER, ETH);
        vm.assertEq(usd.balanceOf(LIQUIDATOR), 1e9 - 1, "penalty capped at equity");
        vm.assertFalse(_pos(TRADER, ETH).exists, "position deleted");
        vm.assertEq(engine.getMarket(ETH).longOpenInterest, 0, "OI released");
    }

    /// For random size, leverage, entry price, side and fee age, the on-chain boundary matches the design.md
    /// formulas: safe at the boundary price, liquidatable one price unit worse, and the view's liquidation price
    /// is within 1/slope + 2 price units of it.
    function testFuzz_LiquidationBoundary(uint256 sizeSeed, uint256 levSeed, uint256 priceSeed, uint256 dtSeed, bool isLong)
        public
    {
        uint256 p0 = bound(priceSeed, 100e8, 100_000e8);
        uint256 size = bound(sizeSeed, 1e16, 1e22);
        uint256 lev = bound(levSeed, 2, 40);
        uint256 dt = bound(dtSeed, 0, 30 days);
        ethFeed.pushPrice(int256(p0));
        uint256 c = size * p0 / 1e20 / lev;
        vm.assume(c > 0);
        _open(TRADER, ETH, isLong, size, c);
        vm.warp(block.timestamp + dt);

        PerpEngine.PositionView memory v = _pos(TRADER, ETH);
        int256 cf = int256(v.collateral) - int256(v.pendingFee);
        uint256 safe;
        uint256 bad;
        if (isLong) {
            (bad, safe) = (1, p0); // invariant: excess(bad) < 0 <= excess(safe)
        } else {
            (safe, bad) = (p0, 3 * p0);
        }
        require(_marginExcess(isLong, size, p0, cf, bad) < 0, "search start not liquidatable");
        require(_marginExcess(isLong, size, p0, cf, safe) >= 0, "search start not safe");
        while (safe > bad ? safe - bad > 1 : bad - safe > 1) {
            uint256 mid = (safe + bad) / 2;
            if (_marginExcess(isLong, size, p0, cf, mid) < 0) bad = mid;
            else safe = mid;
        }

        ethFeed.pushPrice(int256(safe));
        v = _pos(TRADER, ETH);
        vm.assertEq(v.equity - int256(v.maintenanceMargin), _marginExcess(isLong, size, p0, cf, safe), "excess");
        vm.assertFalse(v.liquidatable, "boundary price is safe");
        uint256 tol = 1e38 / (size * (1e18 - MM_WAD)) + 2;
        vm.assertApproxEqAbs(v.liquidationPrice, safe, tol, "view liquidation price near boundary");
        vm.expectRevert(
            abi.encodeWithSelector(PerpEngine.NotLiquidatable.selector, TRADER, ETH, v.equity, v.maintenanceMargin)
        );
        engine.liquidate(TRADER, ETH);

        ethFeed.pushPrice(int256(bad));
        v = _pos(TRADER, ETH);
        vm.assertTrue(v.liquidatable, "one unit worse is liquidatable");
        uint256 value = v.equity > 0 ? uint256(v.equity) : 0;
        uint256 penalty = size * bad / 1e20 * PENALTY_WAD / 1e18;
        if (penalty > value) penalty = value;
        vm.prank(LIQUIDATOR);
        engine.liquidate(TRADER, ETH);
        vm.assertEq(usd.balanceOf(LIQUIDATOR), penalty, "penalty");
        vm.assertEq(usd.balanceOf(TRADER), value - penalty, "returned");
        vm.assertFalse(_pos(TRADER, ETH).exists, "deleted");
    }

    /// With maintenance above the penalty, the equity left after the penalty goes back to the account.
    function test_LiquidationReturnsRemainingEquity() public {
        PerpEngine.MarketParams memory p = _params(address(ethFeed));
        p.maintenanceMarginWad = 5e16; // 5 %
        uint256 id = engine.createMarket(p);
        _open(TRADER, id, true, 1e18, 300e6);
        // at 2840: pnl -160, equity 140 < mm 142; penalty 1% of 2840 = 28.40; returned 111.60
        ethFeed.pushPrice(2840e8);
        vm.prank(LIQUIDATOR);
        engine.liquidate(TRADER, id);
        vm.assertEq(usd.balanceOf(LIQUIDATOR), 28.4e6, "penalty");
        vm.assertEq(usd.balanceOf(TRADER), 111.6e6, "returned to account");
    }

    // ------------------------------------------------------------ margin: third-party top-up

    /// Anyone can top up someone else's position; the payer pays, the owner's wallet is untouched.
    function test_ThirdPartyTopUp() public {
        _open(TRADER, ETH, true, 1e18, 100e6);
        ethFeed.pushPrice(2905e8); // equity 5 < mm 14.525
        vm.assertTrue(_pos(TRADER, ETH).liquidatable, "endangered");

        usd.mint(STRANGER, 50e6);
        vm.prank(STRANGER);
        usd.approve(address(engine), 50e6);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.MarginAdded(TRADER, ETH, STRANGER, 50e6);
        vm.prank(STRANGER);
        engine.addMargin(TRADER, ETH, 50e6);

        vm.assertEq(_pos(TRADER, ETH).collateral, 150e6, "collateral topped up");
        vm.assertFalse(_pos(TRADER, ETH).liquidatable, "rescued");
        vm.assertEq(usd.balanceOf(STRANGER), 0, "payer paid");
        vm.assertEq(usd.balanceOf(TRADER), 0, "owner wallet untouched");
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.NotLiquidatable.selector, TRADER, ETH, int256(55e6), uint256(14.525e6)));
        engine.liquidate(TRADER, ETH);
    }

    /// A top-up without allowance fails with the token's require string; a top-up of nothing or of no position reverts.
    function test_AddMarginErrors() public {
        _open(TRADER, ETH, true, 1e18, 100e6);
        usd.mint(STRANGER, 50e6);
        vm.prank(STRANGER);
        vm.expectRevert(bytes("ERC20: insufficient allowance"));
        engine.addMargin(TRADER, ETH, 50e6);
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.addMargin(TRADER, ETH, 0);
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.NoPosition.selector, TRADER, BTC));
        engine.addMargin(TRADER, BTC, 1e6);
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.UnknownMarket.selector, 7));
        engine.addMargin(TRADER, 7, 1e6);
    }

    // ------------------------------------------------------------ operators

    /// An approved operator can remove, move and reduce for the owner; proceeds only ever reach the owner.
    function test_OperatorActsForOwnerProceedsToOwner() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER, BTC, true, 1e17, 600e6);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.OperatorSet(TRADER, KEEPER, true);
        vm.prank(TRADER);
        engine.setOperator(KEEPER, true);
        vm.assertTrue(engine.isOperator(TRADER, KEEPER), "approved");
        uint256 engineBefore = usd.balanceOf(address(engine));

        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.MarginRemoved(TRADER, ETH, KEEPER, 10e6);
        vm.prank(KEEPER);
        engine.removeMargin(TRADER, ETH, 10e6);
        vm.assertEq(usd.balanceOf(TRADER), 10e6, "owner receives the removed margin");
        vm.assertEq(usd.balanceOf(KEEPER), 0, "operator receives nothing");

        vm.prank(KEEPER);
        engine.moveMargin(TRADER, BTC, ETH, 50e6);
        vm.assertEq(_pos(TRADER, ETH).collateral, 340e6, "moved in");
        vm.assertEq(_pos(TRADER, BTC).collateral, 550e6, "moved out");

        ethFeed.pushPrice(3300e8);
        vm.prank(KEEPER);
        engine.decreasePosition(TRADER, ETH, 0.5e18);
        vm.assertEq(_pos(TRADER, ETH).collateral, 490e6, "realised +150 stays in collateral");
        vm.assertEq(usd.balanceOf(KEEPER), 0, "operator still has nothing");
        vm.assertEq(usd.balanceOf(TRADER), 10e6, "owner wallet only got the removal");
        vm.assertEq(usd.balanceOf(address(engine)), engineBefore - 10e6, "only the removal left the engine");

        // The operator's own calls act on its own (absent) positions, never the owner's.
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.NoPosition.selector, KEEPER, ETH));
        vm.prank(KEEPER);
        engine.closePosition(ETH);
    }

    /// A non-operator, an operator of another account and a revoked operator are all refused.
    function test_NonOperatorRefused() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER, BTC, true, 1e17, 600e6);
        _open(TRADER2, ETH, true, 1e18, 300e6);
        vm.prank(TRADER);
        engine.setOperator(KEEPER, true);

        _expectNotAuthorized(STRANGER, TRADER);
        _expectNotAuthorized(KEEPER, TRADER2); // approved by TRADER only

        vm.prank(TRADER);
        engine.setOperator(KEEPER, false);
        vm.assertFalse(engine.isOperator(TRADER, KEEPER), "revoked");
        _expectNotAuthorized(KEEPER, TRADER);
        vm.assertEq(usd.balanceOf(KEEPER) + usd.balanceOf(STRANGER), 0, "nobody got anything");
    }

    function _expectNotAuthorized(address caller, address account) internal {
        bytes memory err = abi.encodeWithSelector(PerpEngine.NotAuthorized.selector, caller);
        vm.expectRevert(err);
        vm.prank(caller);
        engine.removeMargin(account, ETH, 1e6);
        vm.expectRevert(err);
        vm.prank(caller);
        engine.moveMargin(account, ETH, BTC, 1e6);
        vm.expectRevert(err);
        vm.prank(caller);
        engine.decreasePosition(account, ETH, 1e17);
    }

    // ------------------------------------------------------------ stale prices

    /// Every price-dependent action reverts StalePrice once the feed is older than the heartbeat; addMargin works.
    function test_StalePriceRejectedForEachAction() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER, BTC, true, 1e17, 600e6);
        ethFeed.pushPrice(2000e8); // deeply liquidatable
        btcFeed.pushPrice(60000e8);
        vm.warp(T0 + HEARTBEAT); // age == heartbeat is still fresh
        vm.assertTrue(_pos(TRADER, ETH).liquidatable, "fresh and underwater");

        vm.warp(T0 + HEARTBEAT + 1);
        btcFeed.pushPrice(60000e8); // BTC fresh, ETH stale
        vm.assertFalse(_pos(TRADER, ETH).liquidatable, "a stale price never marks liquidatable");
        bytes memory stale = abi.encodeWithSelector(PerpEngine.StalePrice.selector, ETH, T0, HEARTBEAT);

        usd.mint(TRADER2, 100e6);
        vm.prank(TRADER2);
        usd.approve(address(engine), 100e6);
        vm.expectRevert(stale);
        vm.prank(TRADER2);
        engine.openPosition(ETH, true, 1e16, 100e6); // open

        usd.mint(TRADER, 1000e6);
        vm.startPrank(TRADER);
        usd.approve(address(engine), type(uint256).max);
        vm.expectRevert(stale);
        engine.openPosition(ETH, true, 1e16, 10e6); // increase
        vm.expectRevert(stale);
        engine.decreasePosition(TRADER, ETH, 1e17);
        vm.expectRevert(stale);
        engine.closePosition(ETH);
        vm.expectRevert(stale);
        engine.removeMargin(TRADER, ETH, 1e6);
        vm.expectRevert(stale);
        engine.moveMargin(TRADER, ETH, BTC, 1e6);
        vm.stopPrank();
        vm.expectRevert(stale);
        vm.prank(LIQUIDATOR);
        engine.liquidate(TRADER, ETH);

        // a top-up needs no price (it settles the pending fee first)
        PerpEngine.PositionView memory before = _pos(TRADER, ETH);
        vm.prank(TRADER);
        engine.addMargin(TRADER, ETH, 1000e6);
        vm.assertEq(_pos(TRADER, ETH).collateral, before.collateral - before.pendingFee + 1000e6, "topped up");
        // moving INTO a market with a stale price is allowed: only the source needs a price
        vm.prank(TRADER);
        engine.moveMargin(TRADER, BTC, ETH, 1e6);
    }

    // ------------------------------------------------------------ fees

    /// The borrow fee accrues linearly on entry notional and moves the liquidation price toward the mark.
    function test_FeeAccrualMovesLiquidationPrice() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER2, ETH, false, 1e18, 300e6);
        uint256 longLiq0 = _pos(TRADER, ETH).liquidationPrice;
        uint256 shortLiq0 = _pos(TRADER2, ETH).liquidationPrice;

        vm.warp(T0 + 30 days);
        PerpEngine.PositionView memory v = _pos(TRADER, ETH);
        uint256 expectedFee = 3000e6 * (FEE_RATE_WAD * 30 days) / 1e18;
        vm.assertEq(v.pendingFee, expectedFee, "fee = entryNotional * rate * dt / 1e18");
        vm.assertApproxEqAbs(v.pendingFee, 24_657_534, 1, "10%/yr * 30/365 * $3000 = $24.657534");
        vm.assertEq(v.equity, int256(300e6 - expectedFee), "fee reduces equity");
        uint256 cf = 300e6 - expectedFee;
        vm.assertEq(v.liquidationPrice, (3000e8 * 1e18 - cf * 1e20) * 1e18 / (1e18 * (1e18 - MM_WAD)), "long formula");
        vm.assertGt(v.liquidationPrice, longLiq0, "long liquidation price rises with fees");
        vm.assertLt(_pos(TRADER2, ETH).liquidationPrice, shortLiq0, "short liquidation price falls with fees");

        // any state change settles the fee into collateral
        usd.mint(TRADER, 10e6);
        vm.startPrank(TRADER);
        usd.approve(address(engine), 10e6);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.FeeSettled(TRADER, ETH, expectedFee);
        engine.addMargin(TRADER, ETH, 10e6);
        vm.stopPrank();
        v = _pos(TRADER, ETH);
        vm.assertEq(v.collateral, 310e6 - expectedFee, "fee settled into collateral");
        vm.assertEq(v.pendingFee, 0, "nothing pending after settlement");
    }

    /// setFeeRate accrues the index at the old rate before switching; only the owner may call it.
    function test_SetFeeRateAccruesFirst() public {
        vm.warp(T0 + 10 days);
        uint256 newRate = FEE_RATE_WAD * 3;
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.FeeRateSet(ETH, newRate);
        engine.setFeeRate(ETH, newRate);
        vm.assertEq(engine.getMarket(ETH).cumulativeFeeIndexWad, FEE_RATE_WAD * 10 days, "old rate up to now");
        vm.warp(T0 + 15 days);
        vm.assertEq(
            engine.getMarket(ETH).cumulativeFeeIndexWad, FEE_RATE_WAD * 10 days + newRate * 5 days, "new rate after"
        );
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.NotAuthorized.selector, STRANGER));
        vm.prank(STRANGER);
        engine.setFeeRate(ETH, 0);
    }

    /// Fees larger than the collateral floor the collateral at zero on settlement.
    function test_FeeSettlementFloorsCollateralAtZero() public {
        _open(TRADER, ETH, true, 1e18, 100e6);
        vm.warp(T0 + 4 * 365 days); // 40% of $3000 = $1200 > $100
        ethFeed.pushPrice(5000e8); // large profit keeps equity positive
        usd.mint(STRANGER, 1e6);
        vm.startPrank(STRANGER);
        usd.approve(address(engine), 1e6);
        engine.addMargin(TRADER, ETH, 1e6);
        vm.stopPrank();
        vm.assertEq(_pos(TRADER, ETH).collateral, 1e6, "collateral floored at 0, then topped up");
    }

    // ------------------------------------------------------------ trading rules

    /// Opening is allowed up to exactly max leverage and refused one collateral unit beyond.
    function test_MaxLeverageOnOpen() public {
        _open(TRADER, ETH, true, 1e18, 60e6); // 3000 / 60 = 50x exactly
        usd.mint(TRADER2, 60e6);
        vm.startPrank(TRADER2);
        usd.approve(address(engine), 60e6);
        vm.expectRevert(
            abi.encodeWithSelector(PerpEngine.LeverageTooHigh.selector, 3000e6, int256(59_999_999), MAX_LEV_WAD)
        );
        engine.openPosition(ETH, true, 1e18, 59_999_999);
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.openPosition(ETH, true, 0, 60e6);
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.UnknownMarket.selector, 2));
        engine.openPosition(2, true, 1e18, 60e6);
        vm.stopPrank();
    }

    /// removeMargin keeps the initial-margin check: down to 50x is fine, one unit more is refused.
    function test_RemoveMarginLeverageCheck() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        vm.startPrank(TRADER);
        vm.expectRevert(
            abi.encodeWithSelector(PerpEngine.LeverageTooHigh.selector, 3000e6, int256(59_999_999), MAX_LEV_WAD)
        );
        engine.removeMargin(TRADER, ETH, 240_000_001);
        engine.removeMargin(TRADER, ETH, 240e6);
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.removeMargin(TRADER, ETH, 61e6); // more than the collateral
        vm.stopPrank();
        vm.assertEq(usd.balanceOf(TRADER), 240e6, "paid to owner");
    }

    /// moveMargin checks the source's leverage and cannot move between the same market.
    function test_MoveMarginChecks() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER, BTC, true, 1e17, 600e6);
        vm.startPrank(TRADER);
        vm.expectRevert(
            abi.encodeWithSelector(PerpEngine.LeverageTooHigh.selector, 6000e6, int256(119_999_999), MAX_LEV_WAD)
        );
        engine.moveMargin(TRADER, BTC, ETH, 480_000_001);
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.moveMargin(TRADER, ETH, ETH, 1e6);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.MarginMoved(TRADER, BTC, ETH, 480e6);
        engine.moveMargin(TRADER, BTC, ETH, 480e6);
        vm.stopPrank();
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.NoPosition.selector, TRADER2, ETH));
        vm.prank(TRADER2);
        engine.moveMargin(TRADER2, ETH, BTC, 1e6);
    }

    /// Increasing sets the entry price to the floored size-weighted average; the other side is refused.
    function test_IncreaseAveragesEntry() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        ethFeed.pushPrice(3001e8 + 1);
        usd.mint(TRADER, 100e6);
        vm.startPrank(TRADER);
        usd.approve(address(engine), 100e6);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.PositionIncreased(TRADER, ETH, 2e18, 3001e8 + 1, 100e6);
        engine.openPosition(ETH, true, 2e18, 100e6);
        vm.stopPrank();
        PerpEngine.PositionView memory v = _pos(TRADER, ETH);
        vm.assertEq(v.size, 3e18, "size");
        // (1 * 3000e8 + 2 * (3001e8 + 1)) / 3 = 300066666667.33 -> floor
        vm.assertEq(v.entryPrice, 300_066_666_667, "weighted average, floored");
        vm.assertEq(v.collateral, 400e6, "collateral added");
        vm.assertEq(engine.getMarket(ETH).longOpenInterest, 3e18, "OI");

        usd.mint(TRADER, 10e6);
        vm.startPrank(TRADER);
        usd.approve(address(engine), 10e6);
        vm.expectRevert(PerpEngine.SideMismatch.selector);
        engine.openPosition(ETH, false, 1e18, 10e6);
        vm.stopPrank();
    }

    /// Decreasing realises pnl into collateral (floored toward -inf for losses) and keeps equity.
    function test_DecreaseRealisesIntoCollateral() public {
        _open(TRADER, ETH, false, 3e18, 900e6);
        ethFeed.pushPrice(3000e8 + 1); // short loses 3e-8 USD -> pnl floors to -1 unit
        vm.assertEq(_pos(TRADER, ETH).equity, int256(900e6 - 1), "floored loss");
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.PositionDecreased(TRADER, ETH, 1e18, 3000e8 + 1, -1);
        vm.prank(TRADER);
        engine.decreasePosition(TRADER, ETH, 1e18);
        PerpEngine.PositionView memory v = _pos(TRADER, ETH);
        vm.assertEq(v.collateral, 900e6 - 1, "realised loss");
        vm.assertEq(v.size, 2e18, "size");
        vm.assertEq(v.entryPrice, 3000e8, "entry unchanged");
        vm.assertEq(engine.getMarket(ETH).shortOpenInterest, 2e18, "OI");

        vm.startPrank(TRADER);
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.decreasePosition(TRADER, ETH, 2e18); // use closePosition for the whole
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.decreasePosition(TRADER, ETH, 0);
        vm.stopPrank();
    }

    /// Closing pays max(equity, 0) to the owner: profit comes from the pool, a bankrupt close pays nothing.
    function test_ClosePaysEquity() public {
        _open(TRADER, ETH, true, 1e18, 300e6);
        _open(TRADER2, ETH, true, 1e18, 300e6);
        ethFeed.pushPrice(3300e8);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.PositionClosed(TRADER, ETH, 3300e8, int256(600e6));
        vm.prank(TRADER);
        engine.closePosition(ETH);
        vm.assertEq(usd.balanceOf(TRADER), 600e6, "collateral + profit");
        vm.assertFalse(_pos(TRADER, ETH).exists, "deleted");

        ethFeed.pushPrice(2600e8); // TRADER2 equity -100
        vm.prank(TRADER2);
        engine.closePosition(ETH);
        vm.assertEq(usd.balanceOf(TRADER2), 0, "nothing paid on a bankrupt close");
        vm.assertEq(engine.getMarket(ETH).longOpenInterest, 0, "OI released");
    }

    /// Only the owner creates markets, and bad parameters are refused.
    function test_CreateMarketGuards() public {
        PerpEngine.MarketParams memory p = _params(address(ethFeed));
        vm.expectRevert(abi.encodeWithSelector(PerpEngine.NotAuthorized.selector, STRANGER));
        vm.prank(STRANGER);
        engine.createMarket(p);
        p.maintenanceMarginWad = 1e18;
        vm.expectRevert(PerpEngine.InvalidAmount.selector);
        engine.createMarket(p);
        vm.expectEmit(true, true, true, true, address(engine));
        emit PerpEngine.MarketCreated(2, address(btcFeed));
        engine.createMarket(_params(address(btcFeed)));
    }

    function _addMargin(address payer, address account, uint256 marketId, uint256 amount) internal {
        usd.mint(payer, amount);
        vm.startPrank(payer);
        usd.approve(address(engine), amount);
        engine.addMargin(account, marketId, amount);
        vm.stopPrank();
    }
}
