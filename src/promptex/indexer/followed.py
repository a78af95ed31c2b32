"""Which contracts the indexer follows, their ABIs, and the ledger's name for each asset.

From a deployment: the credits vault, the credit escrow, the DEX factory and (when
deployed) the redemption escrow; pools are added as the factory announces them
(PoolCreated). The ledger names an asset by its symbol ("USDC", "CLD", …).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptex.chain.deployments import Deployment, deployments_root
from promptex.indexer.decode import Decoder, checksum

VAULT = "CreditsVault"
FACTORY = "Factory"
POOL = "Pool"
FOLLOWED = (VAULT, "CreditEscrow", FACTORY, "RedemptionEscrow")
POOL_ABI_RECORD = "PoolBlueprint"  # the pools' ABI is recorded with their blueprint
USDC_RECORD = "USDC"


@dataclass
class Followed:
    decoder: Decoder
    contracts: dict[str, str]  # checksummed address → source ("CreditsVault", …), pools excluded
    assets: dict[str, str]  # checksummed token address → ledger symbol
    vault: str
    usdc: str  # the vault's USDC (sale proceeds), checksummed
    pools: set[str] = field(default_factory=set)

    def source(self, address: str) -> str | None:
        return POOL if address in self.pools else self.contracts.get(address)

    def addresses(self) -> list[str]:
        return sorted({*self.contracts, *self.pools})

    def symbol(self, token: str) -> str | None:
        return self.assets.get(checksum(token.lower()))

    @classmethod
    def build(
        cls,
        abis: Mapping[str, Iterable[Mapping[str, Any]]],
        contracts: Mapping[str, str],
        assets: Mapping[str, str],
        *,
        vault: str,
        usdc: str,
    ) -> Followed:
        """`abis`: source → ABI; `contracts`: address → source; `assets`: token address → symbol."""
        decoder = Decoder()
        for source, abi in abis.items():
            decoder.add_abi(source, abi)
        return cls(
            decoder,
            {checksum(a.lower()): s for a, s in contracts.items()},
            {checksum(a.lower()): s for a, s in assets.items()},
            vault=checksum(vault.lower()),
            usdc=checksum(usdc.lower()),
        )

    @classmethod
    def from_deployment(cls, deployment: Deployment, root: Path | None = None) -> Followed:
        records = deployment.contracts
        missing = [name for name in (VAULT, USDC_RECORD) if name not in records]
        if missing:
            raise KeyError(f"the {deployment.network} deployment has no {', '.join(missing)}")
        names = [name for name in FOLLOWED if name in records]
        abis = {name: _abi(records[name].abi, root) for name in names}
        if POOL_ABI_RECORD in records:
            abis[POOL] = _abi(records[POOL_ABI_RECORD].abi, root)
        assets = {records[USDC_RECORD].address: USDC_RECORD}
        assets.update({records[f"token:{symbol}"].address: symbol for symbol in deployment.token_symbols()})
        return cls.build(
            abis,
            {records[name].address: name for name in names},
            assets,
            vault=records[VAULT].address,
            usdc=records[USDC_RECORD].address,
        )


def _abi(path: str, root: Path | None) -> list[dict[str, Any]]:
    """An ABI file recorded in a deployment: relative to the working directory, or to the
    deployments folder's parent."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = deployments_root(root).parent / path
    loaded: list[dict[str, Any]] = json.loads(candidate.read_text())
    return loaded
