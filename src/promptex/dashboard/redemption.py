"""The redemption agent's records for one wallet, as the dashboard shows them: linked AI
accounts with their balances (read live from the provider's billing API with the sealed
credential, which stays here), auto-topup rules (and adding one), and the redemption
history with its receipts. Grants live on chain; the browser reads them itself.

Only the wallet's owner reaches these: the caller's API key must belong to the account
the wallet is bound to (see `app.py`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from eth_account import Account
from sqlalchemy import Engine, select

from promptex.agent.billing import BillingAccount, BillingAdapter, BillingError
from promptex.agent.schema import agent_txs
from promptex.agent.service import link_account
from promptex.agent.store import AgentStore, LinkedAccount
from promptex.config import Settings
from promptex.protocol.redemption import account_ref, provider_id
from promptex.protocol.units import TOKEN_UNIT, USD_MICRO
from promptex.sealing.envelope import EnvelopeError, MasterKeys, load_master_keys


class BadInput(ValueError):
    """A request the user can fix: the message says how."""


def agent_address(s: Settings) -> str | None:
    """The address users grant (the agent's key stays with the agent; only its address is shown)."""
    from promptex.agent.factory import LOCAL_AGENT_KEY

    if s.agent_private_key is not None:
        return str(Account.from_key(s.agent_private_key.get_secret_value()).address)
    if s.agent_network == "local":
        return str(Account.from_key(LOCAL_AGENT_KEY).address)
    return None


def master_keys(s: Settings) -> MasterKeys | None:
    """The gateway's master keys (they open the sealed billing credentials), never created here."""
    env = s.gateway_master_key.get_secret_value() if s.gateway_master_key else None
    try:
        return load_master_keys(env, s.gateway_master_key_file, create=False)
    except EnvelopeError:
        return None


@dataclass(frozen=True)
class RedemptionReader:
    engine: Engine
    billing: BillingAdapter
    keys: Callable[[], MasterKeys | None]

    def _balance(self, a: LinkedAccount) -> dict[str, Any]:
        """The balance the billing API reports now, or the agent's last reading with the reason."""
        keys = self.keys()
        if keys is None:
            return {"balance_usd_micro": a.balance_usd_micro, "balance_live": False, "balance_error": "no master key"}
        try:
            credential = keys.open(a.sealed).decode()
            live = self.billing.balance(
                BillingAccount(a.provider, a.account_id, a.account_salt, a.account_ref, credential, a.billing_url)
            )
        except (BillingError, EnvelopeError) as exc:
            return {"balance_usd_micro": a.balance_usd_micro, "balance_live": False, "balance_error": str(exc)}
        return {"balance_usd_micro": live, "balance_live": True, "balance_error": None}

    def view(self, wallet: str) -> dict[str, Any]:
        store = AgentStore(self.engine)
        accounts = []
        for a in store.linked_accounts(wallet):
            accounts.append(
                {
                    "provider": a.provider,
                    "provider_id": "0x" + provider_id(a.provider).hex(),
                    "account_id": a.account_id,
                    "account_ref": "0x" + a.account_ref.hex(),
                    **self._balance(a),
                }
            )
        rules = [
            {
                "id": r.id,
                "provider": r.provider,
                "token": r.token,
                "below_usd_micro": r.below_usd_micro,
                "add_usd_micro": r.add_usd_micro,
                "max_tokens_in": str(r.max_tokens_in),
                "enabled": r.enabled,
                "last_outcome": r.last_outcome,
            }
            for r in store.rules(enabled_only=False)
            if r.user == wallet
        ]
        history = store.redemptions(user=wallet)
        tx_ids = {t for r in history for t in (r.redeem_tx_id, r.release_tx_id) if t is not None}
        hashes: dict[int, str] = {}
        if tx_ids:
            with self.engine.connect() as conn:
                rows = conn.execute(select(agent_txs.c.id, agent_txs.c.tx_hash).where(agent_txs.c.id.in_(tx_ids)))
                hashes = {int(row.id): str(row.tx_hash) for row in rows}
        redemptions = [
            {
                "id": r.id,
                "created_at": r.created_at,
                "provider": r.provider,
                "token": r.token,
                "usd_micro": r.usd_micro,
                "tokens_in": None if r.tokens_in is None else str(r.tokens_in),
                "status": r.status,
                "rule_id": r.rule_id,
                "chain_redemption_id": r.chain_redemption_id,
                "billing_ref": None if r.billing_ref is None else "0x" + r.billing_ref.hex(),
                "receipt_usd_micro": r.receipt_usd_micro,
                "redeem_tx": hashes.get(r.redeem_tx_id) if r.redeem_tx_id else None,
                "release_tx": hashes.get(r.release_tx_id) if r.release_tx_id else None,
                "error": r.error,
            }
            for r in reversed(history)
        ]
        return {"wallet": wallet, "accounts": accounts, "rules": rules, "redemptions": redemptions}


def _dollars(value: Any, name: str) -> int:
    try:
        amount = Decimal(str(value)) * USD_MICRO
    except InvalidOperation:
        raise BadInput(f"{name}: {value!r} is not a dollar amount") from None
    if not amount.is_finite() or amount <= 0 or amount != amount.to_integral_value():
        raise BadInput(f"{name}: a positive dollar amount with at most 6 decimals, not {value!r}")
    return int(amount)


def _tokens(value: Any, name: str) -> int:
    try:
        amount = Decimal(str(value)) * TOKEN_UNIT
    except InvalidOperation:
        raise BadInput(f"{name}: {value!r} is not a token amount") from None
    if not amount.is_finite() or amount <= 0 or amount != amount.to_integral_value():
        raise BadInput(f"{name}: a positive amount with at most 18 decimals, not {value!r}")
    return int(amount)


def add_rule(engine: Engine, wallet: str, body: dict[str, Any], tokens: list[str], now: int) -> dict[str, Any]:
    """`promptex agent rule` for the wallet's owner: "provider below $X → add $Y, selling at most Z tokens"."""
    provider = str(body.get("provider") or "").strip().lower()
    try:
        provider_id(provider)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    token = str(body.get("token") or "").upper()
    if token not in tokens:
        raise BadInput(f"{token or 'no token'}: pick one of {', '.join(tokens)}")
    below = _dollars(body.get("below_usd"), "below")
    add = _dollars(body.get("add_usd"), "add")
    max_in = _tokens(body.get("max_tokens"), "sell at most")
    rule = AgentStore(engine).add_rule(wallet, provider, token, below, add, max_in, now)
    return {"id": rule.id, "provider": rule.provider, "token": rule.token}


def set_rule_enabled(engine: Engine, wallet: str, rule_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Switch one of the wallet's rules on or off (`{"enabled": true|false}`)."""
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise BadInput("give enabled: true or false")
    rule = AgentStore(engine).set_rule_enabled(rule_id, wallet, enabled)
    if rule is None:
        raise LookupError(f"this wallet has no rule {rule_id}")
    return {"id": rule.id, "enabled": rule.enabled}


def link_billing_account(
    engine: Engine,
    keys: MasterKeys | None,
    billing: BillingAdapter,
    wallet: str,
    body: dict[str, Any],
    billing_url: str,
    now: int,
) -> dict[str, Any]:
    """Link the wallet's account at a provider (`{provider, account_id, credential}`): the
    scoped credential is checked with one balance call first, then sealed and stored as
    `promptex agent link` stores it; the wallet then confirms the reference on chain."""
    provider = str(body.get("provider") or "").strip().lower()
    account_id = str(body.get("account_id") or "").strip()
    credential = body.get("credential")
    try:
        provider_id(provider)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    if not account_id:
        raise BadInput("give the account id at the provider")
    if not isinstance(credential, str) or not credential.strip():
        raise BadInput("give the scoped billing credential the agent tops up with")
    if keys is None:
        raise PermissionError("this dashboard has no master key to seal the credential with (the agent's)")
    salt = secrets.token_bytes(16)
    probe = BillingAccount(provider, account_id, salt, account_ref(account_id, salt), credential.strip(), billing_url)
    try:
        balance = billing.balance(probe)
    except BillingError as exc:
        raise BadInput(f"the billing API did not accept this account and credential ({exc})") from None
    store = AgentStore(engine)
    linked = link_account(store, keys, wallet, provider, account_id, credential.strip(), billing_url, now, salt=salt)
    store.set_balance(linked.id, balance, now)
    return {
        "provider": linked.provider,
        "account_id": linked.account_id,
        "account_ref": "0x" + linked.account_ref.hex(),
        "balance_usd_micro": balance,
    }
