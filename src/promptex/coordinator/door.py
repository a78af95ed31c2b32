"""The coordinator's HTTP door: what a wallet asks the coordinator for by signature alone.

    POST /v1/exits               an ExitRequest signed by the wallet → a co-signed Release
                                 (`Coordinator.sign_release`: only an amount free of
                                 unsettled usage, locked until used or expired)
    GET  /v1/exits/nonce?account=0x…   the nonce the wallet's next ExitRequest carries
    POST /v1/session-keys        a SessionKey signed by the wallet → queued with the relay
    POST /v1/session-keys/check  the same, checked only: whether the market would use the
                                 session the wallet registers itself (`session create --direct`)
    GET  /v1/health              {"ok": true}

Served by the coordinator process (`promptex coordinator`, on 127.0.0.1 by default) so a
release is signed by the one process that holds the coordinator's key. No API key: the
wallet's signature is the credential. Each refusal is a 4xx JSON body `{"error": {"code",
"message", …exact fields}}` that moves and locks nothing; a request answered (released or
refused by the coordinator) uses its nonce, so a signed request is answered once. Only the
coordinator holding the leader lease answers an exit (a standby's door: 503); the door
only reads the lease, taken and renewed by the process's passes.
Per wallet, at most `limit` answered requests per `window` seconds (429 with Retry-After):
a script cannot make the coordinator sign, lock or relay without end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from promptex.coordinator.requests import (
    Place,
    Refused,
    check_previous_session_over,
    check_session_key_fresh,
    check_session_key_wallet,
    parse_exit_request,
    parse_session_key,
    queue_session_key,
)
from promptex.coordinator.service import Coordinator
from promptex.coordinator.store import ReleaseRefused
from promptex.ledger.binding import checksum_address
from promptex.protocol.units import money, utc_text
from promptex.serving import ServerThread, listening_sockets
from promptex.throttle import Throttle

log = logging.getLogger("promptex.coordinator.door")

REQUESTS_PER_WINDOW = 6  # answered requests per wallet …
WINDOW_SECONDS = 3_600.0  # … per hour
MAX_BODY_BYTES = 16_384


class Door:
    """The door's checks in order, then the coordinator's answer; the HTTP app is `app()`."""

    def __init__(
        self,
        coordinator: Coordinator,
        place: Place,
        *,
        limit: int = REQUESTS_PER_WINDOW,
        window: float = WINDOW_SECONDS,
        throttle: Throttle | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.place = place
        self.throttle = throttle or Throttle(limit, window)
        # One answer at a time: sign_release reads the free amount, then locks it.
        self._lock = threading.Lock()

    def _limit(self, account: str) -> None:
        if not self.throttle.allow(account):
            wait = math.ceil(self.throttle.retry_after(account)) or 1
            raise Refused(
                429, "rate_limited",
                f"{account} asked {self.throttle.limit} times within {self.throttle.window:.0f} s: "
                f"try again in {wait} s",
                retry_after_seconds=wait,
            )  # fmt: skip

    def exit(self, body: dict[str, Any]) -> dict[str, Any]:
        """An instant exit for the wallet that signed `body`, or Refused."""
        coordinator = self.coordinator
        request = parse_exit_request(body, self.place, coordinator.chain.now())
        with self._lock:
            # Only the leader signs releases: two coordinators' doors never both read the same
            # amount as free (a standby's passes settle nothing either). The door only reads
            # the lease, its passes take and renew it: a request (any wallet's, even a replay)
            # never takes a lease a pass gave back for another key's coordinator, nor keeps
            # one for a process whose passes are stuck.
            if not coordinator.store.holds_lease(coordinator.holder):
                message = (
                    "this coordinator is standing by (another holds the lease, or its own passes do not run): "
                    "ask the leader's door"
                )
                raise Refused(503, "standby", message)
            expected = coordinator.store.door_nonce(request.account)
            if request.nonce != expected:
                raise Refused(
                    409, "bad_nonce",
                    f"request nonce {request.nonce} is {'used' if request.nonce < expected else 'ahead'}: "
                    f"the next is {expected} (GET /v1/exits/nonce)",
                    next_nonce=expected,
                )  # fmt: skip
            self._limit(request.account)
            if not coordinator.store.take_door_nonce(request.account, request.nonce, coordinator.clock()):
                raise Refused(409, "bad_nonce", f"request nonce {request.nonce} was just used", next_nonce=expected + 1)
            try:
                release = coordinator.sign_release(request.account, request.asset, request.amount)
            except ReleaseRefused as exc:
                status = 403 if exc.code == "not_bound" else 409
                raise Refused(status, exc.code, str(exc), **exc.fields) from None
        log.info("door: %s may leave with %d %s (request %d)", release.address, release.amount, release.asset,
                 request.nonce)  # fmt: skip
        return {
            "release": {
                "address": release.address,
                "asset": release.asset,
                "asset_address": request.asset_address,
                "amount": str(release.amount),
                "nonce": release.nonce,
                "expiry": release.expiry,
                "signature": release.signature,
            },
            "message": f"{money(release.amount, release.asset)} may leave the vault at once until "
            f"{utc_text(release.expiry)} (chain time); it is locked for it until then",
        }

    def nonce(self, account: str | None) -> dict[str, Any]:
        try:
            address = checksum_address(str(account))
        except ValueError:
            raise Refused(400, "bad_account", "account must be an address (0x and 40 hex digits)") from None
        return {"account": address, "nonce": self.coordinator.store.door_nonce(address)}

    def session_key(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a SessionKey signed by the wallet an account's settlements debit (the relay pays its gas)."""
        request = parse_session_key(body, self.place)
        store = self.coordinator.store
        account = store.account_of(request.account)
        if account is None:
            raise Refused(
                403, "not_bound",
                f"{request.account} is not bound to an account: bind it first (get an API key by signing with it "
                "on the dashboard, or `promptex buyer signup --wallet` then `promptex buyer bind`)",
            )  # fmt: skip
        check_session_key_wallet(request.account, store.wallet_of(account))
        latest, _lanes = store.session_lanes(account, request.asset)
        now = self.coordinator.chain.now()
        check_session_key_fresh(request, now, None if latest is None else latest.session)
        check_previous_session_over(request, now, latest)
        self._limit(request.account)
        queued = queue_session_key(store, request, self.coordinator.clock())
        return {"queued": queued, "account": request.account, "asset": request.asset, "nonce": request.nonce}

    def session_key_check(self, body: dict[str, Any]) -> dict[str, Any]:
        """Whether a SessionKey the wallet registers itself (`promptex session create --direct`)
        would govern its account's spending: refused (403 not_debited), queued nothing, when
        the wallet is bound to an account whose settlements debit another of its wallets. An
        unbound wallet passes: its session is its own until it binds. Answers only to the
        wallet's signature, like the relay (no account's wallets are shown to anyone else)."""
        request = parse_session_key(body, self.place)
        store = self.coordinator.store
        account = store.account_of(request.account)
        if account is not None:
            check_session_key_wallet(request.account, store.wallet_of(account))
        return {"account": request.account, "asset": request.asset, "bound": account is not None}

    # ─── HTTP ────────────────────────────────────────────────────────────────

    def app(self) -> Starlette:
        def endpoint(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
            async def respond(request: Request) -> Response:
                try:
                    return _json(await handler(request))
                except Refused as exc:
                    headers = {}
                    if exc.status == 429:
                        headers["retry-after"] = str(exc.fields["retry_after_seconds"])
                    return _json(exc.body(), exc.status, headers)
                except Exception:  # the node or the database: nothing was answered, nothing moved
                    log.exception("door: %s %s failed", request.method, request.url.path)
                    message = "the coordinator cannot answer now: try again shortly"
                    return _json({"error": {"code": "unavailable", "message": message}}, 503)

            return respond

        async def exits(request: Request) -> Any:
            return await asyncio.to_thread(self.exit, await _body(request))

        async def nonce(request: Request) -> Any:
            return await asyncio.to_thread(self.nonce, request.query_params.get("account"))

        async def session_keys(request: Request) -> Any:
            return await asyncio.to_thread(self.session_key, await _body(request))

        async def session_key_check(request: Request) -> Any:
            return await asyncio.to_thread(self.session_key_check, await _body(request))

        async def health(_request: Request) -> Any:
            return {"ok": True}

        return Starlette(
            routes=[
                Route("/v1/exits", endpoint(exits), methods=["POST"]),
                Route("/v1/exits/nonce", endpoint(nonce), methods=["GET"]),
                Route("/v1/session-keys", endpoint(session_keys), methods=["POST"]),
                Route("/v1/session-keys/check", endpoint(session_key_check), methods=["POST"]),
                Route("/v1/health", endpoint(health), methods=["GET"]),
            ]
        )


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise Refused(413, "too_large", f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refused(400, "malformed_json", "the body is not JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "malformed_json", "the body must be a JSON object")
    return data


def serve_door(door: Door, host: str, port: int) -> ServerThread | None:
    """Serve the door in a background thread of this process; None (logged) when its port is
    taken: the coordinator's settlement must not stop for its door."""
    try:
        sockets = listening_sockets(host, port, 1)
    except OSError as exc:
        log.error("the door cannot listen on %s:%d (%s): no instant exits or SessionKeys by HTTP", host, port, exc)
        return None
    server = ServerThread(door.app(), host=host, sockets=sockets)
    server.__enter__()
    log.info("door on %s (POST /v1/exits, POST /v1/session-keys)", server.url)
    return server
