"""`promptex proxy`'s app and the session grant, in-process: an unchanged OpenAI SDK
through the proxy to a fake signed-mode gateway, refusals in each API's own error shape,
and the wallet's SessionKey signature through an ape account."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import stat
from pathlib import Path

import httpx
import openai
import pytest
from buyerside_fakes import IDENTITY, MODEL, FakeSignedGateway, UnreadableGateway, make_signer
from eth_account import Account

from promptex.buyerside.answers import RateBook
from promptex.buyerside.opening import log_path, open_signer
from promptex.buyerside.proxy import create_proxy
from promptex.buyerside.recovery import ChainSession
from promptex.buyerside.sessions import GrantError, SessionGrant, load, new_grant, save
from promptex.buyerside.voucherlog import VoucherLogError
from promptex.gateway.errors import SIGNED_CROSS_TOKEN
from promptex.protocol.eip712 import sign_digest

WALLET_KEY = "0x" + "a1" * 32


def _run_through_proxy(gateway: FakeSignedGateway, signer: object, requests: int) -> list[object]:
    async def main() -> list[object]:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        app = create_proxy(signer, upstream)  # type: ignore[arg-type]
        local = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8788")
        client = openai.AsyncOpenAI(base_url="http://127.0.0.1:8788/v1", api_key="anything", http_client=local)
        messages = [{"role": "user", "content": "hello there"}]
        asks = [client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3) for _ in range(requests)]
        done: list[object] = list(await asyncio.gather(*asks))
        # A plain stream=True (no usage asked): the proxy asks for the usage to check its cost, and
        # keeps the usage chunk (no choices) from this client, which reads choices[0] of each.
        stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=2, stream=True)
        done.append("".join([c.choices[0].delta.content or "" async for c in stream]))
        done.append((await local.get("/promptex/status")).json())
        return done

    return asyncio.run(main())


def test_proxy__openai_sdk_concurrent_and_stream__signed_checked_and_status(tmp_path: Path) -> None:
    gateway = FakeSignedGateway(lanes=3)
    signer = make_signer(tmp_path / "v.log", lanes=3)
    *answers, streamed, status = _run_through_proxy(gateway, signer, 8)
    assert len(answers) == 8 and streamed == "alpha bravo"
    assert signer.stopped is None and len(gateway.received) == 9
    assert status["stopped"] is None  # type: ignore[index]
    assert sum(int(lane["charged_units"]) for lane in status["lanes"]) == sum(gateway.true_costs)  # type: ignore[index]


def test_proxy__anthropic_sdk__messages_signed_and_checked(tmp_path: Path) -> None:
    import anthropic
    import httpx2  # the anthropic SDK's own fork of httpx

    gateway = FakeSignedGateway(lanes=2)
    signer = make_signer(tmp_path / "v.log", lanes=2)

    async def main() -> object:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        local = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        client = anthropic.AsyncAnthropic(base_url="http://127.0.0.1:8788", api_key="anything", http_client=local)
        return await client.messages.create(
            model=MODEL, max_tokens=5, system="be brief", messages=[{"role": "user", "content": "hello there you"}]
        )

    message = asyncio.run(main())
    assert message.usage.output_tokens == 5  # type: ignore[attr-defined]
    assert signer.stopped is None and len(gateway.received) == 1
    assert signer.book.charged_total() == sum(gateway.true_costs) > 0


def test_proxy__signing_stopped__each_api_refused_in_its_own_shape(tmp_path: Path) -> None:
    signer = make_signer(tmp_path / "v.log", lanes=1)
    signer.stop("test: an answer was beyond its request")

    async def main() -> tuple[httpx.Response, httpx.Response]:
        upstream = httpx.AsyncClient(transport=FakeSignedGateway().transport(), base_url="http://gateway.test")
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        return await local.post("/v1/chat/completions", json=body), await local.post("/v1/messages", json=body)

    chat, messages = asyncio.run(main())
    assert chat.status_code == messages.status_code == 402
    assert "beyond its request" in chat.json()["error"]["message"]
    assert messages.json()["type"] == "error" and messages.json()["error"]["type"] == "signing_stopped"


def test_proxy__lane_busy__sent_again_on_another_lane__none_free_429_with_retry_after(tmp_path: Path) -> None:
    """The proxy as the transport: a request the gateway refuses 409 lane_busy (it took
    nothing) is signed again on a lane that is free; with none, 429 no_free_lane with
    Retry-After instead of the gateway's 409 about a lane the client never chose."""
    gateway = FakeSignedGateway(lanes=2)
    signer = make_signer(tmp_path / "v.log", lanes=2, lane_busy_rest_seconds=60, lane_wait_seconds=0)
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

    async def main() -> list[httpx.Response]:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        answers = [await local.post("/v1/chat/completions", json=body)]
        gateway.book[0].in_flight = True
        answers.append(await local.post("/v1/chat/completions", json=body))  # lane 0 refused: on lane 1
        gateway.book[1].in_flight = True
        signer.book.lanes[0].rests_until = 0.0
        answers.append(await local.post("/v1/chat/completions", json=body))  # both refused
        return answers

    first, moved, none = asyncio.run(main())
    assert (first.status_code, moved.status_code) == (200, 200)
    assert (none.status_code, none.json()["error"]["code"], none.headers["retry-after"]) == (429, "no_free_lane", "60")
    assert [v.lane for v in gateway.received] == [0, 0, 1, 0, 1]
    assert signer.stopped is None


def test_proxy__model_of_another_provider_than_the_sessions_token__refused_here_in_each_shape(tmp_path: Path) -> None:
    """A session in GPT asked for a model /v1/models says Anthropic owns (paid in GPT: converted
    at a TWAP, not built signed, `errors.SIGNED_CROSS_TOKEN`): refused by the proxy itself, no
    voucher signed, with the gateway's message. Before (session 18) it was signed and sent,
    and the charge at the gateway's TWAP stopped signing at the first answer. Its own
    provider's model (owned_by "openai") is signed as before."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    signer.session = dataclasses.replace(signer.session, asset_symbol="GPT")
    price = {"input_per_million": "0.000000000003", "output_per_million": "0.000000000006"}  # the fake's RATES
    models = {"data": [{"id": MODEL, "owned_by": "anthropic", "pricing": {"GPT": price}}]}
    signer.rates = RateBook.from_models(models)
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}

    async def main() -> tuple[httpx.Response, httpx.Response]:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        return await local.post("/v1/chat/completions", json=body), await local.post("/v1/messages", json=body)

    chat, messages = asyncio.run(main())
    assert chat.status_code == messages.status_code == 400
    assert chat.json()["error"]["code"] == messages.json()["error"]["type"] == SIGNED_CROSS_TOKEN
    assert "sign in CLD or USDC" in chat.json()["error"]["message"]
    assert gateway.received == [] and signer.book.lanes[0].live == 0 and signer.stopped is None
    assert RateBook.from_models({"data": [{**models["data"][0], "owned_by": "openai"}]}).own_token(MODEL, "GPT") is None


class _BrokenStream(httpx.AsyncByteStream):
    """A charged stream whose connection drops after its first bytes."""

    def __init__(self, content: bytes) -> None:
        self.content = content

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield self.content[:20]
        raise httpx.ReadError("connection dropped mid-stream")


def test_proxy__gateway_charges_then_drops__the_third_drop_stops_signing(tmp_path: Path) -> None:
    """Two answers dropped after charging, then a stream whose connection drops before its
    last event: each counts like an answer without the lane's figures, so the third stops
    signing, saying why, and the next request is refused here without a voucher."""
    gateway = FakeSignedGateway(lanes=1)
    signer = make_signer(tmp_path / "v.log", lanes=1)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = gateway.handle(request)
        if request.method == "POST" and json.loads(request.content).get("stream"):
            return httpx.Response(200, headers=answer.headers, stream=_BrokenStream(answer.content))
        raise httpx.ReadError("connection dropped after charging")

    async def main() -> list[httpx.Response]:
        upstream = httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://gateway.test")
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        out = [await local.post("/v1/chat/completions", json=body) for _ in range(2)]
        with pytest.raises(httpx.HTTPError):  # the proxy cuts its own answer short too
            await local.post("/v1/chat/completions", json={**body, "stream": True})
        out.append(await local.post("/v1/chat/completions", json=body))
        out.append(await local.get("/promptex/status"))
        return out

    first, second, after, status = asyncio.run(main())
    assert first.status_code == second.status_code == 502
    assert after.status_code == 402 and "signing stopped" in after.json()["error"]["message"]
    stopped = status.json()["stopped"]
    assert "3 answers on lane 0" in stopped and "connection dropped" in stopped, stopped
    lane = status.json()["lanes"][0]
    assert lane["answers_without_figures"] == 3
    # Three not yet told about weigh a hold each (the same request): above N − 1 = 2 holds.
    assert int(lane["without_figures_units"]) == 3 * int(lane["largest_hold_units"]) > 0
    assert len(gateway.received) == 3 and gateway.book[0].charged <= signer.book.exposure()


@pytest.mark.parametrize("mode", ["gzip", "gzip-stream", "digit", "shape"])
def test_proxy__booked_in_full_then_answered_unreadably__within_n_holds(tmp_path: Path, mode: str) -> None:
    """Through the proxy: an answer it cannot read (a body not decoding as its
    content-encoding says, a stream event whose reading raises) weighs like one without
    the lane's figures, so signing stops within N holds. Before, each was taken for the
    client leaving: nothing weighed, a hold per two requests for as long as it sent."""
    gateway = UnreadableGateway(lanes=1)
    gateway.mode = mode
    signer = make_signer(tmp_path / "v.log", lanes=1)
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}], "stream": mode != "gzip"}

    async def main() -> None:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        for _ in range(2 * (signer.stop_after_errors + 2)):
            with contextlib.suppress(httpx.HTTPError):  # the proxy cuts its own answer short
                await local.post("/v1/chat/completions", json=body)
            if signer.stopped is not None:
                break

    asyncio.run(main())
    hold = signer.book.lanes[0].largest_hold
    assert max(v.ceiling for v in gateway.received) <= sum(gateway.true_costs) + signer.stop_after_errors * hold
    assert signer.stopped is not None and "came without the lane's total" in signer.stopped, signer.stopped


def _grant(**overrides: object) -> SessionGrant:
    wallet = Account.from_key(WALLET_KEY)
    fields = {
        "chain_id": IDENTITY.chain_id,
        "vault": IDENTITY.vault,
        "account": wallet.address,
        "asset": IDENTITY.asset,
        "asset_symbol": "usdc",
        "lanes": 4,
        "maximum": 5_000_000,
        "expiry": 2_000_000_000,
        "nonce": 7,
        **overrides,
    }
    sign = lambda typed: Account.sign_typed_data(WALLET_KEY, full_message=typed).signature  # noqa: E731
    return new_grant(sign, **fields)  # type: ignore[arg-type]


def test_session_grant__signed_saved_loaded__owner_only_and_checked(tmp_path: Path) -> None:
    grant = _grant()
    assert grant.asset_symbol == "USDC" and grant.session == 7
    # The wallet signed exactly the SessionKey digest the vault hashes.
    assert grant.signature == "0x" + sign_digest(WALLET_KEY, grant.digest()).hex()
    path = tmp_path / "session.json"
    save(grant, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == grant
    assert "private_key" not in grant.registration()
    tampered = json.loads(path.read_text())
    tampered["maximum"] = str(grant.maximum * 10)  # a grant edited after the wallet signed it
    path.write_text(json.dumps(tampered))
    with pytest.raises(GrantError, match="not by the account"):
        load(path)
    with pytest.raises(GrantError, match="1 to 64 lanes"):
        _grant(lanes=65)


def test_session_grant__ape_account_signs__the_wallet_is_the_signer() -> None:
    from ape import accounts

    from promptex.cli.session import ape_signer

    wallet = accounts.test_accounts[0]
    grant = new_grant(
        ape_signer(wallet),
        chain_id=IDENTITY.chain_id,
        vault=IDENTITY.vault,
        account=wallet.address,
        asset=IDENTITY.asset,
        asset_symbol="USDC",
        lanes=2,
        maximum=10**6,
        expiry=2_000_000_000,
        nonce=0,
    )
    grant.check()  # recovers to the ape account's address


def test_open_signer__fake_gateway__rates_from_models_and_lanes_recovered(tmp_path: Path) -> None:
    gateway = FakeSignedGateway(lanes=2)
    first = make_signer(tmp_path / "old.log", lanes=2)
    with httpx.Client(transport=gateway.transport(), base_url="http://gateway.test") as client:
        body = {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": "hi there"}]}
        from promptex.buyerside.transport import PromptexSigningTransport

        with httpx.Client(transport=PromptexSigningTransport(first, gateway.transport())) as signing:
            for _ in range(3):
                assert signing.post("http://gateway.test/v1/chat/completions", json=body).status_code == 200
        grant = SessionGrant(
            IDENTITY.chain_id, IDENTITY.vault, IDENTITY.account, IDENTITY.asset, "USDC", IDENTITY.key,
            "0x" + "5e" * 32, 2, 10**12, 2_000_000_000, 1, "",
        )  # fmt: skip
        # Refused after the log was opened (the vault names another session key): the log let go,
        # so opening again in this process is not refused as "already open" (fails before 2760815).
        with pytest.raises(ValueError, match="session key"):
            open_signer(grant, client, tmp_path, chain=ChainSession(IDENTITY.vault, 1, 2, 10**12, 0, (0, 0)))
        opened = open_signer(grant, client, tmp_path)
        with pytest.raises(VoucherLogError, match="already open in this process"):
            open_signer(grant, client, tmp_path)
    opened.signer.close()
    assert opened.signer.rates.get(MODEL, "USDC") == first.rates.get(MODEL, "USDC")
    assert [lane.charged for lane in opened.signer.book.lanes] == [gateway.book[0].charged, 0]
    assert opened.signer.book.lanes[0].exact and log_path(tmp_path, grant).exists()
    assert any("chain was not read" in note for note in opened.notes)


def test_session_grant__relayed__queued_for_the_coordinator_once(tmp_path: Path) -> None:
    from promptex.coordinator.store import CoordinatorStore
    from promptex.ledger import Ledger

    grant = _grant()
    with Ledger.open(f"sqlite:///{tmp_path}/ledger.sqlite3", sqlite_synchronous="NORMAL") as ledger:
        store = CoordinatorStore(ledger.engine)
        grant.relay(store, 1_000)
        grant.relay(store, 1_001)  # again: idempotent per (account, asset, nonce)
        (queued,) = store.session_keys()
    assert (queued.address, queued.asset, queued.key, queued.lanes, queued.maximum, queued.nonce) == (
        grant.account, "USDC", grant.key, grant.lanes, grant.maximum, grant.session,
    )  # fmt: skip
    assert queued.signature == grant.signature


def test_proxy__client_gives_up_a_plain_request__answer_still_read_and_checked(tmp_path: Path) -> None:
    """A client that gives up waiting for a plain (not streamed) answer does not make the
    proxy give it up: it reads the gateway's answer to its end and checks it, so the lane
    stays exact and nothing weighs (a gateway stalling until clients leave gets no
    unweighed hold: it meets the proxy's own read timeout, a dropped connection)."""
    import time

    from buyerside_fakes import asgi_app

    from promptex.serving import ServerThread

    gateway = FakeSignedGateway(lanes=1, latency=0.5)
    signer = make_signer(tmp_path / "v.log", lanes=1)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with ServerThread(asgi_app(gateway)) as upstream:
        app = create_proxy(signer, httpx.AsyncClient(base_url=upstream.url, timeout=30))  # type: ignore[arg-type]
        with ServerThread(app, timeout_graceful_shutdown=1) as proxy:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"http://127.0.0.1:{proxy.port}/v1/chat/completions", json=body, timeout=0.1)
            lane = signer.book.lanes[0]
            deadline = time.monotonic() + 10
            while lane.busy and time.monotonic() < deadline:
                time.sleep(0.02)
    assert not lane.busy and (lane.exact, lane.charged, lane.errors, lane.closed) == (
        True,
        gateway.book[0].charged,
        0,
        0,
    )
    assert lane.charged > 0 and signer.stopped is None


def test_proxy__gateway_client__waits_past_the_gateway_s_request_deadline() -> None:
    """The gateway waits for a long plain answer until its request deadline and charges it when
    it comes (bc55cdc): the proxy's client gave up at 600 s, the deadline itself, which starts a
    little after the proxy's request left — an answer charged in its last moments was a drop."""
    from promptex.cli.proxy import gateway_client
    from promptex.config import Settings

    s = Settings(gateway_request_deadline_seconds=600.0)
    client = gateway_client("http://127.0.0.1:1", {}, s)
    try:
        assert client.timeout.read is not None and client.timeout.read > s.gateway_request_deadline_seconds
        assert client.timeout.read == s.gateway_client_wait_seconds()
    finally:
        asyncio.run(client.aclose())
