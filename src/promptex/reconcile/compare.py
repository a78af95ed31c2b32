"""Comparing the books with the chain at one block, and naming what explains each
difference (see `report`). What the books owe the chain, and why they may differ:

- An account's balance in an asset: the vault holds Σ its wallets' `balance_of`; the
  ledger's `posted` is lower by every charge the chain has not yet debited (a usage
  record pending, quarantined, or in a batch not confirmed by that block: named by its
  request id) and higher by every open debt (what the ledger lent the account so that a
  debit the balance could not cover stopped at zero: named by the debt).
- A pending exit: the vault's `pending_exits` equals the ledger's locked exit; nothing
  explains a difference.
- A listed lot's draw-down: the escrow's `consumed` equals Σ what the confirmed batches
  drew from it (USD micro at list price); the tokenized lots of a token: Σ their
  `consumed` equals Σ the confirmed batches' burns (the vault picks which lots it draws).
- A seller's USDC claimable: the vault's equals what its listed lots earned at their rate
  on what the books drew (the escrow rounds the cumulative draw down, once), less every
  claim the indexer applied by that block (the chain's figure is after it too).
- A redemption: the USDC RedemptionEscrow holds for it equals what the agent believes it
  holds, but for a release in flight (its transaction) or a refund the agent has not seen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from promptex.agent import store as agent_store
from promptex.agent.store import AgentStore
from promptex.coordinator.store import CoordinatorStore
from promptex.indexer import store as indexer_store
from promptex.ledger import Ledger, chain_facts, debts, usage, wallets
from promptex.ledger import accounts as ledger_accounts
from promptex.ledger.db import READ_ONLY
from promptex.ledger.models import AccountKind
from promptex.ledger.usage import StoredUsage
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED, listed_credit
from promptex.protocol.redemption import STATUS_OPEN, STATUS_REFUNDED, STATUS_RELEASED
from promptex.protocol.units import USDC_SYMBOL
from promptex.reconcile.chain import ChainView
from promptex.reconcile.report import (
    BALANCE,
    CLAIMABLE,
    EXIT,
    LIST_USD,
    LOT,
    REDEMPTION,
    Difference,
    Explanation,
    Report,
)

# The agent's redemptions whose USDC is in RedemptionEscrow, as the agent sees them.
AGENT_HOLDS = frozenset({agent_store.ESCROWED, agent_store.PURCHASED, agent_store.RECEIPTED, agent_store.RELEASING,
                         agent_store.REJECTED, agent_store.ABANDONED})  # fmt: skip


def reconcile(ledger: Ledger, chain: ChainView, *, agent: bool = True) -> Report:
    """The books against `chain` at `chain.block`; every difference with its explanations."""
    report = Report(chain.block)
    assets = chain.assets()
    coordinator = CoordinatorStore(ledger.engine)
    _balances(ledger, chain, assets, coordinator.unsettled_records(chain.block), report)
    _lots_and_claimables(ledger, coordinator, chain, report)
    if agent:
        _redemptions(AgentStore(ledger.engine), chain, report)
    with ledger.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
        rewound = indexer_store.reorgs(conn, limit=1_000)
        taken_back = usage.refunds_taken_back(conn)
    if taken_back:
        shown = ", ".join(taken_back[:10]) + (f" and {len(taken_back) - 10} more" if len(taken_back) > 10 else "")
        report.notes.append(
            f"{len(taken_back)} refund(s) taken back, resolved: a reorg re-included the failed settlement that "
            f"debited them on chain, so the ledger debited their payers again (a debt where a balance was short): "
            f"{shown}"
        )
    if rewound:
        opened = sum(r.debts_opened for r in rewound)
        report.notes.append(
            f"{len(rewound)} reorg(s) rewound by the indexer (deepest {max(r.depth for r in rewound)} blocks), "
            f"{opened} debt(s) opened by them: `promptex indexer reorgs`"
        )
    return report


def _short(address: str) -> str:
    return f"{address[:6]}…{address[-4:]}"


def _record_note(record: StoredUsage) -> str:
    if record.status == "quarantined":
        return f"quarantined: {record.quarantine_reason}"
    if record.batch_id is not None:
        return f"in batch {record.batch_id} (epoch {record.epoch}), not confirmed by this block"
    return "served, not yet in a settlement"


def _balances(
    ledger: Ledger, chain: ChainView, assets: dict[str, int], unsettled: list[StoredUsage], report: Report
) -> None:
    with ledger.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
        rows = ledger_accounts.all_balances(conn)
        bound = wallets.bindings(conn)
        owed = debts.open_debts(conn)
        exits = chain_facts.pending_exits(conn)
    # An account's funds are its first wallet's, the one settlements debit; a later wallet's
    # stay on its own unclaimed account (`wallets.account_for_address`).
    debited = {addresses[0] for addresses in bound.values()}
    posted: dict[tuple[int, str], int] = {}
    addresses: dict[int, list[str]] = {account: found[:1] for account, found in bound.items()}
    for account, balance in rows:
        if account.kind == AccountKind.UNCLAIMED:
            if account.name in debited:
                continue  # its funds moved to the account the address was bound to
            addresses[account.id] = [str(account.name)]
        else:
            addresses.setdefault(account.id, [])
        posted[(account.id, balance.asset)] = balance.posted
    for account_id in addresses:
        for symbol in assets:
            posted.setdefault((account_id, symbol), 0)

    charges: defaultdict[tuple[int, str], list[Explanation]] = defaultdict(list)
    for record in unsettled:
        charges[(record.payer, record.asset)].append(
            Explanation("unsettled request", record.request_id, record.cost, _record_note(record))
        )
    for debt in owed:
        charges[(debt.account, debt.asset)].append(
            Explanation("debt", f"debt {debt.id}", -debt.outstanding, f"{debt.reason} (source {debt.source})")
        )

    for (account_id, symbol), books in sorted(posted.items()):
        if symbol not in assets:
            report.notes.append(f"account {account_id} holds {symbol}, which the vault does not list: not checked")
            continue
        held = sum(chain.balance_of(address, symbol) for address in addresses.get(account_id, []))
        wallets_shown = ", ".join(_short(a) for a in addresses.get(account_id, [])) or "no wallet"
        report.rows.append(
            Difference(
                BALANCE, f"account {account_id} ({wallets_shown})", symbol, books, held,
                charges.pop((account_id, symbol), []),
            )
        )  # fmt: skip
    for (account_id, symbol), orphans in charges.items():  # owed by an account with no balance row
        report.rows.append(Difference(BALANCE, f"account {account_id}", symbol, 0, 0, orphans))
    report.checked[BALANCE] = len(posted)

    locked: defaultdict[tuple[str, str], int] = defaultdict(int)
    for pending in exits:
        locked[(pending.address, pending.asset)] += pending.amount
    known = sorted({address for found in addresses.values() for address in found})
    for address in known:
        for symbol in assets:
            books = locked.pop((address, symbol), 0)
            report.rows.append(
                Difference(EXIT, f"exit of {address}", symbol, books, chain.pending_exit(address, symbol))
            )
    for (address, symbol), books in sorted(locked.items()):
        report.rows.append(Difference(EXIT, f"exit of {address}", symbol, books, chain.pending_exit(address, symbol)))
    report.checked[EXIT] = len(known) * len(assets) + len(locked)


def _lots_and_claimables(ledger: Ledger, coordinator: CoordinatorStore, chain: ChainView, report: Report) -> None:
    settled = coordinator.settled_batches(chain.block)
    drawn: defaultdict[int, int] = defaultdict(int)  # listed lot → capacity drawn, USD micro at list
    burned: defaultdict[str, int] = defaultdict(int)  # provider token → burned, drawn from its tokenized lots
    for batch, _tx_hash in settled:
        for lot_id, amount in batch.payload.credits.items():
            drawn[lot_id] += amount
        if batch.payload.burn:
            burned[batch.asset] += batch.payload.burn

    lots = {lot_id: chain.lot(lot_id) for lot_id in range(1, chain.lot_count() + 1)}
    sellers: defaultdict[str, int] = defaultdict(int)  # seller → USDC its listed lots earned, as the books say
    for lot_id, state in sorted(lots.items()):
        if state.kind != KIND_LISTED:
            continue
        books = drawn.pop(lot_id, 0)
        sellers[state.seller] += listed_credit(0, books, state.rate_bps)  # the vault's cumulative rounding
        report.rows.append(
            Difference(LOT, f"listed lot {lot_id} ({_short(state.seller)})", LIST_USD, books, state.consumed)
        )
    for lot_id, books in sorted(drawn.items()):  # drawn by a batch, unknown to the escrow
        report.rows.append(Difference(LOT, f"listed lot {lot_id} (not in the escrow)", LIST_USD, books, 0))
    for symbol in sorted(set(chain.assets()) - {USDC_SYMBOL}):
        token = chain.asset_address(symbol).lower()
        consumed = sum(s.consumed for s in lots.values() if s.kind == KIND_TOKENIZED and s.token.lower() == token)
        report.rows.append(Difference(LOT, f"tokenized lots of {symbol}", symbol, burned.get(symbol, 0), consumed))
    report.checked[LOT] = len(lots)

    with ledger.engine.connect().execution_options(**{READ_ONLY: True}) as conn, conn.begin():
        claims = indexer_store.events_named(conn, "Claimed", up_to=chain.block)
        credits = indexer_store.events_named(conn, "SellerCredited", up_to=chain.block)
    usdc = chain.asset_address(USDC_SYMBOL).lower()
    # A claim the indexer applied by the compared block is in the chain's claimable too: the
    # books' figure is what was earned less it (README), not a difference the claim explains.
    claimed: defaultdict[str, int] = defaultdict(int)
    for claim in claims:
        if str(claim.args.get("asset", "")).lower() == usdc:
            claimed[str(claim.args["account"])] += int(claim.args["amount"])
    for event in credits:
        sellers.setdefault(str(event.args["seller"]), 0)
    for seller in sorted(set(sellers) | set(claimed)):
        report.rows.append(
            Difference(CLAIMABLE, f"seller {seller}", USDC_SYMBOL, sellers.get(seller, 0) - claimed.get(seller, 0),
                       chain.claimable(seller, USDC_SYMBOL))
        )  # fmt: skip
    report.checked[CLAIMABLE] = len(set(sellers))


def _redemptions(store: AgentStore, chain: ChainView, report: Report) -> None:
    mine = [r for r in store.redemptions() if r.chain_redemption_id is not None]
    for r in mine:
        assert r.chain_redemption_id is not None
        state = chain.redemption(r.chain_redemption_id)
        if state is None:
            report.notes.append("the deployment has no RedemptionEscrow: redemptions not checked")
            return
        held = state.usdc if state.status == STATUS_OPEN else 0
        believed = state.usdc if r.status in AGENT_HOLDS else 0
        explanations = []
        if believed and not held:
            if state.status == STATUS_RELEASED and r.status == agent_store.RELEASING:
                tx = store.tx(r.release_tx_id).tx_hash if r.release_tx_id is not None else "unsent"
                explanations.append(Explanation("release in flight", tx, -believed, f"redemption {r.id}"))
            elif state.status == STATUS_REFUNDED:
                explanations.append(
                    Explanation(
                        "refund not yet seen by the agent", f"redemption {r.id}", -believed, "the user refunded"
                    )
                )
        report.rows.append(
            Difference(REDEMPTION, f"redemption {r.id} (escrow id {r.chain_redemption_id}, {r.status})", USDC_SYMBOL,
                       believed, held, explanations)
        )  # fmt: skip
    report.checked[REDEMPTION] = len(mine)


# What each section's count is, as a person reads it: "15 pending exits" on a fresh market read as
# fifteen withdrawals under way — it is the wallet/asset pairs whose pending exit was compared.
_COMPARED = {EXIT: "pending exits of {n} wallet/asset pair{s}", CLAIMABLE: "claimables of {n} seller{s}"}


def _compared(section: str, n: int) -> str:
    plural = "" if n == 1 else "s"
    return _COMPARED.get(section, "{n} " + section + "{s}").format(n=n, s=plural)


def summary(report: Report) -> str:
    """One line: what was compared, and whether everything is explained."""
    counts = ", ".join(_compared(section, n) for section, n in report.checked.items())
    if report.ok:
        explained = len(report.differences)
        tail = (
            f"{explained} difference(s), each explained by named records (`promptex reconcile --all` lists them)"
            if explained
            else "no differences"
        )
        return f"books reconcile with the chain at block {report.block} ({counts}): {tail}"
    return (
        f"books do NOT reconcile with the chain at block {report.block} ({counts}): "
        f"{len(report.unexplained)} unexplained difference(s)"
    )


def sections(rows: Iterable[Difference]) -> dict[str, list[Difference]]:
    found: dict[str, list[Difference]] = {}
    for row in rows:
        found.setdefault(row.section, []).append(row)
    return found
