"""What each vault event does to the ledger, so that the ledger mirrors the vault.

    Deposited           credit the account (unclaimed until its address is bound)
    ExitRequested       lock the amount: no longer spendable, at once
    ExitCancelled       unlock it
    ExitCompleted       unlock, and debit what actually left (`amount`, maybe 0)
    ExitReleased        debit (instant exit; a pending trustless exit stays pending)
    Sold                credit the USDC proceeds of a spend-only token sold on exit
                        (emitted inside ExitCompleted/ExitReleased, which debit the token)
    ShortfallRecorded   settlement took less than the ledger charged: credit the
                        difference back (journal kind "shortfall"); see ChainBatch
    SpendCapRegistered  the bound account's remaining cap := the cap's `total` left.
                        An approximation: the per-epoch limit and expiry are not
                        mirrored, and an unbound address's cap is not seen. After a
                        session key: capped mode again (`ledger.sessions.capped_after`)
    SpendCapRevoked     remaining cap := 0 (no new usage once a user revokes), except in
                        signed mode (a session with no cap set after it): the session's
                        maximum left stands (`ChainBatch.register_spend_cap`)
    SessionKeyRegistered  signed mode (issue 23): the account's session key in the asset,
                        with the vault and chain its vouchers are signed for, and the last
                        second the vault settles them (from the vault's epoch clock); its
                        remaining cap := the session's maximum (`ledger.sessions`)
    SessionKeyRevoked   the gateway takes no voucher of the session from now on

Every other followed event (settlements, seller credits, claims, lots, pools) is stored
for other services and has no ledger effect.

A fact's ledger id is "<tx hash>:<log index>#<rewinds>", where `rewinds` counts the
reorgs the indexer has undone: a transaction re-included after a reorg keeps its tx hash
and log index, and its replayed fact must not be mistaken for the one that was undone.
"""

from __future__ import annotations

from collections.abc import Callable

from promptex.indexer.decode import Event
from promptex.indexer.followed import VAULT
from promptex.ledger.chain_facts import ChainBatch
from promptex.ledger.sessions import settlement_close

Symbol = Callable[[str], str]  # token address → the ledger's asset symbol
Clock = Callable[[str], tuple[int, int]]  # vault address → its epoch clock (genesis, epoch_length)


def fact_id(event: Event, rewinds: int) -> str:
    return f"{event.tx_hash}:{event.log_index}#{rewinds}"


def apply(
    facts: ChainBatch, event: Event, fact: str, symbol: Symbol, usdc: str, chain_id: int = 0, clock: Clock | None = None
) -> bool:
    """Apply `event`'s ledger effect under the id `fact`; False when it has none.
    `chain_id`: the chain followed (a session key's vouchers are signed for it); `clock`:
    the vault's epoch clock (a session's last settlement second; None: not recorded)."""
    if event.source != VAULT:
        return False
    args = event.args
    name = event.name
    if name == "SessionKeyRegistered":
        close = None if clock is None else settlement_close(args["expiry"], args["signed_from"], *clock(event.contract))
        return facts.register_session(
            fact,
            address=args["account"],
            asset=symbol(args["asset"]),
            asset_address=args["asset"],
            chain_id=chain_id,
            vault=event.contract,
            key=args["key"],
            session=args["session"],
            lanes=args["lanes"],
            maximum=args["maximum"],
            expiry=args["expiry"],
            signed_from=args["signed_from"],
            settles_until=close,
        )
    if name == "SessionKeyRevoked":
        return facts.revoke_session(fact, args["account"], symbol(args["asset"]), args["session"], args["ends_at"])
    if name == "Sold":
        if not args["proceeds"]:
            return False
        facts.credit_sale(fact, args["account"], symbol(usdc), args["proceeds"])
        return True
    if name not in _VAULT_EFFECTS:
        return False
    return _VAULT_EFFECTS[name](facts, fact, args["account"], symbol(args["asset"]), args)


def _deposited(facts: ChainBatch, fact: str, account: str, asset: str, args: dict[str, int]) -> bool:
    facts.credit_deposit(fact, account, asset, args["amount"])
    return True


def _exit_requested(facts: ChainBatch, fact: str, account: str, asset: str, args: dict[str, int]) -> bool:
    facts.lock_for_exit(fact, account, asset, args["amount"])
    return True


def _exit_cancelled(facts: ChainBatch, fact: str, account: str, asset: str, _args: dict[str, int]) -> bool:
    facts.cancel_exit(fact, account, asset)
    return True


def _exit_completed(facts: ChainBatch, fact: str, account: str, asset: str, args: dict[str, int]) -> bool:
    facts.complete_exit(fact, account, asset, args["amount"])
    return True


def _exit_released(facts: ChainBatch, fact: str, account: str, asset: str, args: dict[str, int]) -> bool:
    facts.release_exit(fact, account, asset, args["amount"])
    return True


def _shortfall(facts: ChainBatch, fact: str, account: str, asset: str, args: dict[str, int]) -> bool:
    facts.record_shortfall(fact, account, asset, args["amount"])
    return True


def _cap_registered(facts: ChainBatch, fact: str, account: str, asset: str, args: dict[str, int]) -> bool:
    return facts.register_spend_cap(fact, account, asset, args["total"])


def _cap_revoked(facts: ChainBatch, fact: str, account: str, asset: str, _args: dict[str, int]) -> bool:
    return facts.register_spend_cap(fact, account, asset, 0, revoked=True)


_VAULT_EFFECTS: dict[str, Callable[[ChainBatch, str, str, str, dict[str, int]], bool]] = {
    "Deposited": _deposited,
    "ExitRequested": _exit_requested,
    "ExitCancelled": _exit_cancelled,
    "ExitCompleted": _exit_completed,
    "ExitReleased": _exit_released,
    "ShortfallRecorded": _shortfall,
    "SpendCapRegistered": _cap_registered,
    "SpendCapRevoked": _cap_revoked,
}
