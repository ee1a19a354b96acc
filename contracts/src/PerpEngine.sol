// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {IERC20} from "./interfaces/IERC20.sol";
import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";

/// @title PerpEngine
/// @notice The reference isolated-margin perpetual protocol that margin keeper protects positions on.
///         One position per (account, marketId); collateral in a 6-decimal USD token; prices from
///         Chainlink-style feeds (8 decimals); sizes in 1e-18 of the base asset; ratios in WAD (1e18).
/// @dev The arithmetic is specified in docs/design.md ("Reference protocol rules") and replicated bit for bit
///      by keeper/replay/model.py. Units: USD amounts e6, prices e8, sizes e18, ratios WAD.
///        notional = size * price / 1e20                       (floor)
///        mm       = size * price * maintenanceMarginWad / 1e38 (floor, of current notional)
///        pnl      = floor(±size * (price - entryPrice) / 1e20) (+ long, - short; toward -inf)
///        fee      = entryNotional * (indexNow - positionIndex) / 1e18 (floor)
///        equity   = collateral + pnl - fee                     (signed)
///        liquidatable <=> equity < mm and the price is fresh
contract PerpEngine {
    // ---------------------------------------------------------------- types

    struct MarketParams {
        address feed;
        uint256 maintenanceMarginWad;
        uint256 maxLeverageWad;
        uint256 liquidationPenaltyWad;
        uint256 feeRatePerSecondWad;
        uint256 heartbeat;
    }

    struct MarketView {
        MarketParams params;
        uint256 cumulativeFeeIndexWad;
        uint256 longOpenInterest;
        uint256 shortOpenInterest;
    }

    struct PositionView {
        bool exists;
        bool isLong;
        uint256 size;
        uint256 entryPrice;
        uint256 collateral;
        uint256 pendingFee;
        int256 equity;
        uint256 maintenanceMargin;
        uint256 liquidationPrice;
        uint256 markPrice;
        uint256 markUpdatedAt;
        bool liquidatable;
    }

    struct Market {
        MarketParams params;
        uint256 cumulativeFeeIndexWad;
        uint256 lastAccrual;
        uint256 longOpenInterest;
        uint256 shortOpenInterest;
    }

    struct Position {
        bool isLong;
        uint256 size;
        uint256 entryPrice;
        uint256 collateral;
        uint256 feeIndexWad;
    }

    // ---------------------------------------------------------------- constants and state

    uint256 private constant WAD = 1e18;
    uint256 private constant NOTIONAL_DIVISOR = 1e20;

    /// @notice The account allowed to create markets and set fee rates (the deployer).
    address public immutable owner;
    /// @notice The collateral token (6 decimals).
    IERC20 public immutable collateralToken;

    Market[] private _markets;
    mapping(address => mapping(uint256 => Position)) private _positions;
    mapping(address => mapping(address => bool)) private _operators;

    // ---------------------------------------------------------------- events

    event MarketCreated(uint256 indexed marketId, address feed);
    event FeeRateSet(uint256 indexed marketId, uint256 rate);
    event OperatorSet(address indexed account, address indexed operator, bool approved);
    event PositionOpened(
        address indexed account, uint256 indexed marketId, bool isLong, uint256 size, uint256 price, uint256 collateral
    );
    event PositionIncreased(
        address indexed account, uint256 indexed marketId, uint256 sizeDelta, uint256 price, uint256 collateralDelta
    );
    event PositionDecreased(
        address indexed account, uint256 indexed marketId, uint256 sizeDelta, uint256 price, int256 realizedPnl
    );
    event PositionClosed(address indexed account, uint256 indexed marketId, uint256 price, int256 payout);
    event MarginAdded(address indexed account, uint256 indexed marketId, address indexed payer, uint256 amount);
    event MarginRemoved(address indexed account, uint256 indexed marketId, address indexed caller, uint256 amount);
    event MarginMoved(address indexed account, uint256 fromMarketId, uint256 toMarketId, uint256 amount);
    event FeeSettled(address indexed account, uint256 indexed marketId, uint256 fee);
    event Liquidated(
        address indexed account,
        uint256 indexed marketId,
        address indexed liquidator,
        uint256 price,
        uint256 penalty,
        uint256 returned
    );

    // ---------------------------------------------------------------- errors

    error StalePrice(uint256 marketId, uint256 updatedAt, uint256 heartbeat);
    error NotLiquidatable(address account, uint256 marketId, int256 equity, uint256 maintenanceMargin);
    error NotAuthorized(address caller);
    error NoPosition(address account, uint256 marketId);
    error UnknownMarket(uint256 marketId);
    error LeverageTooHigh(uint256 notional, int256 equity, uint256 maxLeverageWad);
    error InvalidAmount();
    error SideMismatch();
    error InvalidPrice(int256 answer);

    // ---------------------------------------------------------------- setup

    /// @param collateralToken_ the 6-decimal token used for collateral, fees and payouts
    constructor(address collateralToken_) {
        owner = msg.sender;
        collateralToken = IERC20(collateralToken_);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotAuthorized(msg.sender);
        _;
    }

    /// @notice List a new market. Owner only.
    /// @dev Reverts `InvalidAmount` for a zero feed, maintenance >= 100%, zero max leverage or penalty > 100%.
    /// @return marketId the new market's id (0, 1, ... in creation order)
    function createMarket(MarketParams calldata params) external onlyOwner returns (uint256 marketId) {
        if (
            params.feed == address(0) || params.maintenanceMarginWad >= WAD || params.maxLeverageWad == 0
                || params.liquidationPenaltyWad > WAD
        ) revert InvalidAmount();
        marketId = _markets.length;
        _markets.push(
            Market({
                params: params,
                cumulativeFeeIndexWad: 0,
                lastAccrual: block.timestamp,
                longOpenInterest: 0,
                shortOpenInterest: 0
            })
        );
        emit MarketCreated(marketId, params.feed);
    }

    /// @notice Change a market's borrow-fee rate (WAD per second of entry notional). Owner only.
    /// @dev The fee index is accrued at the old rate up to now before the new rate takes effect.
    function setFeeRate(uint256 marketId, uint256 feeRatePerSecondWad) external onlyOwner {
        Market storage m = _market(marketId);
        _accrue(m);
        m.params.feeRatePerSecondWad = feeRatePerSecondWad;
        emit FeeRateSet(marketId, feeRatePerSecondWad);
    }

    /// @notice Allow (or stop allowing) `operator` to removeMargin / moveMargin / decreasePosition for the caller.
    /// @dev An operator can never send funds anywhere but the owner's wallet or the owner's positions.
    function setOperator(address operator, bool approved) external {
        _operators[msg.sender][operator] = approved;
        emit OperatorSet(msg.sender, operator, approved);
    }

    /// @notice Add tokens to the counterparty pool that pays traders' profits. Pulls from the caller.
    function depositLiquidity(uint256 amount) external {
        if (amount == 0) revert InvalidAmount();
        _pull(msg.sender, amount);
    }

    // ---------------------------------------------------------------- trading

    /// @notice Open a position of `size` on `marketId` with `collateral`, or increase the caller's position on
    ///         the same side (the entry price becomes the size-weighted average, floored).
    /// @dev Needs a fresh price. After the change `notional * 1e18 <= equity * maxLeverageWad` must hold, else
    ///      `LeverageTooHigh`. Pulls `collateral` from the caller (approve first).
    function openPosition(uint256 marketId, bool isLong, uint256 size, uint256 collateral) external {
        if (size == 0) revert InvalidAmount();
        Market storage m = _market(marketId);
        uint256 price = _freshPrice(marketId, m);
        _accrue(m);
        Position storage p = _positions[msg.sender][marketId];

        if (p.size == 0) {
            p.isLong = isLong;
            p.size = size;
            p.entryPrice = price;
            p.collateral = collateral;
            p.feeIndexWad = m.cumulativeFeeIndexWad;
            emit PositionOpened(msg.sender, marketId, isLong, size, price, collateral);
        } else {
            if (p.isLong != isLong) revert SideMismatch();
            _settleFee(msg.sender, marketId, m, p);
            uint256 newSize = p.size + size;
            p.entryPrice = (p.size * p.entryPrice + size * price) / newSize;
            p.size = newSize;
            p.collateral += collateral;
            emit PositionIncreased(msg.sender, marketId, size, price, collateral);
        }
        if (isLong) m.longOpenInterest += size;
        else m.shortOpenInterest += size;

        _checkLeverage(m, p, price);
        if (collateral > 0) _pull(msg.sender, collateral);
    }

    /// @notice Reduce `account`'s position on `marketId` by `sizeDelta` (0 < sizeDelta < size). Owner or operator.
    /// @dev Needs a fresh price. The realised pnl `floor(±sizeDelta * (price - entry) / 1e20)` stays in the
    ///      position's collateral (floored at 0); nothing is paid out; the entry price is unchanged.
    function decreasePosition(address account, uint256 marketId, uint256 sizeDelta) external {
        _authorize(account);
        Market storage m = _market(marketId);
        Position storage p = _position(account, marketId);
        if (sizeDelta == 0 || sizeDelta >= p.size) revert InvalidAmount();
        uint256 price = _freshPrice(marketId, m);
        _accrue(m);
        _settleFee(account, marketId, m, p);

        int256 realized = _pnl(p.isLong, sizeDelta, p.entryPrice, price);
        p.collateral = _floorAtZero(_int(p.collateral) + realized);
        p.size -= sizeDelta;
        if (p.isLong) m.longOpenInterest -= sizeDelta;
        else m.shortOpenInterest -= sizeDelta;
        emit PositionDecreased(account, marketId, sizeDelta, price, realized);
    }

    /// @notice Close the caller's position on `marketId` and pay `max(equity, 0)` to the caller.
    /// @dev Needs a fresh price. `equity = collateral + pnl - pendingFee` (the view's equity). The event's
    ///      `payout` is the amount paid (>= 0).
    function closePosition(uint256 marketId) external {
        Market storage m = _market(marketId);
        Position storage p = _position(msg.sender, marketId);
        uint256 price = _freshPrice(marketId, m);
        _accrue(m);
        (, int256 equity) = _settleFeeForExit(msg.sender, marketId, m, p, price);

        uint256 payout = _floorAtZero(equity);
        _removePosition(m, msg.sender, marketId, p);
        emit PositionClosed(msg.sender, marketId, price, _int(payout));
        if (payout > 0) _push(msg.sender, payout);
    }

    // ---------------------------------------------------------------- margin

    /// @notice Add `amount` to `account`'s collateral on `marketId`, paid by the caller (anyone may top up).
    /// @dev Needs no price: a top-up is possible even when the feed is stale.
    function addMargin(address account, uint256 marketId, uint256 amount) external {
        if (amount == 0) revert InvalidAmount();
        Market storage m = _market(marketId);
        Position storage p = _position(account, marketId);
        _accrue(m);
        _settleFee(account, marketId, m, p);
        p.collateral += amount;
        emit MarginAdded(account, marketId, msg.sender, amount);
        _pull(msg.sender, amount);
    }

    /// @notice Withdraw `amount` of `account`'s collateral on `marketId` to `account` (always the owner, even
    ///         when an operator calls). Owner or operator.
    /// @dev Needs a fresh price; afterwards `equity * maxLeverageWad >= notional * 1e18` must hold.
    function removeMargin(address account, uint256 marketId, uint256 amount) external {
        _authorize(account);
        if (amount == 0) revert InvalidAmount();
        Market storage m = _market(marketId);
        Position storage p = _position(account, marketId);
        uint256 price = _freshPrice(marketId, m);
        _accrue(m);
        _settleFee(account, marketId, m, p);
        if (amount > p.collateral) revert InvalidAmount();
        p.collateral -= amount;
        _checkLeverage(m, p, price);
        emit MarginRemoved(account, marketId, msg.sender, amount);
        _push(account, amount);
    }

    /// @notice Move `amount` of collateral from `account`'s position on `fromMarketId` to its position on
    ///         `toMarketId`. Owner or operator. No tokens leave the engine.
    /// @dev Needs a fresh price on the source market; the source must pass the max-leverage check afterwards.
    function moveMargin(address account, uint256 fromMarketId, uint256 toMarketId, uint256 amount) external {
        _authorize(account);
        if (amount == 0 || fromMarketId == toMarketId) revert InvalidAmount();
        Market storage mFrom = _market(fromMarketId);
        Market storage mTo = _market(toMarketId);
        Position storage pFrom = _position(account, fromMarketId);
        Position storage pTo = _position(account, toMarketId);
        uint256 price = _freshPrice(fromMarketId, mFrom);
        _accrue(mFrom);
        _accrue(mTo);
        _settleFee(account, fromMarketId, mFrom, pFrom);
        _settleFee(account, toMarketId, mTo, pTo);
        if (amount > pFrom.collateral) revert InvalidAmount();
        pFrom.collateral -= amount;
        pTo.collateral += amount;
        _checkLeverage(mFrom, pFrom, price);
        emit MarginMoved(account, fromMarketId, toMarketId, amount);
    }

    // ---------------------------------------------------------------- liquidation

    /// @notice Liquidate `account`'s position on `marketId` when `equity < maintenanceMargin`. Anyone.
    /// @dev Needs a fresh price. penalty = min(max(equity, 0), notional * penaltyWad / 1e18) goes to the caller;
    ///      returned = max(equity, 0) - penalty goes to the account; the position is deleted. Reverts
    ///      `NotLiquidatable(account, marketId, equity, mm)` otherwise.
    function liquidate(address account, uint256 marketId) external {
        Market storage m = _market(marketId);
        Position storage p = _position(account, marketId);
        uint256 price = _freshPrice(marketId, m);
        _accrue(m);
        uint256 mm = _maintenance(m, p.size, price);
        (, int256 equity) = _settleFeeForExit(account, marketId, m, p, price);
        if (equity >= _int(mm)) revert NotLiquidatable(account, marketId, equity, mm);

        uint256 value = _floorAtZero(equity);
        uint256 penalty = _notional(p.size, price) * m.params.liquidationPenaltyWad / WAD;
        if (penalty > value) penalty = value;
        uint256 returned = value - penalty;
        _removePosition(m, account, marketId, p);
        emit Liquidated(account, marketId, msg.sender, price, penalty, returned);
        if (penalty > 0) _push(msg.sender, penalty);
        if (returned > 0) _push(account, returned);
    }

    // ---------------------------------------------------------------- views

    /// @notice Number of markets created so far (ids are 0 .. marketCount()-1).
    function marketCount() external view returns (uint256) {
        return _markets.length;
    }

    /// @notice A market's parameters, fee index (accrued to the current block) and open interest (size e18).
    function getMarket(uint256 marketId) external view returns (MarketView memory v) {
        Market storage m = _market(marketId);
        v.params = m.params;
        v.cumulativeFeeIndexWad = _indexNow(m);
        v.longOpenInterest = m.longOpenInterest;
        v.shortOpenInterest = m.shortOpenInterest;
    }

    /// @notice `account`'s position on `marketId` valued at the feed's latest answer (not checked for staleness
    ///         except in `liquidatable`). `exists == false` and zero fields when there is no position.
    function getPosition(address account, uint256 marketId) public view returns (PositionView memory v) {
        Market storage m = _market(marketId);
        (, int256 answer,, uint256 updatedAt,) = AggregatorV3Interface(m.params.feed).latestRoundData();
        uint256 price = _floorAtZero(answer);
        v.markPrice = price;
        v.markUpdatedAt = updatedAt;

        Position storage p = _positions[account][marketId];
        if (p.size == 0) return v;
        v.exists = true;
        v.isLong = p.isLong;
        v.size = p.size;
        v.entryPrice = p.entryPrice;
        v.collateral = p.collateral;
        v.pendingFee = _pendingFee(p, _indexNow(m));
        v.equity = _int(p.collateral) + _pnl(p.isLong, p.size, p.entryPrice, price) - _int(v.pendingFee);
        v.maintenanceMargin = _maintenance(m, p.size, price);
        v.liquidationPrice = _liquidationPrice(m, p, v.pendingFee);
        v.liquidatable = answer > 0 && !_isStale(m, updatedAt) && v.equity < _int(v.maintenanceMargin);
    }

    /// @notice `getPosition` for each (accounts[i], marketIds[i]) pair; the arrays must have equal length.
    function getPositions(address[] calldata accounts, uint256[] calldata marketIds)
        external
        view
        returns (PositionView[] memory views)
    {
        if (accounts.length != marketIds.length) revert InvalidAmount();
        views = new PositionView[](accounts.length);
        for (uint256 i = 0; i < accounts.length; i++) {
            views[i] = getPosition(accounts[i], marketIds[i]);
        }
    }

    /// @notice Whether `operator` may act for `account` (removeMargin, moveMargin, decreasePosition).
    function isOperator(address account, address operator) external view returns (bool) {
        return _operators[account][operator];
    }

    // ---------------------------------------------------------------- internals: lookups and checks

    function _market(uint256 marketId) private view returns (Market storage) {
        if (marketId >= _markets.length) revert UnknownMarket(marketId);
        return _markets[marketId];
    }

    function _position(address account, uint256 marketId) private view returns (Position storage p) {
        p = _positions[account][marketId];
        if (p.size == 0) revert NoPosition(account, marketId);
    }

    function _authorize(address account) private view {
        if (msg.sender != account && !_operators[account][msg.sender]) revert NotAuthorized(msg.sender);
    }

    function _isStale(Market storage m, uint256 updatedAt) private view returns (bool) {
        // forge-lint: disable-next-line(block-timestamp)
        return block.timestamp > updatedAt && block.timestamp - updatedAt > m.params.heartbeat;
    }

    /// @dev The feed's latest answer; reverts `InvalidPrice` for answer <= 0 and `StalePrice` when
    ///      `block.timestamp - updatedAt > heartbeat`.
    function _freshPrice(uint256 marketId, Market storage m) private view returns (uint256) {
        (, int256 answer,, uint256 updatedAt,) = AggregatorV3Interface(m.params.feed).latestRoundData();
        if (answer <= 0) revert InvalidPrice(answer);
        if (_isStale(m, updatedAt)) revert StalePrice(marketId, updatedAt, m.params.heartbeat);
        return _floorAtZero(answer);
    }

    /// @dev Initial-margin check: `notional * 1e18 <= equity * maxLeverageWad` (fails for equity <= 0 unless the
    ///      notional floors to 0). Called after fees were settled, so equity = collateral + pnl.
    function _checkLeverage(Market storage m, Position storage p, uint256 price) private view {
        uint256 notional = _notional(p.size, price);
        int256 equity = _int(p.collateral) + _pnl(p.isLong, p.size, p.entryPrice, price);
        if (_int(notional * WAD) > equity * _int(m.params.maxLeverageWad)) {
            revert LeverageTooHigh(notional, equity, m.params.maxLeverageWad);
        }
    }

    // ---------------------------------------------------------------- internals: fees

    function _indexNow(Market storage m) private view returns (uint256) {
        return m.cumulativeFeeIndexWad + m.params.feeRatePerSecondWad * (block.timestamp - m.lastAccrual);
    }

    function _accrue(Market storage m) private {
        m.cumulativeFeeIndexWad = _indexNow(m);
        m.lastAccrual = block.timestamp;
    }

    function _pendingFee(Position storage p, uint256 indexNow) private view returns (uint256) {
        return _notional(p.size, p.entryPrice) * (indexNow - p.feeIndexWad) / WAD;
    }

    /// @dev Charge the pending fee to collateral (floored at 0) and move the position's index to now.
    ///      `_accrue(m)` must have run in this call.
    function _settleFee(address account, uint256 marketId, Market storage m, Position storage p)
        private
        returns (uint256 fee)
    {
        fee = _pendingFee(p, m.cumulativeFeeIndexWad);
        p.feeIndexWad = m.cumulativeFeeIndexWad;
        if (fee > 0) {
            p.collateral = p.collateral > fee ? p.collateral - fee : 0;
            emit FeeSettled(account, marketId, fee);
        }
    }

    /// @dev For close and liquidate (the position is deleted next): equity = collateral + pnl - pendingFee,
    ///      computed before the fee is settled, i.e. exactly the view's equity; then settles the fee.
    function _settleFeeForExit(address account, uint256 marketId, Market storage m, Position storage p, uint256 price)
        private
        returns (uint256 fee, int256 equity)
    {
        fee = _pendingFee(p, m.cumulativeFeeIndexWad);
        equity = _int(p.collateral) + _pnl(p.isLong, p.size, p.entryPrice, price) - _int(fee);
        _settleFee(account, marketId, m, p);
    }

    function _removePosition(Market storage m, address account, uint256 marketId, Position storage p) private {
        if (p.isLong) m.longOpenInterest -= p.size;
        else m.shortOpenInterest -= p.size;
        delete _positions[account][marketId];
    }

    // ---------------------------------------------------------------- internals: arithmetic

    /// @dev size * price / 1e20 (floor): USD e6 value of `size` (e18) at `price` (e8).
    function _notional(uint256 size, uint256 price) private pure returns (uint256) {
        return size * price / NOTIONAL_DIVISOR;
    }

    /// @dev size * price * maintenanceMarginWad / (1e20 * 1e18) (floor).
    function _maintenance(Market storage m, uint256 size, uint256 price) private view returns (uint256) {
        return size * price * m.params.maintenanceMarginWad / (NOTIONAL_DIVISOR * WAD);
    }

    /// @dev floor(±size * (price - entry) / 1e20), + for a long, - for a short (rounded toward -inf).
    function _pnl(bool isLong, uint256 size, uint256 entry, uint256 price) private pure returns (int256) {
        int256 diff = _int(price) - _int(entry);
        int256 num = _int(size) * (isLong ? diff : -diff);
        return _floorDiv(num, _int(NOTIONAL_DIVISOR));
    }

    /// @dev Liquidation price (e8) with cf = collateral - pendingFee, q = size, P0 = entry, m = maintenance:
    ///      long  floor((P0*q - cf*1e20) * 1e18 / (q * (1e18 - m))), 0 when the numerator is <= 0;
    ///      short floor((P0*q + cf*1e20) * 1e18 / (q * (1e18 + m))), 0 when the numerator is <= 0.
    ///      This is (P0 - cf/q) / (1 - m) (long) and (P0 + cf/q) / (1 + m) (short) in exact rationals, floored.
    function _liquidationPrice(Market storage m, Position storage p, uint256 pendingFee)
        private
        view
        returns (uint256)
    {
        int256 cf = _int(p.collateral) - _int(pendingFee);
        int256 base = _int(p.entryPrice) * _int(p.size);
        int256 scaled = cf * _int(NOTIONAL_DIVISOR);
        int256 num = p.isLong ? base - scaled : base + scaled;
        if (num <= 0) return 0;
        uint256 mmw = m.params.maintenanceMarginWad;
        uint256 den = p.size * (p.isLong ? WAD - mmw : WAD + mmw);
        return _floorAtZero(num) * WAD / den;
    }

    function _floorDiv(int256 a, int256 b) private pure returns (int256 q) {
        q = a / b;
        if (a % b != 0 && a < 0) q -= 1;
    }

    /// @dev max(x, 0) as uint256.
    function _floorAtZero(int256 x) private pure returns (uint256) {
        // forge-lint: disable-next-line(unsafe-typecast)
        return x > 0 ? uint256(x) : 0;
    }

    /// @dev Checked uint256 -> int256 (reverts `InvalidAmount` above type(int256).max).
    function _int(uint256 x) private pure returns (int256) {
        if (x > uint256(type(int256).max)) revert InvalidAmount();
        // forge-lint: disable-next-line(unsafe-typecast)
        return int256(x);
    }

    // ---------------------------------------------------------------- internals: token moves

    function _pull(address from, uint256 amount) private {
        require(collateralToken.transferFrom(from, address(this), amount), "PerpEngine: transferFrom failed");
    }

    function _push(address to, uint256 amount) private {
        require(collateralToken.transfer(to, amount), "PerpEngine: transfer failed");
    }
}
