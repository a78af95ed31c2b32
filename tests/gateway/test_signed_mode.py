"""Signed mode at the gateway (issue 23): each request of an account with a session key
carries a ceiling voucher; the gateway holds ceiling − charged on its lane, lowers the
output limit so the cost fits, charges at most that and says the lane's total; every
refusal names the lane's state so a proxy can resync. Sessions are inserted in the
ledger directly, as the indexer would record the vault's event (no chain here)."""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from eth_account import Account

from promptex.gateway.vouchers import VOUCHER_HEADER, parse
from promptex.ledger import Reservation
from promptex.ledger.holds import ExtraTake
from promptex.ledger.lanes import NAME, Voucher
from promptex.protocol.units import USD_MICRO as USDC
from promptex.protocol.vault import recover_voucher_signer, sign_voucher

from .conftest import Fake, Harness

HELLO = [{"role": "user", "content": "hello world"}]
VAULT = "0x" + "ab" * 20
USDC_TOKEN = "0x" + "cd" * 20
CHAIN_ID = 31_337
_events = itertools.count(10_000)


@dataclass
class Signer:
    """A signed-mode buyer: its account, API key, wallet, session key and session."""

    gw: Harness
    account: int
    key: str
    wallet: str
    session_key: Any
    session: int = 1

    def voucher(self, lane: int, ceiling: int, *, session: int | None = None, signer: Any = None) -> str:
        session = self.session if session is None else session
        signature = sign_voucher(
            (signer or self.session_key).key,
            chain_id=CHAIN_ID,
            vault=VAULT,
            account=self.wallet,
            asset=USDC_TOKEN,
            session=session,
            lane=lane,
            ceiling=ceiling,
        )
        return f"session={session};lane={lane};ceiling={ceiling};sig=0x{signature.hex()}"

    def post(self, voucher: str | None, path: str = "/v1/chat/completions", **body: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.key}"}
        if voucher is not None:
            headers[VOUCHER_HEADER] = voucher
        payload = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 8, **body}
        return httpx.post(self.gw.url + path, json=payload, headers=headers, timeout=30)

    def charged(self, lane: int) -> int:
        return self.gw.ledger.lane(self.account, "USDC", self.session, lane).charged


def signed_buyer(
    gw: Harness, *, amount: int = 10 * USDC, lanes: int = 2, maximum: int = 100 * USDC, lifetime: int = 86_400
) -> Signer:
    account, key = gw.buyer(amount=amount)
    wallet = gw.ledger.wallets(account)[0]
    buyer = Signer(gw, account, key, wallet, Account.create(), session=0)
    new_session(buyer, lanes=lanes, maximum=maximum, lifetime=lifetime)
    return buyer


def new_session(
    buyer: Signer,
    *,
    lanes: int = 2,
    maximum: int = 100 * USDC,
    lifetime: int = 86_400,
    settles_until: int | None = None,
) -> None:
    """The buyer's next session key, as the indexer records the vault's SessionKeyRegistered."""
    buyer.session += 1
    buyer.session_key = Account.create()
    buyer.gw.ledger.register_session(
        f"0x{next(_events):064x}:0",
        address=buyer.wallet,
        asset="USDC",
        asset_address=USDC_TOKEN,
        chain_id=CHAIN_ID,
        vault=VAULT,
        key=buyer.session_key.address,
        session=buyer.session,
        lanes=lanes,
        maximum=maximum,
        expiry=buyer.gw.now() + lifetime,
        signed_from=2,
        settles_until=settles_until,
    )


def spend_cap(buyer: Signer, total: int) -> None:
    """The buyer's wallet set a spend cap: the vault's SpendCapRegistered, as the indexer applies it."""
    event = f"0x{next(_events):064x}:0"
    buyer.gw.ledger.apply_chain_facts(lambda facts: facts.register_spend_cap(event, buyer.wallet, "USDC", total))


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(response.content)["error"]
    return body


def test_signed__answers__charge_the_lane_and_say_its_total(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    first = buyer.post(buyer.voucher(0, 1_000))
    assert first.status_code == 200, first.text
    h = first.headers
    cost = int(h["x-promptex-cost-units"])
    assert 0 < cost <= 1_000
    assert (h["x-promptex-lane"], h["x-promptex-lane-charged-units"]) == ("0", str(cost))
    assert parse(h[VOUCHER_HEADER]) == parse(buyer.voucher(0, 1_000))
    record = gw.ledger.usage_record(h["x-request-id"])
    assert record is not None
    assert (record.mode, record.voucher_session, record.voucher_lane, record.voucher_ceiling) == ("signed", 1, 0, 1_000)

    second = buyer.post(buyer.voucher(0, cost + 1_000))  # ceiling = charged so far + this hold
    assert second.status_code == 200, second.text
    total = cost + int(second.headers["x-promptex-cost-units"])
    assert second.headers["x-promptex-lane-charged-units"] == str(total) == str(buyer.charged(0))
    lane = gw.ledger.lane(buyer.account, "USDC", 1, 0)
    assert lane.voucher is not None and lane.voucher.ceiling == cost + 1_000 and lane.inflight is None

    # A hold too small for the output asked: the output sent upstream is lowered to fit.
    small = buyer.post(buyer.voucher(1, 30), max_tokens=1_000)
    assert small.status_code == 200, small.text
    sent = fake.config.last_body
    assert sent is not None and 0 < sent["max_tokens"] < 1_000
    assert int(small.headers["x-promptex-cost-units"]) <= 30

    # What a proxy recovers from: each lane's totals and its stored voucher, signed by its own key.
    auth = {"authorization": f"Bearer {buyer.key}"}
    lanes = httpx.get(gw.url + "/v1/promptex/lanes", headers=auth, params={"asset": "usdc"}).json()
    assert (lanes["asset"], lanes["session"], lanes["lanes"], lanes["open"]) == ("USDC", 1, 2, True)
    first_lane = lanes["data"][0]
    assert (first_lane["lane"], first_lane["charged_units"], first_lane["settled_units"]) == (0, str(total), "0")
    assert first_lane["in_flight"] is False and first_lane["voucher"]["ceiling"] == str(cost + 1_000)
    signature = bytes.fromhex(first_lane["voucher"]["sig"][2:])
    fields = {"account": buyer.wallet, "asset": USDC_TOKEN, "session": 1, "lane": 0, "ceiling": cost + 1_000}
    assert recover_voucher_signer(signature, chain_id=CHAIN_ID, vault=VAULT, **fields) == buyer.session_key.address
    assert lanes["data"][1]["charged_units"] == str(buyer.charged(1))
    _, capped_key = gw.buyer()
    capped = httpx.get(gw.url + "/v1/promptex/lanes", headers={"authorization": f"Bearer {capped_key}"}).json()
    assert (capped["session"], capped["data"]) == (None, [])
    wrong = httpx.get(gw.url + "/v1/promptex/lanes", headers=auth, params={"asset": "XYZ"})
    assert wrong.status_code == 400
    assert httpx.get(gw.url + "/v1/promptex/lanes").status_code == 401


def test_signed__refusals__each_with_its_code_and_the_lane_to_resync(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    buyer = signed_buyer(gw, amount=USDC)
    ok = buyer.post(buyer.voucher(0, 500))
    assert ok.status_code == 200, ok.text
    charged = buyer.charged(0)

    def refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
        assert (response.status_code, error(response)["code"]) == (status, code), response.text
        return error(response)

    plain = refused(buyer.post(None), 402, "voucher_required")  # its key used directly: how to sign, how to leave
    assert "`promptex proxy`, while its session key is in force (to leave: `promptex session revoke" in plain["message"]
    refused(buyer.post("session=1;lane=0;ceiling=abc;sig=0x00"), 400, "voucher_malformed")
    refused(buyer.post(buyer.voucher(0, 2**128)), 400, "voucher_malformed")  # the vault could never settle it
    refused(buyer.post(buyer.voucher(0, charged + 500, signer=Account.create())), 403, "voucher_bad_signature")
    other = signed_buyer(gw)  # another account's session key signing for this account
    body = refused(buyer.post(buyer.voucher(0, charged + 500, signer=other.session_key)), 403, "voucher_bad_signature")
    assert body["lane_charged_units"] == str(charged) and body["voucher"]["ceiling"] == "500"
    assert refused(buyer.post(buyer.voucher(0, 500, session=2)), 409, "session_not_current")["session"] == 1
    refused(buyer.post(buyer.voucher(2, 500)), 400, "lane_out_of_range")
    body = refused(buyer.post(buyer.voucher(0, charged - 1)), 409, "ceiling_below_charged")
    assert body["lane_charged_units"] == str(charged)
    refused(buyer.post(buyer.voucher(1, 2)), 402, "voucher_below_input")  # not even the input fits
    # Ceilings beyond the balance: lane 0 keeps its slack (500 − charged) exposed.
    body = refused(buyer.post(buyer.voucher(1, USDC)), 402, "voucher_above_balance")
    assert int(body["available_units"]) == USDC - charged - (500 - charged)

    # A lane with a request in flight (held directly, as another gateway process would).
    gw.ledger.vouchers.plan("elsewhere", Voucher(1, 1, 100, "0x" + "11" * 65))
    gw.ledger.holds.reserve(Reservation("elsewhere", buyer.account, "USDC", 100, 60, extras=(ExtraTake(NAME, 100),)))
    gw.ledger.vouchers.plan("elsewhere", None)
    assert refused(buyer.post(buyer.voucher(1, 300)), 409, "lane_busy")["lane"] == 1
    gw.ledger.holds.release("elsewhere")
    assert buyer.post(buyer.voucher(1, 300)).status_code == 200

    capped_account, capped_key = gw.buyer()  # a capped account: a voucher is refused, none is needed
    capped = Signer(gw, capped_account, capped_key, gw.ledger.wallets(capped_account)[0], Account.create())
    refused(capped.post(capped.voucher(0, 500)), 403, "session_unknown")
    assert capped.post(None).status_code == 200

    gw.ledger.revoke_session(f"0x{next(_events):064x}:0", address=buyer.wallet, asset="USDC", session=1, ends_at=0)
    refused(buyer.post(buyer.voucher(0, buyer.charged(0) + 500)), 403, "session_ended")
    assert gw.ledger.balance(buyer.account, "USDC").held == 0  # no refusal kept a hold


def test_signed__stream_and_messages__carry_the_lane(gw: Harness, fake: Fake) -> None:
    gw.add_lot(fake)
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    buyer = signed_buyer(gw)
    client = gw.client(buyer.key)
    with client.chat.completions.with_streaming_response.create(
        model="fake-gpt",
        messages=HELLO,
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={VOUCHER_HEADER: buyer.voucher(0, 1_000)},
    ) as raw:
        assert (raw.headers["x-promptex-lane"], raw.headers["x-promptex-hold-units"]) == ("0", "1000")
        last = [chunk for chunk in raw.parse() if chunk.usage is not None][-1]
    charge = last.model_extra["promptex"]  # type: ignore[index]
    assert charge["lane"] == 0 and charge["lane_charged_units"] == str(buyer.charged(0)) == charge["cost_units"]

    answer = gw.anthropic(buyer.key).messages.with_raw_response.create(
        model="fake-claude",
        max_tokens=4,
        messages=HELLO,  # type: ignore[arg-type]
        extra_headers={VOUCHER_HEADER: buyer.voucher(1, 1_000)},
    )
    assert answer.headers["x-promptex-lane-charged-units"] == answer.headers["x-promptex-cost-units"]
    assert int(answer.headers["x-promptex-cost-units"]) == buyer.charged(1) > 0


def test_signed__concurrent_requests_on_one_lane__one_is_served(gw_any: Harness, fake: Fake) -> None:
    gw = gw_any  # SQLite and PostgreSQL: the lane is taken in the hold's transaction on both
    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    fake.config.gate = gate = threading.Event()
    results: list[httpx.Response] = []
    first = threading.Thread(target=lambda: results.append(buyer.post(buyer.voucher(0, 1_000))))
    first.start()
    try:
        while gw.ledger.lane(buyer.account, "USDC", 1, 0).inflight is None:  # held: now in flight upstream
            first.join(0.01)
        busy = buyer.post(buyer.voucher(0, 1_000))
        assert (busy.status_code, error(busy)["code"]) == (409, "lane_busy")
    finally:
        gate.set()
        first.join()
    assert results[0].status_code == 200


def test_signed__epoch_header__the_next_signed_batch_after_a_waiting_capped_one(gw: Harness, fake: Fake) -> None:
    """`x-promptex-epoch` on a signed answer names the next `settle_signed` batch: the next
    epoch, or the one after when the asset's capped records wait for the capped batch a
    coordinator pass plans first (signed and capped batches share one sequence)."""
    from sqlalchemy import update

    from promptex.ledger.schema import usage_records

    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    first = buyer.post(buyer.voucher(0, 1_000))
    assert first.status_code == 200 and first.headers["x-promptex-epoch"] == "1"
    with gw.ledger.engine.begin() as conn:  # the coordinator batched it as epoch 4
        conn.execute(update(usage_records).values(status="batched", epoch=4))
    capped_account, capped_key = gw.buyer()
    capped = Signer(gw, capped_account, capped_key, gw.ledger.wallets(capped_account)[0], Account.create())
    assert capped.post(None).status_code == 200  # a capped record now waits for epoch 5
    gw.gateway.refresh_epochs()  # with the lots' refresh
    signed = buyer.post(buyer.voucher(0, buyer.charged(0) + 1_000))
    assert (capped.post(None).headers["x-promptex-epoch"], signed.headers["x-promptex-epoch"]) == ("5", "6")
    with gw.ledger.engine.begin() as conn:  # the capped batch (epoch 5) went first
        conn.execute(update(usage_records).where(usage_records.c.mode == "capped").values(status="batched", epoch=5))
    gw.gateway.refresh_epochs()
    again = buyer.post(buyer.voucher(0, buyer.charged(0) + 1_000))
    assert again.headers["x-promptex-epoch"] == "6"


def test_signed__revoked_then_a_spend_cap__plain_requests_capped_again__a_new_session_signed_again(
    gw: Harness, fake: Fake
) -> None:
    """The way back from signed mode: once the session is over (revoked here, not yet ended
    on chain) a plain request is refused with what to do — never a voucher asked of a
    session that takes none — until a spend cap the chain accepted after the session
    (which the vault takes only once the session's vouchers no longer settle); from then on
    plain requests are charged capped, and a new session key puts it back in signed mode."""
    from promptex.protocol.units import utc_text

    gw.add_lot(fake)
    buyer = signed_buyer(gw)
    signed = buyer.post(buyer.voucher(0, 1_000))
    assert signed.status_code == 200, signed.text
    ends_at = gw.now() + 120  # the chain ends it at the close of the next window
    gw.ledger.revoke_session(f"0x{next(_events):064x}:0", address=buyer.wallet, asset="USDC", session=1,
                             ends_at=ends_at)  # fmt: skip

    plain = buyer.post(None)
    assert (plain.status_code, error(plain)["code"], error(plain)["session"]) == (402, "spend_cap_required", 1)
    message = error(plain)["message"]
    assert f"session 1 in USDC was revoked; its vouchers settle on chain until {utc_text(ends_at)}" in message
    assert "`promptex wallet spend-cap --asset USDC --per-epoch … --total …`" in message
    assert "`promptex session create --asset USDC`" in message
    late = buyer.post(buyer.voucher(0, buyer.charged(0) + 1_000))
    assert (late.status_code, error(late)["code"]) == (403, "session_ended")

    spend_cap(buyer, 2 * USDC)  # set after the session: capped mode again
    capped = buyer.post(None)
    assert capped.status_code == 200, capped.text
    cost = int(capped.headers["x-promptex-cost-units"])
    record = gw.ledger.usage_record(capped.headers["x-request-id"])
    assert record is not None and (record.mode, record.voucher_session) == ("capped", None)
    assert gw.ledger.balance(buyer.account, "USDC").cap_remaining == 2 * USDC - cost  # the new cap's
    old = gw.ledger.usage_record(signed.headers["x-request-id"])  # the session's charge: still its lane's
    assert old is not None and (old.mode, old.voucher_session, old.status) == ("signed", 1, "pending")
    after = buyer.post(buyer.voucher(0, buyer.charged(0) + 1_000))
    assert (after.status_code, error(after)["code"]) == (403, "session_ended")
    assert "a spend cap was set after it: send no voucher, requests are served under it." in error(after)["message"]

    new_session(buyer)  # signed mode again
    assert (buyer.post(None).status_code, error(buyer.post(None))["code"]) == (402, "voucher_required")
    again = buyer.post(buyer.voucher(0, 1_000))
    assert again.status_code == 200, again.text
    assert gw.ledger.balance(buyer.account, "USDC").held == 0


def test_signed__expired_session__plain_refused_with_how_to_leave__a_cap_from_before_it_does_not_count(
    gw: Harness, fake: Fake
) -> None:
    from promptex.protocol.units import utc_text

    gw.add_lot(fake)
    buyer = signed_buyer(gw, lifetime=-1)  # capped before (`gw.buyer`'s cap), then a session, expired
    expiry = gw.ledger.session(buyer.account, "USDC").expiry  # type: ignore[union-attr]
    plain = buyer.post(None)
    assert (plain.status_code, error(plain)["code"]) == (402, "spend_cap_required"), plain.text
    said = error(plain)["message"]
    assert f"session 1 in USDC expired at {utc_text(expiry)}; its vouchers settle on chain until the close" in said
    late = buyer.post(buyer.voucher(0, 1_000))  # its voucher: the expiry in UTC (before: unix seconds)
    assert (late.status_code, error(late)["code"]) == (403, "session_ended"), late.text
    assert f"session 1 expired at {utc_text(expiry)}." in error(late)["message"]

    # Since 9508f89 the ledger knows when the vault stops settling the session's vouchers (the
    # spend cap is taken only after it): the refusal says when, in UTC and in how long (review s17).
    for settles_in, told in ((630, "(in 10 min)"), (-7_230, "(2 h ago)")):
        close = gw.now() + settles_in
        new_session(buyer, lifetime=-1, settles_until=close)
        said = error(buyer.post(None))["message"]
        verb = "settle" if settles_in > 0 else "settled"
        assert f"; its vouchers {verb} on chain until {utc_text(close)} {told}, and no spend cap" in said, said
    assert gw.ledger.balance(buyer.account, "USDC").held == 0


def test_signed__request_could_be_charged_after_the_sessions_last_window__refused_nothing_held(
    gw: Harness, fake: Fake
) -> None:
    """The vault settles a session's vouchers until the close of its last window: a request
    charged later is never settled (quarantined, refunded, its seller unpaid). A voucher
    whose request could be (arrival + deadline + hold margin, + the coordinator's time) is
    served under a deadline cut to fit (tests/gateway/test_signed_ending.py), and refused
    before any hold when less than the least deadline fits; the expiry stands for the close
    when the vault's clock is unknown."""
    from promptex.protocol.units import utc_text

    gw.add_lot(fake)
    s = gw.settings
    horizon = math.ceil(s.gateway_signed_min_deadline_seconds + s.gateway_hold_margin_seconds)
    horizon += math.ceil(s.gateway_signed_settle_seconds)
    whole = horizon + math.ceil(s.gateway_request_deadline_seconds)
    buyer = signed_buyer(gw, lifetime=3 * whole)
    close = gw.now() + horizon - 5  # its last window closes sooner than a request may last
    new_session(buyer, lifetime=3 * whole, settles_until=close)
    refused = buyer.post(buyer.voucher(0, 1_000))
    assert (refused.status_code, error(refused)["code"]) == (403, "session_ending"), refused.text
    body = error(refused)
    assert (body["lane_charged_units"], body["settles_until"], body["voucher"]) == ("0", close, None)
    assert f"settle on chain only until {utc_text(close)}" in body["message"]
    assert gw.ledger.balance(buyer.account, "USDC").held == 0 and buyer.charged(0) == 0
    assert gw.ledger.lane(buyer.account, "USDC", buyer.session, 0).voucher is None  # nothing stored

    new_session(buyer, lifetime=horizon - 5)  # the vault's clock unknown: the expiry is the close
    unknown = buyer.post(buyer.voucher(0, 1_000))
    assert (unknown.status_code, error(unknown)["code"]) == (403, "session_ending"), unknown.text

    new_session(buyer, lifetime=horizon - 5, settles_until=gw.now() + whole + 30)  # the clock says later
    served = buyer.post(buyer.voucher(0, 1_000))
    assert served.status_code == 200, served.text
    assert "x-promptex-deadline-seconds" not in served.headers  # its whole deadline fits
    assert 0 < buyer.charged(0) <= 1_000


@pytest.mark.parametrize("stream", [False, True])
def test_signed__no_max_rate__output_fitted_to_the_lot_that_serves__a_failover_gets_its_own_fit(
    gw: Harness, fake: Fake, second_fake: Fake, stream: bool
) -> None:
    """Lots at several rates, a voucher without x-promptex-max-rate-bps held for max_tokens at
    the cheapest lot's rate: the cheapest lot is sent the whole limit (before, every lot got
    the pricier lot's fit: fewer tokens than asked); a failover to the pricier lot is sent
    what its rates fit in the hold, and charged within it."""
    from promptex import metering
    from promptex.gateway import requests

    gw.add_lot(fake, rate_bps=6000)
    pricier = gw.add_lot(second_fake, rate_bps=9000)
    buyer = signed_buyer(gw)
    price, fee = gw.gateway.catalog.price("fake-gpt"), gw.settings.protocol_fee_bps
    cheap, dear = (metering.rates_for(price, "USDC", lot_rate_bps=r, fee_bps=fee) for r in (6000, 9000))
    asked = 400
    _, input_bound, _ = requests.validate(requests.CHAT, {"model": "fake-gpt", "messages": HELLO, "max_tokens": asked})
    hold = metering.upper_bound(cheap, input_bound, asked)
    fitted = metering.largest_output(dear, input_bound, hold, asked)
    assert 1 <= fitted < asked  # the pricier lot fits fewer within this hold

    served = buyer.post(buyer.voucher(0, hold), max_tokens=asked, stream=stream)
    assert served.status_code == 200, served.text
    assert served.headers["x-promptex-lot"] != str(pricier)
    assert fake.config.last_body is not None and fake.config.last_body["max_tokens"] == asked  # before: `fitted`

    fake.config.fail_status = 500  # the cheapest fails: the pricier lot serves, sent its own fit
    charged = buyer.charged(0)
    failover = buyer.post(buyer.voucher(0, charged + hold), max_tokens=asked, stream=stream)
    assert failover.status_code == 200, failover.text
    assert failover.headers["x-promptex-lot"] == str(pricier)
    assert second_fake.config.last_body is not None and second_fake.config.last_body["max_tokens"] == fitted
    assert 0 < buyer.charged(0) - charged <= hold


def _rates(gw: Harness, model: str, *rate_bps: int) -> list[Any]:
    from promptex import metering

    price, fee = gw.gateway.catalog.price(model), gw.settings.protocol_fee_bps
    return [metering.rates_for(price, "USDC", lot_rate_bps=rate, fee_bps=fee) for rate in rate_bps]


def test_signed__embeddings__each_lot_fitted_at_its_own_rate(gw: Harness, fake: Fake, second_fake: Fake) -> None:
    """An embedding's voucher held at the cheapest lot's rate is served by that lot: before,
    every lot was checked at the priciest free lot's rate, so it was refused 402
    voucher_below_input naming as the least hold the very hold it had (review s17)."""
    from promptex import metering
    from promptex.gateway import fronts
    from promptex.gateway.adapters import EMBEDDINGS

    cheap_lot = gw.add_lot(fake, rate_bps=6000)
    gw.add_lot(second_fake, rate_bps=9000)
    buyer = signed_buyer(gw)
    body = {"model": "fake-embed", "input": " ".join(["word"] * 5_000)}
    _, input_bound, _ = fronts.validate(EMBEDDINGS, body, gw.gateway.catalog)
    cheap, dear = _rates(gw, "fake-embed", 6000, 9000)
    hold = metering.upper_bound(cheap, input_bound, 0)
    assert hold < metering.upper_bound(dear, input_bound, 0)

    def embed(ceiling: int) -> httpx.Response:
        headers = {"authorization": f"Bearer {buyer.key}", VOUCHER_HEADER: buyer.voucher(0, ceiling)}
        return httpx.post(gw.url + "/v1/embeddings", json=body, headers=headers, timeout=30)

    short = embed(hold - 1)
    assert (short.status_code, error(short)["code"]) == (402, "voucher_below_input"), short.text
    assert error(short)["minimum_hold_units"] == str(hold)
    served = embed(hold)
    assert served.status_code == 200, served.text  # before: 402, "hold at least {hold} units"
    assert served.headers["x-promptex-lot"] == str(cheap_lot)
    assert 0 < buyer.charged(0) <= hold and second_fake.config.requests == 0


def test_signed__voucher_below_input__names_the_least_hold_of_a_lot_the_request_could_go_to(
    gw: Harness, fake: Fake, second_fake: Fake
) -> None:
    """The 402's least hold is the cheapest lot's that would take the request: not an
    Anthropic lot that cannot serve the body (a chat request with response_format), nor one
    whose circuit is open while another's is not. Before, both were counted: a voucher
    signed for the amount named was refused again (review s17)."""
    from promptex import metering
    from promptex.gateway import fronts
    from promptex.gateway.requests import CHAT

    gw.add_lot(fake, provider="anthropic", api="anthropic", rate_bps=6000)  # cannot serve response_format
    able = gw.add_lot(second_fake, provider="anthropic", api="openai", rate_bps=9000)
    buyer = signed_buyer(gw)
    body = {"model": "fake-claude", "messages": HELLO, "max_tokens": 8, "response_format": {"type": "json_object"}}
    _, input_bound, _ = fronts.validate(CHAT, body, gw.gateway.catalog)
    cheap, dear = _rates(gw, "fake-claude", 6000, 9000)
    need = metering.upper_bound(dear, input_bound, 1)
    assert metering.upper_bound(cheap, input_bound, 1) < need
    short = buyer.post(buyer.voucher(0, need - 1), **body)
    assert (short.status_code, error(short)["code"]) == (402, "voucher_below_input"), short.text
    assert error(short)["minimum_hold_units"] == str(need)  # before: the Anthropic lot's
    served = buyer.post(buyer.voucher(0, need), **body)
    assert served.status_code == 200, served.text
    assert served.headers["x-promptex-lot"] == str(able)

    # fake-gpt: the cheap lot's (lot, model) circuit open (its key lacks the model), the pricier one's closed.
    tripped = gw.add_lot(fake, rate_bps=6000)
    healthy = gw.add_lot(second_fake, rate_bps=9000)
    for _ in range(gw.settings.gateway_lot_breaker_failures):
        gw.gateway.health.failed(tripped, "model_not_found", 404, model="fake-gpt")
    _, input_bound, _ = fronts.validate(CHAT, {"model": "fake-gpt", "messages": HELLO}, gw.gateway.catalog)
    cheap, dear = _rates(gw, "fake-gpt", 6000, 9000)
    need, open_need = metering.upper_bound(dear, input_bound, 1), metering.upper_bound(cheap, input_bound, 1)
    assert open_need < need
    short = buyer.post(buyer.voucher(1, open_need - 1))  # (a voucher only the open lot fits is tried there)
    assert (short.status_code, error(short)["code"]) == (402, "voucher_below_input"), short.text
    assert error(short)["minimum_hold_units"] == str(need)  # before: the open lot's
    served = buyer.post(buyer.voucher(1, need))
    assert served.status_code == 200, served.text
    assert served.headers["x-promptex-lot"] == str(healthy)


def test_signed__refused_before_its_hold__paying_in_provider__names_the_lane(gw: Harness, fake: Fake) -> None:
    """A voucher's request paying in "provider" (`x-promptex-asset`: the model's provider
    token) refused before any hold names its lane, as one naming the token's symbol does:
    before, the lane was looked up in an asset "PROVIDER" and not named (review s17), so the
    signing proxy weighed the refusal as a hold."""
    from promptex import metering

    gw.add_lot(fake)  # a listed lot only: a request paying in GPT has no tokenized lot to go to
    symbol = metering.provider_token("openai").symbol
    account, key = gw.buyer()
    buyer = Signer(gw, account, key, gw.ledger.wallets(account)[0], Account.create(), session=1)
    gw.ledger.register_session(
        f"0x{next(_events):064x}:0", address=buyer.wallet, asset=symbol, asset_address=USDC_TOKEN,
        chain_id=CHAIN_ID, vault=VAULT, key=buyer.session_key.address, session=1, lanes=2, maximum=100 * USDC,
        expiry=gw.now() + 86_400, signed_from=2,
    )  # fmt: skip
    for asked in ("provider", symbol):
        headers = {"authorization": f"Bearer {key}", VOUCHER_HEADER: buyer.voucher(1, 1_000), "x-promptex-asset": asked}
        body = {"model": "fake-gpt", "messages": HELLO, "max_tokens": 8}
        refused = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert refused.status_code == 503, refused.text
        assert (error(refused).get("lane"), error(refused).get("lane_charged_units")) == (1, "0"), asked
