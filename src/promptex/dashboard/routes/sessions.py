"""Signed mode's session keys from the browser (issue 23).

POST /api/session-keys  (Bearer key) a SessionKey signed by a wallet bound to the key's
                        account: checked and queued with the coordinator's relay, which
                        registers it on chain on its next pass (gaslessly for the wallet)

The checks are the coordinator's door's own (`coordinator.requests`): one verification for
both entrances. Then, what the relay would only learn from the vault's refusal (a pending
submission stored, rejected later), refused here at once with nothing stored: a nonce of a
session the ledger already knows (a replayed SessionKey), an expiry already past or beyond
the vault's range, a maximum beyond what the vault can hold (it would clamp it). The
session key's private key never reaches the server: only its address and the wallet's
signature do.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from promptex.coordinator.requests import Place, Refused, SessionRequest, parse_session_key, queue_session_key
from promptex.coordinator.store import CoordinatorStore
from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context

MAX_EXPIRY = 2**32 - 1  # the vault's MAX_CAP_EXPIRY: a later expiry is cut to it
MAX_MAXIMUM = 2**96 - 1  # the vault's MAX_CAP_TOTAL: a larger maximum is cut to it


def _plausible(ctx: Context, account: int, asked: SessionRequest) -> None:
    """Refuse (400) what the vault would refuse or cut (see the module's doc)."""
    now = ctx.clock()
    if asked.expiry <= now:
        raise ApiError(400, f"this SessionKey expired (at {asked.expiry}; now {now}): sign a new one")
    if asked.expiry > MAX_EXPIRY:
        raise ApiError(400, f"expiry {asked.expiry} is beyond the vault's range (at most {MAX_EXPIRY})")
    if asked.maximum > MAX_MAXIMUM:
        raise ApiError(400, f"maximum {asked.maximum} is beyond what the vault holds (at most {MAX_MAXIMUM})")
    known = ctx.ledger.session(account, asked.asset)
    if known is not None and asked.nonce <= known.session:
        raise ApiError(
            400, f"nonce {asked.nonce} is of a session already registered (the latest is {known.session}): "
            f"sign a SessionKey with nonce {known.session + 1}",
        )  # fmt: skip


def routes(ctx: Context) -> list[BaseRoute]:
    async def session_key(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        deployment = await ctx.run(ctx.market.deployment)
        try:
            asked = parse_session_key(body, Place.of(deployment))
        except Refused as exc:
            raise ApiError(400, exc.message) from None
        wallet = await ctx.run(ctx.wallet_of, key, asked.account)  # 403 unless bound to this key's account
        await ctx.run(_plausible, ctx, key.account, asked)
        store = CoordinatorStore(ctx.ledger.engine)
        queued = await ctx.run(queue_session_key, store, asked, ctx.clock())
        return {"queued": queued, "account": wallet, "asset": asked.asset, "nonce": asked.nonce}

    return [Route("/api/session-keys", guarded(session_key), methods=["POST"])]
