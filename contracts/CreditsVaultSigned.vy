# pragma version ~=0.4.3
"""
@title CreditsVaultSigned
@license MIT
@notice Signed mode of the CreditsVault (issue 23): session keys and
        `settle_signed`'s per-entry checks. This code runs ONLY by
        delegatecall from the CreditsVault, on the vault's storage; called
        directly it reverts (it asks `self` for the vault's clock).
@dev The CreditsVault is at the EIP-170 code-size limit, so signed mode
     lives here. The storage below repeats the vault's, variable for
     variable in the same order (a test compares both layouts slot by
     slot); the vault's immutables are read from the vault (`self` under
     delegatecall). The vault's stubs do the rest: `settle_signed`'s
     checks before the entries (coordinator, pause, epoch, asset) and the
     value side after them (the lots' credits, burn, fee, shortfall) are
     the very code of `settle`. See the CreditsVault's @dev for the
     account slot's signed layout and the rules.
"""

from snekmate.utils import ecdsa
from snekmate.utils import math


interface IVaultClock:
    def genesis() -> uint256: view
    def epoch_length() -> uint256: view
    def paused_seconds() -> uint256: view
    def DOMAIN_SEPARATOR() -> bytes32: view


# ─── Constants (the vault's) ─────────────────────────────────────────────────

MAX_LANES: constant(uint256) = 64
MAX_SIGNED_ENTRIES: constant(uint256) = 512
MAX_SESSION_ID: constant(uint256) = 2**24 - 1
MAX_LOTS: constant(uint256) = 128
MAX_BALANCE: constant(uint256) = 2**96 - 1
MAX_CAP_TOTAL: constant(uint256) = 2**96 - 1
MAX_CAP_EXPIRY: constant(uint256) = 2**32 - 1
_CAP_SHIFT: constant(uint256) = 104
_EXPIRY_SHIFT: constant(uint256) = 224
_SESSION_SHIFT: constant(uint256) = 200
_SESSION_MASK: constant(uint256) = 2**24 - 1
_LAST_WINDOW_SHIFT: constant(uint256) = 224
_ENTRY_KEY_SHIFT: constant(uint256) = 80
_LANE_MASK: constant(uint256) = 2**16 - 1
_CEILING_SHIFT: constant(uint256) = 128
_AMOUNT_MASK: constant(uint256) = 2**128 - 1
_LANE_KEY_SHIFT: constant(uint256) = 96
_SETTLED_MASK: constant(uint256) = 2**96 - 1
# The account slot's lane tag (signed layout, bits 96..103): 0 no lane debited
# yet in the session, 1 + l only lane l, _SEVERAL_LANES more than one.
_LANE_TAG_SHIFT: constant(uint256) = 96
_LANE_TAG_MASK: constant(uint256) = 255
_SEVERAL_LANES: constant(uint256) = 255
# The session's hot word (read by every entry of a one-lane account): key | maximum << 160.
_KEY_MASK: constant(uint256) = 2**160 - 1
_MAXIMUM_SHIFT: constant(uint256) = 160
# The session's terms word: session | lanes << 24 | signed_from << 32 | last_window << 96 | expiry << 160.
_TERMS_LANES_SHIFT: constant(uint256) = 24
_TERMS_FROM_SHIFT: constant(uint256) = 32
_TERMS_LAST_SHIFT: constant(uint256) = 96
_TERMS_EXPIRY_SHIFT: constant(uint256) = 160
_WORD64: constant(uint256) = 2**64 - 1
_S_MASK: constant(uint256) = 2**255 - 1
# secp256k1's order ÷ 2: a larger s is the malleated twin of a valid signature.
_HALF_ORDER: constant(uint256) = 57_896_044_618_658_097_711_785_492_504_343_953_926_418_782_139_537_452_191_302_581_570_759_080_747_168
_ALLOWANCE_SHIFT: constant(uint256) = 192
_ALLOWANCE_MASK: constant(uint256) = 2**192 - 1

_PER_EPOCH_SHIFT: constant(uint256) = 200
_MANTISSA_BITS: constant(uint256) = 17
_MANTISSA_MASK: constant(uint256) = 2**17 - 1
_MAX_EXPONENT: constant(uint256) = 2**7 - 1
_FLOAT_MASK: constant(uint256) = 2**24 - 1

SPEND_CAP_TYPEHASH: constant(bytes32) = keccak256(
    "SpendCap(address account,address asset,uint256 per_epoch,uint256 total,uint256 expiry,uint256 nonce)"
)
SESSION_KEY_TYPEHASH: constant(bytes32) = keccak256(
    "SessionKey(address account,address asset,address key,uint256 lanes,uint256 maximum,uint256 expiry,uint256 nonce)"
)
VOUCHER_TYPEHASH: constant(bytes32) = keccak256(
    "Voucher(address account,address asset,uint256 session,uint256 lane,uint256 ceiling)"
)


# ─── Storage (the vault's, in its order) ─────────────────────────────────────

struct PendingExit:
    amount: uint256
    unlock_at: uint256
    paused_before: uint256
    market: address


struct Session:
    key: address
    session: uint256
    lanes: uint256
    maximum: uint256
    expiry: uint256
    signed_from: uint256
    last_window: uint256


struct SignedEntry:
    head: uint256
    amounts: uint256
    r: uint256
    vs: uint256


# @dev The vault's clock, read once per call.
struct Clock:
    genesis: uint256
    epoch_length: uint256
    window: uint256
    unpaused_window: uint256


# ownable's and ownable_2step's variables.
owner: address
pending_owner: address
thaw_period: uint256
exit_market: address
is_coordinator: HashMap[address, bool]
is_pauser: HashMap[address, bool]
asset_policy: HashMap[address, uint8]
deposits_open: HashMap[address, bool]
_accounts: HashMap[address, HashMap[address, uint256]]
pending_exits: HashMap[address, HashMap[address, PendingExit]]
claimable: HashMap[address, HashMap[address, uint256]]
reserve: HashMap[address, uint256]
shortfall: HashMap[address, uint256]
_exit_allowance: HashMap[address, HashMap[address, uint256]]
last_epoch: HashMap[address, uint256]
_settled_window: HashMap[address, uint256]
usage_roots: HashMap[address, HashMap[uint256, bytes32]]
release_nonce: HashMap[address, uint256]
cap_nonce: HashMap[address, HashMap[address, uint256]]
_pause_start: uint256
_pause_end: uint256
_paused_before: uint256
session_nonce: HashMap[address, HashMap[address, uint256]]
_session_keys: HashMap[address, HashMap[address, uint256]]
_session_terms: HashMap[address, HashMap[address, uint256]]
_lanes: HashMap[address, HashMap[uint256, uint256]]


# ─── Events (the vault's) ────────────────────────────────────────────────────

event SpendCapRegistered:
    account: indexed(address)
    asset: indexed(address)
    per_epoch: uint256
    total: uint256
    expiry: uint256
    nonce: uint256

event SpendCapRevoked:
    account: indexed(address)
    asset: indexed(address)
    expiry: uint256
    nonce: uint256

event SessionKeyRegistered:
    account: indexed(address)
    asset: indexed(address)
    key: address
    session: uint256
    lanes: uint256
    maximum: uint256
    expiry: uint256
    signed_from: uint256

event SessionKeyRevoked:
    account: indexed(address)
    asset: indexed(address)
    session: uint256
    ends_at: uint256

event ShortfallRecorded:
    epoch: indexed(uint256)
    asset: indexed(address)
    account: indexed(address)
    amount: uint256


# ─── Spend caps (capped mode) ────────────────────────────────────────────────


@external
def register_spend_cap(
    account: address,
    asset: address,
    per_epoch: uint256,
    total: uint256,
    expiry: uint256,
    nonce: uint256,
    signature: Bytes[65],
):
    """@dev See CreditsVault."""
    digest: bytes32 = keccak256(
        concat(
            x"1901",
            staticcall IVaultClock(self).DOMAIN_SEPARATOR(),
            keccak256(abi_encode(SPEND_CAP_TYPEHASH, account, asset, per_epoch, total, expiry, nonce)),
        )
    )
    assert ecdsa._recover_sig(digest, signature) == account, "vault: bad cap signature"
    self._set_cap(account, asset, per_epoch, total, expiry, nonce)


@external
def set_spend_cap(asset: address, per_epoch: uint256, total: uint256, expiry: uint256):
    """@dev See CreditsVault."""
    self._set_cap(msg.sender, asset, per_epoch, total, expiry, self.cap_nonce[msg.sender][asset])


@external
def revoke_spend_cap(asset: address):
    """@dev See CreditsVault."""
    slot: uint256 = self._accounts[asset][msg.sender]
    clock: Clock = self._clock()
    deadline: uint256 = self._window_end(clock, clock.window + 1)
    expiry: uint256 = slot >> _EXPIRY_SHIFT
    if expiry > deadline:
        expiry = deadline
        self._accounts[asset][msg.sender] = (slot & (2**_EXPIRY_SHIFT - 1)) | (deadline << _EXPIRY_SHIFT)
    nonce: uint256 = self.cap_nonce[msg.sender][asset]
    self.cap_nonce[msg.sender][asset] = nonce + 1
    log SpendCapRevoked(account=msg.sender, asset=asset, expiry=expiry, nonce=nonce)


# ─── Session keys (signed mode) ──────────────────────────────────────────────


# ─── Session keys ────────────────────────────────────────────────────────────


@external
def register_session_key(
    account: address,
    asset: address,
    key: address,
    lanes: uint256,
    maximum: uint256,
    expiry: uint256,
    nonce: uint256,
    signature: Bytes[65],
):
    """@dev See CreditsVault."""
    digest: bytes32 = keccak256(
        concat(
            x"1901",
            staticcall IVaultClock(self).DOMAIN_SEPARATOR(),
            keccak256(abi_encode(SESSION_KEY_TYPEHASH, account, asset, key, lanes, maximum, expiry, nonce)),
        )
    )
    assert ecdsa._recover_sig(digest, signature) == account, "vault: bad session key signature"
    self._register_session(account, asset, key, lanes, maximum, expiry, nonce)


@external
def set_session_key(asset: address, key: address, lanes: uint256, maximum: uint256, expiry: uint256):
    """@dev See CreditsVault."""
    self._register_session(msg.sender, asset, key, lanes, maximum, expiry, self.session_nonce[msg.sender][asset])


@external
def revoke_session_key(asset: address):
    """@dev See CreditsVault."""
    session: Session = self._session_of(asset, msg.sender)
    clock: Clock = self._clock()
    window: uint256 = clock.window
    assert session.key != empty(address) and window <= session.last_window, "vault: no active session"
    self.session_nonce[msg.sender][asset] += 1
    last_window: uint256 = max(window + 1, session.signed_from)
    if last_window < session.last_window:
        terms: uint256 = self._session_terms[asset][msg.sender]
        self._session_terms[asset][msg.sender] = (terms & ~(_WORD64 << _TERMS_LAST_SHIFT)) | (last_window << _TERMS_LAST_SHIFT)
        slot: uint256 = self._accounts[asset][msg.sender]
        if self._holds_session(slot, session.session, clock.genesis):
            self._accounts[asset][msg.sender] = (slot & (2**_LAST_WINDOW_SHIFT - 1)) | (last_window << _LAST_WINDOW_SHIFT)
    else:
        last_window = session.last_window
    log SessionKeyRevoked(account=msg.sender, asset=asset, session=session.session, ends_at=self._window_end(clock, last_window))


# ─── Leaving the vault ───────────────────────────────────────────────────────


# ─── Settlement ──────────────────────────────────────────────────────────────


@external
def settle_signed(
    epoch: uint256,
    asset: address,
    entries: DynArray[SignedEntry, MAX_SIGNED_ENTRIES],
    credits: DynArray[uint256, MAX_LOTS],
    burn: uint256,
    fee: uint256,
    usage_root: bytes32,
) -> (uint256, uint256):
    """
    @dev The per-entry part of CreditsVault.settle_signed (same calldata):
         checks and debits every entry, returns (requested, charged) for the
         vault's value side. `credits`, `burn`, `fee`, `usage_root` are the
         vault's business.
    """
    clock: Clock = self._clock()
    genesis: uint256 = clock.genesis
    window: uint256 = clock.window
    domain: bytes32 = staticcall IVaultClock(self).DOMAIN_SEPARATOR()
    requested: uint256 = 0
    charged: uint256 = 0
    previous: uint256 = 0
    for entry: SignedEntry in entries:
        key: uint256 = entry.head >> _ENTRY_KEY_SHIFT
        assert key > previous, "vault: entries not sorted by account and lane"
        previous = key
        account: address = convert(convert(key >> 16, uint160), address)
        lane: uint256 = key & _LANE_MASK
        ceiling: uint256 = entry.amounts >> _CEILING_SHIFT
        amount: uint256 = entry.amounts & _AMOUNT_MASK

        slot: uint256 = self._accounts[asset][account]
        last_window: uint256 = slot >> _LAST_WINDOW_SHIFT
        if last_window == 0 or last_window >= genesis or window > last_window:
            # Not (yet) in the signed layout for a session open to settlement.
            slot = self._open_session(account, asset, slot, clock)
        session: uint256 = (slot >> _SESSION_SHIFT) & _SESSION_MASK

        # EIP-2098 (r, vs); low s only (EIP-2), so no signature has a malleated twin.
        s: uint256 = entry.vs & _S_MASK
        assert s <= _HALF_ORDER, "vault: high-s signature"
        signer: address = ecrecover(
            keccak256(
                concat(
                    x"1901",
                    domain,
                    keccak256(abi_encode(VOUCHER_TYPEHASH, account, asset, session, lane, ceiling)),
                )
            ),
            unsafe_add(entry.vs >> 255, 27),
            entry.r,
            s,
        )
        # While an account has debited one lane of the session, that lane's
        # total is the session's (maximum − maximum left): the entry needs its
        # account slot and the session's hot word (key, maximum), read only.
        # From its second lane on, each lane has its own word (key, settled).
        maximum_left: uint256 = (slot >> _CAP_SHIFT) & MAX_CAP_TOTAL
        tag: uint256 = (slot >> _LANE_TAG_SHIFT) & _LANE_TAG_MASK
        several: bool = tag == _SEVERAL_LANES
        if not several:
            hot: uint256 = self._session_keys[asset][account]
            # (ecrecover's zero address for an invalid signature never equals a key.)
            assert convert(signer, uint256) == hot & _KEY_MASK, "vault: voucher not signed by the session key"
            if tag == unsafe_add(lane, 1):
                # settled = maximum − maximum left ≤ maximum < 2**96, amount < 2**128: exact.
                assert unsafe_add(unsafe_sub(hot >> _MAXIMUM_SHIFT, maximum_left), amount) <= ceiling, "vault: debit above the voucher"
            elif tag == 0:
                # The session's first debit of the account.
                assert lane < (self._session_terms[asset][account] >> _TERMS_LANES_SHIFT) & 255, "vault: lane out of range"
                assert amount <= ceiling, "vault: debit above the voucher"
                slot = slot | (unsafe_add(lane, 1) << _LANE_TAG_SHIFT)
            else:
                # A second lane: the first one's total moves to its own word.
                first_id: uint256 = ((key >> 16) << 96) | (session << 16) | unsafe_sub(tag, 1)
                self._lanes[asset][first_id] = ((hot & _KEY_MASK) << _LANE_KEY_SHIFT) | unsafe_sub(hot >> _MAXIMUM_SHIFT, maximum_left)
                slot = slot | (_SEVERAL_LANES << _LANE_TAG_SHIFT)
                several = True
        if several:
            # A lane's own word: key << 96 | settled, keyed account << 96 | session << 16 | lane.
            lane_id: uint256 = ((key >> 16) << 96) | (session << 16) | lane
            lane_word: uint256 = self._lanes[asset][lane_id]
            if lane_word == 0:
                # The lane's first debit in the session.
                self._check_first_lane(account, asset, lane, signer)
                lane_word = convert(signer, uint256) << _LANE_KEY_SHIFT
            else:
                assert lane_word >> _LANE_KEY_SHIFT == convert(signer, uint256), "vault: voucher not signed by the session key"
            assert unsafe_add(lane_word & _SETTLED_MASK, amount) <= ceiling, "vault: debit above the voucher"
            # settled ≤ Σ of the session's debits ≤ its maximum < 2**96: no carry into the key.
            self._lanes[asset][lane_id] = unsafe_add(lane_word, amount)
        assert amount <= maximum_left, "vault: debit above the session maximum"

        take: uint256 = min(amount, slot & MAX_BALANCE)
        self._accounts[asset][account] = unsafe_sub(slot, unsafe_add(take, amount << _CAP_SHIFT))
        if take < amount:
            self._use_allowance(account, asset, unsafe_sub(amount, take), clock.unpaused_window)
            log ShortfallRecorded(epoch=epoch, asset=asset, account=account, amount=unsafe_sub(amount, take))
        requested = unsafe_add(requested, amount)
        charged = unsafe_add(charged, take)

    return requested, charged


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
@view
def _clock() -> Clock:
    genesis: uint256 = staticcall IVaultClock(self).genesis()
    epoch_length: uint256 = staticcall IVaultClock(self).epoch_length()
    elapsed: uint256 = block.timestamp - genesis
    return Clock(
        genesis=genesis,
        epoch_length=epoch_length,
        window=elapsed // epoch_length,
        unpaused_window=(elapsed - staticcall IVaultClock(self).paused_seconds()) // epoch_length,
    )


@internal
def _set_cap(account: address, asset: address, per_epoch: uint256, total: uint256, expiry: uint256, nonce: uint256):
    assert self.asset_policy[asset] != 0, "vault: asset not listed"
    assert nonce == self.cap_nonce[account][asset], "vault: bad nonce"
    assert (
        self._session_keys[asset][account] == 0
        or self._clock().window > self._session_of(asset, account).last_window
    ), "vault: account in signed mode"
    assert per_epoch > 0 and total > 0, "vault: empty cap"
    assert per_epoch < max_value(uint256) or total < max_value(uint256), "vault: cap sets no limit"
    assert expiry > block.timestamp, "vault: cap expired"
    encoded: uint256 = self._encode(per_epoch)
    new_per_epoch: uint256 = self._decode(encoded)
    new_total: uint256 = min(total, MAX_CAP_TOTAL)
    new_expiry: uint256 = min(expiry, MAX_CAP_EXPIRY)

    slot: uint256 = self._accounts[asset][account]
    old_expiry: uint256 = slot >> _EXPIRY_SHIFT
    if block.timestamp <= old_expiry:
        # An active cap: only widen it, so usage already served under it stays payable.
        assert (
            new_per_epoch >= self._decode((slot >> _PER_EPOCH_SHIFT) & _FLOAT_MASK)
            and new_total >= (slot >> _CAP_SHIFT) & MAX_CAP_TOTAL
            and new_expiry >= old_expiry
        ), "vault: new cap lowers the active cap"

    self.cap_nonce[account][asset] = nonce + 1
    self._accounts[asset][account] = (
        (slot & MAX_BALANCE)
        | (new_total << _CAP_SHIFT)
        | (encoded << _PER_EPOCH_SHIFT)
        | (new_expiry << _EXPIRY_SHIFT)
    )
    log SpendCapRegistered(
        account=account, asset=asset, per_epoch=new_per_epoch, total=new_total, expiry=new_expiry, nonce=nonce
    )


@internal
@pure
def _encode(x: uint256) -> uint256:
    # Largest m × 2**e ≤ x with m < 2**17 and e ≤ 127, as e << 17 | m (rounded down).
    if x <= _MANTISSA_MASK:
        return x
    exponent: uint256 = math._log2(x, False) - (_MANTISSA_BITS - 1)
    if exponent > _MAX_EXPONENT:
        return (_MAX_EXPONENT << _MANTISSA_BITS) | _MANTISSA_MASK
    return (exponent << _MANTISSA_BITS) | (x >> exponent)


@internal
@pure
def _decode(encoded: uint256) -> uint256:
    return (encoded & _MANTISSA_MASK) << (encoded >> _MANTISSA_BITS)


@internal
@pure
def _window_end(clock: Clock, window: uint256) -> uint256:
    return clock.genesis + (window + 1) * clock.epoch_length - 1


@internal
def _register_session(
    account: address, asset: address, key: address, lanes: uint256, maximum: uint256, expiry: uint256, nonce: uint256
):
    assert self.asset_policy[asset] != 0, "vault: asset not listed"
    assert nonce == self.session_nonce[account][asset], "vault: bad nonce"
    assert nonce <= MAX_SESSION_ID, "vault: session ids used up"
    assert key != empty(address), "vault: zero address"
    assert lanes >= 1 and lanes <= MAX_LANES, "vault: lanes out of range"
    assert maximum > 0, "vault: empty session"
    assert expiry > block.timestamp, "vault: session expired"
    clock: Clock = self._clock()
    window: uint256 = clock.window
    previous: Session = self._session_of(asset, account)
    assert previous.key == empty(address) or window > previous.last_window, "vault: session not ended"

    signed_from: uint256 = window + 1
    slot: uint256 = self._accounts[asset][account]
    if block.timestamp <= slot >> _EXPIRY_SHIFT:
        # An active spend cap (a signed-layout slot never counts: its top
        # field is a window index, below any time now): `settle` may still
        # use it for the usage of this window, until the close of the next.
        deadline: uint256 = self._window_end(clock, window + 1)
        if slot >> _EXPIRY_SHIFT > deadline:
            self._accounts[asset][account] = (slot & (2**_EXPIRY_SHIFT - 1)) | (deadline << _EXPIRY_SHIFT)
        signed_from = window + 2
    # The window after the one the session expires in, stored as the slot's
    # top field, which must stay below any timestamp (< genesis).
    last_window: uint256 = max((min(expiry, MAX_CAP_EXPIRY) - clock.genesis) // clock.epoch_length + 1, signed_from)
    assert last_window < clock.genesis, "vault: session expiry out of range"

    self.session_nonce[account][asset] = nonce + 1
    bounded: uint256 = min(maximum, MAX_CAP_TOTAL)
    self._session_keys[asset][account] = convert(key, uint256) | (bounded << _MAXIMUM_SHIFT)
    self._session_terms[asset][account] = (
        nonce
        | (lanes << _TERMS_LANES_SHIFT)
        | (signed_from << _TERMS_FROM_SHIFT)
        | (last_window << _TERMS_LAST_SHIFT)
        | (min(expiry, _WORD64) << _TERMS_EXPIRY_SHIFT)
    )
    log SessionKeyRegistered(
        account=account,
        asset=asset,
        key=key,
        session=nonce,
        lanes=lanes,
        maximum=bounded,
        expiry=expiry,
        signed_from=signed_from,
    )


@internal
@view
def _open_session(account: address, asset: address, slot: uint256, clock: Clock) -> uint256:
    # The account slot in the signed layout of the registered session, which
    # must accept settlement in `window`; reverts otherwise. A slot already
    # in this session's layout is kept (its maximum left is never reset).
    registered: Session = self._session_of(asset, account)
    assert registered.key != empty(address), "vault: account not in signed mode"
    assert clock.window >= registered.signed_from, "vault: signed mode not started"
    last_window: uint256 = registered.last_window
    assert clock.window <= last_window, "vault: session ended"
    session: uint256 = registered.session
    if self._holds_session(slot, session, clock.genesis):
        return slot
    return (
        (slot & MAX_BALANCE)
        | (registered.maximum << _CAP_SHIFT)
        | (session << _SESSION_SHIFT)
        | (last_window << _LAST_WINDOW_SHIFT)
    )


@internal
@view
def _session_of(asset: address, account: address) -> Session:
    # The session as two packed words: the hot word key | maximum << 160 (what
    # a one-lane account's entry reads), and the terms (see _TERMS_*).
    keys: uint256 = self._session_keys[asset][account]
    terms: uint256 = self._session_terms[asset][account]
    return Session(
        key=convert(convert(keys & _KEY_MASK, uint160), address),
        session=terms & _SESSION_MASK,
        lanes=(terms >> _TERMS_LANES_SHIFT) & 255,
        maximum=keys >> _MAXIMUM_SHIFT,
        expiry=(terms >> _TERMS_EXPIRY_SHIFT) & _WORD64,
        signed_from=(terms >> _TERMS_FROM_SHIFT) & _WORD64,
        last_window=(terms >> _TERMS_LAST_SHIFT) & _WORD64,
    )


@internal
@pure
def _holds_session(slot: uint256, session: uint256, genesis: uint256) -> bool:
    # Whether an account slot is in the signed layout of `session`: its top
    # field is then a window index (1 .. genesis − 1), never a cap expiry.
    last_window: uint256 = slot >> _LAST_WINDOW_SHIFT
    return (
        last_window != 0
        and last_window < genesis
        and (slot >> _SESSION_SHIFT) & _SESSION_MASK == session
    )


@internal
@view
def _check_first_lane(account: address, asset: address, lane: uint256, signer: address):
    # A lane's first debit in a session: signed by the session's key, a lane it has.
    assert convert(signer, uint256) == self._session_keys[asset][account] & _KEY_MASK, "vault: voucher not signed by the session key"
    assert lane < (self._session_terms[asset][account] >> _TERMS_LANES_SHIFT) & 255, "vault: lane out of range"


@internal
def _use_allowance(account: address, asset: address, uncovered: uint256, window: uint256):
    # Books `uncovered` against the account's exit allowance, or reverts.
    word: uint256 = self._exit_allowance[asset][account]
    left: uint256 = word & _ALLOWANCE_MASK
    assert (word >> _ALLOWANCE_SHIFT) + 1 >= window and uncovered <= left, "vault: uncovered debit"
    self._exit_allowance[asset][account] = word - uncovered
