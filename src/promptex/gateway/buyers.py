"""Buyers: an account and an API key (shown once), a wallet bound by an EIP-712
signature (so nobody can claim someone else's deposits), welcome credit from the
treasury's promotional account, org accounts with member keys, per-key budgets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from promptex.gateway.keys import hash_key, new_api_key
from promptex.gateway.schema import api_keys
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import AccountKind, BindingMessage, Ledger
from promptex.metering import asset as asset_by_symbol


@dataclass(frozen=True)
class NewKey:
    account: int
    key: str  # shown once; only its hash is stored
    record: ApiKey

    def __repr__(self) -> str:
        return f"NewKey(account={self.account}, prefix={self.record.prefix!r})"


def _asset(symbol: str | None) -> str | None:
    return None if symbol is None or symbol.lower() == "provider" else asset_by_symbol(symbol).symbol


def issue_key(
    store: GatewayStore,
    account: int,
    now: int,
    *,
    payer: int | None = None,
    default_asset: str | None = None,
    budget: tuple[str, int] | None = None,
    key: str | None = None,
) -> NewKey:
    """A new API key for `account` (`key`: one made by `new_api_key` beforehand, whose hash
    the caller recorded first; None: made here)."""
    if budget is not None and budget[1] < 0:
        raise ValueError("a key's budget cannot be negative")
    key = key or new_api_key()
    checked_budget = (asset_by_symbol(budget[0]).symbol, budget[1]) if budget else None
    record = store.add_api_key(
        hash_key(key),
        key[:10],
        account,
        now,
        payer=payer,
        default_asset=_asset(default_asset) if default_asset else default_asset,
        budget=checked_budget,
    )
    return NewKey(account, key, record)


def signup(
    ledger: Ledger,
    store: GatewayStore,
    now: int,
    *,
    name: str | None = None,
    default_asset: str | None = None,
    budget: tuple[str, int] | None = None,
) -> NewKey:
    """A new buyer account and its first API key."""
    account = ledger.create_account(AccountKind.USER, name).id
    return issue_key(store, account, now, default_asset=default_asset, budget=budget)


def keyless(conn: Connection, account: int) -> bool:
    """Whether no API key was ever issued for `account` (revoked ones count): an account a
    wallet's dashboard challenge may still name (`Ledger.challenge_wallet`'s `pending`). One
    made by `signup` has its key from the start: its holder is not the wallet's."""
    return conn.execute(select(api_keys.c.id).where(api_keys.c.account_id == account).limit(1)).first() is None


def create_org(ledger: Ledger, name: str) -> int:
    return ledger.create_account(AccountKind.ORG, name).id


def member_key(
    ledger: Ledger,
    store: GatewayStore,
    org: int,
    now: int,
    *,
    name: str | None = None,
    budget: tuple[str, int] | None = None,
) -> NewKey:
    """A member of `org` (a user account) and a key that spends from the org, within
    the member's budget in the org if one is given."""
    member = ledger.create_account(AccountKind.USER, name).id
    ledger.add_member(org, member)
    if budget is not None:
        ledger.set_member_budget(org, member, asset_by_symbol(budget[0]).symbol, budget[1])
    return issue_key(store, member, now, payer=org)


def challenge_json(message: BindingMessage) -> str:
    """What the wallet signs (eth_signTypedData_v4), with what `bind` needs to check it."""
    return json.dumps({"binding": message.__dict__, "typed_data": message.typed_data()}, indent=2)


def message_from_json(text: str) -> BindingMessage:
    data: dict[str, Any] = json.loads(text)
    return BindingMessage(**data["binding"])


def bind_wallet(
    ledger: Ledger,
    message: BindingMessage,
    signature: bytes | str,
    *,
    welcome_asset: str,
    welcome_amount: int,
    treasury: str,
) -> int:
    """Bind the signing wallet; the first wallet of a user account brings its welcome credit
    (spend-only: it is a budget at the treasury, never a withdrawable balance). An org's
    wallet gets none: welcome credit is for people, and the treasury budgets users only."""
    account = ledger.bind_wallet(message, signature)
    grant_welcome_credit(ledger, account, welcome_asset=welcome_asset, welcome_amount=welcome_amount, treasury=treasury)
    return account


def grant_welcome_credit(
    ledger: Ledger, account: int, *, welcome_asset: str, welcome_amount: int, treasury: str
) -> None:
    """A user account's welcome credit, once (the grant is idempotent by its id): also for
    one whose wallet was bound by a run cut off before the grant (`promptex.ready`)."""
    if welcome_amount > 0 and ledger.account(account).kind == AccountKind.USER:
        ledger.grant_promotional_credit(
            f"welcome:{account}",
            account,
            asset_by_symbol(welcome_asset).symbol,
            welcome_amount,
            treasury=ledger.treasury(treasury).id,
        )
