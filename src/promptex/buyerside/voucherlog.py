"""Every voucher signed, on disk before its request leaves: an append-only file of JSON
lines, each voucher written and `os.fsync`'d before the caller may send it.

Why a file and not SQLite: one writer appends and nothing is ever updated, so a line per
voucher plus fsync is the whole need. A kill -9 can leave at most the last line torn, and
a torn line is a voucher whose fsync never returned, so its request was never sent: it is
skipped on reading (and cut off before the next append).

The first line names what the vouchers are for (chain, vault, account, asset, session
key); a log opened for another identity is refused rather than mixed.

A stop of signing is written here too, fsync'd like a voucher (`stopped`: reason, lane,
time), so a restarted proxy stays stopped until the user resumes it (`resumed`): the
reason a signer stopped is a reason not to trust the gateway, and a restart changes
nothing about it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptex.buyerside.wire import Voucher

# The logs open for writing in this process, by (device, inode), and their descriptors: the POSIX
# lock `VoucherLog` takes refuses another process, not another opener in this one (`_open`).
_HELD: dict[tuple[int, int], int] = {}
_HELD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Stop:
    """Why signing stopped, on which lane (None: not one lane's), and when (unix seconds)."""

    reason: str
    lane: int | None
    at: int


class VoucherLogError(RuntimeError):
    """The log belongs to another identity, or cannot be written."""


@dataclass(frozen=True)
class Identity:
    """What a session key signs for: the vault's domain, the account and the asset."""

    chain_id: int
    vault: str
    account: str
    asset: str
    key: str  # the session key's address

    def record(self) -> dict[str, Any]:
        return {
            "t": "identity",
            "chain_id": self.chain_id,
            "vault": self.vault.lower(),
            "account": self.account.lower(),
            "asset": self.asset.lower(),
            "key": self.key.lower(),
        }


class VoucherLog:
    """Append vouchers durably; read back the highest ceiling signed per (session, lane)."""

    def __init__(self, path: Path | str, identity: Identity, read_only: bool = False) -> None:
        """`read_only`: only read what the log holds (`promptex session show` beside a running
        proxy): no lock taken, a torn last line skipped but not cut off, nothing written."""
        self.path = Path(path)
        self.identity = identity
        self._lock = threading.Lock()
        self.highest: dict[tuple[int, int], Voucher] = {}
        # Per lane, the largest hold a voucher was signed for (vouchers written before holds
        # were logged name none): what the stop rule measures in.
        self.holds: dict[tuple[int, int], int] = {}
        # Per lane, the total the last answer told, when no voucher was signed after it.
        self.answered: dict[tuple[int, int], int] = {}
        # Per lane, the units of its answers checked exactly (the stop rule's tolerance is a
        # share of them), as the last `charged` record says (older logs: none).
        self.verified: dict[tuple[int, int], int] = {}
        # Per lane, the units of its checked answers' reported reasoning (`Lane.reasoning`), as
        # the last `charged` record says, until a resume (older logs: none).
        self.reasoning: dict[tuple[int, int], int] = {}
        self.stopped: Stop | None = None  # the last stop not resumed since
        # Per lane, its answers without the lane's figures as `Signer` last counted them
        # (its stop rule): a restart goes on counting, else each restart would give a
        # gateway that charges and drops every connection one hold more per lane.
        self.errors: dict[tuple[int, int], dict[str, Any]] = {}
        # Per lane, its `live` (the highest ceiling the gateway may have accepted) as its last
        # `errors` line recorded it: kept across a resume, which forgives the lane's count,
        # not what the gateway may have accepted (`recovery` bounds the lane by it).
        self.accepted: dict[tuple[int, int], int] = {}
        # Per lane, its last voucher's (hold, the exact total it was signed on or None) while
        # no outcome of it is written (a `charged` or `errors` line after it): a request in
        # flight, or in flight when the process stopped (`recovery` weighs it).
        self.open: dict[tuple[int, int], tuple[int, int | None]] = {}
        self.last: dict[tuple[int, int], int] = {}  # per lane, its last voucher's ceiling
        self._fd = -1
        self._held: tuple[int, int] | None = None  # this log's entry in `_HELD`, while open
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        try:
            self._load(read_only)
        except BaseException:  # refused, or a record that cannot be read: the log let go
            self.close()
            raise

    def _load(self, read_only: bool) -> None:
        identity = self.identity
        records = self._read()
        if read_only:
            if records and records[0] != identity.record():
                raise VoucherLogError(f"{self.path} is the voucher log of another session key or account: {records[0]}")
        elif not records:
            self._append(identity.record())
        elif records[0] != identity.record():
            raise VoucherLogError(f"{self.path} is the voucher log of another session key or account: {records[0]}")
        for record in records[1:]:
            if record.get("t") == "voucher":
                # "from" (null: only a bound) is written since a request in flight is weighed
                # on a restart; a line without it is older: its outcome was not always
                # written (a lane_busy refusal), so it is not taken for one in flight.
                base = record.get("from")
                self._remember(
                    _voucher(record), int(record.get("hold", 0)), None if base is None else int(base), "from" in record
                )
            elif record.get("t") == "charged":
                key = (int(record["session"]), int(record["lane"]))
                self.answered[key] = int(record["charged"])
                self.verified[key] = int(record.get("verified", self.verified.get(key, 0)))
                self.reasoning[key] = int(record.get("reasoning", self.reasoning.get(key, 0)))
                self.open.pop(key, None)
            elif record.get("t") == "stopped":
                lane = record.get("lane")
                self.stopped = Stop(str(record["reason"]), None if lane is None else int(lane), int(record["at"]))
            elif record.get("t") == "errors":
                self.errors[(int(record["session"]), int(record["lane"]))] = record
                self._accepted(record)
                self.open.pop((int(record["session"]), int(record["lane"])), None)
            elif record.get("t") == "resumed":
                self.stopped = None
                self.errors.clear()
                self.reasoning.clear()

    def _open(self) -> None:
        """Open the log for writing, held by this object alone: refused if another signer holds
        it, in another process (a POSIX lock) or in this one (`_HELD`)."""
        # One signing user per log (r2break s18): two proxies, or a proxy and a program using
        # the transport, or two transports in one program, on one session each built ceilings on
        # their own view of a lane — a hold each beyond the honest charges, the other's charges
        # read as growth (a stop), and the log's last voucher of a lane no longer the one the
        # gateway may have accepted last (what recovery bounds a lane by). A POSIX lock is held
        # by the process (another open in the same process is not refused by it) and let go by
        # the kernel when the process dies (kill -9 included); within the process, `_HELD`.
        # Checked before a descriptor is opened: a POSIX lock is let go when the process closes
        # ANY descriptor of the file, so a refused second opener that opened one and closed it
        # would unlock the file under the first.
        with _HELD_LOCK:
            try:
                known = os.stat(self.path)
            except FileNotFoundError:
                known = None
            if known is not None and (known.st_dev, known.st_ino) in _HELD:
                raise VoucherLogError(
                    f"{self.path} is already open in this process, signing with this session key (another "
                    "signer or transport opened on the same session): one at a time; close the other first"
                )
            # O_APPEND: each write lands at the end even after a torn line was cut off. Read and
            # cut through this one descriptor too (the lock, above).
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            opened = os.fstat(fd)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):  # a file system without locks
                    raise VoucherLogError(f"cannot lock the voucher log {self.path}: {exc}") from None
                raise VoucherLogError(
                    f"{self.path} is in use by another process signing with this session key (a running "
                    "promptex proxy?): one at a time"
                ) from None
            self._fd, self._held = fd, (opened.st_dev, opened.st_ino)
            _HELD[self._held] = fd

    def _read(self) -> list[dict[str, Any]]:
        if self._fd < 0:
            with _HELD_LOCK:  # read-only: through the writer's descriptor if this process holds the log
                try:
                    known = os.stat(self.path)
                except FileNotFoundError:
                    return []
                held = _HELD.get((known.st_dev, known.st_ino))
                # Opening and closing a descriptor of its own would let the writer's POSIX lock go.
                raw = self.path.read_bytes() if held is None else _read_all(held)
        else:
            raw = _read_all(self._fd)
        complete, _, torn = raw.rpartition(b"\n")
        if torn and self._fd >= 0:  # never fsync'd whole: its request was not sent; cut it off
            os.ftruncate(self._fd, len(complete) + 1 if complete else 0)
            os.fsync(self._fd)
        records = []
        for number, line in enumerate(complete.splitlines(), 1):
            if not line.strip():
                continue
            try:  # a whole line that is not JSON was not written here (a damaged file): refused, said so
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raise VoucherLogError(f"{self.path} line {number} is not a voucher log record: {line[:80]!r}")
            records.append(record)
        return records

    def _append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self._fd)

    def _remember(self, voucher: Voucher, hold: int, base: int | None, outcome_written: bool = True) -> None:
        key = (voucher.session, voucher.lane)
        self.answered.pop(key, None)  # this voucher's outcome is not known yet
        if outcome_written:
            self.open[key] = (hold, base)
        else:
            self.open.pop(key, None)
        self.holds[key] = max(self.holds.get(key, 0), hold)
        self.last[key] = voucher.ceiling
        if key not in self.highest or voucher.ceiling > self.highest[key].ceiling:
            self.highest[key] = voucher

    def write(self, voucher: Voucher, hold: int = 0, base: int | None = None) -> None:
        """Record a voucher, signed for a request held at `hold` on the lane's exactly known
        total `base` (None: only a bound was known), durably; return only once it is on disk."""
        record = {
            "t": "voucher",
            "session": voucher.session,
            "lane": voucher.lane,
            "ceiling": str(voucher.ceiling),  # a string: 18-decimal totals exceed JSON's safe integers
            "sig": "0x" + voucher.signature.hex(),
            "hold": str(hold),
            "from": None if base is None else str(base),
        }
        with self._lock:
            try:
                self._append(record)
            except OSError as exc:
                raise VoucherLogError(f"cannot write the voucher log {self.path}: {exc}") from exc
            self._remember(voucher, hold, base)

    def write_charged(self, session: int, lane: int, charged: int, verified: int = 0, reasoning: int = 0) -> None:
        """Record a lane's total as an answer told it, every voucher of the lane answered,
        the lane's units checked exactly so far (`verified`) and its reported reasoning's.
        Not fsync'd (the next voucher's fsync carries it): losing it only leaves recovery to
        the gateway's word, as before; keeping it stops a gateway inflating a lane on restart."""
        record = {"t": "charged", "session": session, "lane": lane, "charged": str(charged), "verified": str(verified)}
        if reasoning:
            record["reasoning"] = str(reasoning)
        with self._lock:
            try:
                os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
            except OSError:
                return
            self.answered[(session, lane)] = charged
            self.verified[(session, lane)] = verified
            self.reasoning[(session, lane)] = reasoning
            self.open.pop((session, lane), None)

    def write_stop(self, stop: Stop) -> None:
        """Record that signing stopped; return only once it is on disk."""
        record = {"t": "stopped", "reason": stop.reason, "lane": stop.lane, "at": stop.at}
        with self._lock:
            try:
                self._append(record)
            except OSError as exc:
                raise VoucherLogError(f"cannot write the voucher log {self.path}: {exc}") from exc
            self.stopped = stop

    def write_errors(self, session: int, lane: int, state: dict[str, Any]) -> None:
        """Record a lane's count of answers without figures (`Signer`'s stop rule), on disk
        before the lane's next voucher can be signed."""
        record = {"t": "errors", "session": session, "lane": lane, **state}
        with self._lock:
            try:
                self._append(record)
            except OSError as exc:
                raise VoucherLogError(f"cannot write the voucher log {self.path}: {exc}") from exc
            self.errors[(session, lane)] = record
            self._accepted(record)
            self.open.pop((session, lane), None)

    def _accepted(self, record: dict[str, Any]) -> None:
        key = (int(record["session"]), int(record["lane"]))
        if "live" in record:  # written since 390d283
            self.accepted[key] = int(record["live"])
        else:
            self.accepted.pop(key, None)

    def unanswered(self, session: int, lane: int) -> tuple[int, int | None] | None:
        """The lane's last voucher's (hold, exact total it was signed on, or None) if no
        outcome of it was written: its request was in flight when the log was last written."""
        return self.open.get((session, lane))

    def last_ceiling(self, session: int, lane: int) -> int:
        """The ceiling of the lane's last voucher (0: none)."""
        return self.last.get((session, lane), 0)

    def accepted_live(self, session: int, lane: int) -> int | None:
        """The lane's `live` as its last `errors` line recorded it, a resume since or not
        (None: no such line, or one written before it carried `live`)."""
        return self.accepted.get((session, lane))

    def error_state(self, session: int, lane: int) -> dict[str, Any] | None:
        """A lane's count of answers without figures as last recorded (None: none since a resume)."""
        return self.errors.get((session, lane))

    def resume(self, at: int) -> Stop | None:
        """Clear a recorded stop (the user looked at it), and the lanes' counts of answers
        without figures and of reported reasoning with it; returns the stop cleared, if any."""
        with self._lock:
            cleared = self.stopped
            if cleared is not None or self.errors or any(self.reasoning.values()):
                self._append({"t": "resumed", "at": at})
                self.stopped = None
                self.errors.clear()
                self.reasoning.clear()
            return cleared

    def charged(self, session: int, lane: int) -> int | None:
        """The lane's total as the last answer told it, if no voucher was signed since."""
        return self.answered.get((session, lane))

    def reasoned(self, session: int, lane: int) -> int:
        """The lane's units of reported reasoning, as last recorded (0: none since a resume)."""
        return self.reasoning.get((session, lane), 0)

    def checked(self, session: int, lane: int) -> int:
        """The lane's units checked exactly, as last recorded (0: none, or an older log)."""
        return self.verified.get((session, lane), 0)

    def largest_hold(self, session: int, lane: int) -> int:
        """The largest hold a voucher of the lane was logged for (0: none logged one)."""
        return self.holds.get((session, lane), 0)

    def ceiling(self, session: int, lane: int) -> int:
        """The highest ceiling signed for a lane of a session (0: none)."""
        voucher = self.highest.get((session, lane))
        return 0 if voucher is None else voucher.ceiling

    def close(self) -> None:
        """Let the log go (another signer may open it); closing twice does nothing. Waits for a
        write under way (the log's own lock, then the process's): closed between a writer reading
        the descriptor and writing, the number could be reused — the same log opened again — and a
        voucher line land in another file (review3 s18)."""
        with self._lock, _HELD_LOCK:
            if self._held is not None:
                _HELD.pop(self._held, None)
                self._held = None
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _read_all(fd: int) -> bytes:
    """The whole file behind `fd`, from its start (the descriptor's offset untouched), in time
    linear in its size: joined once (`raw += chunk` copied all read so far at every MiB — a
    day's log of 350 MB, ~60 GB copied at each open; review2 s18)."""
    chunks, read = [], 0
    while chunk := os.pread(fd, 1 << 20, read):
        chunks.append(chunk)
        read += len(chunk)
    return b"".join(chunks)


def _voucher(record: dict[str, Any]) -> Voucher:
    return Voucher(
        int(record["session"]), int(record["lane"]), int(record["ceiling"]), bytes.fromhex(record["sig"][2:])
    )
