"""Which chain and deployment a store mirrors, and how two of them differ.

A local chain started again is a new chain with the same chain id and — deployed again
by the same keys — the same contract addresses: only its genesis block's hash tells it
apart. So an identity is the chain id, the genesis hash and the deployment's contracts
(name → address); `differences` says, in words, what separates a recorded one from the
one a service now sees. Pure: the ledger stores identities, `chain.identity` observes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChainIdentity:
    chain_id: int
    genesis_hash: str  # 0x-hex, lowercase
    network: str  # the deployment's name: deployments/<network>.json
    contracts: Mapping[str, str] = field(default_factory=dict)  # name → address, as deployed

    def short(self) -> str:
        """One phrase: chain 31337 (genesis 0x1234…abcd), deployment local (vault 0xAbCd…)."""
        vault = self.contracts.get("CreditsVault")
        deployment = f"deployment {self.network}" + (f" (vault {vault})" if vault else "")
        return f"chain {self.chain_id} (genesis {abbreviate(self.genesis_hash)}), {deployment}"


def abbreviate(value: str) -> str:
    return value if len(value) <= 14 else f"{value[:6]}…{value[-4:]}"


def differences(recorded: ChainIdentity, observed: ChainIdentity) -> list[str]:
    """What differs, in words; empty when `observed` is the chain and deployment recorded.

    A contract the recorded deployment lacks is not a difference (a later deploy may add
    one: the record grows); one it has at another address, or missing, is."""
    found: list[str] = []
    if recorded.chain_id != observed.chain_id:
        found.append(f"chain id {observed.chain_id}, not {recorded.chain_id}")
    if recorded.genesis_hash.lower() != observed.genesis_hash.lower():
        found.append(
            f"genesis block {abbreviate(observed.genesis_hash)}, not {abbreviate(recorded.genesis_hash)} "
            "(a new chain: a local node started again without its saved state?)"
        )
    moved = [
        f"{name} at {observed.contracts.get(name) or 'nowhere'}, not {address}"
        for name, address in sorted(recorded.contracts.items())
        if (observed.contracts.get(name) or "").lower() != address.lower()
    ]
    if moved:
        shown = "; ".join(moved[:3]) + (f"; and {len(moved) - 3} more" if len(moved) > 3 else "")
        found.append(f"another deployment ({shown})")
    return found


def merged(recorded: ChainIdentity, observed: ChainIdentity) -> ChainIdentity:
    """The recorded identity grown by the contracts a later deploy added."""
    contracts = {**observed.contracts, **recorded.contracts}
    return ChainIdentity(recorded.chain_id, recorded.genesis_hash, recorded.network, contracts)
