"""Market simulation for the demo, the end-to-end tests and the on-chain replay.

* :mod:`keeper.sim.scenario` — deterministic oracle-round scenarios (the demo crash) and a player that
  pushes them through a devchain's feeds with chain time moved in step;
* :mod:`keeper.sim.liquidator` — a liquidator bot that liquidates anything liquidatable, in-process
  (:meth:`LiquidatorBot.sweep`) or on every new block (:meth:`LiquidatorBot.start`).
"""

from keeper.sim.liquidator import Liquidation, LiquidatorBot
from keeper.sim.scenario import OracleRound, PlayedRound, Scenario, ScenarioPlayer, demo_crash

__all__ = [
    "Liquidation",
    "LiquidatorBot",
    "OracleRound",
    "PlayedRound",
    "Scenario",
    "ScenarioPlayer",
    "demo_crash",
]
