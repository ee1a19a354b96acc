// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

// MockUSD reverts instead of returning false; the tests call it directly.
// forge-lint: disable-start(erc20-unchecked-transfer)

import {TestBase} from "./Vm.sol";
import {MockUSD} from "../src/MockUSD.sol";

/// @notice MockUSD: a 6-decimal ERC-20 with open mint and OpenZeppelin-style require strings.
contract MockUSDTest is TestBase {
    MockUSD internal usd;
    address internal constant ALICE = address(0xA11CE);
    address internal constant BOB = address(0xB0B);

    function setUp() public {
        usd = new MockUSD();
        usd.mint(ALICE, 100e6);
    }

    /// Metadata and open mint.
    function test_MetadataAndMint() public view {
        vm.assertEq(usd.decimals(), 6, "decimals");
        vm.assertEq(usd.totalSupply(), 100e6, "supply");
        vm.assertEq(usd.balanceOf(ALICE), 100e6, "balance");
    }

    /// transferFrom spends the allowance, except an infinite one.
    function test_Allowance() public {
        vm.prank(ALICE);
        usd.approve(BOB, 30e6);
        vm.prank(BOB);
        usd.transferFrom(ALICE, BOB, 10e6);
        vm.assertEq(usd.allowance(ALICE, BOB), 20e6, "allowance spent");
        vm.prank(BOB);
        vm.expectRevert(bytes("ERC20: insufficient allowance"));
        usd.transferFrom(ALICE, BOB, 20e6 + 1);

        vm.prank(ALICE);
        usd.approve(BOB, type(uint256).max);
        vm.prank(BOB);
        usd.transferFrom(ALICE, BOB, 10e6);
        vm.assertEq(usd.allowance(ALICE, BOB), type(uint256).max, "infinite allowance kept");
        vm.assertEq(usd.balanceOf(BOB), 20e6, "received");
    }

    /// Transfers beyond the balance or to the zero address revert with require strings.
    function test_TransferErrors() public {
        vm.prank(ALICE);
        vm.expectRevert(bytes("ERC20: transfer amount exceeds balance"));
        usd.transfer(BOB, 100e6 + 1);
        vm.prank(ALICE);
        vm.expectRevert(bytes("ERC20: transfer to the zero address"));
        usd.transfer(address(0), 1);
    }
}
