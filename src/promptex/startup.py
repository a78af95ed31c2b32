"""What every long-lived service does first: check that the database it is given mirrors
the chain and deployment it is pointed at (`ledger.identity`), so a service started
against another chain refuses in one line instead of mixing two chains' facts.

The indexer, coordinator and agent need the chain; the gateway and the dashboard can run
without one (tests, an off-chain demo) as long as their database follows no chain yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from promptex.config import ConfigurationError

if TYPE_CHECKING:
    from promptex.ledger import Ledger
    from promptex.protocol.identity import ChainIdentity


def check_chain(
    ledger: Ledger, *, service: str, rpc_url: str, network: str, require_chain: bool = True
) -> ChainIdentity | None:
    """The identity `ledger` follows after this service's start (recorded now if it was the
    first), or None for a service that runs without a chain on a database that follows
    none. ConfigurationError, one line, for anything else."""
    from promptex.chain.identity import observe
    from promptex.ledger import WrongChain

    try:
        observed = observe(rpc_url, network)
    except ConfigurationError as exc:
        recorded = ledger.chain_identity()
        if require_chain or recorded is not None:
            follows = f" (its ledger follows {recorded.short()})" if recorded is not None else ""
            raise ConfigurationError(f"{service} cannot check its chain{follows}: {exc}") from None
        return None
    try:
        return ledger.follow_chain(observed, service)
    except WrongChain as exc:
        raise ConfigurationError(str(exc)) from None
