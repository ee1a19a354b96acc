"""What the transaction manager sends: a target, calldata and value, built by a protocol adapter."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ContractCall:
    """One transaction's payload. ``meta`` is journaled with the intent (action kind, account, market)."""

    to: str
    data: bytes = b""
    value_wei: int = 0
    description: str = ""
    meta: dict = field(default_factory=dict)
