"""Signed mode on the wire (issue 23): the voucher a request carries, the refusals that
tell a proxy how to resync, and the headers an answer carries back.

Request header (the account is the API key's paying account; the asset is
`x-promptex-asset`, else the key's default):

    x-promptex-voucher: session=<n>;lane=<l>;ceiling=<units>;sig=0x<65 bytes hex>

"lane l of the account in session n may be charged at most `ceiling` of the asset in
total", signed (EIP-712 `Voucher`, `promptex.protocol.vault`) by the session key the
wallet registered on chain. The request's hold is ceiling − what the lane was charged so
far; the gateway lowers the upstream output limit so the cost fits it and charges the
metered cost, never more than the hold.

Answers (besides the cost headers of `gateway.charges`):

    x-promptex-lane                 the lane
    x-promptex-lane-charged-units   the lane's total charged after this request
                                    (on a stream: in its last event's `promptex` field)
    x-promptex-voucher              the voucher that covers it (this request's)

Refusals (OpenAI's error body; its `error` object also carries `lane_charged_units` and
`voucher`, the lane's highest stored voucher, whenever the lane is known):

    400 voucher_malformed       the header does not parse
    400 lane_out_of_range       lane ≥ the session's lanes
    400 signed_cross_token_not_built  the model is paid in another provider's token
                                (converted at a TWAP: not built signed; with or without a
                                voucher, before any hold, `errors.SIGNED_CROSS_TOKEN`)
    402 voucher_required        the account is in signed mode for the asset; no voucher
    402 spend_cap_required      no voucher, and the account's session is over with no spend
                                cap set after it: served again once one is (`session`)
    402 voucher_above_balance   Σ over the session's lanes of (ceiling − charged) would
                                exceed the balance less pending exits (`available_units`:
                                the largest ceiling this lane could have now)
    402 voucher_below_input     the hold (ceiling − charged) does not cover even the
                                input's upper bound (`minimum_hold_units`)
    402 session_maximum_reached the session's maximum is spent
    403 session_unknown         the account has no session key in the asset
    403 session_ended           the session expired, its wallet revoked it, or a spend cap
                                was set after it (capped mode again: send no voucher)
    403 session_ending          a request taken now would have less than the least deadline
                                before the last second its charge may land (the close of the
                                session's last window, `settles_until`, less the coordinator's
                                time): go on after the close. With more left, it is served under
                                a deadline cut to fit (`x-promptex-deadline-seconds`)
    403 voucher_bad_signature   not signed by the session's key (e.g. another account's)
    409 session_not_current     the voucher names another session (`session`: the current)
    409 lane_busy               the lane has a request in flight (or was charged since)
    409 voucher_used            ceiling ≤ the highest ceiling the lane accepted before:
                                ceilings rise strictly per lane, a voucher serves once
    409 ceiling_below_charged   ceiling < what the lane was charged
"""

from __future__ import annotations

import re
from typing import Any

from promptex.gateway.charges import VOUCHER
from promptex.gateway.errors import GatewayError
from promptex.ledger.lanes import Lane, Voucher
from promptex.protocol.vault import CEILING_SHIFT

VOUCHER_HEADER = VOUCHER  # the request's, and the answer's (`charges`)
MAX_LANE = 2**16 - 1
_FIELD = re.compile(r"^\s*(session|lane|ceiling|sig)\s*=\s*([^;\s]+)\s*$")
_SIG = re.compile(r"^0x[0-9a-fA-F]{130}$")


def parse(header: str) -> Voucher:
    """A voucher from its header, or the 400 that says what is wrong with it."""
    fields: dict[str, str] = {}
    for part in header.split(";"):
        found = _FIELD.match(part)
        if found is None or found.group(1) in fields:
            raise malformed(f"cannot read {part.strip()!r}")
        fields[found.group(1)] = found.group(2)
    missing = [name for name in ("session", "lane", "ceiling", "sig") if name not in fields]
    if missing:
        raise malformed(f"it lacks {', '.join(missing)}")
    numbers: dict[str, int] = {}
    for name in ("session", "lane", "ceiling"):
        text = fields[name]
        if not text.isdigit() or len(text) > 78:
            raise malformed(f"{name} must be a non-negative integer, not {text!r}")
        numbers[name] = int(text)
    # The vault packs a ceiling in 128 bits (`protocol.vault.pack_signed_entry`): a larger
    # one could never be settled, so it is refused here rather than break a batch later.
    if numbers["ceiling"] >= 2**CEILING_SHIFT or numbers["session"] >= 2**64 or numbers["lane"] > MAX_LANE:
        raise malformed("a number is out of range")
    if _SIG.match(fields["sig"]) is None:
        raise malformed("sig must be 0x and 65 bytes of hex")
    return Voucher(numbers["session"], numbers["lane"], numbers["ceiling"], fields["sig"].lower())


def signature_bytes(voucher: Voucher) -> bytes:
    return bytes.fromhex(voucher.signature[2:])


def malformed(why: str) -> GatewayError:
    return GatewayError(400, f"The {VOUCHER_HEADER} header is malformed: {why}.", code="voucher_malformed",
                        param=VOUCHER_HEADER)  # fmt: skip


def refusal(status: int, code: str, message: str, lane: Lane | None = None, **fields: Any) -> GatewayError:
    """A voucher refusal, with the lane's state when known so a proxy can resync."""
    kind = {402: "insufficient_quota", 403: "permission_error", 409: "conflict_error"}.get(
        status, "invalid_request_error"
    )
    error = GatewayError(status, message, type=kind, code=code, param=VOUCHER_HEADER)
    extra: dict[str, Any] = dict(fields)
    if lane is not None:
        extra["lane"] = lane.lane
        extra["lane_charged_units"] = str(lane.charged)
        extra["voucher"] = None if lane.voucher is None else lane.voucher.fields()
    error.extra = extra
    if status == 402:
        error.headers["x-should-retry"] = "false"
    return error
