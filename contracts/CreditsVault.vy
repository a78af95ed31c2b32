# pragma version ~=0.4.3
"""
@title CreditsVault
@license MIT
@notice Holds buyers' prepaid assets (USDC, provider tokens such as CLD) for
        metered AI usage and settles that usage in batches, one per
        (epoch, asset), posted by the coordinator.

        - Assets are listed by the admin with a policy: *withdrawable* (USDC,
          credit tokens) or *spend-only* (provider tokens: they are spent or
          sold for USDC into the seller's vault balance, never withdrawn as
          tokens — except as the trustless exit's fallback).
        - Leaving the vault (withdraw, or sell a spend-only token for USDC) is
          either *instant*, with an EIP-712 release signed by a coordinator,
          or *trustless*: `request_exit` → thaw (≥ 2 × `epoch_length`) →
          `complete_exit`, which nobody but the user can start or stop. The
          exit market is fixed in the pending exit at request; after the thaw
          the user sells through it or, for a spend-only token, takes the
          token itself (a plain ERC-20 transfer), so no role can keep a buyer
          in. Thawing funds stay debitable by settlement until the exit
          completes, so a user cannot outrun metering.
        - A buyer authorizes spending with an EIP-712 `SpendCap` (a maximum per
          epoch and/or in total, an expiry). Settlement never debits beyond
          the buyer's cap; a debit above the cap reverts the batch.
        - Settlement draws the escrow's lots in the same call: a provider
          token's burn draws its tokenized lots (nearest expiry first, the
          escrow's choice); a USDC credit names a listed lot, draws it at list
          price and pays its seller the lot's rate of that (computed by the
          escrow). Only this contract can draw a lot.
@dev Roles: admin (snekmate `ownable_2step`; the Timelock after deploy),
     coordinator (posts settlements, co-signs instant releases), pauser
     (stops deposits, instant releases and settlement for at most
     MAX_PAUSE; never trustless exits or claims). Each role has separate
     grant and revoke functions: the Timelock's guardian may call a revoke
     at once, grants wait for the Timelock's delay.

     Units: every amount is in the asset's smallest unit.

     Epoch clock: `genesis` and `epoch_length` (immutable) cut time into
     windows. Each asset's settlements are numbered 1, 2, 3, … (consecutive)
     and at most one is posted per window, so a per-epoch cap bounds what can
     be taken per `epoch_length` of wall-clock time, however fast the
     coordinator posts. The batch posted in window w settles usage of window
     w − 1; the thaw (≥ 2 windows) gives the coordinator one whole window to
     settle a user's usage before that user's trustless exit can complete.

     Pauses: a pause ends by itself after MAX_PAUSE (≤ the shortest thaw)
     and cannot start again until two windows after it ended, so settlement
     always gets two windows between pauses. A trustless exit's thaw counts
     only unpaused time (an exit whose thaw overlapped a pause unlocks later
     by the paused time), but never more than MAX_PAUSE later: an exit
     requested at t can always complete from t + thaw + MAX_PAUSE on.

     Hot path: each (asset, account) has ONE storage slot, read once and
     written once per settlement entry:

         bits   0..95   balance       uint96   (≤ MAX_BALANCE: 2**96 − 1 smallest
                                               units, 79 billion tokens of 18 decimals)
         bits  96..103  zero          (signed mode's lane tag, below)
         bits 104..199  cap left      uint96   remaining total of the spend cap
         bits 200..223  per epoch     float24  17-bit mantissa m, 7-bit exponent e:
                                               m × 2**e, rounded DOWN from the signed value
         bits 224..255  cap expiry    uint32   unix seconds (clamped down to 2**32 − 1)

     Every clamp rounds the cap down, never up, so the vault never lets the
     coordinator take more than the user signed. A debit entry of `settle` is
     one word: account << 96 | amount (uint96); entries must be sorted by
     strictly increasing account, which proves them distinct without storage,
     so each account is debited at most once per epoch and the per-epoch
     check is a single comparison. (No per-account "last epoch" is needed:
     distinctness comes from the sort, pacing from the epoch clock.)

     Spend-cap changes: a first cap applies at once. While a cap is active it
     can only be widened (a lower limit would let a user dodge usage already
     served); `revoke_spend_cap` ends it at the close of the next window, so
     the settlement of the epoch in progress can still be posted.

     Shortfall: a debit within the cap but above the balance is *uncovered*.
     It is accepted only for an account whose balance left by a trustless
     exit completed in the current or previous window (counted in unpaused
     time), and only up to what that exit took: the usage it served in the
     last windows before leaving, which the coordinator could not settle
     earlier. The cut is logged (ShortfallRecorded), summed in
     `shortfall[asset]` and paid from the batch's fee, then the protocol
     reserve, so sellers and lot draw-downs are paid in full and the vault
     always holds exactly balances + claimables + reserve. Any other
     uncovered debit (an empty account, an exit too old, more than it took,
     an instant exit the coordinator itself co-signed) reverts the batch.

     Signed mode (issue 23): a wallet registers a session key (EIP-712
     `SessionKey`: key, lanes, maximum, expiry; nonce = session id); the key
     signs, per request, a `Voucher` "lane L of account A in session S may
     be charged at most C in total". `settle_signed` debits each lane at
     most up to its highest voucher and the session at most its maximum, so
     the coordinator can take no more than the buyer's key signed for; any
     number of batches per window, numbered in the same sequence as
     `settle` (`last_epoch`). Registered in window w, `settle` still debits
     the account under an active cap until the close of w + 1 and never
     after; `settle_signed` accepts it from `signed_from` (w + 1, or w + 2
     if a cap was active). A session ends at expiry or at the close of the
     window after `revoke_session_key`; its vouchers settle until the close
     of the window after it ended; the next session may be registered from
     then on (lanes start at 0 again). In signed mode the account slot is

         bits   0..95   balance       uint96
         bits  96..103  lane tag      uint8    0: no lane debited yet this session;
                                               1 + l: lane l only; 255: several lanes
         bits 104..199  maximum left  uint96   what the session may still take
         bits 200..223  session id    uint24
         bits 224..255  last window   uint32   the last window its vouchers settle in

     While the session has debited one lane, that lane's total is the
     session's (maximum − maximum left): its entry reads and writes the
     account slot and reads the session's hot word (key | maximum << 160),
     one cold write and one cold read. From an account's second lane in a
     session on, each lane has a slot, key << 96 | settled (the first lane's
     total moves there then), read and written with the account slot. The last
     window is a window index (< genesis), never a timestamp, so `settle`'s
     expiry check refuses a signed-mode slot at no extra gas. Spend caps,
     session keys and signed entries run from `signed_module` (a
     CreditsVaultSigned, immutable) by delegatecall on this storage: this
     contract alone would pass EIP-170's 24,576-byte code limit.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.auth import ownable_2step
from snekmate.utils import ecdsa
from snekmate.utils import eip712_domain_separator as eip712
from snekmate.utils import math

from .interfaces import IComputeToken
from .interfaces import ICreditEscrow

initializes: ownable
initializes: ownable_2step[ownable := ownable]
initializes: eip712

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
    eip712.eip712Domain,
)


# ─── Interfaces ──────────────────────────────────────────────────────────────

# @dev The market that turns a spend-only token into USDC on exit (the DEX
#      router or an adapter in front of it). It must pull exactly `amount` of
#      `token` from the caller and send at least `min_out` USDC to
#      `recipient`; the vault checks both.
interface IExitMarket:
    def sell(token: address, amount: uint256, min_out: uint256, recipient: address) -> uint256: nonpayable


# ─── Constants ───────────────────────────────────────────────────────────────

POLICY_WITHDRAWABLE: public(constant(uint8)) = 1
POLICY_SPEND_ONLY: public(constant(uint8)) = 2

# @notice Longest epoch: payouts to sellers are claims, so epochs stay short.
MAX_EPOCH_LENGTH: public(constant(uint256)) = 3_600
# @notice Longest thaw the admin may set, so exits can never be stalled.
MAX_THAW_PERIOD: public(constant(uint256)) = 86_400

# @notice Entries per settlement; 1,024 × ~6k gas stays far below a 30M block.
MAX_ENTRIES: public(constant(uint256)) = 1_024
# @notice Credits (listed lots) per settlement.
MAX_LOTS: public(constant(uint256)) = 128

# @notice Bounds of the packed slot (see the contract @dev).
MAX_BALANCE: public(constant(uint256)) = 2**96 - 1
MAX_CAP_TOTAL: public(constant(uint256)) = 2**96 - 1
MAX_CAP_EXPIRY: public(constant(uint256)) = 2**32 - 1

_CAP_SHIFT: constant(uint256) = 104
_PER_EPOCH_SHIFT: constant(uint256) = 200
_EXPIRY_SHIFT: constant(uint256) = 224
_MANTISSA_BITS: constant(uint256) = 17
_MANTISSA_MASK: constant(uint256) = 2**17 - 1
_MAX_EXPONENT: constant(uint256) = 2**7 - 1
_FLOAT_MASK: constant(uint256) = 2**24 - 1
# @dev Subtracting `x * _DEBIT_UNIT` takes x from the balance and the cap at once.
_DEBIT_UNIT: constant(uint256) = 1 + 2**104

# @dev A debit word: account << 96 | amount; a credit word: lot_id << 160 | amount.
_DEBIT_AMOUNT_MASK: constant(uint256) = 2**96 - 1
_LOT_AMOUNT_MASK: constant(uint256) = 2**160 - 1

# @dev An exit allowance word: unpaused window of the exit << 192 | amount left.
_ALLOWANCE_SHIFT: constant(uint256) = 192
_ALLOWANCE_MASK: constant(uint256) = 2**192 - 1

# @notice EIP-712 type of a buyer's spending authorization. `per_epoch` or
#         `total` may be max_value(uint256) ("no limit"), not both.
SPEND_CAP_TYPEHASH: public(constant(bytes32)) = keccak256(
    "SpendCap(address account,address asset,uint256 per_epoch,uint256 total,uint256 expiry,uint256 nonce)"
)
# @notice Signed mode: lanes a session may have (vouchers name lanes 0 .. lanes − 1).
MAX_LANES: public(constant(uint256)) = 64
# @notice Signed mode: entries per `settle_signed` batch. 512 entries of 128
#         bytes keep a batch's calldata far below the 128 KiB a node relays.
MAX_SIGNED_ENTRIES: public(constant(uint256)) = 512

# @dev Signed mode's use of the account slot (see the contract @dev).
_SESSION_SHIFT: constant(uint256) = 200
_SESSION_MASK: constant(uint256) = 2**24 - 1
_LAST_WINDOW_SHIFT: constant(uint256) = 224
# @dev A signed entry's head: account << 96 | lane << 80; its sort key is head >> 80.
_ENTRY_KEY_SHIFT: constant(uint256) = 80
_LANE_MASK: constant(uint256) = 2**16 - 1
# @dev A signed entry's amounts: ceiling << 128 | amount.
_CEILING_SHIFT: constant(uint256) = 128
_AMOUNT_MASK: constant(uint256) = 2**128 - 1
# @dev A lane word: session key << 96 | settled (uint96).
_LANE_KEY_SHIFT: constant(uint256) = 96
_SETTLED_MASK: constant(uint256) = 2**96 - 1
# @dev The account slot's lane tag (signed layout): 1 + lane while one lane is debited.
_LANE_TAG_SHIFT: constant(uint256) = 96
_SEVERAL_LANES: constant(uint256) = 255
# @dev A session's hot word: key | maximum << 160; its terms: session | lanes << 24 |
#      signed_from << 32 | last_window << 96 | expiry << 160.
_KEY_MASK: constant(uint256) = 2**160 - 1
_MAXIMUM_SHIFT: constant(uint256) = 160
_WORD64: constant(uint256) = 2**64 - 1

# @notice EIP-712 type of a coordinator's statement that `amount` is free of
#         unsettled usage and may leave the vault at once.
RELEASE_TYPEHASH: public(constant(bytes32)) = keccak256(
    "Release(address account,address asset,uint256 amount,uint256 nonce,uint256 expiry)"
)


# ─── Storage ─────────────────────────────────────────────────────────────────

struct PendingExit:
    amount: uint256
    # Unix time the thaw ends if nothing is paused meanwhile.
    unlock_at: uint256
    # `paused_seconds()` at request: the thaw counts only unpaused time after it.
    paused_before: uint256
    # The exit market at request (spend-only assets); zero: only taking the token.
    market: address


# @dev A session key as registered (signed mode). `last_window` is the last
#      epoch window in which the session's vouchers may be settled.
struct Session:
    key: address
    session: uint256
    lanes: uint256
    maximum: uint256
    expiry: uint256
    signed_from: uint256
    last_window: uint256


# @notice One `settle_signed` entry (128 bytes of calldata):
#         head = account << 96 | lane << 80, amounts = ceiling << 128 | amount,
#         and the voucher's EIP-2098 compact signature (r, vs).
struct SignedEntry:
    head: uint256
    amounts: uint256
    r: uint256
    vs: uint256


# @notice USDC: always listed withdrawable; what spend-only exits are paid in
#         and the only asset whose settlements credit listed lots.
usdc: public(immutable(address))
# @notice The CreditEscrow whose lots settlements credit and draw down.
escrow: public(immutable(address))
# @notice Seconds per epoch window (1 .. MAX_EPOCH_LENGTH).
epoch_length: public(immutable(uint256))
# @notice Start of window 0 (the deployment's timestamp).
genesis: public(immutable(uint256))
# @notice Longest a pause lasts; also the most a trustless exit is delayed
#         by pauses (1 .. MAX_THAW_PERIOD, and never above the thaw).
MAX_PAUSE: public(immutable(uint256))

# @notice The CreditsVaultSigned whose code runs spend caps, session keys and
#         signed settlement's entries on this vault's storage (delegatecall);
#         fixed at deployment: replacing it would be replacing the vault.
signed_module: public(immutable(address))

# @notice Seconds of unpaused time between `request_exit` and `complete_exit`
#         (≥ 2 × epoch_length and ≥ MAX_PAUSE).
thaw_period: public(uint256)
# @notice Sells spend-only tokens for USDC on exit; unset until the DEX exists.
exit_market: public(address)

is_coordinator: public(HashMap[address, bool])
is_pauser: public(HashMap[address, bool])

# @notice 0 unlisted, POLICY_WITHDRAWABLE or POLICY_SPEND_ONLY; never changes once set.
asset_policy: public(HashMap[address, uint8])
# @notice Whether deposits of a listed asset are open (delisting only closes deposits).
deposits_open: public(HashMap[address, bool])

# @dev asset → account → packed slot (see the contract @dev).
_accounts: HashMap[address, HashMap[address, uint256]]

# @notice account → asset → the trustless exit being thawed.
pending_exits: public(HashMap[address, HashMap[address, PendingExit]])
# @notice account → asset → USDC (or credit asset) earned by a seller, claimable at any time.
claimable: public(HashMap[address, HashMap[address, uint256]])
# @notice asset → the protocol's reserve: fees accrue to it, shortfalls are paid from it.
reserve: public(HashMap[address, uint256])
# @notice asset → cumulative usage the protocol could not collect from users.
shortfall: public(HashMap[address, uint256])
# @dev asset → account → the last trustless exit's allowance (see _ALLOWANCE_SHIFT).
_exit_allowance: HashMap[address, HashMap[address, uint256]]

# @notice asset → the last settled epoch (epochs start at 1).
last_epoch: public(HashMap[address, uint256])
# @dev asset → 1 + the window of the last settlement (0: never settled).
_settled_window: HashMap[address, uint256]
# @notice asset → epoch → Merkle root of the usage records behind that settlement.
usage_roots: public(HashMap[address, HashMap[uint256, bytes32]])

# @notice account → next nonce of an instant release.
release_nonce: public(HashMap[address, uint256])
# @notice account → asset → next nonce of a spend cap.
cap_nonce: public(HashMap[address, HashMap[address, uint256]])

# @dev The current or last pause: [start, end); end is the scheduled end
#      (start + MAX_PAUSE) or the moment it was lifted. Zero: never paused.
_pause_start: uint256
_pause_end: uint256
# @dev Seconds paused before the current or last pause.
_paused_before: uint256

# Signed mode. CreditsVaultSigned runs by delegatecall on this storage and
# declares every variable above and these in the same order (a test compares
# the two layouts slot by slot): add new variables only after these.
# @notice account → asset → the nonce the next SessionKey must carry (= its session id).
session_nonce: public(HashMap[address, HashMap[address, uint256]])
# @dev asset → account → the last registered session key, packed in two words (_session_of).
_session_keys: HashMap[address, HashMap[address, uint256]]
_session_terms: HashMap[address, HashMap[address, uint256]]
# @dev asset → account << 96 | session << 16 | lane → the lane word (see _LANE_KEY_SHIFT).
_lanes: HashMap[address, HashMap[uint256, uint256]]


# ─── Events ──────────────────────────────────────────────────────────────────

event Sold:
    account: indexed(address)
    asset: indexed(address)
    amount: uint256
    proceeds: uint256


event Deposited:
    account: indexed(address)
    asset: indexed(address)
    payer: indexed(address)
    amount: uint256
    balance: uint256

event ExitRequested:
    account: indexed(address)
    asset: indexed(address)
    amount: uint256
    unlock_at: uint256
    market: address

event ExitCancelled:
    account: indexed(address)
    asset: indexed(address)
    amount: uint256

event ExitCompleted:
    account: indexed(address)
    asset: indexed(address)
    requested: uint256
    amount: uint256
    proceeds: uint256
    sold: bool

event ExitReleased:
    account: indexed(address)
    asset: indexed(address)
    amount: uint256
    proceeds: uint256
    nonce: uint256

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

event EpochSettled:
    epoch: indexed(uint256)
    asset: indexed(address)
    usage_root: bytes32
    total: uint256
    entries: uint256

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

event SignedBatchSettled:
    asset: indexed(address)
    batch: indexed(uint256)
    usage_root: bytes32
    total: uint256
    entries: uint256

event SellerCredited:
    epoch: indexed(uint256)
    asset: indexed(address)
    seller: indexed(address)
    lot_id: uint256
    amount: uint256
    consumed: uint256

event ShortfallRecorded:
    epoch: indexed(uint256)
    asset: indexed(address)
    account: indexed(address)
    amount: uint256

event Claimed:
    account: indexed(address)
    asset: indexed(address)
    amount: uint256

event ReserveFunded:
    asset: indexed(address)
    payer: indexed(address)
    amount: uint256

event ReserveWithdrawn:
    asset: indexed(address)
    recipient: indexed(address)
    amount: uint256

event AssetListed:
    asset: indexed(address)
    policy: uint8

event AssetDelisted:
    asset: indexed(address)

event RoleCoordinatorChanged:
    account: indexed(address)
    status: bool

event RolePauserChanged:
    account: indexed(address)
    status: bool

event Paused:
    account: indexed(address)
    until: uint256

event Unpaused:
    account: indexed(address)

event ThawPeriodChanged:
    old_period: uint256
    new_period: uint256

event ExitMarketChanged:
    old_market: indexed(address)
    new_market: indexed(address)


@deploy
def __init__(
    usdc_: address, escrow_: address, epoch_length_: uint256, max_pause_: uint256, signed_module_: address
):
    """
    @notice Deploys the vault; the deployer becomes the admin. USDC is listed
            withdrawable; the thaw starts at max(2 × `epoch_length_`, `max_pause_`).
    @param usdc_ The USDC token.
    @param escrow_ The CreditEscrow; it must name this vault (`set_vault`).
    @param epoch_length_ Seconds per epoch, 1 .. MAX_EPOCH_LENGTH (600 in
           production, a few seconds on a demo chain).
    @param max_pause_ Longest pause, 1 .. MAX_THAW_PERIOD seconds.
    @param signed_module_ A CreditsVaultSigned: the code of spend caps,
           session keys and signed settlement, run on this vault's storage.
    """
    assert usdc_ != empty(address), "vault: zero address"
    assert escrow_ != empty(address), "vault: zero address"
    assert signed_module_.is_contract, "vault: signed module is not a contract"
    assert epoch_length_ > 0 and epoch_length_ <= MAX_EPOCH_LENGTH, "vault: epoch length out of range"
    assert max_pause_ > 0 and max_pause_ <= MAX_THAW_PERIOD, "vault: max pause out of range"
    ownable.__init__()
    ownable_2step.__init__()
    eip712.__init__("PROMPTEX CreditsVault", "1")
    usdc = usdc_
    escrow = escrow_
    epoch_length = epoch_length_
    genesis = block.timestamp
    MAX_PAUSE = max_pause_
    signed_module = signed_module_
    self.thaw_period = max(2 * epoch_length_, max_pause_)
    self._list(usdc_, POLICY_WITHDRAWABLE)


# ─── Deposits ────────────────────────────────────────────────────────────────


@external
@nonreentrant
def deposit(asset: address, amount: uint256):
    """
    @notice Deposits `amount` of a listed asset into the caller's balance.
    @dev The caller must have approved `amount` to the vault. Tokens that
         deliver less than `amount` (fee on transfer) are refused.
    @param asset A listed asset whose deposits are open.
    @param amount Smallest units; non-zero.
    """
    self._deposit(msg.sender, msg.sender, asset, amount)


@external
@nonreentrant
def deposit_for(account: address, asset: address, amount: uint256):
    """
    @notice Deposits `amount` of a listed asset, paid by the caller, into
            `account`'s balance (an org admin funding an org account).
    @param account The beneficiary; not the zero address.
    @param asset A listed asset whose deposits are open.
    @param amount Smallest units; non-zero.
    """
    assert account != empty(address), "vault: zero address"
    self._deposit(account, msg.sender, asset, amount)


@external
@nonreentrant
def deposit_with_permit(asset: address, amount: uint256, deadline: uint256, v: uint8, r: bytes32, s: bytes32):
    """
    @notice Approves the vault with an EIP-2612 permit and deposits in one call.
    @dev A permit that fails (for example one already used by a front-runner)
         is ignored when the allowance is already enough, so a copied permit
         cannot grief the deposit.
    @param asset A listed EIP-2612 asset whose deposits are open.
    @param amount Smallest units; non-zero; also the permit's value.
    @param deadline The permit's deadline.
    @param v The permit signature's v.
    @param r The permit signature's r.
    @param s The permit signature's s.
    """
    assert self.deposits_open[asset], "vault: asset not listed"
    # The outcome is ignored on purpose: the allowance check below decides.
    permitted: bool = raw_call(
        asset,
        abi_encode(
            msg.sender, self, amount, deadline, v, r, s,
            method_id=method_id("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"),
        ),
        revert_on_failure=False,
    )
    assert staticcall IERC20(asset).allowance(msg.sender, self) >= amount, "vault: permit failed"
    self._deposit(msg.sender, msg.sender, asset, amount)


# ─── Spend caps ──────────────────────────────────────────────────────────────


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
    """
    @notice Registers a spend cap signed by `account` (EIP-712 `SpendCap`).
            Anyone may submit it: the user, or the coordinator gaslessly
            before the settlement that uses it.
    @dev The cap applies at once. While a cap is active, a new one must not
         lower any of its limits (per epoch, total left, expiry); lowering is
         `revoke_spend_cap`, which takes effect from the next epoch, then a
         new registration. The signature is bound to this chain and vault.
    @param account The signer and buyer.
    @param asset A listed asset.
    @param per_epoch Most one settlement may debit; max_value(uint256) = no limit.
    @param total Most all settlements under this cap may debit; max_value(uint256) = no limit.
    @param expiry Unix time after which no settlement may use the cap.
    @param nonce Must equal `cap_nonce(account, asset)`.
    @param signature The 65-byte secp256k1 signature of `account`.
    """
    self._run_signed()


@external
def set_spend_cap(asset: address, per_epoch: uint256, total: uint256, expiry: uint256):
    """
    @notice Sets the caller's own spend cap without a signature (for contract
            accounts); same rules as `register_spend_cap`.
    @dev Uses up the caller's current cap nonce, so signed caps not yet
         registered stop being valid.
    @param asset A listed asset.
    @param per_epoch Most one settlement may debit; max_value(uint256) = no limit.
    @param total Most all settlements under this cap may debit; max_value(uint256) = no limit.
    @param expiry Unix time after which no settlement may use the cap.
    """
    self._run_signed()


@external
def revoke_spend_cap(asset: address):
    """
    @notice Revokes the caller's spend cap from the next epoch on.
    @dev The cap stays usable until the end of the window after this one, so
         the settlement of the epoch in progress (usage already served) can
         still be posted; no later one can use it. Also uses up the cap
         nonce, voiding signed caps not yet registered.
    @param asset The asset of the cap.
    """
    self._run_signed()


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
    """
    @notice Registers a session key signed by `account` (EIP-712
            `SessionKey`), moving the account's `asset` to signed mode: from
            then on it is debited only by `settle_signed`, within vouchers
            the session key signed. Anyone may submit it (the coordinator,
            gaslessly, like a spend cap).
    @dev Registered in window w: a spend cap active now stays usable by
         `settle` until the close of window w + 1 (the usage of window w)
         and `settle_signed` accepts the account from window w + 2; without
         an active cap, from window w + 1. `settle` never debits the account
         again while it is in signed mode; spend caps are refused until the
         session is over. Refused while the account's previous session for
         `asset` still accepts settlement (rotate: revoke, wait, register).
    @param account The signer and buyer.
    @param asset A listed asset.
    @param key The session key (signs vouchers); not the zero address.
    @param lanes Vouchers' lanes are 0 .. lanes − 1; 1 .. MAX_LANES.
    @param maximum Most all the session's debits may take (clamped to 2**96 − 1).
    @param expiry Unix time the session ends; its vouchers settle until the
           close of the window after the one it ends in. In the future.
    @param nonce Must equal `session_nonce(account, asset)`; the session's id.
    @param signature The 65-byte secp256k1 signature of `account`.
    """
    self._run_signed()


@external
def set_session_key(asset: address, key: address, lanes: uint256, maximum: uint256, expiry: uint256):
    """
    @notice Registers a session key for the caller without a signature (for
            contract accounts); same rules as `register_session_key`.
    @param asset A listed asset.
    @param key The session key; not the zero address.
    @param lanes 1 .. MAX_LANES.
    @param maximum Most all the session's debits may take.
    @param expiry Unix time the session ends; in the future.
    """
    self._run_signed()


@external
def revoke_session_key(asset: address):
    """
    @notice Ends the caller's session for `asset` at the close of the next
            window: until then a stolen session key can take at most what
            is left of the session maximum; vouchers settle no later.
    @dev Also uses up the session nonce, voiding SessionKeys signed but not
         yet registered. Never paused.
    @param asset The asset of the session.
    """
    self._run_signed()


@external
@nonreentrant
def exit_instant(
    asset: address,
    amount: uint256,
    min_out: uint256,
    nonce: uint256,
    expiry: uint256,
    signature: Bytes[65],
) -> uint256:
    """
    @notice Leaves the vault at once with a release a coordinator signed
            (EIP-712 `Release`): a withdrawable asset is sent to the caller; a
            spend-only token is sold for USDC, credited to the caller's USDC
            balance in the vault (withdrawable).
    @dev Stopped by pause. The release binds account, asset, amount, the
         caller's release nonce, an expiry, this chain and this vault.
    @param asset A listed asset.
    @param amount Smallest units; non-zero; at most the caller's balance.
    @param min_out Spend-only: least USDC to receive; ignored otherwise.
    @param nonce Must equal `release_nonce(caller)`.
    @param expiry The release is void after this unix time.
    @param signature The 65-byte signature of a coordinator.
    @return uint256 What the caller received (the asset, or USDC for a sale).
    """
    self._require_not_paused()
    assert amount > 0, "vault: zero amount"
    assert block.timestamp <= expiry, "vault: release expired"
    assert nonce == self.release_nonce[msg.sender], "vault: bad nonce"
    digest: bytes32 = eip712._hash_typed_data_v4(
        keccak256(abi_encode(RELEASE_TYPEHASH, msg.sender, asset, amount, nonce, expiry))
    )
    assert self.is_coordinator[ecdsa._recover_sig(digest, signature)], "vault: release not signed by a coordinator"
    self.release_nonce[msg.sender] = nonce + 1
    self._take(msg.sender, asset, amount)
    proceeds: uint256 = self._pay_out(msg.sender, asset, amount, min_out)
    log ExitReleased(account=msg.sender, asset=asset, amount=amount, proceeds=proceeds, nonce=nonce)
    return proceeds


@external
def request_exit(asset: address, amount: uint256) -> uint256:
    """
    @notice Starts a trustless exit: after `thaw_period` of unpaused time the
            caller may complete it without anyone's consent. The exit market
            of the moment is fixed in the pending exit.
    @dev Never paused. Until completion the amount stays in the balance and
         settlement may still debit it. One exit per (account, asset) at a time.
    @param asset A listed asset.
    @param amount Smallest units; non-zero; at most the caller's balance.
    @return uint256 The unix time from which `complete_exit` succeeds if
            nothing is paused meanwhile (pauses delay it by at most MAX_PAUSE).
    """
    assert amount > 0, "vault: zero amount"
    policy: uint8 = self.asset_policy[asset]
    assert policy != 0, "vault: asset not listed"
    assert self.pending_exits[msg.sender][asset].amount == 0, "vault: exit already pending"
    assert amount <= self._accounts[asset][msg.sender] & MAX_BALANCE, "vault: amount exceeds balance"
    unlock_at: uint256 = block.timestamp + self.thaw_period
    market: address = empty(address)
    if policy == POLICY_SPEND_ONLY:
        market = self.exit_market
    self.pending_exits[msg.sender][asset] = PendingExit(
        amount=amount, unlock_at=unlock_at, paused_before=self._paused_seconds(), market=market
    )
    log ExitRequested(account=msg.sender, asset=asset, amount=amount, unlock_at=unlock_at, market=market)
    return unlock_at


@external
def cancel_exit(asset: address):
    """
    @notice Cancels the caller's pending trustless exit; nothing moves.
    @param asset The asset of the exit.
    """
    pending: PendingExit = self.pending_exits[msg.sender][asset]
    assert pending.amount > 0, "vault: no pending exit"
    self.pending_exits[msg.sender][asset] = empty(PendingExit)
    log ExitCancelled(account=msg.sender, asset=asset, amount=pending.amount)


@external
@nonreentrant
def complete_exit(asset: address, min_out: uint256, sell: bool) -> uint256:
    """
    @notice Completes the caller's thawed exit for the requested amount, or
            the whole balance if settlements have since debited it below.
            A withdrawable asset is sent to the caller. A spend-only token is
            either sold (`sell`) through the exit market fixed at request, the
            USDC credited to the caller's USDC balance in the vault, or, if
            not `sell`, sent to the caller as the token itself.
    @dev Never paused; no role can block it: the token transfer needs no
         market, and the market cannot be changed under a pending exit.
         The thaw counts unpaused time only, capped: from unlock_at +
         MAX_PAUSE it always succeeds.
    @param asset The asset of the exit.
    @param min_out With `sell`: least USDC to receive; ignored otherwise.
    @param sell Spend-only: sell through the stored market; ignored for a
           withdrawable asset.
    @return uint256 What the caller received (the asset, or USDC credited for a sale).
    """
    pending: PendingExit = self.pending_exits[msg.sender][asset]
    assert pending.amount > 0, "vault: no pending exit"
    assert block.timestamp >= self._unlock_time(pending, self._paused_seconds()), "vault: exit still thawing"
    amount: uint256 = min(pending.amount, self._accounts[asset][msg.sender] & MAX_BALANCE)
    self.pending_exits[msg.sender][asset] = empty(PendingExit)
    proceeds: uint256 = 0
    sold: bool = sell and self.asset_policy[asset] == POLICY_SPEND_ONLY
    if amount > 0:
        self._take(msg.sender, asset, amount)
        # What left the balance: a settlement in this or the next (unpaused)
        # window may book the usage it served before leaving, up to this much.
        self._grant_allowance(msg.sender, asset, amount)
        if sold:
            proceeds = self._sell(msg.sender, asset, amount, min_out, pending.market)
        else:
            self._push(asset, msg.sender, amount)
            proceeds = amount
    log ExitCompleted(
        account=msg.sender, asset=asset, requested=pending.amount, amount=amount, proceeds=proceeds, sold=sold
    )
    return proceeds


@external
@nonreentrant
def claim(asset: address) -> uint256:
    """
    @notice Pays the caller everything it earned in `asset` (seller credits).
    @dev Never paused: earned balances are the seller's at any time.
    @param asset The asset.
    @return uint256 The amount paid.
    """
    amount: uint256 = self.claimable[msg.sender][asset]
    assert amount > 0, "vault: nothing to claim"
    self.claimable[msg.sender][asset] = 0
    self._push(asset, msg.sender, amount)
    log Claimed(account=msg.sender, asset=asset, amount=amount)
    return amount


# ─── Settlement ──────────────────────────────────────────────────────────────


@external
@nonreentrant
def settle(
    epoch: uint256,
    asset: address,
    debits: DynArray[uint256, MAX_ENTRIES],
    credits: DynArray[uint256, MAX_LOTS],
    burn: uint256,
    fee: uint256,
    usage_root: bytes32,
):
    """
    @notice Settles one epoch of usage of one asset, drawing the escrow's
            lots in the same call.
    @dev Coordinator only; stopped by pause; one settlement per asset per
         epoch window; epochs are consecutive per asset, starting at 1.
         Each debit must be within the account's spend cap (≤ per-epoch
         maximum, ≤ total left, cap not expired), else the batch reverts.
         The part above the balance is uncovered: booked as shortfall only
         within the account's exit allowance (a trustless exit completed in
         this or the previous unpaused window, up to what it took), paid from
         this batch's fee, then the protocol reserve; otherwise the batch
         reverts. What moves always balances: debited == credited + burned +
         reserve change.
         USDC: each credit word names a listed lot and the capacity it served
         at list price; the escrow draws it and returns the seller's credit
         (the lot's rate of it, cumulatively rounded down), which becomes
         claimable. Conservation: Σ debits == Σ seller credits + fee.
         Spend-only token: `burn` tokens are burned and the escrow draws as
         much of that token's tokenized capacity, nearest expiry first.
         Conservation: Σ debits == fee + burn.
    @param epoch `last_epoch(asset) + 1`.
    @param asset A listed asset.
    @param debits Words `account << 96 | amount`, accounts strictly increasing.
    @param credits Words `lot_id << 160 | consumed`, lot ids strictly
           increasing (USDC only; consumed in USD micro-units at list price).
    @param burn Tokens burned and drawn (spend-only assets only).
    @param fee The protocol fee, added to the reserve.
    @param usage_root Merkle root of the usage records behind the batch.
    """
    self._begin_settlement(epoch, asset, len(credits), burn, usage_root)
    window: uint256 = self._window()
    assert window >= self._settled_window[asset], "vault: epoch window already settled"
    self._settled_window[asset] = window + 1

    # Debits: one slot read and at most one write per entry.
    now: uint256 = block.timestamp
    unpaused_window: uint256 = self._unpaused_window()
    requested: uint256 = 0
    charged: uint256 = 0
    previous: uint256 = 0
    for word: uint256 in debits:
        key: uint256 = word >> 96
        assert key > previous, "vault: debits not sorted by account"
        previous = key
        account: address = convert(convert(key, uint160), address)
        amount: uint256 = word & _DEBIT_AMOUNT_MASK
        slot: uint256 = self._accounts[asset][account]
        assert now <= slot >> _EXPIRY_SHIFT, "vault: debit without an active spend cap"
        assert amount <= min((slot >> _CAP_SHIFT) & MAX_CAP_TOTAL, self._decode((slot >> _PER_EPOCH_SHIFT) & _FLOAT_MASK)), "vault: debit above the spend cap"
        take: uint256 = min(amount, slot & MAX_BALANCE)
        if take > 0:
            self._accounts[asset][account] = unsafe_sub(slot, unsafe_mul(take, _DEBIT_UNIT))
        if take < amount:
            self._use_allowance(account, asset, unsafe_sub(amount, take), unpaused_window)
            log ShortfallRecorded(epoch=epoch, asset=asset, account=account, amount=unsafe_sub(amount, take))
        requested = unsafe_add(requested, amount)
        charged = unsafe_add(charged, take)

    self._pay_settlement(epoch, asset, credits, burn, fee, requested, charged)
    log EpochSettled(epoch=epoch, asset=asset, usage_root=usage_root, total=charged, entries=len(debits))


@external
@nonreentrant
def settle_signed(
    epoch: uint256,
    asset: address,
    entries: DynArray[SignedEntry, MAX_SIGNED_ENTRIES],
    credits: DynArray[uint256, MAX_LOTS],
    burn: uint256,
    fee: uint256,
    usage_root: bytes32,
):
    """
    @notice Settles a batch of signed-mode usage of one asset: each entry
            debits one lane of one account within the highest voucher the
            account's session key signed for it, drawing the escrow's lots in
            the same call exactly as `settle` does.
    @dev Coordinator only; stopped by pause. Any number of batches per window:
         a batch takes the next number of the asset's settlement sequence
         (`epoch` = `last_epoch(asset) + 1`, shared with `settle`, whose
         one-per-window pacing is unchanged), so a batch sent twice fails.
         Per entry, else the batch reverts: the voucher (account, asset,
         the account's current session, lane, ceiling; this chain and vault)
         is signed by the session's key (low-s); lane < the session's lanes;
         the session accepts settlement in this window (from `signed_from`
         to the close of the window after it ended); lane settled + amount
         ≤ ceiling; session settled + amount ≤ its maximum. Entries are
         sorted by strictly increasing (account, lane), so each lane is
         debited, and its signature checked, at most once per batch. The
         part of a debit above the balance follows `settle`'s shortfall rule.
         Gas: an account that has debited one lane in the session costs its
         account slot (read and written) and the session's hot word (read)
         and one ecrecover; from its second lane on, each lane costs the
         account slot and the lane's slot (both read and written); a second
         lane's first debit also creates the first lane's slot.
    @param epoch `last_epoch(asset) + 1`: this batch's number.
    @param asset A listed asset.
    @param entries `SignedEntry`s, (account, lane) strictly increasing.
    @param credits As in `settle` (USDC only).
    @param burn As in `settle` (spend-only assets only).
    @param fee The protocol fee, added to the reserve.
    @param usage_root Merkle root of the usage records behind the batch.
    """
    self._begin_settlement(epoch, asset, len(credits), burn, usage_root)
    requested: uint256 = 0
    charged: uint256 = 0
    requested, charged = abi_decode(self._run_signed(), (uint256, uint256))
    self._pay_settlement(epoch, asset, credits, burn, fee, requested, charged)
    log SignedBatchSettled(asset=asset, batch=epoch, usage_root=usage_root, total=charged, entries=len(entries))


@external
@nonreentrant
def fund_reserve(asset: address, amount: uint256):
    """
    @notice Adds to the protocol's reserve of a listed asset (it pays
            shortfalls); anyone may fund it.
    @param asset A listed asset.
    @param amount Smallest units; non-zero; approved to the vault.
    """
    assert self.asset_policy[asset] != 0, "vault: asset not listed"
    assert amount > 0, "vault: zero amount"
    self._pull(asset, msg.sender, amount)
    self.reserve[asset] += amount
    log ReserveFunded(asset=asset, payer=msg.sender, amount=amount)


@external
@nonreentrant
def withdraw_reserve(asset: address, amount: uint256, recipient: address):
    """
    @notice Pays out part of the protocol's reserve (collected fees).
    @dev Admin only.
    @param asset The asset.
    @param amount Smallest units; non-zero; at most the reserve.
    @param recipient Not the zero address.
    """
    ownable._check_owner()
    assert recipient != empty(address), "vault: zero address"
    assert amount > 0, "vault: zero amount"
    assert amount <= self.reserve[asset], "vault: amount exceeds reserve"
    self.reserve[asset] -= amount
    self._push(asset, recipient, amount)
    log ReserveWithdrawn(asset=asset, recipient=recipient, amount=amount)


# ─── Admin ───────────────────────────────────────────────────────────────────


@external
def list_asset(asset: address, policy: uint8):
    """
    @notice Lists an asset (or reopens its deposits) with its exit policy.
    @dev Admin only. A policy never changes once set, so users' exit rights
         cannot be changed under them. A spend-only asset must be a provider
         token of the escrow, and must grant this vault its burner role.
    @param asset The token; not the zero address.
    @param policy POLICY_WITHDRAWABLE or POLICY_SPEND_ONLY.
    """
    ownable._check_owner()
    assert asset != empty(address), "vault: zero address"
    assert policy == POLICY_WITHDRAWABLE or policy == POLICY_SPEND_ONLY, "vault: bad policy"
    current: uint8 = self.asset_policy[asset]
    assert current == 0 or current == policy, "vault: policy cannot change"
    if policy == POLICY_SPEND_ONLY:
        assert staticcall ICreditEscrow(escrow).is_provider_token(asset), "vault: not a provider token"
    self._list(asset, policy)


@external
def delist_asset(asset: address):
    """
    @notice Closes deposits of an asset; balances, settlements and exits go on.
    @dev Admin only.
    @param asset A listed asset.
    """
    ownable._check_owner()
    assert self.deposits_open[asset], "vault: asset not listed"
    self.deposits_open[asset] = False
    log AssetDelisted(asset=asset)


@external
def grant_coordinator(account: address):
    """
    @notice Grants the coordinator role (settles within users' caps, signs
            instant releases).
    @dev Admin only (the Timelock: announced, delayed).
    @param account Not the zero address.
    """
    ownable._check_owner()
    assert account != empty(address), "vault: zero address"
    self.is_coordinator[account] = True
    log RoleCoordinatorChanged(account=account, status=True)


@external
def revoke_coordinator(account: address):
    """
    @notice Revokes the coordinator role.
    @dev Admin only; the Timelock's guardian may call it at once.
    @param account A current coordinator.
    """
    ownable._check_owner()
    assert self.is_coordinator[account], "vault: not a coordinator"
    self.is_coordinator[account] = False
    log RoleCoordinatorChanged(account=account, status=False)


@external
def grant_pauser(account: address):
    """
    @notice Grants the pauser role.
    @dev Admin only (the Timelock: announced, delayed).
    @param account Not the zero address.
    """
    ownable._check_owner()
    assert account != empty(address), "vault: zero address"
    self.is_pauser[account] = True
    log RolePauserChanged(account=account, status=True)


@external
def revoke_pauser(account: address):
    """
    @notice Revokes the pauser role.
    @dev Admin only; the Timelock's guardian may call it at once.
    @param account A current pauser.
    """
    ownable._check_owner()
    assert self.is_pauser[account], "vault: not a pauser"
    self.is_pauser[account] = False
    log RolePauserChanged(account=account, status=False)


@external
def pause():
    """
    @notice Stops deposits, instant releases and settlement for at most
            MAX_PAUSE; the pause then ends by itself. Trustless exits,
            cancels and claims keep working (a thaw counts unpaused time only).
    @dev Pauser or admin. Not while paused, and not again until two epoch
         windows after the last pause ended, so settlement always has two
         windows between pauses.
    """
    assert self.is_pauser[msg.sender] or msg.sender == ownable.owner, "vault: caller is not a pauser"
    assert not self._is_paused(), "vault: already paused"
    start: uint256 = self._pause_start
    end: uint256 = self._pause_end
    if start != 0:
        assert block.timestamp >= end + 2 * epoch_length, "vault: pause renewed too soon"
        self._paused_before += end - start
    until: uint256 = block.timestamp + MAX_PAUSE
    self._pause_start = block.timestamp
    self._pause_end = until
    log Paused(account=msg.sender, until=until)


@external
def unpause():
    """
    @notice Lifts the pause before it ends by itself.
    @dev Admin only, so a leaked pauser key can stop the vault (for at most
         MAX_PAUSE) but not resume it.
    """
    ownable._check_owner()
    assert self._is_paused(), "vault: not paused"
    self._pause_end = block.timestamp
    log Unpaused(account=msg.sender)


@external
def set_thaw_period(new_period: uint256):
    """
    @notice Sets the thaw of trustless exits requested from now on.
    @dev Admin only (the Timelock); between max(2 × epoch_length, MAX_PAUSE)
         and MAX_THAW_PERIOD. Pending exits keep their thaw.
    @param new_period Seconds.
    """
    ownable._check_owner()
    assert new_period >= 2 * epoch_length and new_period >= MAX_PAUSE, "vault: thaw period out of range"
    assert new_period <= MAX_THAW_PERIOD, "vault: thaw period out of range"
    log ThawPeriodChanged(old_period=self.thaw_period, new_period=new_period)
    self.thaw_period = new_period


@external
def set_exit_market(market: address):
    """
    @notice Sets the market that sells spend-only tokens for USDC on exit.
    @dev Admin only (the Timelock); the zero address unsets it. Exits already
         requested keep the market they were requested with, and can always
         take the token instead.
    @param market An IExitMarket.
    """
    ownable._check_owner()
    log ExitMarketChanged(old_market=self.exit_market, new_market=market)
    self.exit_market = market


# ─── Views ───────────────────────────────────────────────────────────────────


@external
@view
@nonreentrant
def balance_of(account: address, asset: address) -> uint256:
    """
    @notice An account's balance of an asset in the vault, thawing part included.
    @param account The account.
    @param asset The asset.
    @return uint256 Smallest units.
    """
    return self._accounts[asset][account] & MAX_BALANCE


@external
@view
def spend_cap(account: address, asset: address) -> (uint256, uint256, uint256):
    """
    @notice The spend cap as the vault enforces it (limits rounded down from
            the signed values, never up).
    @param account The account.
    @param asset The asset.
    @return (uint256, uint256, uint256) Most per epoch, total left, expiry.
    """
    slot: uint256 = self._accounts[asset][account]
    if slot >> _EXPIRY_SHIFT < genesis:
        return 0, 0, 0  # no cap, or the signed layout
    return self._decode((slot >> _PER_EPOCH_SHIFT) & _FLOAT_MASK), (slot >> _CAP_SHIFT) & MAX_CAP_TOTAL, slot >> _EXPIRY_SHIFT


@external
@view
@nonreentrant
def debitable(account: address, asset: address) -> uint256:
    """
    @notice The most a settlement posted now could debit from an account.
    @param account The account.
    @param asset The asset.
    @return uint256 min(balance, per-epoch maximum, total left), or 0 if the cap expired.
    """
    slot: uint256 = self._accounts[asset][account]
    if block.timestamp > slot >> _EXPIRY_SHIFT:
        return 0
    return min(slot & MAX_BALANCE, min((slot >> _CAP_SHIFT) & MAX_CAP_TOTAL, self._decode((slot >> _PER_EPOCH_SHIFT) & _FLOAT_MASK)))


@external
@view
def session_key(
    account: address, asset: address
) -> (address, uint256, uint256, uint256, uint256, uint256, uint256, uint256):
    """
    @notice The account's last registered session key for `asset`.
    @param account The account.
    @param asset The asset.
    @return (address, uint256, uint256, uint256, uint256, uint256, uint256, uint256)
            key, session id, lanes, maximum (as enforced), settled so far,
            expiry, ends_at (the last second its vouchers may be settled)
            and signed_from (the first window `settle_signed` accepts it).
            All zero if none was ever registered.
    """
    session: Session = self._session_of(asset, account)
    if session.key == empty(address):
        return empty(address), 0, 0, 0, 0, 0, 0, 0
    slot: uint256 = self._accounts[asset][account]
    settled: uint256 = 0
    if self._holds_session(slot, session.session):
        settled = session.maximum - ((slot >> _CAP_SHIFT) & MAX_CAP_TOTAL)
    return (
        session.key,
        session.session,
        session.lanes,
        session.maximum,
        settled,
        session.expiry,
        self._window_end(session.last_window),
        session.signed_from,
    )


@external
@view
def lane_settled(account: address, asset: address, lane: uint256) -> uint256:
    """
    @notice What `settle_signed` has debited from a lane in the account's
            last registered session (lanes start at 0 in every session).
    @param account The account.
    @param asset The asset.
    @param lane The lane.
    @return uint256 Smallest units.
    """
    if lane > _LANE_MASK:
        return 0
    session: Session = self._session_of(asset, account)
    slot: uint256 = self._accounts[asset][account]
    if self._holds_session(slot, session.session):
        tag: uint256 = (slot >> _LANE_TAG_SHIFT) & 255
        if tag != _SEVERAL_LANES:
            # One lane (or none) debited: its total is the session's.
            if tag == lane + 1:
                return session.maximum - ((slot >> _CAP_SHIFT) & MAX_CAP_TOTAL)
            return 0
    return self._lanes[asset][(convert(account, uint256) << 96) | (session.session << 16) | lane] & _SETTLED_MASK


@external
@view
def paused() -> bool:
    """
    @notice Whether deposits, instant releases and settlement are stopped now.
    @return bool True while a pause runs (at most MAX_PAUSE from its start).
    """
    return self._is_paused()


@external
@view
def paused_until() -> uint256:
    """
    @notice When the current or last pause ends (or ended); 0 if never paused.
    @return uint256 Unix seconds.
    """
    return self._pause_end


@external
@view
def paused_seconds() -> uint256:
    """
    @notice Seconds the vault has been paused since deployment, up to now.
    @return uint256 Seconds.
    """
    return self._paused_seconds()


@external
@view
def exit_unlocks_at(account: address, asset: address) -> uint256:
    """
    @notice When a pending exit can complete, if no pause starts meanwhile
            (a running pause is counted to its scheduled end).
    @param account The account.
    @param asset The asset of the exit.
    @return uint256 Unix seconds; 0 if no exit is pending.
    """
    pending: PendingExit = self.pending_exits[account][asset]
    if pending.amount == 0:
        return 0
    paused: uint256 = self._paused_seconds()
    if self._is_paused():
        paused += self._pause_end - block.timestamp
    return self._unlock_time(pending, paused)


@external
@view
def exit_allowance(account: address, asset: address) -> uint256:
    """
    @notice The uncovered debit a settlement posted now may book as shortfall
            for this account: what its last trustless exit took, less what was
            booked against it, while that exit is in the current or previous
            unpaused window.
    @param account The account.
    @param asset The asset.
    @return uint256 Smallest units.
    """
    word: uint256 = self._exit_allowance[asset][account]
    if (word >> _ALLOWANCE_SHIFT) + 1 < self._unpaused_window():
        return 0
    return word & _ALLOWANCE_MASK


@external
@view
def current_window() -> uint256:
    """
    @notice The epoch window now: (now − genesis) ÷ epoch_length.
    @return uint256 The window index.
    """
    return self._window()


@external
@view
def next_settlement_at(asset: address) -> uint256:
    """
    @notice The earliest unix time at which the next settlement of `asset` may be posted.
    @param asset The asset.
    @return uint256 Unix seconds (genesis if it was never settled).
    """
    return genesis + self._settled_window[asset] * epoch_length


@external
@view
def DOMAIN_SEPARATOR() -> bytes32:
    """
    @notice The EIP-712 domain separator (name, version, chain id, this vault).
    @return bytes32 The separator.
    """
    return eip712._domain_separator_v4()


@external
@pure
def quantize_per_epoch(per_epoch: uint256) -> uint256:
    """
    @notice The per-epoch maximum the vault will enforce for a signed value.
    @param per_epoch The signed value.
    @return uint256 The largest m × 2**e ≤ per_epoch (m < 2**17, e < 2**7).
    """
    return self._decode(self._encode(per_epoch))


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
def _list(asset: address, policy: uint8):
    self.asset_policy[asset] = policy
    self.deposits_open[asset] = True
    log AssetListed(asset=asset, policy=policy)


@internal
def _deposit(account: address, payer: address, asset: address, amount: uint256):
    self._require_not_paused()
    assert self.deposits_open[asset], "vault: asset not listed"
    assert amount > 0, "vault: zero amount"
    slot: uint256 = self._accounts[asset][account]
    balance: uint256 = (slot & MAX_BALANCE) + amount
    assert balance <= MAX_BALANCE, "vault: balance above bound"
    self._accounts[asset][account] = slot + amount
    self._pull(asset, payer, amount)
    log Deposited(account=account, asset=asset, payer=payer, amount=amount, balance=balance)


@internal
def _take(account: address, asset: address, amount: uint256):
    slot: uint256 = self._accounts[asset][account]
    assert amount <= slot & MAX_BALANCE, "vault: amount exceeds balance"
    self._accounts[asset][account] = slot - amount


@internal
def _begin_settlement(epoch: uint256, asset: address, credit_count: uint256, burn: uint256, usage_root: bytes32):
    # What both settlements check first, and the sequence number they take.
    self._require_not_paused()
    assert self.is_coordinator[msg.sender], "vault: caller is not a coordinator"
    policy: uint8 = self.asset_policy[asset]
    assert policy != 0, "vault: asset not listed"
    assert epoch == self.last_epoch[asset] + 1, "vault: epoch not consecutive"
    if policy == POLICY_SPEND_ONLY:
        assert credit_count == 0, "vault: credits on a spend-only asset"
    else:
        assert burn == 0, "vault: burn on a withdrawable asset"
        assert credit_count == 0 or asset == usdc, "vault: credits are paid in usdc"
    self.last_epoch[asset] = epoch
    self.usage_roots[asset][epoch] = usage_root


@internal
def _pay_settlement(
    epoch: uint256,
    asset: address,
    credits: DynArray[uint256, MAX_LOTS],
    burn: uint256,
    fee: uint256,
    requested: uint256,
    charged: uint256,
):
    # Both settlements' value side: `requested` was debited (`charged` of it
    # from balances, the rest booked as shortfall); it goes to the listed
    # lots' sellers (the escrow draws each and prices the credit), the burn
    # and the fee. The shortfall is paid from the fee, then the reserve.
    paid_out: uint256 = fee
    previous: uint256 = 0
    for word: uint256 in credits:
        lot_id: uint256 = word >> 160
        assert lot_id > previous, "vault: credits not sorted by lot"
        previous = lot_id
        consumed: uint256 = word & _LOT_AMOUNT_MASK
        seller: address = empty(address)
        credit: uint256 = 0
        seller, credit = extcall ICreditEscrow(escrow).consume(lot_id, consumed, epoch)
        self.claimable[seller][asset] += credit
        paid_out += credit
        log SellerCredited(epoch=epoch, asset=asset, seller=seller, lot_id=lot_id, amount=credit, consumed=consumed)
    assert requested == paid_out + burn, "vault: debits do not balance"

    missing: uint256 = requested - charged
    if missing > 0:
        available: uint256 = self.reserve[asset] + fee
        assert available >= missing, "vault: shortfall exceeds reserve"
        self.reserve[asset] = available - missing
        self.shortfall[asset] += missing
    elif fee > 0:
        self.reserve[asset] += fee

    if burn > 0:
        extcall ICreditEscrow(escrow).draw(asset, burn, epoch)
        extcall IComputeToken(asset).burn(burn)


@internal
def _run_signed() -> Bytes[64]:
    # Runs this call's signed-mode code (CreditsVaultSigned, same calldata)
    # on this vault's storage; its reverts are passed on as they are.
    return raw_call(signed_module, msg.data, max_outsize=64, is_delegate_call=True)


@internal
@view
def _session_of(asset: address, account: address) -> Session:
    # The session's two words (see _KEY_MASK): the hot word and the terms.
    keys: uint256 = self._session_keys[asset][account]
    terms: uint256 = self._session_terms[asset][account]
    return Session(
        key=convert(convert(keys & _KEY_MASK, uint160), address),
        session=terms & _SESSION_MASK,
        lanes=(terms >> 24) & 255,
        maximum=keys >> _MAXIMUM_SHIFT,
        expiry=(terms >> 160) & _WORD64,
        signed_from=(terms >> 32) & _WORD64,
        last_window=(terms >> 96) & _WORD64,
    )


@internal
@view
def _holds_session(slot: uint256, session: uint256) -> bool:
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
def _window_end(window: uint256) -> uint256:
    # The last second of an epoch window.
    return genesis + (window + 1) * epoch_length - 1


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
@view
def _window() -> uint256:
    return (block.timestamp - genesis) // epoch_length


@internal
@view
def _is_paused() -> bool:
    return self._pause_start != 0 and block.timestamp < self._pause_end


@internal
@view
def _require_not_paused():
    assert not self._is_paused(), "vault: paused"


@internal
@view
def _paused_seconds() -> uint256:
    # Seconds paused up to now: earlier pauses, plus the elapsed part of the last.
    start: uint256 = self._pause_start
    if start == 0:
        return 0
    return self._paused_before + min(block.timestamp, self._pause_end) - start


@internal
@view
def _unpaused_window() -> uint256:
    # The epoch window on a clock that stops while paused.
    return (block.timestamp - genesis - self._paused_seconds()) // epoch_length


@internal
@view
def _unlock_time(pending: PendingExit, paused_now: uint256) -> uint256:
    # The thaw counts unpaused time only, but pauses delay it by MAX_PAUSE at most.
    return pending.unlock_at + min(paused_now - pending.paused_before, MAX_PAUSE)


@internal
def _grant_allowance(account: address, asset: address, amount: uint256):
    # A completed trustless exit: settlements of this and the next unpaused
    # window may book the usage it left behind, up to what it took. A still
    # valid earlier allowance adds up (only when pauses shortened a thaw).
    window: uint256 = self._unpaused_window()
    word: uint256 = self._exit_allowance[asset][account]
    left: uint256 = 0
    if (word >> _ALLOWANCE_SHIFT) + 1 >= window:
        left = word & _ALLOWANCE_MASK
    self._exit_allowance[asset][account] = (window << _ALLOWANCE_SHIFT) | min(left + amount, _ALLOWANCE_MASK)


@internal
def _use_allowance(account: address, asset: address, uncovered: uint256, window: uint256):
    # Books `uncovered` against the account's exit allowance, or reverts.
    word: uint256 = self._exit_allowance[asset][account]
    left: uint256 = word & _ALLOWANCE_MASK
    assert (word >> _ALLOWANCE_SHIFT) + 1 >= window and uncovered <= left, "vault: uncovered debit"
    self._exit_allowance[asset][account] = word - uncovered


@internal
def _pay_out(account: address, asset: address, amount: uint256, min_out: uint256) -> uint256:
    # Instant exit. Withdrawable: the asset itself, to the account's wallet.
    # Spend-only: sold for USDC through the current exit market.
    if self.asset_policy[asset] == POLICY_WITHDRAWABLE:
        self._push(asset, account, amount)
        return amount
    return self._sell(account, asset, amount, min_out, self.exit_market)


@internal
def _sell(account: address, asset: address, amount: uint256, min_out: uint256, market: address) -> uint256:
    # Sells a spend-only token through `market`; the USDC lands in the
    # account's vault balance. The vault measures what left and what came in.
    assert market != empty(address), "vault: no exit market"
    held: uint256 = staticcall IERC20(asset).balanceOf(self)
    usdc_before: uint256 = staticcall IERC20(usdc).balanceOf(self)
    assert extcall IERC20(asset).approve(market, amount, default_return_value=True), "vault: approve failed"
    extcall IExitMarket(market).sell(asset, amount, min_out, self)
    assert staticcall IERC20(asset).balanceOf(self) + amount == held, "vault: exit market took a different amount"
    proceeds: uint256 = staticcall IERC20(usdc).balanceOf(self) - usdc_before
    assert proceeds >= min_out, "vault: proceeds below minimum"
    slot: uint256 = self._accounts[usdc][account]
    assert (slot & MAX_BALANCE) + proceeds <= MAX_BALANCE, "vault: balance above bound"
    self._accounts[usdc][account] = slot + proceeds
    log Sold(account=account, asset=asset, amount=amount, proceeds=proceeds)
    return proceeds


@internal
def _pull(asset: address, payer: address, amount: uint256):
    held: uint256 = staticcall IERC20(asset).balanceOf(self)
    assert extcall IERC20(asset).transferFrom(payer, self, amount, default_return_value=True), "vault: transfer failed"
    assert staticcall IERC20(asset).balanceOf(self) == held + amount, "vault: fee-on-transfer token"


@internal
def _push(asset: address, recipient: address, amount: uint256):
    assert extcall IERC20(asset).transfer(recipient, amount, default_return_value=True), "vault: transfer failed"
