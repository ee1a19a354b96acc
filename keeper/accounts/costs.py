"""What one protective action costs on each account protocol: its measured gas and the liquidation penalty it
avoids (pure; the daemon's cost-aware bands and the account replay's both price with these).

Core module: standard library only; no web3, no I/O, no clock, no logging.
"""

from __future__ import annotations

from keeper.accounts.aave_v3 import AaveRules
from keeper.accounts.base import BPS, AccountRules
from keeper.accounts.perp_v2 import PerpRules

AAVE_SUPPLY_GAS = 146_734  # Pool.supply of WETH on behalf of a levered account (receipt gasUsed, anvil; 141-147k)
AAVE_REPAY_GAS = 171_769  # Pool.repay of USDC variable debt on behalf of it (166-172k)
PERP_DEPOSIT_FOR_GAS = 74_753  # Curie Vault.depositFor of USDC
GAS_USED_MEASURED = {"aave-v3": max(AAVE_SUPPLY_GAS, AAVE_REPAY_GAS), "perp-v2": PERP_DEPOSIT_FOR_GAS}
"""One protective transaction's gas (``gasUsed``), what the cost-aware bands price a top-up at until the keeper's
own first one is mined (then its receipt's). Measured on anvil 1.7.1 against the real bytecode (Aave v3 from npm,
Curie 2.8.4): ``gasUsed`` of the keeper's ``supply`` of WETH and ``repay`` of USDC on behalf of the levered
10 WETH / 22,000 USDC account (``tests/aave/test_aave_service.py::TestCostAware``; the larger of the two is
Aave's figure) and of its ``Vault.depositFor`` of USDC for the 9x cross-margin trader
(``tests/perp/test_perp_service.py::test_cost_aware_deposit_is_priced_at_curies_measured_depositfor_gas``);
those tests check the receipts against these figures (Aave: 141-147k supply and 166-172k repay as the reserve's
indexes do or do not move in that block, the larger figures kept; Curie: within 3 %)."""


def liquidation_penalty(rules: AccountRules, asset: str) -> float:
    """What a liquidation takes, as a fraction of what it seizes: Aave v3, the reserve's liquidation bonus - 1
    (``asset``'s own configuration; an e-mode category's bonus is per account, not per asset); Perp v2, the
    clearing house's liquidation penalty ratio (every market); 0 for another protocol."""
    if isinstance(rules, AaveRules):
        reserve = rules.market.reserves.get(asset)
        return max(reserve.config.liquidation_bonus_bps / BPS - 1.0, 0.0) if reserve is not None else 0.0
    if isinstance(rules, PerpRules):
        return rules.params.liquidation_penalty_ratio_e6 / 1e6
    return 0.0
