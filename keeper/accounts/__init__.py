"""Margin accounts in the pure core: each protocol's liquidation rule as exact integer arithmetic.

Core modules: standard library and numpy only; no web3, no I/O, no clock, no logging.
"""
