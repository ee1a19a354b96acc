"""margin keeper: keeps leveraged DeFi perpetual positions away from liquidation."""

__version__ = "0.1.0"
