"""The signed-mode wire between a buyer's side and the gateway (see the signed-mode spec).

request   x-promptex-voucher: session=<n>;lane=<l>;ceiling=<units>;sig=0x<65 bytes hex>
answer    x-promptex-lane, x-promptex-lane-charged-units, x-promptex-voucher (the stored
          voucher covering it), besides the cost headers (`x-promptex-cost-units`)
refusal   an error body with `lane_charged_units` and the stored voucher
GET /v1/promptex/lanes   per lane: session, lane, charged_units, settled_units,
          voucher {ceiling, sig}, in_flight
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptex.gateway import charges
from promptex.gateway import vouchers as gateway_vouchers
from promptex.gateway.errors import GatewayError

VOUCHER_HEADER = "x-promptex-voucher"
LANE_HEADER = "x-promptex-lane"
LANE_CHARGED_HEADER = "x-promptex-lane-charged-units"
COST_UNITS_HEADER = "x-promptex-cost-units"
ASSET_HEADER = "x-promptex-asset"
LOT_HEADER = charges.LOT  # the lot that served an answer
LOT_RATE_HEADER = charges.LOT_RATE  # and its rate, basis points of list price (listed lots)
MAX_RATE_HEADER = charges.MAX_RATE  # a request's most a listed lot may charge it
LANES_PATH = "/v1/promptex/lanes"
SIGNATURE_BYTES = 65


class WireError(ValueError):
    """A voucher or lane report that does not follow the wire format."""


@dataclass(frozen=True)
class Voucher:
    """A session key's signed ceiling for one lane (account and asset come from the key)."""

    session: int
    lane: int
    ceiling: int
    signature: bytes

    def header(self) -> str:
        return f"session={self.session};lane={self.lane};ceiling={self.ceiling};sig=0x{self.signature.hex()}"


def units(value: Any) -> int | None:
    """A count of units as the gateway writes one (ASCII digits, or a JSON integer not below
    0); None for anything else. `str.isdigit` alone also passes "²" and other scripts'
    digits, on which `int` raises or reads another number."""
    if type(value) is int:
        return value if value >= 0 else None
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        return None
    try:
        return int(value)
    except ValueError:  # beyond int's digits limit: no count a voucher can cover
        return None


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise WireError(f"{name} is not a count")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise WireError(f"{name} is not a count: {value!r}") from None
    if number < 0 or (isinstance(value, str) and not value.isdigit()):
        raise WireError(f"{name} is not a count: {value!r}")
    return number


def _signature(text: Any) -> bytes:
    if not isinstance(text, str) or not text.startswith("0x"):
        raise WireError("a voucher's sig is 0x-prefixed hex")
    try:
        raw = bytes.fromhex(text[2:])
    except ValueError:
        raise WireError("a voucher's sig is not hex") from None
    if len(raw) != SIGNATURE_BYTES:
        raise WireError(f"a voucher's sig has {len(raw)} bytes, not {SIGNATURE_BYTES}")
    return raw


def parse_voucher(text: str) -> Voucher:
    """A voucher from its header form (the gateway's own parser: one reading of the header)."""
    try:
        parsed = gateway_vouchers.parse(text)
    except GatewayError as exc:
        raise WireError(exc.message) from None
    return Voucher(parsed.session, parsed.lane, parsed.ceiling, bytes.fromhex(parsed.signature[2:]))


def voucher_of(value: Any, *, session: int | None = None, lane: int | None = None) -> Voucher:
    """A voucher from a JSON body: its header string, or {ceiling, sig[, session, lane]}
    (session and lane then default to the lane report's own)."""
    if isinstance(value, str):
        return parse_voucher(value)
    if not isinstance(value, dict):
        raise WireError("a voucher is a header string or an object")
    got_session = value.get("session", session)
    got_lane = value.get("lane", lane)
    return Voucher(
        _count(got_session, "session"),
        _count(got_lane, "lane"),
        _count(value.get("ceiling"), "ceiling"),
        _signature(value.get("sig", value.get("signature"))),
    )


@dataclass(frozen=True)
class LaneReport:
    """The gateway's account of one lane (GET /v1/promptex/lanes)."""

    session: int
    lane: int
    charged: int
    settled: int
    voucher: Voucher | None
    in_flight: bool


def lane_reports(body: Any) -> list[LaneReport]:
    """The lanes of a GET /v1/promptex/lanes answer ({"data": [...]}, {"lanes": [...]} or a list)."""
    rows = body.get("data", body.get("lanes")) if isinstance(body, dict) else body
    if not isinstance(rows, list):
        raise WireError("the lanes answer holds no list of lanes")
    out = []
    for row in rows:
        if not isinstance(row, dict):
            raise WireError("a lane report is an object")
        session, lane = _count(row.get("session"), "session"), _count(row.get("lane"), "lane")
        raw = row.get("voucher")
        out.append(
            LaneReport(
                session,
                lane,
                _count(row.get("charged_units", 0), "charged_units"),
                _count(row.get("settled_units", 0), "settled_units"),
                None if raw is None else voucher_of(raw, session=session, lane=lane),
                bool(row.get("in_flight", False)),
            )
        )
    return out
