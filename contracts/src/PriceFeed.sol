// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {AggregatorV3Interface} from "./interfaces/AggregatorV3Interface.sol";

/// @title PriceFeed
/// @notice A Chainlink-compatible push oracle for local chains and tests: the owner records rounds,
///         every round is kept, and readers see the usual AggregatorV3Interface.
/// @dev Round ids start at 1 and increase by one per `pushPrice`; `startedAt == updatedAt == block.timestamp`
///      of the push and `answeredInRound == roundId`. Answers have 8 decimals (USD e8).
contract PriceFeed is AggregatorV3Interface {
    struct Round {
        int256 answer;
        uint64 updatedAt;
    }

    /// @notice Emitted for every recorded round (same signature as Chainlink's aggregators).
    event AnswerUpdated(int256 indexed current, uint256 indexed roundId, uint256 updatedAt);

    /// @notice A caller other than the owner tried to push a price.
    error NotAuthorized(address caller);
    /// @notice An answer <= 0 was pushed.
    error InvalidPrice(int256 answer);

    /// @notice The only account allowed to push prices (the deployer).
    address public immutable owner;
    string private _description;
    uint80 private _latestRound;
    mapping(uint80 => Round) private _rounds;

    /// @param description_ pair name returned by `description()`, e.g. "ETH / USD"
    /// @param initialAnswer first round's answer (e8, must be > 0); recorded as round 1
    constructor(string memory description_, int256 initialAnswer) {
        owner = msg.sender;
        _description = description_;
        _record(initialAnswer);
    }

    /// @notice Record a new round with `answer` (e8) at the current block timestamp.
    /// @dev Owner only; reverts `InvalidPrice(answer)` when `answer <= 0`.
    /// @return roundId the id of the new round
    function pushPrice(int256 answer) external returns (uint80 roundId) {
        if (msg.sender != owner) revert NotAuthorized(msg.sender);
        return _record(answer);
    }

    /// @inheritdoc AggregatorV3Interface
    function decimals() external pure returns (uint8) {
        return 8;
    }

    /// @inheritdoc AggregatorV3Interface
    function description() external view returns (string memory) {
        return _description;
    }

    /// @inheritdoc AggregatorV3Interface
    function version() external pure returns (uint256) {
        return 1;
    }

    /// @notice Id of the most recent round (0 before the first push, which the constructor makes).
    function latestRound() external view returns (uint256) {
        return _latestRound;
    }

    /// @notice Answer of the most recent round (legacy Chainlink getter).
    function latestAnswer() external view returns (int256) {
        return _rounds[_latestRound].answer;
    }

    /// @notice Timestamp of the most recent round (legacy Chainlink getter).
    function latestTimestamp() external view returns (uint256) {
        return _rounds[_latestRound].updatedAt;
    }

    /// @inheritdoc AggregatorV3Interface
    function getRoundData(uint80 _roundId)
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
    {
        return _roundData(_roundId);
    }

    /// @inheritdoc AggregatorV3Interface
    function latestRoundData()
        external
        view
        returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
    {
        return _roundData(_latestRound);
    }

    function _roundData(uint80 id) private view returns (uint80, int256, uint256, uint256, uint80) {
        Round memory r = _rounds[id];
        require(r.updatedAt != 0, "No data present");
        return (id, r.answer, r.updatedAt, r.updatedAt, id);
    }

    function _record(int256 answer) private returns (uint80 id) {
        if (answer <= 0) revert InvalidPrice(answer);
        id = _latestRound + 1;
        _latestRound = id;
        _rounds[id] = Round({answer: answer, updatedAt: uint64(block.timestamp)});
        emit AnswerUpdated(answer, id, block.timestamp);
    }
}
