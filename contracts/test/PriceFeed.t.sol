// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {TestBase} from "./Vm.sol";
import {PriceFeed} from "../src/PriceFeed.sol";

/// @notice PriceFeed: Chainlink AggregatorV3 semantics with the full round history.
contract PriceFeedTest is TestBase {
    PriceFeed internal feed;

    function setUp() public {
        vm.warp(1_700_000_000);
        feed = new PriceFeed("ETH / USD", 3000e8);
    }

    /// Every pushed round stays readable by id with its own answer and timestamp.
    function test_GetRoundDataHistory() public {
        vm.warp(1_700_000_060);
        feed.pushPrice(3010e8);
        vm.warp(1_700_000_125);
        vm.expectEmit(true, true, true, true, address(feed));
        emit PriceFeed.AnswerUpdated(2990e8, 3, 1_700_000_125);
        uint80 id = feed.pushPrice(2990e8);
        vm.assertEq(id, 3, "third round");
        vm.assertEq(feed.latestRound(), 3, "latestRound");

        int256[3] memory answers = [int256(3000e8), 3010e8, 2990e8];
        uint256[3] memory times = [uint256(1_700_000_000), 1_700_000_060, 1_700_000_125];
        for (uint80 r = 1; r <= 3; r++) {
            (uint80 rid, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredIn) = feed.getRoundData(r);
            vm.assertEq(rid, r, "round id");
            vm.assertEq(answer, answers[r - 1], "answer");
            vm.assertEq(startedAt, times[r - 1], "startedAt");
            vm.assertEq(updatedAt, times[r - 1], "updatedAt");
            vm.assertEq(answeredIn, r, "answeredInRound");
        }
        (uint80 lid, int256 la,, uint256 lu,) = feed.latestRoundData();
        vm.assertEq(lid, 3, "latest id");
        vm.assertEq(la, 2990e8, "latest answer");
        vm.assertEq(lu, 1_700_000_125, "latest time");
        vm.assertEq(feed.latestAnswer(), 2990e8, "latestAnswer");
        vm.assertEq(feed.latestTimestamp(), 1_700_000_125, "latestTimestamp");
    }

    /// Unknown rounds (0 and beyond the latest) revert with Chainlink's "No data present".
    function test_UnknownRoundReverts() public {
        vm.expectRevert(bytes("No data present"));
        feed.getRoundData(0);
        vm.expectRevert(bytes("No data present"));
        feed.getRoundData(2);
    }

    /// Only the owner pushes, and only positive answers.
    function test_PushGuards() public {
        vm.expectRevert(abi.encodeWithSelector(PriceFeed.NotAuthorized.selector, address(0xBEEF)));
        vm.prank(address(0xBEEF));
        feed.pushPrice(1e8);
        vm.expectRevert(abi.encodeWithSelector(PriceFeed.InvalidPrice.selector, int256(0)));
        feed.pushPrice(0);
        vm.expectRevert(abi.encodeWithSelector(PriceFeed.InvalidPrice.selector, int256(-5)));
        feed.pushPrice(-5);
        vm.expectRevert(abi.encodeWithSelector(PriceFeed.InvalidPrice.selector, int256(0)));
        new PriceFeed("X / USD", 0);
    }

    /// The metadata getters report 8 decimals, the description and the version.
    function test_Metadata() public view {
        vm.assertEq(feed.decimals(), 8, "decimals");
        vm.assertEq(keccak256(bytes(feed.description())), keccak256("ETH / USD"), "description");
        vm.assertEq(feed.version(), 1, "version");
        vm.assertEq(feed.owner(), address(this), "owner");
    }
}
