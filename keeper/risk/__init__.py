"""Risk engine (functional core: numpy/scipy only, no I/O, no clock, no logging).

Modules, each a noun; the daemon, planner and replay mostly need :mod:`policy`:

* :mod:`keeper.risk.policy`      buffer policy: ``RiskPolicy``, ``PositionRisk``, ``assess_position``,
  ``assess_positions`` (batch), ``assess_arrays`` (vectorised kernel), ``calibrate_kappa``, ``DEFAULT_KAPPA``
* :mod:`keeper.risk.barrier`     closed-form first-passage probability (long/short, drift, fees, BGK) and its
  inversion to a distance or a collateral amount; liquidation price <-> collateral
* :mod:`keeper.risk.volatility`  EWMA and GARCH(1,1)-t from irregular oracle rounds; ``estimate_volatility``
  with implied-vol floor and fallback (``VolEstimate.fallback_reason``)
* :mod:`keeper.risk.montecarlo`  correlated fat-tailed paths shared per asset, exact Brownian-bridge extremes,
  Sobol QMC, importance sampling, cross-margin account breach
* :mod:`keeper.risk.var`         VaR/ES: normal, Student-t, historical, Monte Carlo; position and portfolio
* :mod:`keeper.risk.stress`      SPAN-style grid and historical shocks: ``run_stress`` (used by ``keeper stress``)
* :mod:`keeper.risk.greeks`      perp delta per asset, Black-Scholes/Black-76 greeks, per-account aggregation

Formulas and sources are in each module's docstring; reference values are checked in ``tests/risk``.
"""
