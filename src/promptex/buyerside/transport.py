"""An httpx transport that signs: the same as `promptex proxy` without a separate process.

    signer = load_signer(...)   # see promptex.cli.proxy, or build a `Signer` yourself
    client = OpenAI(base_url=GATEWAY, api_key=KEY,
                    http_client=httpx.Client(transport=PromptexSigningTransport(signer)))

Every metered POST gets a voucher (fsync'd to the log first); other requests pass as
they are. Signing stops (and stays stopped in the log until `Signer.resume`) at an answer
beyond its request, or when answers on a lane without the lane's total (a connection
dropped after the request left is one) may have cost more than N − 1 of the lane's
largest hold (`open_signer(..., stop_after_errors=N)`; default 3: N holds per lane with
the request in flight; see `signer.STOP_AFTER_ERRORS`). A request this side will
not sign is answered here, without reaching the gateway, with the API's own error shape
(so the SDK raises its usual error) and one log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import orjson

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
from promptex.buyerside.wire import ASSET_HEADER, MAX_RATE_HEADER, VOUCHER_HEADER

log = logging.getLogger("promptex.buyerside")


def metered_path(path: str) -> str:
    """The /v1 path of a request (a base URL may carry a prefix before /v1)."""
    at = path.find("/v1/")
    return path[at:] if at >= 0 else path


def refusal(path: str, refused: Refused) -> httpx.Response:
    log.warning("refused %s: %s", path, refused.message)
    return httpx.Response(refused.status, content=error_body(path, refused), headers=refused.headers())


class _WatchedStream(httpx.SyncByteStream):
    """A streamed answer passed through while its events are read; the lane is settled
    when the stream ends or is closed."""

    def __init__(self, signer: Signer, ticket: Ticket, response: httpx.Response, hide_usage: bool) -> None:
        self.signer, self.ticket, self.response = signer, ticket, response
        self.watch = StreamWatch(hide_usage)

    def __iter__(self) -> Iterator[bytes]:
        # Decoded here, as its content-encoding says (the client gets them without it): what
        # passes is what is read, and bytes that cannot be decoded break the stream here.
        # Passed on raw, a garbled gzip stream failed in the client's decoder, which closed
        # it: read as the client's own close, the stream's charge weighed nothing.
        try:
            for chunk in self.response.iter_bytes():
                passed = self.watch.feed(chunk)
                if passed:
                    yield passed
        except Exception as exc:
            if broke(exc):
                self.watch.broken = True
            raise
        self.watch.ended = True
        rest = self.watch.rest()
        if rest:
            yield rest

    def close(self) -> None:
        try:
            self.response.close()
        finally:
            self.signer.finish_stream(self.ticket, self.response.headers, self.watch)


class PromptexSigningTransport(httpx.BaseTransport):
    def __init__(self, signer: Signer, inner: httpx.BaseTransport | None = None) -> None:
        self.signer = signer
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = metered_path(request.url.path)
        if request.method != "POST" or not path.startswith("/v1/"):
            return self.inner.handle_request(request)
        raw = request.read()
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise Refused(400, "invalid_request", "the request body is not a JSON object")
            ticket = self.signer.begin(path, body, raw)
        except orjson.JSONDecodeError:
            return refusal(path, Refused(400, "invalid_request", "the request body is not JSON"))
        except Refused as refused:
            return refusal(path, refused)
        content, hide_usage = asking_usage(path, body, raw)
        if content is not raw:  # asking for the stream's usage (`asking_usage`)
            headers = [(k, v) for k, v in request.headers.items() if k.lower() != "content-length"]
            request = httpx.Request(request.method, request.url, headers=headers, content=content,
                                    extensions=request.extensions)  # fmt: skip
        while True:
            response = self._send(request, ticket, body, hide_usage)
            if not ticket.lane_busy:
                return response
            # Refused lane_busy (it took nothing): sent again on another lane, if one is free.
            try:
                ticket = self.signer.again(ticket, path, body, raw)
            except Refused as refused:
                return refusal(path, refused)

    def _send(
        self, request: httpx.Request, ticket: Ticket, body: dict[str, object], hide_usage: bool
    ) -> httpx.Response:
        request.headers[VOUCHER_HEADER] = ticket.voucher.header()
        request.headers[ASSET_HEADER] = self.signer.session.asset_symbol  # the asset the voucher is in
        if ticket.max_rate is not None:  # served only by lots at or below it (`Signer.max_rate`)
            request.headers[MAX_RATE_HEADER] = str(ticket.max_rate)
        try:
            response = self.inner.handle_request(request)
        except BaseException as exc:
            failed(self.signer, ticket, exc)
            raise
        # The content is decoded here: its encoding and length headers no longer describe it.
        headers = [(k, v) for k, v in response.headers.items() if k not in ("content-encoding", "content-length")]
        if body.get("stream") is True and response.status_code == 200:
            return httpx.Response(
                response.status_code,
                headers=headers,
                stream=_WatchedStream(self.signer, ticket, response, hide_usage),
                extensions=response.extensions,
            )
        try:
            content = response.read()
        except BaseException as exc:
            failed(self.signer, ticket, exc)
            raise
        finally:
            response.close()
        self.signer.finish(ticket, response.status_code, response.headers, content)
        return httpx.Response(response.status_code, headers=headers, content=content, extensions=response.extensions)

    def close(self) -> None:
        self.inner.close()
