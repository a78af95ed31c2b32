"""The signer against a gateway with listed lots at several rates (cbreak C4): each request
states the most it pays (`x-promptex-max-rate-bps`: the one set, else the highest rate
/v1/models listed for its model at open, never raised by a re-read), and a charge is
checked exactly at the rate the gateway names with it — only a rate within that max, and
for a lot /v1/models listed, the rate it gave that lot. A gateway naming a rate above the
max, another lot's rate, a rate its cost does not fit, or nothing while charging more than
the advertised rates: signing stops."""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
from buyerside_fakes import ASSET, BASIS_BPS, MODEL, RATES, FakeSignedGateway, make_signer
from hypothesis import given, settings
from hypothesis import strategies as st

from promptex import metering
from promptex.buyerside.answers import RateBook
from promptex.buyerside.signer import Signer
from promptex.buyerside.transport import (
    RATES_MAX_BYTES,
    RATES_READ_SECONDS,
    PromptexSigningTransport,
    take_rates,
)
from promptex.protocol.units import BPS

LOTS = {1: 6_000, 2: 9_000}  # the cheapest at BASIS_BPS, the advertised rates' own
ASKS = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}),
    "chat stream": (
        "/v1/chat/completions",
        {
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 4,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),  # fmt: skip
    "messages": ("/v1/messages", {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}),
}


def _signer(gateway: FakeSignedGateway, path: Path, **options: Any) -> Signer:
    signer = make_signer(path, lanes=1, **options)
    signer.rates = RateBook.from_models(gateway.models())
    return signer


def _ask(gateway: FakeSignedGateway, signer: Signer, ask: str) -> httpx.Response:
    path, body = ASKS[ask]
    transport = PromptexSigningTransport(signer, inner=gateway.transport())
    with httpx.Client(base_url="http://gateway.test", transport=transport) as client:
        answer = client.post(path, json={"model": MODEL, **body})
        answer.read()
    return answer


def test_rate_book__lots_and_the_rate_the_advertised_rates_are_at__read_malformed_ignored() -> None:
    gateway = FakeSignedGateway(lots=LOTS)
    book = RateBook.from_models(gateway.models())
    assert book.highest(MODEL) == 9_000 and book.lot_rate(MODEL, 2) == 9_000 and book.lot_rate(MODEL, 3) is None
    assert book.at(MODEL, ASSET, 6_000) == RATES
    assert book.at(MODEL, ASSET, 9_000) == RATES.scaled(ASSET, Fraction(3, 2))
    body = gateway.models()
    body["data"][0]["lots"] = [{"id": 1, "rate_bps": "9000"}, {"id": True, "rate_bps": 5}, {"id": 3, "rate_bps": 10**5}]
    body["data"][0]["pricing"][ASSET]["rate_bps"] = 0
    book = RateBook.from_models(body)
    assert book.highest(MODEL) is None and book.at(MODEL, ASSET, 6_000) is None


@pytest.mark.parametrize("ask", list(ASKS))
def test_honest_charge_by_a_pricier_listed_lot__within_the_max__checked_exactly_signing_goes_on(
    tmp_path: Path, ask: str
) -> None:
    gateway = FakeSignedGateway(lanes=1, lots=LOTS, charge_rate=9_000, name_lot=2, name_rate=9_000)
    signer = _signer(gateway, tmp_path / "v.log")
    answer = _ask(gateway, signer, ask)
    assert answer.status_code == 200, answer.text
    assert signer.stopped is None
    assert gateway.max_rates == ["9000"]  # the highest rate listed for the model, by default
    assert signer.book.lanes[0].charged == gateway.book[0].charged == sum(gateway.true_costs) > 0
    # Held at the max rate: the gateway had no need to lower the output to fit.
    assert gateway.true_costs == [metering.usage_cost(RATES.scaled(ASSET, Fraction(3, 2)), metering.TokenUsage(5, 4))]


@pytest.mark.parametrize("ask", list(ASKS))
@pytest.mark.parametrize(
    ("lie", "options", "reason"),
    [
        # A rate above the buyer's max (set below the highest listed).
        ({"charge_rate": 9_000, "name_lot": 2, "name_rate": 9_000}, {"max_rate_bps": 8_000}, "above the 80 %"),
        # The pricier lot's rate named for the cheaper lot that served.
        ({"charge_rate": 9_000, "name_lot": 1, "name_rate": 9_000}, {}, "/v1/models gave it 60 %"),
        # A rate the cost does not fit (a lot /v1/models did not list: only the max bounds it).
        ({"charge_rate": 9_000, "name_lot": 7, "name_rate": 7_000}, {}, "the rate gives"),
        # Charged the pricier rate, naming none: checked at the advertised (cheapest) rates.
        ({"charge_rate": 9_000}, {}, "the rate gives"),
        ({"charge_rate": 6_000, "name_lot": 1, "name_rate": "60%"}, {}, "not readable"),
    ],
)
def test_dishonest_rate__above_max_another_lots_not_the_cost_s__signing_stops(
    tmp_path: Path, ask: str, lie: dict[str, Any], options: dict[str, Any], reason: str
) -> None:
    gateway = FakeSignedGateway(lanes=1, lots=LOTS, **lie)
    signer = _signer(gateway, tmp_path / "v.log", **options)
    _ask(gateway, signer, ask)
    assert signer.stopped is not None and reason in signer.stopped, signer.stopped


@settings(max_examples=40, deadline=None)
@given(
    lots=st.dictionaries(st.integers(1, 5), st.integers(1, 10_000), min_size=1, max_size=4),
    max_rate=st.none() | st.integers(1, 10_000),
    charge_rate=st.integers(1, 10_000),
    name_lot=st.integers(1, 6),
    name_rate=st.none() | st.integers(1, 10_000),
    stream=st.booleans(),
)
def test_any_named_rate__signing_goes_on_exactly_when_it_is_within_the_max_the_lot_s_and_the_cost_s(
    tmp_path_factory: pytest.TempPathFactory,
    lots: dict[int, int],
    max_rate: int | None,
    charge_rate: int,
    name_lot: int,
    name_rate: int | None,
    stream: bool,
) -> None:
    gateway = FakeSignedGateway(lanes=1, lots={1: BASIS_BPS, **lots}, charge_rate=charge_rate, name_lot=name_lot,
                                name_rate=name_rate)  # fmt: skip
    signer = _signer(gateway, tmp_path_factory.mktemp("rates") / "v.log", max_rate_bps=max_rate)
    answer = _ask(gateway, signer, "chat stream" if stream else "chat")
    most = max_rate if max_rate is not None else max({1: BASIS_BPS, **lots}.values())
    assert gateway.max_rates == [str(most)]
    if answer.status_code != 200:  # the hold at the max rate cannot pay the input at the charged rate
        assert charge_rate > most
        return
    listed = {1: BASIS_BPS, **lots}.get(name_lot)
    # Naming none: checked at the advertised rates' own rate, or the max when it is lower (review s17).
    at = name_rate if name_rate is not None else min(BASIS_BPS, most)
    cost = gateway.true_costs[0]
    fits = cost == metering.usage_cost(RATES.scaled(ASSET, Fraction(at, BASIS_BPS)), gateway.usages[0])
    honest = (name_rate is None or (name_rate <= most and listed in (None, name_rate))) and fits
    assert (signer.stopped is None) == honest, (signer.stopped, most, listed)
    if honest:
        assert signer.book.lanes[0].charged == gateway.book[0].charged == cost


@pytest.mark.parametrize(("honest", "reason"), [(True, None), (False, "/v1/models gave it 60 %")])
def test_proxy__pricier_lot__max_rate_sent_named_rate_checked(tmp_path: Path, honest: bool, reason: str | None) -> None:
    import asyncio

    from promptex.buyerside.proxy import create_proxy

    gateway = FakeSignedGateway(lanes=1, lots=LOTS, charge_rate=9_000, name_lot=2 if honest else 1, name_rate=9_000)
    signer = _signer(gateway, tmp_path / "v.log", max_rate_bps=9_500)

    async def main() -> list[int]:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        codes = []
        for ask in ("chat", "chat stream"):
            path, body = ASKS[ask]
            answer = await local.post(path, json={"model": MODEL, **body})
            codes.append(answer.status_code)
        return codes

    codes = asyncio.run(main())
    assert gateway.max_rates[0] == "9500"
    if honest:
        assert codes == [200, 200] and signer.stopped is None and gateway.max_rates == ["9500", "9500"]
        assert signer.book.lanes[0].charged == sum(gateway.true_costs)
    else:
        assert signer.stopped is not None and reason is not None and reason in signer.stopped
        assert codes == [200, 402]  # the next request is refused here, unsent


@pytest.mark.parametrize(
    ("given", "bps"), [("0.9", 9_000), ("90%", 9_000), ("87.5 %", 8_750), ("1", 10_000), ("0.0001", 1)]
)
def test_cli_max_rate__fraction_or_percentage__basis_points(given: str, bps: int) -> None:
    from promptex.cli.proxy import max_rate_bps

    assert max_rate_bps(given) == bps


@pytest.mark.parametrize("given", ["0", "1.5", "101%", "0.00001", "ninety", "-0.5", "nan", "inf%", ""])
def test_cli_max_rate__outside_0_to_list_price__one_line(given: str) -> None:
    import click

    from promptex.cli.proxy import max_rate_bps

    with pytest.raises(click.ClickException) as refused:
        max_rate_bps(given)
    assert "\n" not in refused.value.message and "--max-rate" in refused.value.message


def test_proxy__rates_read_again__a_pricier_lot_listed_since_does_not_raise_the_default_max(tmp_path: Path) -> None:
    # cbreak s17 C4-1: the default max followed every read of /v1/models (the gateway's word):
    # a lot listed at 95 % later made every later request payable at 95 %. Now it is fixed when
    # the proxy opens; the re-reads update lots and rates, and may lower it, never raise it.
    import asyncio

    from promptex.buyerside.proxy import create_proxy, refresh_rates

    gateway = FakeSignedGateway(lanes=1, lots={1: 6_000, 2: 8_000})
    signer = _signer(gateway, tmp_path / "v.log")
    gateway.lots, gateway.charge_rate, gateway.name_lot, gateway.name_rate = {1: 6_000, 3: 9_500}, 9_500, 3, 9_500

    async def main() -> list[int]:
        upstream = httpx.AsyncClient(transport=gateway.transport(), base_url="http://gateway.test")
        await refresh_rates(signer, upstream)
        local = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_proxy(signer, upstream)), base_url="http://x"
        )
        path, body = ASKS["chat"]
        return [(await local.post(path, json={"model": MODEL, **body})).status_code for _ in range(2)]

    codes = asyncio.run(main())
    assert signer.rates.lot_rate(MODEL, 3) == 9_500  # read again: the new lot is known
    assert gateway.max_rates[0] == "8000"  # not 9500: a lot above the max is not to serve it
    # A gateway charging it at 9500 all the same is caught: signing stops.
    assert codes == [200, 402] and signer.stopped is not None and "above the 80 %" in signer.stopped
    # A listing whose priciest lot is below the max lowers it; a pricier one again: back to 80 %, no higher.
    signer.refresh({"data": [{**gateway.models()["data"][0], "lots": [{"id": 1, "rate_bps": 6_000}]}]})
    assert signer.max_rate(MODEL) == 6_000
    signer.refresh(gateway.models())
    assert signer.max_rate(MODEL) == 8_000


def test_proxy__max_rate_set__the_re_reads_do_not_move_it__the_start_line_says_the_bound(tmp_path: Path) -> None:
    from promptex.cli.proxy import max_rate_line

    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    line = max_rate_line(signer)
    assert f"{MODEL} 90 %" in line and "never raised" in line and "--max-rate" in line, line
    gateway.lots = {1: 6_000, 3: 10_000}
    signer.refresh(gateway.models())
    assert signer.max_rate(MODEL) == 9_000
    bounded = _signer(gateway, tmp_path / "w.log", max_rate_bps=7_000)
    assert bounded.max_rate(MODEL) == 7_000 and "at most 70 % of list price (--max-rate)" in max_rate_line(bounded)
    bounded.refresh(gateway.models())
    assert bounded.max_rate(MODEL) == 7_000


def test_proxy__start_line__one_rate_for_every_model__said_once() -> None:
    """`promptex up`'s market lists 25 models, each at 60 %: the start line named all 25 ("… gpt-4o 60 %,
    gpt-4o-mini 60 %, …"); one rate is said once, several still per model."""
    from types import SimpleNamespace

    from promptex.cli.proxy import max_rate_line

    def line(rates: dict[str, int]) -> str:
        return max_rate_line(SimpleNamespace(max_rate_bps=None, default_max_rates=lambda: rates))  # type: ignore[arg-type]

    same = line({"gpt-4o": 6_000, "gpt-4o-mini": 6_000, "claude-haiku-4-5": 6_000})
    assert "60 % of list price for each of its 3 models, never raised" in same and "gpt-4o" not in same, same
    assert "gpt-4o 60 %, claude-haiku-4-5 90 %" in line({"gpt-4o": 6_000, "claude-haiku-4-5": 9_000})
    assert "(gpt-4o 60 % of list price)" in line({"gpt-4o": 6_000})


def test_proxy__rates_not_readable_again__the_book_read_before_kept(tmp_path: Path) -> None:
    import asyncio

    from promptex.buyerside.proxy import refresh_rates

    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    book = signer.rates
    broken = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(500)), base_url="http://g")
    empty = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"data": []})),
                              base_url="http://g")  # fmt: skip
    asyncio.run(refresh_rates(signer, broken))
    asyncio.run(refresh_rates(signer, empty))
    assert signer.rates is book


def test_proxy__models_answer_trickled__read_no_longer_than_rates_read_seconds_the_book_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's re-read of /v1/models is held to RATES_READ_SECONDS whole: before (s3break
    s18) a trickled answer was read to its end, the re-reads held up meanwhile."""
    import asyncio

    from promptex.buyerside import proxy

    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    book = signer.rates
    listing = httpx.Response(200, json=gateway.models()).content
    sent: list[int] = []

    async def trickle() -> Any:
        for byte in listing:
            sent.append(byte)
            yield bytes([byte])
            await asyncio.sleep(0.01)

    monkeypatch.setattr(proxy, "RATES_READ_SECONDS", 0.2)
    slow = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, content=trickle())),
                             base_url="http://g")  # fmt: skip
    asyncio.run(proxy.refresh_rates(signer, slow))
    assert len(sent) < len(listing) and signer.rates is book


def test_rates_read_again_while_a_request_is_in_flight__its_answer_checked_by_the_book_it_was_signed_with(
    tmp_path: Path,
) -> None:
    gateway = FakeSignedGateway(lanes=1, lots=LOTS, charge_rate=9_000, name_lot=2, name_rate=9_000)
    signer = _signer(gateway, tmp_path / "v.log")
    other = {"data": [{"id": "other", "pricing": {ASSET: {"input_per_million": "1", "output_per_million": "1"}}}]}

    def meanwhile(request: httpx.Request) -> httpx.Response:
        signer.refresh(other)  # the model's lots are gone from /v1/models while its answer is on its way
        return gateway.handle(request)

    path, body = ASKS["chat"]
    transport = PromptexSigningTransport(signer, inner=httpx.MockTransport(meanwhile))
    with httpx.Client(base_url="http://gateway.test", transport=transport) as client:
        assert client.post(path, json={"model": MODEL, **body}).status_code == 200
    assert signer.stopped is None and signer.rates.get(MODEL, ASSET) is None
    assert signer.book.lanes[0].charged == sum(gateway.true_costs) > 0


_CATALOG = metering.load_catalog()


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(sorted(price.model for price in _CATALOG)),
    cheapest=st.integers(1, 10_000),
    named=st.integers(1, 10_000),
    fee=st.integers(0, 10_000),
    uncached=st.integers(0, 2_000_000),
    read=st.integers(0, 2_000_000),
    written=st.integers(0, 2_000_000),
    output=st.integers(0, 200_000),
)
def test_honest_gateway__any_lot_rate_and_usage__the_proxy_s_cost_equals_the_gateway_s_to_the_unit(
    model: str, cheapest: int, named: int, fee: int, uncached: int, read: int, written: int, output: int
) -> None:
    """The proxy checks a charge at /v1/models' prices (the cheapest lot's, printed to 12
    places) scaled to the named lot's rate; the gateway charges `rates_for` at that rate. For
    every catalog model, lot rate, fee and usage they agree to the unit (catalog prices are
    whole micro-USD per 1k tokens: exact at 12 places), so no rounding refuses an honest charge
    (s2break). Guards the printing (`_per_million`) and the scaling (`RateBook.at`)."""
    from promptex.gateway.service import _per_million

    price = _CATALOG.price(model)
    advertised = metering.rates_for(price, ASSET, lot_rate_bps=cheapest, fee_bps=fee)
    models = {"data": [{"id": model, "pricing": {ASSET: {**_per_million(advertised, 6), "rate_bps": cheapest}}}]}
    book = RateBook.from_models(models, _CATALOG)
    usage = metering.TokenUsage(uncached + read + written, output, cache_read_tokens=read, cache_write_tokens=written)
    checked = book.at(model, ASSET, named)
    assert checked is not None
    charged = metering.rates_for(price, ASSET, lot_rate_bps=named, fee_bps=fee)
    assert metering.usage_cost(checked, usage) == metering.usage_cost(charged, usage)


def test_rates_read_again__a_raised_list_price_not_taken__a_lower_one_taken(tmp_path: Path) -> None:
    """A max rate is a fraction of list price: a later /v1/models raising a model's list price
    (10×, or no longer saying which rate its prices are at) raised what every later request was
    held and accepted at, the max rate unchanged (review s17). The opening list price is kept."""
    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    opened = signer.rates.list_price(MODEL, ASSET)
    assert opened is not None
    raised = gateway.models()
    entry = raised["data"][0]
    price = entry["pricing"][ASSET]
    tenfold = {side: str(Decimal(price[side]) * 10) for side in ("input_per_million", "output_per_million")}
    signer.refresh({"data": [{**entry, "pricing": {ASSET: {**price, **tenfold}}}]})
    assert signer.rates.list_price(MODEL, ASSET) == opened
    unpriced = {side: str(Decimal(price[side]) * 10) for side in ("input_per_million", "output_per_million")}
    signer.refresh({"data": [{**entry, "pricing": {ASSET: unpriced}}]})  # no rate_bps: not at a known rate
    assert signer.rates.list_price(MODEL, ASSET) == opened
    lower = {side: str(Decimal(price[side]) / 2) for side in ("input_per_million", "output_per_million")}
    signer.refresh({"data": [{**entry, "pricing": {ASSET: {**price, **lower}}}]})  # a lower one is taken
    assert signer.rates.list_price(MODEL, ASSET) == opened.scaled(ASSET, Fraction(1, 2))


@pytest.mark.parametrize(
    "body",
    [
        {"data": ["x"]},
        {"data": [{"pricing": {}}]},
        {"data": 5},
        {"data": [{"id": MODEL, "pricing": [1]}]},
        {"data": [{"id": MODEL, "lots": 7, "pricing": {ASSET: {"input_per_million": "Infinity"}}}]},
    ],
)
def test_rate_book__malformed_models_answer__nothing_read_from_it_no_exception(body: Any, tmp_path: Path) -> None:
    """A /v1/models answer not of its shape raised (AttributeError, KeyError, TypeError,
    OverflowError) out of RateBook.from_models: at the proxy's start a traceback, in its
    5-minute re-reads the task ended and the rates were never read again (review s17)."""
    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    book = signer.rates
    assert RateBook.from_models(body).rates == {}
    signer.refresh(body)
    assert signer.rates is book  # nothing read: the book read before is kept


def test_rates_read_again__a_model_first_listed_since__held_to_its_first_price(tmp_path: Path) -> None:
    """A model (or asset) the opening book did not price is held, from the read that first
    lists it, to that price: before, it was new on every read, so the next read could raise it
    10× (review s17 breaker on 0c03454)."""
    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    entry = gateway.models()["data"][0]

    def listed_as_later(times: int) -> dict[str, Any]:
        later = copy.deepcopy(entry)
        later["id"] = "later-model"
        for side in ("input_per_million", "output_per_million"):
            later["pricing"][ASSET][side] = str(Decimal(later["pricing"][ASSET][side]) * times)
        return later

    signer.refresh({"data": [entry, listed_as_later(1)]})
    first = signer.rates.list_price("later-model", ASSET)
    assert first is not None
    signer.refresh({"data": [entry, listed_as_later(10)]})
    assert signer.rates.list_price("later-model", ASSET) == first


@pytest.mark.parametrize("given", ["1e-99999999", "1e99999999", "-1", "1" * 50, "NaN"])
def test_rate_book__a_price_no_price_can_be__skipped_at_once(given: str) -> None:
    """A price of a huge exponent took the proxy's event loop for minutes (Fraction of
    10^99999999); a negative one made negative holds (review s17 breaker on 4ccf068)."""
    body = {"data": [{"id": MODEL, "pricing": {ASSET: {"input_per_million": given, "output_per_million": "1"}}}]}
    assert RateBook.from_models(body).rates == {}


@pytest.mark.parametrize("ask", ["chat", "chat stream"])
@pytest.mark.parametrize(
    "moved",
    [
        {"input_per_million": "4.75", "output_per_million": "9.5", "rate_bps": 9_500},  # 3 and 6 at 60 %: same list
        {"input_per_million": "4.75", "output_per_million": "9.5"},  # the rate no longer said: 95 % read as list
    ],
)
def test_rates_read_again__basis_moved_above_the_max__a_charge_naming_no_rate_checked_at_the_max(
    tmp_path: Path, ask: str, moved: dict[str, Any]
) -> None:
    """A charge naming no lot rate was checked at the advertised rates, whatever rate they are
    at (review s17): a re-read of /v1/models saying its prices are at 95 % (scaled so that the
    list price is unchanged: `not_above` takes it) let a gateway naming no rate charge 95 %
    of list price to a buyer whose max is 80 %, up to the hold. Now such a charge is checked
    at the lower of the two (`Signer.charge_rates`): the 95 % charge stops signing. A re-read
    no longer saying the rate (95 % of list, below the opening list price) was taken as a
    lower list price, held and checked as it is: the opening entry is kept (`not_above`)."""
    gateway = FakeSignedGateway(lanes=1, lots={1: BASIS_BPS, 2: 8_000})
    signer = _signer(gateway, tmp_path / "v.log")
    entry = gateway.models()["data"][0]
    signer.refresh({"data": [{**entry, "pricing": {ASSET: moved}, "lots": [{"id": 3, "rate_bps": 9_500}]}]})
    assert signer.rates.list_price(MODEL, ASSET) == RATES.scaled(ASSET, Fraction(BPS, BASIS_BPS))
    assert signer.max_rate(MODEL) == 8_000
    gateway.charge_rate = 9_500  # and names no rate
    _ask(gateway, signer, ask)
    assert gateway.max_rates == ["8000"]
    assert signer.stopped is not None and "the rate gives" in signer.stopped, signer.stopped


def test_transport__rates_read_again_when_due__a_list_price_lowered_since_does_not_stop_signing(
    tmp_path: Path,
) -> None:
    """The transport read /v1/models only when its signer opened (the proxy every 5 minutes):
    a list price lowered since (here halved) made the gateway's first honest answer at it a
    wrong charge, and signing stopped. Now it reads it again, as the proxy does (`take_rates`),
    before the first request after `refresh_seconds`, with that request's API key."""
    gateway = FakeSignedGateway(lanes=1, lots=LOTS, charge_rate=3_000, name_lot=1, name_rate=6_000)
    signer = _signer(gateway, tmp_path / "v.log")
    entry = gateway.models()["data"][0]
    halved = {"input_per_million": "1.5", "output_per_million": "3", "rate_bps": BASIS_BPS}
    seen: list[httpx.Request] = []

    def serve(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/v1/models"):
            return httpx.Response(200, json={"data": [{**entry, "pricing": {ASSET: halved}}]})
        return gateway.handle(request)

    now = [0.0]
    transport = PromptexSigningTransport(signer, inner=httpx.MockTransport(serve), clock=lambda: now[0])
    path, body = ASKS["chat"]
    key = {"authorization": "Bearer k"}
    with httpx.Client(base_url="http://gateway.test/prefix", transport=transport) as client:
        now[0] = 299.0
        assert client.post(path, json={"model": MODEL, **body}, headers=key).status_code == 200
        assert [r.url.path for r in seen] == ["/prefix/v1/chat/completions"]  # not due yet: no read
        assert signer.stopped is not None  # the halved price, checked at the opening one
        signer.resume()
        now[0] = 300.0
        assert client.post(path, json={"model": MODEL, **body}, headers=key).status_code == 200
    models = seen[1]
    assert models.url.path == "/prefix/v1/models" and models.headers["authorization"] == "Bearer k"
    assert models.headers["x-promptex-asset"] == ASSET
    assert signer.stopped is None, signer.stopped
    assert signer.rates.list_price(MODEL, ASSET) == RATES.scaled(ASSET, Fraction(BPS, 2 * BASIS_BPS))


def test_transport__rates_due_the_gateway_never_answers_models__within_the_client_s_timeout(tmp_path: Path) -> None:
    """A re-read of /v1/models is made within the request's own timeouts (its client's): a
    gateway that accepts the connection and never answers it costs the request that timeout,
    then the book read before is kept and the request goes on. Before (s3break s18), the
    re-read was a bare request without timeouts: the caller hung past its client's timeout
    for as long as the gateway held the connection."""
    gateway = FakeSignedGateway(lanes=1)
    signer = _signer(gateway, tmp_path / "v.log")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog), never answers
    port = silent.getsockname()[1]

    class Split(httpx.BaseTransport):
        def __init__(self) -> None:
            self.http = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/v1/models"):
                request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
                return self.http.handle_request(request)
            return gateway.handle(request)

    now = [0.0]
    transport = PromptexSigningTransport(signer, inner=Split(), clock=lambda: now[0])
    path, body = ASKS["chat"]
    done: list[int] = []

    def ask() -> None:
        with httpx.Client(base_url="http://gateway.test", transport=transport, timeout=0.3) as client:
            now[0] = 300.0
            done.append(client.post(path, json={"model": MODEL, **body}).status_code)

    try:
        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(5.0)
        assert done == [200], "the request hung on the re-read of /v1/models"
    finally:
        silent.close()
    assert signer.stopped is None and signer.rates.get(MODEL, ASSET) == RATES  # the book kept


@pytest.mark.parametrize("client_timeout", [None, 600.0, 2.0])
def test_transport__rates_due__the_re_read_s_every_timeout_at_most_rates_read_seconds(
    tmp_path: Path, client_timeout: float | None
) -> None:
    """The re-read of /v1/models waits at most RATES_READ_SECONDS at each step (connect, head,
    each read, write, pool), or the client's own when shorter. Before (review3 s18) it took the
    client's timeouts as they were — openai's 600 s, or none at all — so a gateway that sent
    nothing, or its head and a byte, held the request that found the re-read due that long (the
    5 s deadline was checked only as pieces of the body came)."""
    gateway = FakeSignedGateway(lanes=1)
    signer = _signer(gateway, tmp_path / "v.log")
    waits: list[dict[str, float | None]] = []

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/models"):
            waits.append(dict(request.extensions["timeout"]))
            return httpx.Response(200, json=gateway.models())
        return gateway.handle(request)

    now = [0.0]
    transport = PromptexSigningTransport(signer, inner=httpx.MockTransport(serve), clock=lambda: now[0])
    now[0] = 300.0
    path, body = ASKS["chat"]
    with httpx.Client(base_url="http://gateway.test", transport=transport, timeout=client_timeout) as client:
        assert client.post(path, json={"model": MODEL, **body}).status_code == 200
    most = RATES_READ_SECONDS if client_timeout is None else min(RATES_READ_SECONDS, client_timeout)
    assert waits == [dict.fromkeys(("connect", "read", "write", "pool"), most)]


def test_transport__rates_due_the_models_answer_trickled__read_no_longer_than_rates_read_seconds(
    tmp_path: Path,
) -> None:
    """A /v1/models answer trickled, each piece within the read timeout: the re-read stops at
    RATES_READ_SECONDS, the book read before is kept and the request goes on. Before (s3break
    s18) it was read to its end however long that took (the transport's clock stands in for time)."""
    gateway = FakeSignedGateway(lanes=1)
    signer = _signer(gateway, tmp_path / "v.log")
    entry = gateway.models()["data"][0]
    listing = httpx.Response(200, json={"data": [entry]}).content
    now = [0.0]
    sent: list[int] = []

    def trickle() -> Any:  # a byte a second
        for byte in listing:
            now[0] += 1.0
            sent.append(byte)
            yield bytes([byte])

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/models"):
            return httpx.Response(200, content=trickle())
        return gateway.handle(request)

    transport = PromptexSigningTransport(signer, inner=httpx.MockTransport(serve), clock=lambda: now[0])
    book = signer.rates
    now[0] = 300.0
    path, body = ASKS["chat"]
    with httpx.Client(base_url="http://gateway.test", transport=transport) as client:
        assert client.post(path, json={"model": MODEL, **body}).status_code == 200
    assert len(sent) <= RATES_READ_SECONDS + 1 < len(listing)  # stopped reading at the deadline
    assert signer.rates is book and signer.stopped is None  # the book kept


def test_refresh__two_threads_at_once__a_model_first_listed_by_either_held_to_its_first_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two reads of /v1/models taken at once (two transports sharing a signer), each listing a
    model first: both models are held to their first price from then on. Before (s3break
    s18), `Signer.refresh` was not serialised: each thread added its book to the opened book
    as it was before the other's, and the one written last lost the other's model — whose
    price the next read could then raise."""
    gateway = FakeSignedGateway(lanes=1)
    signer = _signer(gateway, tmp_path / "v.log")
    entry = gateway.models()["data"][0]

    def listing(prices: dict[str, str]) -> dict[str, Any]:
        added = [{"id": name, "pricing": {ASSET: {"input_per_million": price, "output_per_million": price}}}
                 for name, price in prices.items()]  # fmt: skip
        return {"data": [entry, *added]}

    meet = threading.Barrier(2)
    adding = RateBook.adding

    def meeting(book: RateBook, later: RateBook) -> RateBook:  # both threads there at once, if they can be
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait(0.5)
        return adding(book, later)

    monkeypatch.setattr(RateBook, "adding", meeting)
    threads = [threading.Thread(target=signer.refresh, args=(listing({name: "1"}),)) for name in ("new-a", "new-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
    monkeypatch.undo()
    first = RateBook.from_models(listing({"new-a": "1"})).get("new-a", ASSET)
    signer.refresh(listing({"new-a": "10", "new-b": "10"}))  # both raised tenfold
    assert [signer.rates.get(name, ASSET) for name in ("new-a", "new-b")] == [first, first]


def test_transport__rates_not_readable_when_due__the_book_kept_the_request_goes_on(tmp_path: Path) -> None:
    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    book = signer.rates

    def serve(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v1/models"):
            raise httpx.ConnectError("down")
        return gateway.handle(request)

    transport = PromptexSigningTransport(signer, inner=httpx.MockTransport(serve), refresh_seconds=0.0)
    path, body = ASKS["chat"]
    with httpx.Client(base_url="http://gateway.test", transport=transport) as client:
        assert client.post(path, json={"model": MODEL, **body}).status_code == 200
    assert signer.rates is book and signer.stopped is None


def test_transport__models_answer_too_large__the_book_kept_unparsed(tmp_path: Path) -> None:
    """A /v1/models answer above RATES_MAX_BYTES is not parsed: the book read before is kept.
    Before (s3break s18), any size was parsed whole — 60,000 models in 15 MB took 5 s, on the
    proxy's event loop (every stream it relays stalled) every 5 minutes."""
    gateway = FakeSignedGateway(lanes=1, lots=LOTS)
    signer = _signer(gateway, tmp_path / "v.log")
    book = signer.rates
    entry = gateway.models()["data"][0]
    padded = {"data": [entry, {"id": "padding", "owned_by": "x" * (RATES_MAX_BYTES + 1)}]}
    take_rates(signer, httpx.Response(200, json={"data": [entry]}))  # within it: read
    assert signer.rates is not book
    book = signer.rates
    with pytest.raises(ValueError, match="more than the"):
        take_rates(signer, httpx.Response(200, json=padded))
    assert signer.rates is book


# gpt-4o in GPT as the gateway lists it (`gateway.service._per_million`): list ÷ GPT's face
# value ($3.695), rounded up at 12 decimals of whole tokens per million, and exactly.
GPT_4O = {"input_per_million": "0.676589986469", "input_per_million_exact": "500/739",
          "output_per_million": "2.706359945873", "output_per_million_exact": "2000/739"}  # fmt: skip


def _gpt_book(**changes: Any) -> RateBook:
    price = {**GPT_4O, **changes}
    price = {side: given for side, given in price.items() if given is not None}
    body = {"data": [{"id": "gpt-4o", "owned_by": "openai", "pricing": {"GPT": price}}]}
    return RateBook.from_models(body, metering.load_catalog())


def test_rate_book__a_provider_tokens_price_given_exactly__read_exactly_cache_rates_too() -> None:
    """Before (session 18) the printed, rounded prices were read: a charge at the gateway's
    exact rates (list ÷ face value) was up to a unit per token below, and signing stopped at
    the first answer; the cache rates were lost (the rounded output rate did not scale from
    the input's), so a cache read was checked at the input rate."""
    exact = metering.provider_token_rates(metering.load_catalog().price("gpt-4o"))
    assert _gpt_book().get("gpt-4o", "GPT") == exact
    usage = metering.TokenUsage(1_000, 200, cache_read_tokens=400)
    assert metering.usage_cost(_gpt_book().get("gpt-4o", "GPT"), usage) == metering.usage_cost(exact, usage)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"input_per_million_exact": "501/739"},  # above the printed price: not its rounding
        {"input_per_million_exact": "499/739"},  # below it by more than the rounding
        {"input_per_million_exact": "500/0"},
        {"input_per_million_exact": "500/739\n"},
        {"input_per_million_exact": "-500/-739"},
        {"input_per_million_exact": "1" * 61 + "/739"},  # more than 60 digits a side
        {"input_per_million_exact": 0.67},
        {"input_per_million": "0.6766", "input_per_million_exact": "500/739"},  # printed not its rounding
    ],
)
def test_rate_book__an_exact_price_the_printed_one_is_not_the_rounding_of__the_printed_one_read(
    changes: dict[str, Any],
) -> None:
    """Never above the printed price, nor another price: a given fraction is taken only when
    the printed decimals are its rounding up at 12 places."""
    book = _gpt_book(**changes)
    rates = book.get("gpt-4o", "GPT")
    assert rates is not None
    assert (
        rates.input_per_1k == Fraction(Decimal(changes.get("input_per_million", GPT_4O["input_per_million"]))) * 10**15
    )
