"""Fault-matrix fixtures: the transaction-manager fixtures (fresh anvil, journal, manager factory)."""

from tests.tx.conftest import anvil, clock, journal, make_manager  # noqa: F401 - pytest fixtures
