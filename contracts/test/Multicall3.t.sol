// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

import {Fixture} from "./Fixture.sol";
import {Multicall3} from "../src/Multicall3.sol";
import {PerpEngine} from "../src/PerpEngine.sol";
import {PriceFeed} from "../src/PriceFeed.sol";

contract Sink {
    uint256 public received;

    function pay() external payable {
        received += msg.value;
    }
}

/// @notice Multicall3: batching, per-call failure tolerance, value forwarding and block getters.
contract Multicall3Test is Fixture {
    Multicall3 internal mc;

    function setUp() public override {
        super.setUp();
        mc = new Multicall3();
        _open(TRADER, ETH, true, 1e18, 300e6);
    }

    /// aggregate3 keeps going past a failing call that allows failure and returns its revert data.
    function test_Aggregate3AllowFailure() public {
        Multicall3.Call3[] memory calls = new Multicall3.Call3[](3);
        calls[0] = Multicall3.Call3(address(ethFeed), false, abi.encodeCall(PriceFeed.latestRoundData, ()));
        calls[1] = Multicall3.Call3(address(ethFeed), true, abi.encodeCall(PriceFeed.getRoundData, (99)));
        calls[2] = Multicall3.Call3(address(engine), false, abi.encodeCall(PerpEngine.getPosition, (TRADER, ETH)));
        Multicall3.Result[] memory res = mc.aggregate3(calls);

        vm.assertTrue(res[0].success, "first ok");
        (, int256 answer,,,) = abi.decode(res[0].returnData, (uint80, int256, uint256, uint256, uint80));
        vm.assertEq(answer, 3000e8, "price through multicall");
        vm.assertFalse(res[1].success, "second failed");
        vm.assertEq(res[1].returnData, abi.encodeWithSignature("Error(string)", "No data present"), "revert data");
        vm.assertTrue(res[2].success, "third ok");
        PerpEngine.PositionView memory v = abi.decode(res[2].returnData, (PerpEngine.PositionView));
        vm.assertEq(v.collateral, 300e6, "position through multicall");

        calls[1].allowFailure = false;
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate3(calls);
    }

    /// aggregate, tryAggregate and blockAndAggregate return block data and honour requireSuccess.
    function test_AggregateVariants() public {
        vm.roll(42);
        Multicall3.Call[] memory calls = new Multicall3.Call[](2);
        calls[0] = Multicall3.Call(address(usd), abi.encodeWithSignature("decimals()"));
        calls[1] = Multicall3.Call(address(mc), abi.encodeCall(Multicall3.getChainId, ()));
        (uint256 bn, bytes[] memory ret) = mc.aggregate(calls);
        vm.assertEq(bn, 42, "block number");
        vm.assertEq(abi.decode(ret[0], (uint8)), 6, "decimals");
        vm.assertEq(abi.decode(ret[1], (uint256)), block.chainid, "chain id");

        (uint256 bn2, bytes32 bh, Multicall3.Result[] memory r) = mc.blockAndAggregate(calls);
        vm.assertEq(bn2, 42, "block number");
        vm.assertEq(bh, blockhash(42), "current block hash (zero inside the EVM)");
        vm.assertTrue(r[0].success && r[1].success, "both ok");

        calls[1] = Multicall3.Call(address(ethFeed), abi.encodeCall(PriceFeed.getRoundData, (99)));
        Multicall3.Result[] memory t = mc.tryAggregate(false, calls);
        vm.assertTrue(t[0].success && !t[1].success, "failure tolerated");
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.tryAggregate(true, calls);
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.aggregate(calls);
        vm.expectRevert(bytes("Multicall3: call failed"));
        mc.tryBlockAndAggregate(true, calls);
    }

    /// aggregate3Value forwards each call's value and requires the total to equal msg.value.
    function test_Aggregate3Value() public {
        Sink sink = new Sink();
        vm.deal(address(this), 10 ether);
        Multicall3.Call3Value[] memory calls = new Multicall3.Call3Value[](2);
        calls[0] = Multicall3.Call3Value(address(sink), false, 1 ether, abi.encodeCall(Sink.pay, ()));
        calls[1] = Multicall3.Call3Value(address(sink), false, 2 ether, abi.encodeCall(Sink.pay, ()));
        mc.aggregate3Value{value: 3 ether}(calls);
        vm.assertEq(sink.received(), 3 ether, "forwarded");
        vm.expectRevert(bytes("Multicall3: value mismatch"));
        mc.aggregate3Value{value: 4 ether}(calls);
    }

    /// The block getters report the current block's fields.
    function test_Getters() public {
        vm.roll(100);
        vm.warp(T0 + 77);
        vm.deal(TRADER, 5 ether);
        vm.assertEq(mc.getBlockNumber(), 100, "number");
        vm.assertEq(mc.getCurrentBlockTimestamp(), T0 + 77, "timestamp");
        vm.assertEq(mc.getEthBalance(TRADER), 5 ether, "balance");
        vm.assertEq(mc.getChainId(), block.chainid, "chain id");
        vm.assertEq(mc.getBasefee(), block.basefee, "base fee");
        vm.assertEq(mc.getLastBlockHash(), blockhash(99), "last hash");
        vm.assertEq(mc.getBlockHash(98), blockhash(98), "hash by number");
        vm.assertEq(mc.getCurrentBlockGasLimit(), block.gaslimit, "gas limit");
        vm.assertEq(mc.getCurrentBlockCoinbase(), block.coinbase, "coinbase");
    }
}
