"""An in-memory stand-in for the vault and escrow, with the coordinator's `Chain` methods.

It models what the coordinator relies on: consecutive epochs, one settlement per window,
debits cut to the balance only within an exit's allowance (else a revert) with the
shortfall paid from fee + reserve, the escrow's draws inside `settle` (a listed lot's
capacity and its seller's credit at the lot's rate; a token's burn from its tokenized
lots, nearest expiry first), each key's account nonce, a mempool that can hold or lose broadcasts,
receipts, the escrow's `expire` and `prune` (anyone may call them) and its draw's walk
(MAX_PRUNE_LOTS lots past expiry unlinked from the head, then MAX_DRAW_LOTS lots).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from eth_utils.crypto import keccak

from promptex.chain.sender import Call, Receipt, SignedTx
from promptex.coordinator.chain import LotInfo
from promptex.protocol.escrow import (
    KIND_LISTED,
    KIND_TOKENIZED,
    MAX_DRAW_LOTS,
    MAX_PRUNE_LOTS,
    SETTLEMENT_GRACE,
    STATUS_CLOSED,
    STATUS_EXPIRED,
    STATUS_OPEN,
    listed_credit,
)
from promptex.protocol.vault import ENTRY_KEY_SHIFT, recover_voucher_signer, unpack_debit, unpack_signed_entry

COORDINATOR = "0x000000000000000000000000000000000000C0DE"
ADDRESSES = {"USDC": "0x00000000000000000000000000000000000005DC", "CLD": "0x0000000000000000000000000000000000000C1D"}
EPOCH = 10
CHAIN_ID, VAULT = 31_337, "0x" + "0a" * 20  # the domain vouchers are signed for
FAR = 2_000_000_000  # a lot expiry far past the fake clock
GRACE = SETTLEMENT_GRACE  # CreditEscrow.SETTLEMENT_GRACE, through its mirror


class Revert(Exception):
    pass


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        return bytes.fromhex(value["b"])
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@dataclass
class State:
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    reserve: dict[str, int] = field(default_factory=dict)
    claimable: dict[tuple[int, str], int] = field(default_factory=dict)  # (lot, asset)
    burned: dict[str, int] = field(default_factory=dict)  # provider token → burned by settlements
    allowance: dict[tuple[str, str], int] = field(default_factory=dict)  # what a recent exit took
    lots: dict[int, LotInfo] = field(default_factory=dict)
    consumed: dict[int, int] = field(default_factory=dict)  # lot → capacity drawn
    last_epoch: dict[str, int] = field(default_factory=dict)
    settled_window: dict[str, int] = field(default_factory=dict)
    roots: dict[tuple[str, int], bytes] = field(default_factory=dict)
    settlements: list[tuple[str, int]] = field(default_factory=list)  # EpochSettled
    caps: list[tuple[str, str, int]] = field(default_factory=list)
    session_keys: dict[tuple[str, str], tuple[str, int, int, int, int]] = field(default_factory=dict)  # signed mode
    sessions: dict[tuple[str, str], tuple[str, int, int, int]] = field(default_factory=dict)  # key, id, lanes, max
    lane_settled: dict[tuple[str, str, int], int] = field(default_factory=dict)  # (account, asset, lane)
    release_nonce: dict[str, int] = field(default_factory=dict)
    expired: list[int] = field(default_factory=list)  # LotExpired
    unlinked: set[int] = field(default_factory=set)  # lots past expiry a draw or `prune` took off the draw order
    pruned: int = 0  # lots unlinked by `prune` calls
    nonces: dict[str, int] = field(default_factory=dict)  # each key's account nonce (a reorg takes all back)
    key: str = COORDINATOR  # the key in use, whose nonce `nonce` is (FakeChain keeps it so)

    @property
    def nonce(self) -> int:
        """The account nonce of the key in use (`key`)."""
        return self.nonces.get(self.key, 0)

    @nonce.setter
    def nonce(self, value: int) -> None:
        self.nonces[self.key] = value


class FakeChain:
    def __init__(self) -> None:
        self._sender = COORDINATOR
        self.s = State()
        self.time = 1_800_000_000
        self.receipts: dict[str, Receipt] = {}
        self.mempool: dict[str, str] = {}
        self.hold = False  # broadcasts wait in the mempool until `mine()`
        self.lose = False  # broadcasts vanish
        self.sent: list[str] = []  # every broadcast, in order
        self.block = 0
        self.mined = 0  # blocks mined with a transaction, across every branch

    # ─── The key in use, and the state a reorg may swap ─────────────────────

    @property
    def sender(self) -> str:
        """The key the coordinator signs with; each key has its own account nonce."""
        return self._sender

    @sender.setter
    def sender(self, key: str) -> None:
        self._sender = key
        self._s.key = key

    @property
    def s(self) -> State:
        return self._s

    @s.setter
    def s(self, state: State) -> None:  # a branch's state (a reorg) or a subclass's
        state.key = self._sender
        self._s = state

    # ─── Test setup ──────────────────────────────────────────────────────────

    def open_lot(
        self,
        lot_id: int,
        kind: int,
        asset: str = "CLD",
        status: int = STATUS_OPEN,
        *,
        rate_bps: int = 6_000,
        capacity: int = 10**30,
        expiry: int = FAR,
    ) -> None:
        rate = rate_bps if kind == KIND_LISTED else 0
        self.s.lots[lot_id] = LotInfo(f"seller{lot_id}", ADDRESSES[asset], kind, status, rate, expiry, capacity, 0)

    def close_lot(self, lot_id: int) -> None:
        self.s.lots[lot_id] = dataclasses.replace(self.s.lots[lot_id], status=STATUS_CLOSED)

    def next_window(self) -> None:
        self.time += EPOCH

    # ─── Views ───────────────────────────────────────────────────────────────

    def assets(self) -> list[str]:
        return list(ADDRESSES)

    def asset_address(self, asset: str) -> str:
        return ADDRESSES[asset]

    def _symbol(self, address: str) -> str:
        return {v: k for k, v in ADDRESSES.items()}[address]

    def is_spend_only(self, asset: str) -> bool:
        return asset != "USDC"

    def now(self) -> int:
        return self.time

    def next_settlement_at(self, asset: str) -> int:
        return self.s.settled_window.get(asset, 0) * EPOCH

    def last_epoch(self, asset: str) -> int:
        return self.s.last_epoch.get(asset, 0)

    def usage_root(self, asset: str, epoch: int) -> bytes:
        return self.s.roots.get((asset, epoch), bytes(32))

    def balance_of(self, address: str, asset: str) -> int:
        return self.s.balances.get((address, asset), 0)

    def debitable(self, address: str, asset: str) -> int:
        return self.balance_of(address, asset)

    def lot(self, lot_id: int) -> LotInfo:
        lot = self.s.lots.get(lot_id, LotInfo("0x" + "0" * 40, "0x" + "0" * 40, 0, 0))
        return dataclasses.replace(lot, consumed=self.s.consumed.get(lot_id, 0))

    def _draw_order(self, s: State, asset_address: str) -> list[int]:
        return sorted(
            (
                i
                for i, lot in s.lots.items()
                if lot.kind == KIND_TOKENIZED
                and lot.token == asset_address
                and lot.status == STATUS_OPEN
                and lot.capacity > s.consumed.get(i, 0)
                and i not in s.unlinked
            ),
            key=lambda i: (s.lots[i].expiry, i),
        )

    def _expired_head(self, s: State, asset_address: str, most: int) -> list[int]:
        head = []
        for i in self._draw_order(s, asset_address)[:most]:
            if self.time <= s.lots[i].expiry:
                break
            head.append(i)
        return head

    def _walk(self, s: State, asset_address: str) -> list[int]:
        """The lots one draw may take, in order: past the expired head it unlinks first."""
        order = self._draw_order(s, asset_address)
        skip = len(self._expired_head(s, asset_address, MAX_PRUNE_LOTS))
        return [i for i in order[skip : skip + MAX_DRAW_LOTS] if self.time <= s.lots[i].expiry]

    def drawable(self, asset: str) -> int:
        lots = self._walk(self.s, ADDRESSES[asset])
        return sum(self.s.lots[i].capacity - self.s.consumed.get(i, 0) for i in lots)

    def prunable(self, asset: str) -> bool:
        return bool(self._expired_head(self.s, ADDRESSES[asset], 1))

    def lane_settled(self, address: str, asset: str, lane: int) -> int:
        return self.s.lane_settled.get((address, asset, lane), 0)

    def signed_session(self, address: str, asset: str) -> int:
        session = self.s.sessions.get((address, asset))
        return 0 if session is None else session[1]

    def release_nonce(self, address: str) -> int:
        return self.s.release_nonce.get(address, 0)

    def settlement_grace(self) -> int:
        return GRACE

    # ─── Execution ───────────────────────────────────────────────────────────

    def _execute(self, s: State, call: Call) -> None:
        if call.contract == "escrow" and call.function == "expire":  # anyone may
            self._expire(s, *call.args)
            return
        if call.contract == "escrow" and call.function == "prune":  # anyone may
            token, most = call.args
            if most > MAX_PRUNE_LOTS:
                raise Revert("escrow: too many lots to prune")
            head = self._expired_head(s, token, most)
            s.unlinked.update(head)
            s.pruned += len(head)
            return
        if call.contract != "vault":  # the coordinator holds no escrow role
            raise Revert(f"{call.contract}: caller has no role")
        getattr(self, f"_{call.function}")(s, *call.args)

    def _expire(self, s: State, lot_id: int) -> None:
        lot = s.lots.get(lot_id)
        if lot is None or lot.status != STATUS_OPEN:
            raise Revert("escrow: lot not open")
        if self.time <= lot.expiry + GRACE:
            raise Revert("escrow: lot not expired")
        s.lots[lot_id] = dataclasses.replace(lot, status=STATUS_EXPIRED)
        s.expired.append(lot_id)

    def _settle(self, s: State, epoch: int, asset_address: str, debits, credits, burn, fee, root) -> None:  # noqa: ANN001
        asset = self._symbol(asset_address)
        if epoch != s.last_epoch.get(asset, 0) + 1:
            raise Revert("vault: epoch not consecutive")
        window = self.time // EPOCH
        if window < s.settled_window.get(asset, 0):
            raise Revert("vault: epoch window already settled")
        requested = charged = 0
        for word in debits:
            account, amount = unpack_debit(word)
            charged += self._debit(s, account, asset, amount)
            requested += amount
        self._value_side(s, epoch, asset, asset_address, window, requested, charged, credits, burn, fee, root)

    def _debit(self, s: State, account: str, asset: str, amount: int) -> int:
        """Take `amount` from the balance; what it lacks only within an exit's allowance."""
        take = min(amount, s.balances.get((account, asset), 0))
        if amount - take > s.allowance.get((account, asset), 0):
            raise Revert("vault: uncovered debit")
        s.balances[(account, asset)] = s.balances.get((account, asset), 0) - take
        return take

    def _settle_signed(self, s: State, epoch: int, asset_address: str, entries, credits, burn, fee, root) -> None:  # noqa: ANN001
        """Signed mode: any number of batches per window; each lane within its highest voucher."""
        asset = self._symbol(asset_address)
        if epoch != s.last_epoch.get(asset, 0) + 1:
            raise Revert("vault: epoch not consecutive")
        keys = [entry[0] >> ENTRY_KEY_SHIFT for entry in entries]
        if keys != sorted(set(keys)):
            raise Revert("vault: entries not sorted by account and lane")
        requested = charged = 0
        for entry in entries:
            debit = unpack_signed_entry(entry)
            session = s.sessions.get((debit.account, asset))
            if session is None:
                raise Revert("vault: account not in signed mode")
            key, number, lanes, maximum = session
            signer = recover_voucher_signer(
                debit.signature, chain_id=CHAIN_ID, vault=VAULT, account=debit.account, asset=asset_address,
                session=number, lane=debit.lane, ceiling=debit.ceiling,
            )  # fmt: skip
            if signer != key:
                raise Revert("vault: voucher not signed by the session key")
            if debit.lane >= lanes:
                raise Revert("vault: lane out of range")
            lane = (debit.account, asset, debit.lane)
            if s.lane_settled.get(lane, 0) + debit.amount > debit.ceiling:
                raise Revert("vault: debit above the voucher")
            total = sum(v for (a, t, _), v in s.lane_settled.items() if (a, t) == (debit.account, asset))
            if total + debit.amount > maximum:
                raise Revert("vault: debit above the session maximum")
            s.lane_settled[lane] = s.lane_settled.get(lane, 0) + debit.amount
            charged += self._debit(s, debit.account, asset, debit.amount)
            requested += debit.amount
        window = self.time // EPOCH
        self._value_side(s, epoch, asset, asset_address, window, requested, charged, credits, burn, fee, root,
                         signed=True)  # fmt: skip

    def _value_side(  # noqa: ANN001 (the vault's arguments, as `settle` takes them)
        self, s: State, epoch, asset, asset_address, window, requested, charged, credits, burn, fee, root,  # noqa: ANN001
        signed: bool = False,
    ) -> None:  # fmt: skip
        """What `settle` and `settle_signed` share: credits, burn, fee, the shortfall rule."""
        paid = fee
        for word in credits:
            lot_id, amount = word >> 160, word & (2**160 - 1)
            lot = s.lots.get(lot_id)
            if lot is None or lot.kind != KIND_LISTED:
                raise Revert("escrow: not a listed lot")
            if lot.status != STATUS_OPEN:
                raise Revert("escrow: lot not drawable")
            before = s.consumed.get(lot_id, 0)
            if amount > lot.capacity - before:
                raise Revert("escrow: over-consume")
            credit = listed_credit(before, amount, lot.rate_bps)
            s.consumed[lot_id] = before + amount
            s.claimable[(lot_id, asset)] = s.claimable.get((lot_id, asset), 0) + credit
            paid += credit
        if requested != paid + burn:
            raise Revert("vault: debits do not balance")
        missing = requested - charged
        available = s.reserve.get(asset, 0) + fee
        if missing > available:
            raise Revert("vault: shortfall exceeds reserve")
        left = burn
        walk = self._walk(s, asset_address) if burn else []
        if burn:
            s.unlinked.update(self._expired_head(s, asset_address, MAX_PRUNE_LOTS))
        for lot_id in walk:
            take = min(left, s.lots[lot_id].capacity - s.consumed.get(lot_id, 0))
            s.consumed[lot_id] = s.consumed.get(lot_id, 0) + take
            left -= take
        if left:
            raise Revert("escrow: draw exceeds drawable capacity")
        if burn:
            s.burned[asset] = s.burned.get(asset, 0) + burn
        s.reserve[asset] = available - missing
        s.last_epoch[asset] = epoch
        if not signed:  # one capped settlement per window; signed batches any time
            s.settled_window[asset] = window + 1
        s.roots[(asset, epoch)] = bytes(root)
        s.settlements.append((asset, epoch))

    def _register_spend_cap(self, s: State, account, asset, per_epoch, total, expiry, nonce, signature) -> None:  # noqa: ANN001
        if signature == b"bad":
            raise Revert("vault: bad cap signature")
        s.caps.append((account, self._symbol(asset), total))

    def _register_session_key(self, s: State, account, asset, key, lanes, maximum, expiry, nonce, signature) -> None:  # noqa: ANN001
        if signature == b"bad":
            raise Revert("vault: bad session key signature")
        if (account, self._symbol(asset)) in s.session_keys:
            raise Revert("vault: session not ended")
        s.session_keys[(account, self._symbol(asset))] = (key, lanes, maximum, expiry, nonce)
        s.sessions[(account, self._symbol(asset))] = (key, nonce, lanes, maximum)

    def simulate(self, call: Call) -> str | None:
        try:
            self._execute(copy.deepcopy(self.s), call)
        except Revert as exc:
            return str(exc)
        return None

    def sign(self, call: Call, nonce: int) -> SignedTx:
        if self.simulate(call) is not None:
            raise Revert("gas estimation failed")
        raw = json.dumps(
            {"c": call.contract, "f": call.function, "a": _encode(call.args), "n": nonce, "s": self.sender}
        )
        return SignedTx("0x" + keccak(text=raw).hex(), raw, nonce)

    def sign_noop(self, nonce: int, replacing: str | None = None) -> SignedTx:
        """A 0-value self-transfer at `nonce`, signed by the key in use: two keys' no-ops at
        one nonce are two transactions (rbreak: the hash ignored the sender, and an A→B→A
        test replacing at equal nonces met the log's unique tx_hash)."""
        raw = json.dumps({"noop": True, "n": nonce, "s": self.sender})
        return SignedTx("0x" + keccak(text=raw).hex(), raw, nonce)

    def nonce(self) -> int:
        return self.s.nonce

    def nonce_of(self, address: str) -> int:
        """Any key's account nonce on the chain as it is now."""
        return self.s.nonces.get(address, 0)

    def pending_nonce(self) -> int:
        return self.s.nonce + sum(1 for raw in self.mempool.values() if self._signer(raw) == self.sender)

    def _signer(self, raw: str) -> str:
        return str(json.loads(raw).get("s", self.sender))  # bytes written by hand: the key in use's

    def broadcast(self, raw: str) -> None:
        tx_hash = "0x" + keccak(text=raw).hex()
        self.sent.append(tx_hash)
        if self.lose or tx_hash in self.receipts:
            return
        self.mempool[tx_hash] = raw
        if not self.hold:
            self.mine()

    def mine(self) -> None:
        for tx_hash, raw in sorted(self.mempool.items(), key=lambda kv: json.loads(kv[1])["n"]):
            d, signer = json.loads(raw), self._signer(raw)
            if d["n"] != self.s.nonces.get(signer, 0):
                continue  # nonce too low (dropped) or a gap, on its signer's account
            trial = copy.deepcopy(self.s)
            trial.key = signer  # executed as its signer's (`nonce` is that account's meanwhile)
            try:
                if not d.get("noop"):
                    self._execute(trial, Call(d["c"], d["f"], tuple(_decode(a) for a in d["a"])))
                ok = True
            except Revert:
                trial = copy.deepcopy(self.s)
                trial.key = signer
                ok = False
            trial.nonce += 1
            self.s = trial  # the key in use again
            self.block += 1
            self.mined += 1  # each block mined has its own hash: a same-height reorg's block differs
            self.receipts[tx_hash] = Receipt(ok, self.block, f"0x{self.mined:064x}")
        self.mempool.clear()

    def mine_blocks(self, count: int) -> None:
        """Blocks without the coordinator's transactions (others' traffic): its receipts sink deeper."""
        self.block += count

    def burn_nonce(self) -> None:
        """Another transaction of the coordinator's key takes the next nonce."""
        self.s.nonce += 1

    def receipt(self, tx_hash: str) -> Receipt | None:
        return self.receipts.get(tx_hash)

    def head(self) -> int:
        return self.block

    def wait(self, tx_hash: str, timeout: float) -> Receipt | None:
        return self.receipts.get(tx_hash)

    def sign_release(self, address: str, asset: str, amount: int, nonce: int, expiry: int) -> bytes:
        return keccak(text=f"{address}{asset}{amount}{nonce}{expiry}") + b"\x1b"
