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
(so the SDK raises its usual error) and one log line. The gateway's /v1/models is read
again, as `promptex proxy` reads it, every `RATES_REFRESH_SECONDS`: before the first
metered request after that long (with that request's API key).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

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
# The gateway's /v1/models is read again this often (`take_rates`; the proxy's task, the
# transport before a request): lots open and close, and rates change (a request's default max
# rate is fixed at open: never raised, `Signer.max_rate`).
RATES_REFRESH_SECONDS = 300.0
RATES_UNREAD = (httpx.HTTPError, ValueError)  # a read of /v1/models that failed: the book kept
RATES_KEPT = "the gateway's /v1/models was not read again (%s): the rates read before are kept"
KEY_HEADERS = ("authorization", "x-api-key")  # what /v1/models is read with (the gateway's own check)
# The largest /v1/models answer read again: 4 providers × 20 lots measure 21 KB (README), so
# this is room for a market a hundred times that. Read whole, a 15 MB answer of 60,000 models
# took 5 s to parse (s3break s18), in the proxy on its event loop, every stream relayed by it
# stalled, every `RATES_REFRESH_SECONDS`; beyond it the book read before is kept.
RATES_MAX_BYTES = 4 << 20
# The longest a re-read of /v1/models may take reading its answer, whole (each read is held to
# the request's own timeouts too): a body trickled within the read timeout, a byte at a time,
# held the request that found the read due for as long as the gateway went on.
RATES_READ_SECONDS = 5.0


def take_rates(signer: Signer, answer: httpx.Response) -> None:
    """A read of the gateway's /v1/models into the signer's rate book (`Signer.refresh`);
    raises one of RATES_UNREAD for an answer that is no list of models (the book is kept)."""
    if answer.status_code != 200:
        raise ValueError(f"answered {answer.status_code}")
    if len(answer.content) > RATES_MAX_BYTES:
        raise ValueError(f"{len(answer.content):,} bytes, more than the {RATES_MAX_BYTES:,} read")
    signer.refresh(orjson.loads(answer.content))


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
    """`refresh_seconds`: how often /v1/models is read again (None: never, `Signer.refresh`
    by hand); before session 18 it was read only when the signer opened, so a list price
    lowered since stopped signing at the first honest answer, and a model listed since was
    refused (unknown_rate) until the process restarted."""

    def __init__(
        self,
        signer: Signer,
        inner: httpx.BaseTransport | None = None,
        *,
        refresh_seconds: float | None = RATES_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.signer = signer
        self.inner = inner or httpx.HTTPTransport()
        self.refresh_seconds, self.clock = refresh_seconds, clock
        self._due = None if refresh_seconds is None else clock() + refresh_seconds
        self._reading = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = metered_path(request.url.path)
        if request.method != "POST" or not path.startswith("/v1/"):
            return self.inner.handle_request(request)
        self._refresh_if_due(request)
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

    def _refresh_if_due(self, request: httpx.Request) -> None:
        """Read /v1/models again (`take_rates`) when it is due, with `request`'s API key;
        one thread reads, the others go on with the book read before."""
        if self._due is None or self.refresh_seconds is None or self.clock() < self._due:
            return
        if not self._reading.acquire(blocking=False):
            return
        try:
            self._due = self.clock() + self.refresh_seconds
            path = request.url.path
            url = request.url.copy_with(path=path[: path.find("/v1/")] + "/v1/models", query=None)
            headers = {k: v for k, v in request.headers.items() if k.lower() in KEY_HEADERS}
            headers[ASSET_HEADER] = self.signer.session.asset_symbol
            # Within the request's own timeouts (its client's) and RATES_READ_SECONDS each: a bare
            # request has none, so a gateway that never answered /v1/models held the caller past
            # its timeout for good; and the client's own (600 s for openai's, none at all) let a
            # gateway sending nothing, or its head and a byte, hold it that long (review3 s18).
            given = request.extensions.get("timeout", {})
            timeout = {
                part: min(RATES_READ_SECONDS, given.get(part) or RATES_READ_SECONDS)
                for part in ("connect", "read", "write", "pool")
            }
            deadline = self.clock() + RATES_READ_SECONDS
            answer = self.inner.handle_request(
                httpx.Request("GET", url, headers=headers, extensions={"timeout": timeout})
            )
            try:
                content = self._read_within(answer, deadline)
            finally:
                answer.close()
            take_rates(self.signer, httpx.Response(answer.status_code, content=content))
        except RATES_UNREAD as exc:
            log.warning(RATES_KEPT, exc)
        except Exception:  # the request goes on, signed with the book read before
            log.exception("the gateway's /v1/models was not read again: the rates read before are kept")
        finally:
            self._reading.release()

    def _read_within(self, answer: httpx.Response, deadline: float) -> bytes:
        """`answer`'s body, read until `deadline` (`self.clock`) and up to RATES_MAX_BYTES;
        ValueError beyond either (the rest is not read)."""
        chunks, size = [], 0
        for chunk in answer.iter_bytes():
            size += len(chunk)
            if size > RATES_MAX_BYTES:
                raise ValueError(f"more than the {RATES_MAX_BYTES:,} bytes read")
            if self.clock() > deadline:
                raise ValueError(f"not read whole within {RATES_READ_SECONDS:g} s")
            chunks.append(chunk)
        return b"".join(chunks)

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
