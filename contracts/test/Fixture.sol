// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// Test values are small and known: casts between uint256 and int256 cannot truncate here.
// forge-lint: disable-start(unsafe-typecast)

import {TestBase} from "./Vm.sol";
import {MockUSD} from "../src/MockUSD.sol";
import {PriceFeed} from "../src/PriceFeed.sol";
import {PerpEngine} from "../src/PerpEngine.sol";

/// @notice The devchain deployment (docs/design.md): MockUSD, ETH and BTC feeds, PerpEngine with two markets
///         (maintenance 0.5%, max leverage 50x, penalty 1%, fee 10%/yr of entry notional, heartbeat 3600 s),
///         and a funded counterparty pool. The test contract owns the feeds and the engine.
abstract contract Fixture is TestBase {
    uint256 internal constant ETH = 0;
    uint256 internal constant BTC = 1;
    uint256 internal constant MM_WAD = 5e15; // 0.5 %
    uint256 internal constant MAX_LEV_WAD = 50e18;
    uint256 internal constant PENALTY_WAD = 1e16; // 1 %
    uint256 internal constant FEE_RATE_WAD = uint256(1e17) / 31_536_000; // 10 %/yr, per second
    uint256 internal constant HEARTBEAT = 3600;
    uint256 internal constant T0 = 1_700_000_000;

    address internal constant TRADER = address(0x1001);
    address internal constant KEEPER = address(0x1002);
    address internal constant LIQUIDATOR = address(0x1003);
    address internal constant STRANGER = address(0x1004);
    address internal constant TRADER2 = address(0x1005);

    MockUSD internal usd;
    PriceFeed internal ethFeed;
    PriceFeed internal btcFeed;
    PerpEngine internal engine;

    function setUp() public virtual {
        vm.warp(T0);
        usd = new MockUSD();
        ethFeed = new PriceFeed("ETH / USD", 3000e8);
        btcFeed = new PriceFeed("BTC / USD", 60000e8);
        engine = new PerpEngine(address(usd));
        engine.createMarket(_params(address(ethFeed)));
        engine.createMarket(_params(address(btcFeed)));
        usd.mint(address(this), 100_000_000e6);
        usd.approve(address(engine), type(uint256).max);
        engine.depositLiquidity(100_000_000e6);
    }

    function _params(address feed) internal pure returns (PerpEngine.MarketParams memory) {
        return PerpEngine.MarketParams({
            feed: feed,
            maintenanceMarginWad: MM_WAD,
            maxLeverageWad: MAX_LEV_WAD,
            liquidationPenaltyWad: PENALTY_WAD,
            feeRatePerSecondWad: FEE_RATE_WAD,
            heartbeat: HEARTBEAT
        });
    }

    function _feed(uint256 marketId) internal view returns (PriceFeed) {
        return marketId == ETH ? ethFeed : btcFeed;
    }

    /// @dev Mint `collateral` to `who`, approve the engine and open (or increase) a position as `who`.
    function _open(address who, uint256 marketId, bool isLong, uint256 size, uint256 collateral) internal {
        usd.mint(who, collateral);
        vm.startPrank(who);
        usd.approve(address(engine), collateral);
        engine.openPosition(marketId, isLong, size, collateral);
        vm.stopPrank();
    }

    function _pos(address who, uint256 marketId) internal view returns (PerpEngine.PositionView memory) {
        return engine.getPosition(who, marketId);
    }

    // Python-side formulas (docs/design.md), replicated to cross-check the engine.

    function _floorDiv(int256 a, int256 b) internal pure returns (int256 q) {
        q = a / b;
        if (a % b != 0 && a < 0) q -= 1;
    }

    function _pnlRef(bool isLong, uint256 size, uint256 entry, uint256 price) internal pure returns (int256) {
        int256 d = int256(size) * (int256(price) - int256(entry));
        return _floorDiv(isLong ? d : -d, 1e20);
    }

    function _mmRef(uint256 size, uint256 price) internal pure returns (uint256) {
        return size * price * MM_WAD / (1e20 * 1e18);
    }

    /// @dev equity - maintenance at `price` for a position with collateral - pendingFee = `cf`.
    function _marginExcess(bool isLong, uint256 size, uint256 entry, int256 cf, uint256 price)
        internal
        pure
        returns (int256)
    {
        return cf + _pnlRef(isLong, size, entry, price) - int256(_mmRef(size, price));
    }
}
