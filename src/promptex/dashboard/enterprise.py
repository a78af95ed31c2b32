"""The enterprise desk: an org's vault balances, its members with their API keys (the
prefix only: a key is shown once, when it is made, and stored hashed), per-member and
per-key budgets, and usage by member; and a new member key (`promptex buyer org-key`).

Only the org's owner sees it: a key of the org account itself (its wallet bound to the
org), never a member's key, which spends from the org but belongs to the member."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select

from promptex.gateway.buyers import member_key
from promptex.gateway.schema import api_keys
from promptex.gateway.store import ApiKey, GatewayStore
from promptex.ledger import AccountKind, Ledger
from promptex.ledger import accounts as _accounts
from promptex.ledger import usage as _usage
from promptex.metering import ASSETS, CREDIT_SYMBOL
from promptex.metering.assets import UnknownAsset
from promptex.metering.assets import asset as asset_by_symbol


class NotOwner(PermissionError):
    """The key is not the org owner's."""


def org_of(ledger: Ledger, key: ApiKey) -> int:
    """The org this key owns, or NotOwner saying why not."""
    if key.payer is not None:  # a member's key: the org by its name, as its members know it (c6bb1ab)
        name = ledger.account(key.payer).name
        org = repr(name) if name else str(key.payer)
        raise NotOwner(
            f"this is a member key of org {org}: only the org's owner sees its desk "
            "(get a key with the wallet bound to the org)"
        )
    if ledger.account(key.account).kind != AccountKind.ORG:
        raise NotOwner(
            "this key's account is not an org: the desk shows to the wallet bound to an org account "
            "(an org with its owner's wallet is made with `promptex org create NAME --owner-wallet 0x…`)"
        )
    return key.account


def _symbols() -> list[str]:
    return [s for s in ASSETS if s != CREDIT_SYMBOL]


def desk_view(ledger: Ledger, store: GatewayStore, key: ApiKey) -> dict[str, Any]:
    org = org_of(ledger, key)
    vault = {}
    for symbol in _symbols():
        held = ledger.balance(org, symbol)
        vault[symbol] = {
            "posted": str(held.posted),
            "held": str(held.held),
            "spendable": str(max(0, held.posted - held.held - held.locked)),
            "cap_remaining": str(held.cap_remaining),
        }
    with ledger.engine.connect() as conn:  # one snapshot: the ledger's rows and the gateway's keys
        member_rows = _accounts.members_of(conn, org)
        org_budgets = _accounts.budgets_of(conn, org)
        key_rows = conn.execute(select(api_keys).where(api_keys.c.payer_id == org).order_by(api_keys.c.id)).all()
        usage_rows = _usage.paid_by(conn, org)
    member_budgets: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for b in org_budgets:
        member_budgets[b.member].append({"asset": b.asset, "remaining": str(b.remaining), "held": str(b.held)})
    keys: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for k in key_rows:
        keys[int(k.account_id)].append(
            {
                "prefix": k.prefix,
                "created_at": int(k.created_at),
                "revoked": bool(k.revoked),
                "budget_asset": k.budget_asset,
                "budget_remaining": None if k.budget_remaining is None else str(k.budget_remaining),
            }
        )
    usage: dict[int, dict[str, dict[str, int]]] = defaultdict(dict)
    for u in usage_rows:
        slot = usage[u.account].setdefault(u.asset, {"requests": 0, "cost": 0, "tokens": 0})
        slot["requests"] += 1
        slot["cost"] += int(u.cost)
        slot["tokens"] += int(u.input_tokens) + int(u.output_tokens)
    out_members = []
    for m, joined_at in member_rows:
        out_members.append(
            {
                "account": m,
                "name": ledger.account(m).name,
                "joined_at": joined_at,
                "keys": keys.get(m, []),
                "budgets": member_budgets.get(m, []),
                "usage": [
                    {"asset": a, "requests": v["requests"], "cost": str(v["cost"]), "tokens": v["tokens"]}
                    for a, v in sorted(usage.get(m, {}).items())
                ],
            }
        )
    account = ledger.account(org)
    return {"org": org, "name": account.name, "wallets": ledger.wallets(org), "vault": vault, "members": out_members}


def new_member(ledger: Ledger, store: GatewayStore, key: ApiKey, body: dict[str, Any], now: int) -> dict[str, Any]:
    """A new member of the owner's org and its key (shown once), within an optional budget."""
    org = org_of(ledger, key)
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name.strip()) <= 100):
        raise ValueError("a member's name is 1 to 100 characters")
    budget = None
    asset, amount = body.get("budget_asset"), body.get("budget")
    if amount not in (None, ""):
        try:
            spec = asset_by_symbol(str(asset))
        except UnknownAsset:
            raise ValueError(f"unknown asset {asset!r}") from None
        units = _units(str(amount), spec.decimals, spec.symbol)
        budget = (spec.symbol, units)
    new = member_key(ledger, store, org, now, name=name.strip() if name else None, budget=budget)
    return {"account": new.account, "key": new.key, "prefix": new.record.prefix}


def _units(text: str, decimals: int, symbol: str) -> int:
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        raise ValueError(f"budget: {text!r} is not an amount of {symbol}") from None
    scaled = value.scaleb(decimals)
    if not value.is_finite() or value < 0 or scaled != scaled.to_integral_value():
        raise ValueError(f"budget: a non-negative amount of {symbol} with at most {decimals} decimals")
    return int(scaled)
