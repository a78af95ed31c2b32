"""`promptex proxy`'s app: a local OpenAI- and Anthropic-compatible endpoint that forwards
every request to the gateway with the buyer's API key, signing each metered request's
voucher first (`Signer`), and checking each answer on its way back.

    OPENAI_BASE_URL=http://127.0.0.1:8788/v1     ANTHROPIC_BASE_URL=http://127.0.0.1:8788

Clients may send any API key (the proxy holds the real one). A request this side will not
sign is answered here in the API's own error shape, with one log line saying why.
`GET /promptex/status` shows the lanes and, once signing stopped, why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from promptex.buyerside.signer import (
    Refused,
    Signer,
    StreamWatch,
    Ticket,
    asking_usage,
    broke,
    error_body,
    failed,
)
from promptex.buyerside.transport import (
    RATES_KEPT,
    RATES_MAX_BYTES,
    RATES_READ_SECONDS,
    RATES_REFRESH_SECONDS,
    RATES_UNREAD,
    metered_path,
    take_rates,
)
from promptex.buyerside.wire import ASSET_HEADER, MAX_RATE_HEADER, VOUCHER_HEADER

log = logging.getLogger("promptex.proxy")
# Request headers a client's SDK sets that the gateway should see (its key is replaced).
PASSED = ("content-type", "accept", "anthropic-version", "anthropic-beta", "x-request-id")
# Hop-by-hop or no longer true once the proxy re-frames the body.
DROPPED = frozenset({"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"})
JSON = "application/json"


def _headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in DROPPED}


async def refresh_rates(signer: Signer, gateway: httpx.AsyncClient) -> None:
    """Read the gateway's /v1/models again into the signer's rate book (`Signer.refresh`);
    when it cannot be read, the book read before is kept (one log line)."""
    try:
        # Whole within RATES_READ_SECONDS and RATES_MAX_BYTES (as the transport's re-read): read to
        # its end, a trickled answer held the re-reads up for as long as it went on, and any size
        # was held in memory before take_rates' check.
        async with asyncio.timeout(RATES_READ_SECONDS):
            async with gateway.stream("GET", "/v1/models", headers={ASSET_HEADER: signer.session.asset_symbol}) as got:
                content = b""
                async for chunk in got.aiter_bytes():
                    content += chunk
                    if len(content) > RATES_MAX_BYTES:
                        raise ValueError(f"more than the {RATES_MAX_BYTES:,} bytes read")
        take_rates(signer, httpx.Response(got.status_code, content=content))
    except TimeoutError:
        log.warning(RATES_KEPT, f"not read whole within {RATES_READ_SECONDS:g} s")
    except RATES_UNREAD as exc:
        log.warning(RATES_KEPT, exc)


def create_proxy(
    signer: Signer, gateway: httpx.AsyncClient, refresh_seconds: float | None = RATES_REFRESH_SECONDS
) -> Starlette:
    """The app; `gateway` has the gateway's base URL (without /v1) and the buyer's API key.
    While it runs (its lifespan) the gateway's rates are read again every `refresh_seconds`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def every(seconds: float) -> None:
            while True:
                await asyncio.sleep(seconds)
                try:
                    await refresh_rates(signer, gateway)
                except Exception:  # the re-reads go on (a task that raised would end them unseen)
                    log.exception("the gateway's /v1/models was not read again: the rates read before are kept")

        task = asyncio.create_task(every(refresh_seconds)) if refresh_seconds else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    def refuse(path: str, refused: Refused) -> Response:
        log.warning("refused %s: %s", path, refused.message)
        return Response(error_body(path, refused), status_code=refused.status, headers=refused.headers())

    def outgoing(request: Request) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() in PASSED}
        headers[ASSET_HEADER] = signer.session.asset_symbol
        headers["accept-encoding"] = "identity"  # what passes through is what is checked
        return headers

    async def forward(request: Request) -> Response:
        path = metered_path(request.url.path)
        raw = await request.body()
        headers = outgoing(request)
        if request.method != "POST":
            answer = await gateway.request(request.method, path, params=request.query_params, headers=headers)
            return Response(answer.content, status_code=answer.status_code, headers=_headers(answer))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return refuse(path, Refused(400, "invalid_request", "the request body is not JSON"))
        if not isinstance(body, dict):
            return refuse(path, Refused(400, "invalid_request", "the request body is not a JSON object"))
        try:
            ticket = await anyio.to_thread.run_sync(signer.begin, path, body, raw)  # may wait for a lane
        except Refused as refused:
            return refuse(path, refused)
        content, hide_usage = asking_usage(path, body, raw)
        while True:
            response = await send(path, content, body, headers, ticket, hide_usage)
            if not ticket.lane_busy:
                return response
            # Refused lane_busy (it took nothing): sent again on another lane, if one is free.
            try:
                ticket = await anyio.to_thread.run_sync(signer.again, ticket, path, body, raw)  # never waits for a lane
            except Refused as refused:
                return refuse(path, refused)

    async def send(
        path: str, raw: bytes, body: dict[str, Any], headers: dict[str, str], ticket: Ticket, hide_usage: bool
    ) -> Response:
        headers[VOUCHER_HEADER] = ticket.voucher.header()
        if ticket.max_rate is not None:  # served only by lots at or below it (`Signer.max_rate`)
            headers[MAX_RATE_HEADER] = str(ticket.max_rate)
        try:
            answer = await gateway.send(gateway.build_request("POST", path, content=raw, headers=headers), stream=True)
        except httpx.HTTPError as exc:
            failed(signer, ticket, exc)
            return refuse(path, Refused(502, "gateway_unreachable", f"the gateway did not answer: {exc!r}"))
        except BaseException:
            signer.closed(ticket, None)
            raise
        if body.get("stream") is True and answer.status_code == 200:
            watch = StreamWatch(hide_usage)

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in answer.aiter_bytes():  # identity-encoded: the bytes sent
                        passed = watch.feed(chunk)
                        if passed:
                            yield passed
                    watch.ended = True
                    rest = watch.rest()
                    if rest:
                        yield rest
                except Exception as exc:
                    # The gateway's side broke, or sent bytes its content-encoding does not
                    # decode (not our client leaving: that is a cancellation).
                    watch.broken = broke(exc)
                    raise
                finally:
                    await answer.aclose()
                    signer.finish_stream(ticket, answer.headers, watch)

            return StreamingResponse(relay(), status_code=200, headers=_headers(answer))
        try:
            content = await answer.aread()
        except httpx.HTTPError as exc:
            failed(signer, ticket, exc)
            return refuse(path, Refused(502, "gateway_unreachable", "the gateway's answer broke off"))
        except BaseException:
            signer.closed(ticket, None)
            raise
        finally:
            await answer.aclose()
        signer.finish(ticket, answer.status_code, answer.headers, content)
        return Response(content, status_code=answer.status_code, headers=_headers(answer))

    async def status(request: Request) -> Response:
        book = signer.book
        lanes: list[dict[str, Any]] = [
            {
                "lane": lane.index,
                "charged_units": str(lane.charged),
                "exact": lane.exact,
                "signed_units": str(lane.signed),
                "busy": lane.busy,
                "answers_without_figures": lane.errors,
                # What they may have cost, as the stop rule weighs them (against N − 1 of:)
                "without_figures_units": str(signer.weight(lane)),
                "largest_hold_units": str(lane.largest_hold),
                "checked_units": str(lane.verified),  # of answers checked exactly; the stop rule
                "tolerated_units": str(signer.tolerated(lane)),  # tolerates this share beyond N − 1 holds
                "reasoning_units": str(lane.reasoning),  # of checked answers' reported reasoning (unseen)
            }
            for lane in book.lanes
        ]
        return Response(
            orjson.dumps(
                {
                    "session": book.session,
                    "asset": signer.session.asset_symbol,
                    "maximum_units": str(book.maximum),
                    "exposure_units": str(book.exposure()),
                    "stopped": signer.stopped,
                    "shed_answers": signer.shed,  # refused before the gateway read them: counted for nothing
                    "lanes": lanes,
                }
            ),
            media_type=JSON,
        )

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/promptex/status", status, methods=["GET"]),
            Route("/v1/{rest:path}", forward, methods=["GET", "POST"]),
        ],
    )
