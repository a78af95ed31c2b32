"""The lane book after a crash: from the chain's lane totals, the gateway's account of
each lane (whose voucher must be one this session key signed) and the voucher log.

Per lane, what was charged so far is:
- the total the last answer told, when the log holds it and every voucher it holds for the
  lane was answered (exact: the gateway's report may not raise it; the chain settled
  above it: a total the gateway never told, and signing stops);
- when the log holds no outcome of the lane's last voucher (in flight when the proxy
  stopped), at most that voucher's ceiling (above every one the gateway may have accepted:
  a voucher it refused or shed bounds nothing), that request counted as an answer without
  figures (weighed by the stop rule until the lane's next figure: `Lane.in_flight`);
- the gateway's `charged_units`, when its voucher verifies, covers that figure and the
  lane has no request in flight (exact);
- else the most that can have been charged: the lane's `live` as its last outcome in the
  log recorded it, else the highest ceiling known to be signed (the log's, a verified
  gateway voucher's, or the chain's settled total), marked inexact; the next answer on the
  lane tells the figure again.
The chain settled above what the log shows the gateway may have charged, or a gateway's
report above it, is its lie: the first stops signing, the second is not believed.
Nothing is trusted that is not covered by a voucher of this key: an unverifiable gateway
report is ignored and said so in the notes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from promptex.buyerside.lanes import Lane, LaneBook
from promptex.buyerside.signer import voucher_signer
from promptex.buyerside.voucherlog import Identity, Stop, VoucherLog
from promptex.buyerside.wire import LaneReport
from promptex.protocol.units import money_exact


@dataclass(frozen=True)
class ChainSession:
    """The vault's `session_key(account, asset)` view, the parts recovery needs."""

    key: str
    session: int
    lanes: int
    maximum: int
    settled: int  # the session's total settled
    lane_settled: tuple[int, ...]  # `lane_settled(account, asset, lane)` per lane


@dataclass
class Recovered:
    book: LaneBook
    notes: list[str] = field(default_factory=list)


def recover(
    identity: Identity,
    chain: ChainSession,
    reports: list[LaneReport] | None,
    voucher_log: VoucherLog,
    *,
    asset_symbol: str = "USDC",
) -> Recovered:
    """The lane book of the chain's current session (see the module's rule); its notes, which
    `promptex proxy` prints, name amounts in `asset_symbol`'s whole units (every digit)."""

    def shown(units: int) -> str:
        return money_exact(units, asset_symbol)

    if chain.key.lower() != identity.key.lower():
        raise ValueError(f"the vault's session key for this account is {chain.key}, not {identity.key}")
    book = LaneBook(chain.session, chain.lanes, chain.maximum)
    out = Recovered(book)

    def settled_above(lane: Lane, settled: int, what: str) -> None:
        """The chain settled the lane above what the log shows the gateway may have charged
        (`what`): signing stops, said in a note; the lane stands exact at what was settled
        (written: a resume goes on from it, and the next restart does not stop again)."""
        reason = f"the chain settled {shown(settled)} on lane {lane.index}, above {what}"
        out.notes.append(f"lane {lane.index}: {reason}: signing stopped")
        if voucher_log.stopped is None:
            voucher_log.write_stop(Stop(reason, lane.index, int(time.time())))
        voucher_log.write_charged(chain.session, lane.index, settled, lane.verified, lane.reasoning)
        lane.charged, lane.exact, lane.floor = settled, True, settled

    by_lane: dict[int, LaneReport] = {}
    for report in reports or []:
        if report.session != chain.session or not 0 <= report.lane < chain.lanes:
            out.notes.append(f"ignored the gateway's report of session {report.session} lane {report.lane}")
        elif report.voucher is None:
            if report.charged:
                out.notes.append(
                    f"lane {report.lane}: the gateway says {shown(report.charged)} charged, with no voucher"
                )
        elif report.voucher.session != chain.session or report.voucher.lane != report.lane:
            out.notes.append(f"lane {report.lane}: the gateway's voucher is for another session or lane")
        elif voucher_signer(identity, report.voucher) != identity.key.lower():
            out.notes.append(f"lane {report.lane}: the gateway's voucher is not signed by this session key")
        elif report.charged > report.voucher.ceiling:
            out.notes.append(
                f"lane {report.lane}: the gateway says {shown(report.charged)} charged, "
                f"above its voucher's {shown(report.voucher.ceiling)}"
            )
        else:
            by_lane[report.lane] = report
    for lane in book.lanes:
        lane.largest_hold = voucher_log.largest_hold(chain.session, lane.index)
        lane.verified = voucher_log.checked(chain.session, lane.index)
        lane.reasoning = voucher_log.reasoned(chain.session, lane.index)
        counted = voucher_log.error_state(chain.session, lane.index)
        if counted is not None:  # the stop rule's count goes on across restarts
            lane.errors, lane.pending = int(counted["errors"]), int(counted["pending"])
            lane.errors_from, lane.errors_from_exact = int(counted["from"]), bool(counted["from_exact"])
            lane.pending_hold = int(counted["hold"])
            lane.largest_hold = max(lane.largest_hold, lane.pending_hold)
            # Written before closed streams had an allowance: none pending.
            lane.closed, lane.allowance = int(counted.get("closed", 0)), int(counted.get("allowance", 0))
            lane.closed_weight = int(counted.get("closed_weight", 0))
            lane.slack = int(counted.get("slack", 0))  # written before the slack weighed: none
            if "lost" in counted:
                lane.lost, lane.lost_holds = int(counted["lost"]), int(counted["lost_holds"])
            else:  # written before the stop rule weighed units: what it counted for good, a hold each
                lane.lost_holds = lane.errors - lane.pending
        settled = chain.lane_settled[lane.index] if lane.index < len(chain.lane_settled) else 0
        logged = voucher_log.ceiling(chain.session, lane.index)
        found = by_lane.get(lane.index)
        reported = found.voucher.ceiling if found is not None and found.voucher is not None else 0
        if reported > logged:
            out.notes.append(
                f"lane {lane.index}: the gateway holds a voucher for {shown(reported)}, above the log's {shown(logged)}"
            )
        lane.signed = max(logged, reported, settled)
        lane.live = lane.signed  # which of the logged vouchers were refused is not known
        told = voucher_log.charged(chain.session, lane.index)
        if told is not None and logged >= lane.signed and told < settled:
            # Every voucher of the lane was answered, the last telling the total, yet the
            # chain settled more, with a voucher this key signed: the gateway settled what it
            # never told — a voucher it said did not take (a shed, a refusal), or the slack
            # of one it answered below its ceiling. Taken as the floor (before), each restart
            # gave it one hold more, silently, for good (s3break s18). Signing stops, as it
            # does when an answer shows the total grown from an exactly known one
            # (`Signer._charged`); the lane stands at what was settled (a resume goes on from it).
            settled_above(lane, settled, f"the {shown(told)} the gateway's last answer told with every voucher of "
                          "the lane answered")  # fmt: skip
            continue
        if told is not None and logged >= lane.signed:
            # Every voucher in the log was answered, the last telling the total: that figure,
            # whatever the gateway says now (else it could inflate each lane on every restart).
            if found is not None and found.charged != told:
                out.notes.append(
                    f"lane {lane.index}: the gateway says {shown(found.charged)} charged, its last answer {shown(told)}"
                )
            lane.charged, lane.exact, lane.floor = told, True, told
            continue
        unanswered = voucher_log.unanswered(chain.session, lane.index)
        # The highest ceiling the gateway may have accepted, when the log knows it (every
        # voucher known is in it): its last voucher's, in flight (above every ceiling before
        # it), or the lane's `live` as its last outcome recorded it (a shed or a refused
        # voucher gives it back); None: only the highest ceiling signed bounds it. Before
        # (s3break s18), always the highest signed: a voucher the gateway labelled a shed
        # while keeping it became, across a restart, the floor new ceilings were built on
        # (its report) or the bound the next figure was checked against: one hold more per
        # restart, within the stop rule's N but not the one hold a shed may cost.
        accepted = None
        if logged >= lane.signed:
            if unanswered is not None:
                accepted = voucher_log.last_ceiling(chain.session, lane.index)
            else:  # kept across a resume (r2break s18): a resume forgives counts, not this bound
                accepted = voucher_log.accepted_live(chain.session, lane.index)
        if accepted is not None:
            if settled > accepted:
                settled_above(lane, settled, f"every voucher the gateway accepted ({shown(accepted)} at most)")
                continue
            if found is not None and found.charged > accepted:
                out.notes.append(
                    f"lane {lane.index}: the gateway says {shown(found.charged)} charged, above every voucher it "
                    f"accepted ({shown(accepted)} at most): not believed"
                )
                found = None
            lane.live = accepted
        if unanswered is not None:
            # Its last request was in flight when the proxy stopped (no outcome in the log):
            # an answer without figures, weighed until the lane's next figure tells what it
            # charged. Adopting the gateway's report as exact instead, a gateway that booked
            # that voucher's whole ceiling kept it, weighing nothing (ubreak's Open B).
            hold, base = unanswered
            lane.floor = max(settled, base or 0, found.charged if found is not None else 0)
            hold = hold or max(0, logged - lane.floor)  # a voucher logged before holds were
            lane.largest_hold = max(lane.largest_hold, hold)
            lane.in_flight(hold, base)
            voucher_log.write_errors(chain.session, lane.index, lane.count_state())  # its outcome, now
            out.notes.append(
                f"lane {lane.index}: its last request was in flight when the proxy stopped: weighed as an answer "
                f"without figures until the lane's next figure"
            )
            continue
        if found is not None and not found.in_flight and found.charged >= settled:
            lane.charged, lane.exact, lane.floor = found.charged, True, found.charged
        else:
            lane.charged, lane.exact = lane.live, lane.live == 0
            # What new ceilings are built on: the chain's settled total, or the gateway's
            # verified report (within its voucher: never more than the ceilings it holds).
            lane.floor = max(settled, found.charged if found is not None else 0)
    return out
