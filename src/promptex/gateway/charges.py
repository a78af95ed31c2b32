"""What an answer cost, told to the buyer with the answer.

A plain answer carries its cost in headers; a stream (whose cost is known only at its end)
carries its hold, the most it can cost, in headers and its exact cost in its last event:
the `usage` chunk when the client asked for one (`stream_options.include_usage`), else the
last chunk that has choices (OpenAI); `message_delta` (Anthropic); `response.completed`
(Responses). There it is a `promptex` field holding `Charge.fields()`. Every client
library keeps working: headers are ignored, and unknown fields are kept as extras.

    x-promptex-asset        the paying asset (USDC, CLD, GPT, …)
    x-promptex-cost         the charge in the asset's whole units (exact decimal)
    x-promptex-cost-units   the charge in its smallest units (integer)
    x-promptex-cost-usd     its value in US dollars (USDC 1:1; a provider token at its
                            Oracle TWAP when the gateway reads one, else at its face value)
    x-promptex-lot          the gateway lot that served it
    x-promptex-chain-lot    that lot's CreditEscrow id (only when opened on chain)
    x-promptex-lot-rate-bps a listed lot's rate, basis points of list price (the rate the
                            charge is at, before the protocol fee; not on tokenized lots)
    x-promptex-epoch        the settlement epoch it is expected to settle in (signed mode:
                            the next settle_signed batch, `ledger.usage.next_signed_epoch`)
    x-promptex-hold[-units|-usd]   on streams: the hold, in the same three forms
    x-promptex-lane, x-promptex-lane-charged-units, x-promptex-voucher
                            signed mode (issue 23): see `gateway.vouchers`
    x-promptex-deadline-seconds  signed mode, a session's last stretch: the deadline (seconds
                            from its arrival) the request was served under, cut to fit the
                            last second its charge may land (`Gateway._settles_in_time`);
                            absent when it had the gateway's whole deadline
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from promptex.metering import asset as asset_of
from promptex.protocol.units import USDC_DECIMALS, whole_units

ASSET = "x-promptex-asset"
LOT = "x-promptex-lot"
LOT_RATE = "x-promptex-lot-rate-bps"
# A request's most a listed lot may charge, basis points of list price (1–10,000): it is
# routed only to lots at or below it (`Gateway.price`). The signing proxy sends it, so a
# signed request's charge is at a rate the proxy accepts.
MAX_RATE = "x-promptex-max-rate-bps"
CHAIN_LOT = "x-promptex-chain-lot"
EPOCH = "x-promptex-epoch"
LANE = "x-promptex-lane"
LANE_CHARGED = "x-promptex-lane-charged-units"
VOUCHER = "x-promptex-voucher"
DEADLINE = "x-promptex-deadline-seconds"
FIELD = "promptex"  # the extension field of a stream's last event


@dataclass(frozen=True)
class SignedLane:
    """Where a signed-mode request is charged: its lane, the lane's total after it (None
    while unknown: a stream's hold), and the voucher that covers it (its header form)."""

    lane: int
    charged: int | None
    voucher: str

    def headers(self) -> list[tuple[str, str]]:
        out = [(LANE, str(self.lane)), (VOUCHER, self.voucher)]
        if self.charged is not None:
            out.append((LANE_CHARGED, str(self.charged)))
        return out


@dataclass(frozen=True)
class Charge:
    """An amount (a charge, or a stream's hold) of one request and where it settles."""

    request_id: str
    asset: str
    units: int  # in the asset's smallest unit
    usd_micro: int  # its value in USD micro-units
    lot: int  # the gateway lot
    chain_lot: int | None
    epoch: int
    signed: SignedLane | None = None  # signed mode: the lane and voucher it is charged on
    lot_rate_bps: int | None = None  # a listed lot's rate (None: a tokenized lot)

    @property
    def whole(self) -> str:
        return whole_units(self.units, asset_of(self.asset).decimals)

    @property
    def usd(self) -> str:
        return whole_units(self.usd_micro, USDC_DECIMALS)

    def _place(self) -> list[tuple[str, str]]:
        out = [(ASSET, self.asset), (LOT, str(self.lot)), (EPOCH, str(self.epoch))]
        if self.lot_rate_bps is not None:
            out.append((LOT_RATE, str(self.lot_rate_bps)))
        if self.chain_lot is not None:
            out.append((CHAIN_LOT, str(self.chain_lot)))
        if self.signed is not None:
            out.extend(self.signed.headers())
        return out

    def cost_headers(self) -> list[tuple[str, str]]:
        """The headers of a plain answer that cost this."""
        amounts = [("x-promptex-cost", self.whole), ("x-promptex-cost-units", str(self.units))]
        return [*amounts, ("x-promptex-cost-usd", self.usd), *self._place()]

    def hold_headers(self) -> list[tuple[str, str]]:
        """The headers of a stream that holds this (its cost comes in its last event)."""
        amounts = [("x-promptex-hold", self.whole), ("x-promptex-hold-units", str(self.units))]
        return [*amounts, ("x-promptex-hold-usd", self.usd), *self._place()]

    def fields(self) -> dict[str, Any]:
        """The `promptex` field of a stream's last event: the exact cost."""
        return {
            "request_id": self.request_id,
            "asset": self.asset,
            "cost": self.whole,
            "cost_units": str(self.units),  # a string: 18-decimal amounts exceed JSON's safe integers
            "cost_usd": self.usd,
            "lot": self.lot,
            **({} if self.lot_rate_bps is None else {"lot_rate_bps": self.lot_rate_bps}),
            "chain_lot": self.chain_lot,
            "epoch": self.epoch,
            **(
                {}
                if self.signed is None
                else {
                    "lane": self.signed.lane,
                    "lane_charged_units": None if self.signed.charged is None else str(self.signed.charged),
                    "voucher": self.signed.voucher,
                }
            ),
        }


def raw_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode(), value.encode()) for name, value in headers]
