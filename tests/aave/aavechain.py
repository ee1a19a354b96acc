"""A local Aave v3 market for tests: the deployment, its operations, the keeper's client, adapter and manager."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account
from web3 import Web3

from keeper.accounts.aave_v3 import AaveRules, account_data
from keeper.chain.anvil import Anvil
from keeper.chain.rpc import ChainClient
from keeper.dev.aave_v3 import AaveOps, deploy_aave
from keeper.dev.reference import ANVIL_KEYS
from keeper.protocols.aave_v3 import AaveErrorDecoder, AaveV3Adapter
from keeper.tx.journal import Journal
from keeper.tx.manager import Lane, TransactionManager

LP_KEY = ANVIL_KEYS[9]
KEEPER_KEY = ANVIL_KEYS[2]
LIQUIDATOR_KEY = ANVIL_KEYS[8]


class AaveChain(AaveOps):
    """A local Aave v3 market with liquidity, plus the anvil process behind it."""

    def __init__(self, anvil: Anvil) -> None:
        self.anvil = anvil
        w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
        super().__init__(w3, deploy_aave(w3, rpc_url=anvil.url))
        self.provide_liquidity(LP_KEY)
        self.symbol_of = {v: k for k, v in self.deployment.tokens.items()}

    def token(self, symbol: str) -> str:
        return self.deployment.tokens[symbol]

    def snapshot(self) -> str:
        return self.anvil.request("evm_snapshot")

    def revert(self, snapshot_id: str) -> None:
        self.anvil.request("evm_revert", [snapshot_id])
        self.reset_nonces()

    def advance(self, seconds: int) -> None:
        self.anvil.request("evm_increaseTime", [seconds])
        self.anvil.request("evm_mine", [])

    def client(self, url: str | None = None) -> ChainClient:
        return ChainClient.connect(url or self.anvil.url)

    def adapter(self, client: ChainClient | None = None, **kw) -> AaveV3Adapter:
        return AaveV3Adapter(client or self.client(), self.deployment.provider, **kw)

    def manager(self, client: ChainClient, journal_path: Path, key: str = KEEPER_KEY) -> TransactionManager:
        return TransactionManager(
            client,
            Journal(journal_path),
            [Lane.from_key("urgent", key)],
            confirmations=1,
            error_decoder=AaveErrorDecoder(),
        )

    @staticmethod
    def address(key: str) -> str:
        return Account.from_key(key).address


def assert_equal_to_a_fresh_full_read(aave, client, snap, users: list[str]) -> None:
    """``snap`` equals a new adapter's full read of its block, account by account, and the contract's own
    getUserAccountData (read at that block) equals the keeper's arithmetic on ``snap``."""
    fresh = aave.adapter(client).read_accounts(users, snap.block_number, cross_check=True)
    assert set(fresh.read) == set(users)
    assert not snap.failed and not fresh.failed
    assert snap.accounts.keys() == fresh.accounts.keys() == set(users)
    for u in users:
        assert snap.accounts[u] == fresh.accounts[u], u
        assert account_data(snap.accounts[u], snap.market) == fresh.onchain[u], u
    assert snap.market == fresh.market
    assert snap.rounds == fresh.rounds
    mine, theirs = AaveRules(snap.accounts, snap.market), AaveRules(fresh.accounts, fresh.market)
    for u in users:
        assert mine.margin_account(u, snap.block_number) == theirs.margin_account(u, fresh.block_number), u
