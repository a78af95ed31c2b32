"""Signed mode's session keys from the browser (issue 23).

POST /api/session-keys  (Bearer key) a SessionKey signed by the wallet the key's account's
                        settlements debit: checked and queued with the coordinator's relay,
                        which registers it on chain on its next pass (gaslessly for the wallet)

The checks are the coordinator's door's own (`coordinator.requests`: the signature, then
`check_session_key_wallet`, `check_session_key_fresh` and `check_previous_session_over`): one
verification for both
entrances, nothing stored for a refused key. The session key's private key never reaches
the server: only its address and the wallet's signature do.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from web3.exceptions import Web3Exception

from promptex.coordinator.requests import (
    Place,
    Refused,
    check_previous_session_over,
    check_session_key_fresh,
    check_session_key_wallet,
    parse_session_key,
    queue_session_key,
)
from promptex.coordinator.store import CoordinatorStore
from promptex.dashboard.api import ApiError, guarded, read_body
from promptex.dashboard.context import Context


def routes(ctx: Context) -> list[BaseRoute]:
    async def chain_now() -> int:
        """The chain's time, as the door checks a SessionKey by it (an expiry, the previous
        session's last window are the vault's, in chain time). Before (s17 review), the wall's:
        on a chain ahead of it a key the vault would refuse as expired was queued for the relay."""
        try:
            return int(await ctx.run(ctx.chain_clock))
        except (OSError, ValueError, Web3Exception):
            raise ApiError(
                503, "the chain's time cannot be read now (its node does not answer): try again shortly"
            ) from None

    async def session_key(request: Request) -> Any:
        key = await ctx.run(ctx.key_of, request)
        body = await read_body(request)
        deployment = await ctx.run(ctx.market.deployment)
        try:
            asked = parse_session_key(body, Place.of(deployment))
        except Refused as exc:
            raise ApiError(400, exc.message) from None
        wallet = await ctx.run(ctx.wallet_of, key, asked.account)  # 403 unless bound to this key's account
        store = CoordinatorStore(ctx.ledger.engine)
        debited = await ctx.run(store.wallet_of, key.account)
        latest = await ctx.run(ctx.ledger.session, key.account, asked.asset)
        now = await chain_now()
        try:
            check_session_key_wallet(asked.account, debited)
            check_session_key_fresh(asked, now, None if latest is None else latest.session)
            check_previous_session_over(asked, now, latest)
            queued = await ctx.run(queue_session_key, store, asked, ctx.clock())  # 409: its nonce queued already
        except Refused as exc:
            raise ApiError(exc.status, exc.message) from None
        return {"queued": queued, "account": wallet, "asset": asked.asset, "nonce": asked.nonce}

    return [Route("/api/session-keys", guarded(session_key), methods=["POST"])]
