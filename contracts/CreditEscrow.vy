# pragma version ~=0.4.3
"""
@title CreditEscrow
@license MIT
@notice Records lots of AI API credit that sellers put on the market.
        A *tokenized* lot mints the provider's ComputeToken up front (minus
        the mint fee, paid to the treasury) and then serves only requests
        paid by burning that token. A *listed* lot mints nothing and serves
        USDC-paid requests at the seller's rate. Each lot carries a USDC bond
        from the seller, released pro rata as the lot is consumed.

        What the bond promises token holders:
        - A lot's face value is the seller's word; its bond is what stands
          behind it in the worst case. Every tokenized lot of a token is
          bonded at exactly that token's share of face value,
          `token_bond_bps` (fixed when the provider is added, never below
          MIN_BOND_FLOOR_BPS, an immutable floor), so every token of a
          provider carries the same bond share and pooling its failures is
          fair: a failed seller tendering its own tokens recovers at most
          what it posted for them. Listed lots mint nothing and are never
          pooled: their bond is at least `min_bond_bps` of face value.
        - Every token that stops being backed by open capacity brings its
          share of the lot's bond to the provider's insurance fund: all of
          the unreleased bond on `slash` (a listed lot's slashed bond, which
          no token needs, is forfeited for good instead); bond × remaining ÷ capacity
          (rounded up) on `expire`; the fee share's part on `finalize_close`.
          The seller gets back only the bond of capacity it delivered or
          returned.
        - `buy_back_unbacked` pays every tendered token the same fixed rate,
          its bond share (face value × token_bond_bps ÷ 10,000, rounded
          down), which the insurance fund always holds for every unbacked
          token: order, timing, identity and other lots' failures gain
          nothing.
        - Closing takes two steps: `request_close` stops routing (and
          drawing) at once; for `close_delay` (two vault windows) the lot
          stays open: a listed lot is still credited for the usage it served,
          and any lot can still be slashed; then `finalize_close` returns the
          rest of the bond once a tokenized lot's seller has returned its
          token share.
        - Tokenized lots are drawn nearest-expiry first (`draw`), and a lot
          must be valid for at least MIN_LOT_VALIDITY when it opens, so
          minting, selling and letting a lot expire undrawn does not pay.
        - No lots anyone opens, or lets expire, keep a draw from routable
          capacity: a tokenized lot's face value is at least
          MIN_TOKENIZED_FACE ($10), so the MAX_DRAW_LOTS (256) lots one draw
          walks always hold at least $2,550 of routable capacity, drawn in
          order; lots past their expiry are unlinked from the head of the
          draw order without counting against that walk (MAX_PRUNE_LOTS of
          them inside every draw, any number through the permissionless
          `prune`). Found: 256 lots of one micro-dollar expiring soonest
          filled the walk; every larger burn reverted and an honest lot
          behind them, never drawn, forfeited its bond at expiry.
          Limit: the draw follows expiry, not whose key served; a lot whose
          key failed is drawn (its seller paid the bond share) until the
          attestor slashes it, so the attestor slashes a failing lot at once.
@dev Roles: admin (two-step handover; the Timelock after deploy: every grant
     and every parameter is timelocked), attestor (the gateway, after it has
     verified a seller's key: opens and slashes lots; granted by the admin,
     revoked by the admin or at once by the timelock's guardian through
     `revoke_attestor`). Only the CreditsVault (`vault`, set once at deploy)
     draws lots down, inside the settlement that burns the tokens (tokenized)
     or credits the seller (listed): nobody else can release a bond against
     capacity that was not paid for. Tokenized lots of a token are drawn
     nearest expiry first (ties: lower id first) from a per-token list of the
     lots that still route, so which lot is drawn is nobody's choice. Units:
     face values and bonds in USD micro-units (= USDC's 6-decimal unit),
     token amounts in 10**-18.
"""

from ethereum.ercs import IERC20
from snekmate.auth import ownable
from snekmate.auth import ownable_2step

from .interfaces import IComputeToken
from .interfaces import ICreditEscrow

initializes: ownable
initializes: ownable_2step[ownable := ownable]

implements: ICreditEscrow

exports: (
    ownable_2step.owner,
    ownable_2step.pending_owner,
    ownable_2step.transfer_ownership,
    ownable_2step.accept_ownership,
)


# ─── Constants ───────────────────────────────────────────────────────────────

BPS: constant(uint256) = 10_000
# @notice Hard cap on the mint fee: 1 %.
MAX_MINT_FEE_BPS: public(constant(uint256)) = 100
# @notice No bond share can ever go below 10 % of face value: a failed lot's
#         unbacked tokens recover at least this much per dollar of face.
MIN_BOND_FLOOR_BPS: public(constant(uint256)) = 1_000
# @notice A lot must be valid for at least this long when it opens (7 days),
#         so nearest-expiry-first routing has time to draw it.
MIN_LOT_VALIDITY: public(constant(uint256)) = 7 * 86_400
# @notice After a lot's expiry, usage it served may still be settled for this
#         long before `expire` may run: the window holding the expiry, the
#         longest pause any vault may have (its MAX_THAW_PERIOD, one day) and
#         two windows to post (a vault pause cannot be renewed until two
#         windows after it ended), windows at their longest (MAX_WINDOW_LENGTH).
#         Found: with two hours, a pause of two one-hour windows from the end
#         of the expiry's window let a keeper expire a listed lot before its
#         last window settled; that usage's seller was never paid.
SETTLEMENT_GRACE: public(constant(uint256)) = 3 * 3_600 + 86_400
# @notice Longest vault window the escrow accepts (the vault's MAX_EPOCH_LENGTH).
MAX_WINDOW_LENGTH: public(constant(uint256)) = 3_600
# @notice Most routable lots one `draw` walks; `drawable` counts the same.
MAX_DRAW_LOTS: public(constant(uint256)) = 256
# @notice Most lots past their expiry one `draw` (and one `prune`) unlinks from
#         the head of a token's draw order before it walks: they are not counted
#         against MAX_DRAW_LOTS. About 12.6k gas each before refunds (a draw
#         pruning 256: 3.38 M gas instead of 94k; test_escrow_dust_attacks);
#         opening one costs an attacker ~390k gas and $1 of bond, so undoing a
#         crowd of them costs whoever prunes ~3 % of the attacker's gas.
MAX_PRUNE_LOTS: public(constant(uint256)) = 256
# @notice Smallest face value of a tokenized lot: $10 (USD micro-units).
#         Chosen from the dust-lot attack's arithmetic: one draw walks
#         MAX_DRAW_LOTS lots in expiry order and every lot it walks is drained
#         before the next (only the head can be partly drawn), so a full walk
#         draws at least 255 × $10 = $2,550 of capacity in one settlement, and
#         an attacker filling it posts 256 × $1 of bond (10 % share) and pays
#         ~120 M gas for lots that are drawn in turn (real capacity); the next
#         settlement walks on. Listed lots are not in the draw order.
MIN_TOKENIZED_FACE: public(constant(uint256)) = 10 * 10**6
# @notice Largest face value, capacity and bond of a lot (2**128 - 1): every
#         product of two of them (bond × capacity in the pro rata releases and
#         forfeits, seller_minted × remaining in `finalize_close`) fits 256 bits.
MAX_LOT_AMOUNT: public(constant(uint256)) = 2**128 - 1
# @notice Most lots an `open_lot` walks past, forward from its hint and (without
#         a usable hint) from each end, to keep its token's draw order (a new lot
#         usually expires last: no walk at all).
MAX_INSERT_WALK: public(constant(uint256)) = 256
# @notice Most lots one `insert_hint` call walks (~4.2k gas each: a page of 1,024
#         is ~4.5 M gas of eth_call); longer draw orders are paged.
MAX_HINT_STEPS: public(constant(uint256)) = 1024

KIND_TOKENIZED: public(constant(uint8)) = 1
KIND_LISTED: public(constant(uint8)) = 2

STATUS_OPEN: public(constant(uint8)) = 1
STATUS_CLOSED: public(constant(uint8)) = 2
STATUS_EXPIRED: public(constant(uint8)) = 3
STATUS_SLASHED: public(constant(uint8)) = 4


# ─── Storage ─────────────────────────────────────────────────────────────────

usdc: public(immutable(address))
# @notice Seconds between `request_close` and `finalize_close`: two vault windows.
close_delay: public(immutable(uint256))

treasury: public(address)
mint_fee_bps: public(uint256)
# @notice Listed lots' minimum bond as a share of face value; never below
#         MIN_BOND_FLOOR_BPS. Tokenized lots are bonded at `token_bond_bps`.
min_bond_bps: public(uint256)

# @notice The CreditsVault: the only caller of `consume` and `draw`; set once.
vault: public(address)

is_attestor: public(HashMap[address, bool])
is_provider_token: public(HashMap[address, bool])
# @notice Per provider token, the bond share (basis points of face value) of
#         every tokenized lot of it: set once by `add_provider`, never changed.
#         One share per token, because tokens are fungible and their failures
#         are pooled: with unequal shares, a seller failing at a low share
#         tendered its own tokens at a rate an earlier, better-bonded failure
#         had raised (found: a lot bonded 100 % slashed, then one at 10 % left
#         to expire: its seller got $5,497 for the $1,000 it posted).
token_bond_bps: public(HashMap[address, uint256])

lots: public(HashMap[uint256, ICreditEscrow.Lot])
lot_count: public(uint256)

# @notice USDC bonds of open lots (their unreleased part).
bonds_held: public(uint256)
# @notice Forfeited and slashed USDC per provider token, paid to holders of
#         its unbacked tokens at one common rate (`buy_back_unbacked`).
insurance_fund: public(HashMap[address, uint256])
# @notice Slashed bonds of listed lots, per provider token: held here for good
#         and paid to no one. A listed lot leaves no unbacked token to make good,
#         and in the insurance fund its bond was anyone's to claim: the next
#         failing tokenized lot's seller sold its own tokens to it and won the
#         slashed bond back.
forfeited: public(HashMap[address, uint256])
# @notice Tokens in circulation whose lot stopped serving before they were
#         consumed (expired, slashed, or the fee share of a closed lot).
unbacked: public(HashMap[address, uint256])

# @dev Per token, its tokenized lots that still route (open, no close
#      requested, capacity left), as a doubly linked list ordered by (expiry,
#      lot id): `draw` takes from the head, unlinking lots past expiry.
_first_lot: HashMap[address, uint256]
_last_lot: HashMap[address, uint256]
_next_lot: HashMap[uint256, uint256]
_prev_lot: HashMap[uint256, uint256]


# ─── Events ──────────────────────────────────────────────────────────────────

event LotOpened:
    lot_id: indexed(uint256)
    seller: indexed(address)
    token: indexed(address)
    kind: uint8
    face_value: uint256
    capacity: uint256
    seller_amount: uint256
    fee: uint256
    bond: uint256
    expiry: uint64
    rate_bps: uint16
    terms_hash: bytes32

event LotConsumed:
    lot_id: indexed(uint256)
    epoch: indexed(uint256)
    amount: uint256
    consumed: uint256
    bond_released: uint256

event LotCloseRequested:
    lot_id: indexed(uint256)
    seller: indexed(address)
    close_at: uint256

event LotClosed:
    lot_id: indexed(uint256)
    tokens_returned: uint256
    unbacked: uint256
    bond_released: uint256
    bond_forfeited: uint256

event LotExpired:
    lot_id: indexed(uint256)
    unbacked: uint256
    bond_released: uint256
    bond_forfeited: uint256

event LotsPruned:
    token: indexed(address)
    count: uint256
    first_lot: uint256

event LotSlashed:
    lot_id: indexed(uint256)
    token: indexed(address)
    slashed: uint256
    unbacked: uint256

event UnbackedBoughtBack:
    token: indexed(address)
    holder: indexed(address)
    tokens_burned: uint256
    usdc_paid: uint256

event ProviderAdded:
    token: indexed(address)
    bond_bps: uint256

event RoleAttestorChanged:
    account: indexed(address)
    status: bool

event VaultSet:
    vault: indexed(address)

event MintFeeChanged:
    old_bps: uint256
    new_bps: uint256

event MinBondChanged:
    old_bps: uint256
    new_bps: uint256

event TreasuryChanged:
    old_treasury: indexed(address)
    new_treasury: indexed(address)


@deploy
def __init__(usdc_: address, treasury_: address, window_length_: uint256):
    """
    @notice Deploys the escrow; the deployer becomes the admin.
    @param usdc_ The bond asset (USDC, 6 decimals).
    @param treasury_ Receives the mint fee.
    @param window_length_ The credits vault's epoch length in seconds
           (1 .. MAX_WINDOW_LENGTH); a close waits two of them.
    """
    assert usdc_ != empty(address), "escrow: zero address"
    assert treasury_ != empty(address), "escrow: zero address"
    assert window_length_ > 0 and window_length_ <= MAX_WINDOW_LENGTH, "escrow: window length out of range"
    ownable.__init__()
    ownable_2step.__init__()
    usdc = usdc_
    close_delay = 2 * window_length_
    self.treasury = treasury_
    self.mint_fee_bps = 5
    self.min_bond_bps = MIN_BOND_FLOOR_BPS


# ─── Lots ────────────────────────────────────────────────────────────────────


@external
@nonreentrant
def open_lot(
    seller: address,
    token: address,
    kind: uint8,
    face_value: uint256,
    expiry: uint64,
    bond: uint256,
    terms_hash: bytes32,
    rate_bps: uint16,
    hint: uint256 = 0,
) -> uint256:
    """
    @notice Opens a lot of verified API credit and pulls the seller's bond.
    @dev Attestor only. The seller must have approved exactly `bond` USDC
         to this contract: an allowance of any other amount (a standing one
         included) opens nothing, so an attestor cannot open, and then slash,
         a lot its seller never put a bond up for. A tokenized lot mints
         face_value ÷ the token's face value (rounded down); the fee share
         (rounded up) goes to the treasury.
    @param seller The seller; receives tokens and, later, the bond back.
    @param token A registered provider token.
    @param kind KIND_TOKENIZED or KIND_LISTED.
    @param face_value USD micro-units of credit in the lot (the seller's word);
           tokenized: at least MIN_TOKENIZED_FACE; at most MAX_LOT_AMOUNT.
    @param expiry Unix time after which the lot stops serving; at least
           MIN_LOT_VALIDITY from now.
    @param bond USDC (6 decimals) posted, exactly the seller's allowance to
           this contract. Tokenized: exactly `tokenized_bond(token,
           face_value)` (one bond share per token: more is refused too);
           listed: at least `min_bond(face_value)`.
    @param terms_hash Hash of the seller's signed resale-permitted declaration.
    @param rate_bps Listed lots: price as a fraction of list (1..10000); tokenized: 0.
    @param hint Tokenized lots, optional: a tokenized lot of `token` expiring
           no later than `expiry`, in its draw order when read (`insert_hint`
           finds one). If it left the order since (closed, slashed, ended,
           drawn empty, pruned), its tombstones (each lot's predecessor as it
           left) lead back to a linked lot or the head in at most
           MAX_INSERT_WALK steps. The new lot is linked after that and the up
           to MAX_INSERT_WALK lots after it expiring no later (opened since the
           read). 0, an unusable hint (another token's lot, listed, expiring
           later, never opened), or one with more than MAX_INSERT_WALK lots
           unlinked on its tombstone chain, or opened after it, between the
           read and the open: the walks from the tail and the head, as without
           one (refused only with over MAX_INSERT_WALK lots expiring later and
           as many no later). A hint never refuses a lot that opens without it.
    @return uint256 The new lot id (ids start at 1).
    """
    assert self.is_attestor[msg.sender], "escrow: caller is not an attestor"
    assert seller != empty(address), "escrow: zero address"
    assert self.is_provider_token[token], "escrow: unknown token"
    assert face_value > 0, "escrow: zero face value"
    assert face_value <= MAX_LOT_AMOUNT and bond <= MAX_LOT_AMOUNT, "escrow: amount too large"
    assert convert(expiry, uint256) >= block.timestamp + MIN_LOT_VALIDITY, "escrow: expiry too soon"
    assert terms_hash != empty(bytes32), "escrow: resale not declared"

    capacity: uint256 = face_value
    seller_amount: uint256 = 0
    fee: uint256 = 0
    if kind == KIND_TOKENIZED:
        assert rate_bps == 0, "escrow: rate on tokenized lot"
        assert face_value >= MIN_TOKENIZED_FACE, "escrow: face value below minimum"
        # Exactly the token's share, neither less nor more: its tokens are pooled.
        assert bond == self._tokenized_bond(token, face_value), "escrow: bond not the token's share"
        capacity, seller_amount, fee = self._quote_mint(token, face_value)
        assert capacity <= MAX_LOT_AMOUNT, "escrow: amount too large"
        # Too small a lot would hand the whole (rounded-up) fee the lot's capacity.
        assert seller_amount > 0, "escrow: face value too small to mint"
    elif kind == KIND_LISTED:
        assert rate_bps > 0 and convert(rate_bps, uint256) <= BPS, "escrow: bad rate"
        assert bond >= self._min_bond(face_value), "escrow: bond below minimum"
    else:
        raise "escrow: bad kind"

    lot_id: uint256 = self.lot_count + 1
    self.lot_count = lot_id
    self.lots[lot_id] = ICreditEscrow.Lot(
        seller=seller,
        token=token,
        kind=kind,
        status=STATUS_OPEN,
        rate_bps=rate_bps,
        expiry=expiry,
        face_value=face_value,
        capacity=capacity,
        seller_minted=seller_amount,
        consumed=0,
        last_epoch=0,
        bond=bond,
        bond_released=0,
        terms_hash=terms_hash,
        close_at=0,
    )
    self.bonds_held += bond
    if kind == KIND_TOKENIZED:
        self._link(lot_id, token, expiry, hint)

    # The seller's consent to this lot: an allowance of exactly its bond.
    assert staticcall IERC20(usdc).allowance(seller, self) == bond, "escrow: bond not approved for this lot"
    assert extcall IERC20(usdc).transferFrom(seller, self, bond, default_return_value=True), "escrow: bond transfer failed"
    if seller_amount > 0:
        extcall IComputeToken(token).mint(seller, seller_amount)
    if fee > 0:
        extcall IComputeToken(token).mint(self.treasury, fee)

    log LotOpened(
        lot_id=lot_id,
        seller=seller,
        token=token,
        kind=kind,
        face_value=face_value,
        capacity=capacity,
        seller_amount=seller_amount,
        fee=fee,
        bond=bond,
        expiry=expiry,
        rate_bps=rate_bps,
        terms_hash=terms_hash,
    )
    return lot_id


@external
@nonreentrant
def consume(lot_id: uint256, amount: uint256, epoch: uint256) -> (address, uint256):
    """
    @notice Draws a listed lot down by what it served in one USDC settlement
            and releases the matching share of its bond to the seller.
    @dev Vault only, inside the settlement that credits the seller. The
         seller's credit is computed here from the lot's rate on its
         cumulative consumption, so per lot Σ credits == rate × Σ consumed
         (rounded down) exactly, whatever the split into settlements.
    @param lot_id A drawable listed lot (open, not past expiry + grace;
           also during a requested close).
    @param amount USD micro-units at list price; non-zero, within what remains.
    @param epoch The vault's USDC settlement epoch; greater than the lot's last one.
    @return (address, uint256) The seller, and the USDC it earns for `amount`.
    """
    assert msg.sender == self.vault, "escrow: caller is not the vault"
    lot: ICreditEscrow.Lot = self.lots[lot_id]
    assert lot.kind == KIND_LISTED, "escrow: not a listed lot"
    assert self._is_drawable(lot), "escrow: lot not drawable"
    rate: uint256 = convert(lot.rate_bps, uint256)
    # Cumulative rounding: each credit is the step of floor(rate × consumed).
    credit: uint256 = (lot.consumed + amount) * rate // BPS - lot.consumed * rate // BPS
    self._draw_lot(lot_id, lot, amount, epoch)
    return lot.seller, credit


@external
@nonreentrant
def draw(token: address, amount: uint256, epoch: uint256):
    """
    @notice Draws `amount` of `token`'s tokenized capacity, nearest expiry
            first, releasing each drawn lot's bond share to its seller.
    @dev Vault only, inside the settlement that burns exactly `amount`
         of `token`, so per token Σ burned == Σ draw-downs. Only lots that
         still route are drawn (open, no close requested, not past expiry),
         so a seller closing its lot, or one whose lot expired, is never paid
         bond for usage other sellers' keys served; lots it empties are
         closed and unlinked. First it unlinks up to MAX_PRUNE_LOTS lots past
         their expiry from the head of the draw order (see `prune`); they do
         not count against the MAX_DRAW_LOTS it then walks.
    @param token A provider token.
    @param amount Tokens (10**-18 units); non-zero; at most `drawable(token)`.
    @param epoch The vault's settlement epoch of `token`.
    """
    assert msg.sender == self.vault, "escrow: caller is not the vault"
    assert amount > 0, "escrow: zero amount"
    self._prune(token, MAX_PRUNE_LOTS)
    left: uint256 = amount
    lot_id: uint256 = self._first_lot[token]
    for _: uint256 in range(MAX_DRAW_LOTS):
        if left == 0 or lot_id == 0:
            break
        following: uint256 = self._next_lot[lot_id]
        lot: ICreditEscrow.Lot = self.lots[lot_id]
        if self._is_routable(lot):
            take: uint256 = min(left, lot.capacity - lot.consumed)
            self._draw_lot(lot_id, lot, take, epoch)
            left -= take
            if take < lot.capacity - lot.consumed:
                break
        self._unlink(lot_id, token)
        lot_id = following
    assert left == 0, "escrow: draw exceeds drawable capacity"


@external
def prune(token: address, max_lots: uint256) -> uint256:
    """
    @notice Unlinks up to `max_lots` lots past their expiry from the head of
            `token`'s draw order, so they stop taking room in the walk of
            `draw` and `drawable`; anyone may call.
    @dev No money moves and no lot changes: a pruned lot stays open until
         `expire` (after SETTLEMENT_GRACE) ends it with the same payouts,
         and can still be slashed. Lots past expiry are always the head of
         the draw order (it is ordered by expiry, and every lot that stops
         routing for another reason is unlinked when it does), so this pops
         them in order. `draw` prunes up to MAX_PRUNE_LOTS itself; a longer
         crowd needs a call here per MAX_PRUNE_LOTS lots (the coordinator
         sends it when the head of a token it settles is past expiry).
    @param token A provider token.
    @param max_lots Most lots to unlink; at most MAX_PRUNE_LOTS.
    @return uint256 Lots unlinked.
    """
    assert max_lots <= MAX_PRUNE_LOTS, "escrow: too many lots to prune"
    count: uint256 = self._prune(token, max_lots)
    if count > 0:
        log LotsPruned(token=token, count=count, first_lot=self._first_lot[token])
    return count


@external
def request_close(lot_id: uint256) -> uint256:
    """
    @notice The seller asks to close its lot early: it stops being routed at
            once, and may be finalized after `close_delay`.
    @dev Until then the lot stays open: a listed lot is still credited for
         usage it served, and the attestor can still slash it. A tokenized
         lot leaves the draw order at once (the burn draws other lots: a
         closing seller is never paid bond for usage others' keys serve).
    @param lot_id The seller's open lot, with no close requested yet.
    @return uint256 The unix time from which `finalize_close` succeeds.
    """
    lot: ICreditEscrow.Lot = self.lots[lot_id]
    assert lot.seller == msg.sender, "escrow: caller is not the seller"
    assert lot.status == STATUS_OPEN, "escrow: lot not open"
    assert lot.close_at == 0, "escrow: close already requested"
    close_at: uint256 = block.timestamp + close_delay
    self.lots[lot_id].close_at = close_at
    self._unlink(lot_id, lot.token)
    log LotCloseRequested(lot_id=lot_id, seller=msg.sender, close_at=close_at)
    return close_at


@external
@nonreentrant
def finalize_close(lot_id: uint256):
    """
    @notice Ends a lot whose close delay has passed and returns the rest of
            its bond to the seller.
    @dev A tokenized lot requires the seller to return its share of the
         unconsumed capacity, seller_minted × remaining ÷ capacity (rounded
         up): approve them to this contract; they are burned. The treasury's
         fee share of the remainder becomes unbacked and its bond share,
         bond × that ÷ capacity (rounded up), goes to the insurance fund.
    @param lot_id The seller's open lot whose `close_at` has passed.
    """
    lot: ICreditEscrow.Lot = self.lots[lot_id]
    assert lot.seller == msg.sender, "escrow: caller is not the seller"
    assert lot.status == STATUS_OPEN, "escrow: lot not open"
    assert lot.close_at != 0, "escrow: close not requested"
    assert block.timestamp >= lot.close_at, "escrow: close delay not over"

    returned: uint256 = 0
    newly_unbacked: uint256 = 0
    if lot.kind == KIND_TOKENIZED:
        remaining: uint256 = lot.capacity - lot.consumed
        returned = self._ceil_div(lot.seller_minted * remaining, lot.capacity)
        newly_unbacked = remaining - returned

    forfeited: uint256 = 0
    payout: uint256 = 0
    forfeited, payout = self._end_lot(lot_id, lot, STATUS_CLOSED, newly_unbacked)

    if returned > 0:
        assert extcall IERC20(lot.token).transferFrom(msg.sender, self, returned), "escrow: token transfer failed"
        extcall IComputeToken(lot.token).burn(returned)
    if payout > 0:
        self._pay_usdc(lot.seller, payout)
    log LotClosed(
        lot_id=lot_id, tokens_returned=returned, unbacked=newly_unbacked, bond_released=payout, bond_forfeited=forfeited
    )


@external
@nonreentrant
def expire(lot_id: uint256):
    """
    @notice Ends a lot past its expiry and settlement grace; anyone may call.
    @dev A tokenized lot's unconsumed capacity becomes unbacked, and its bond
         share, bond × remaining ÷ capacity (rounded up), goes to the
         provider's insurance fund, never to the seller; the seller gets the
         rest. A listed lot returns its whole unreleased bond.
    @param lot_id An open lot whose expiry + SETTLEMENT_GRACE has passed.
    """
    lot: ICreditEscrow.Lot = self.lots[lot_id]
    assert lot.status == STATUS_OPEN, "escrow: lot not open"
    assert block.timestamp > convert(lot.expiry, uint256) + SETTLEMENT_GRACE, "escrow: lot not expired"

    newly_unbacked: uint256 = 0
    if lot.kind == KIND_TOKENIZED:
        newly_unbacked = lot.capacity - lot.consumed

    forfeited: uint256 = 0
    payout: uint256 = 0
    forfeited, payout = self._end_lot(lot_id, lot, STATUS_EXPIRED, newly_unbacked)
    if payout > 0:
        self._pay_usdc(lot.seller, payout)
    log LotExpired(lot_id=lot_id, unbacked=newly_unbacked, bond_released=payout, bond_forfeited=forfeited)


@external
def slash(lot_id: uint256):
    """
    @notice Slashes a lot whose capacity failed (key revoked, credit gone).
    @dev Attestor only; also during a requested close. A tokenized lot's
         unreleased bond moves to the provider's insurance fund and its
         unconsumed tokens are recorded as unbacked, which holders can sell to
         that fund (`buy_back_unbacked`), which burns them. A listed lot's
         unreleased bond is forfeited for good (`forfeited`): no token needs
         it, and no one, the attestor included, can ever take it. No tokens
         move here.
    @param lot_id An open lot.
    """
    assert self.is_attestor[msg.sender], "escrow: caller is not an attestor"
    lot: ICreditEscrow.Lot = self.lots[lot_id]
    assert lot.status == STATUS_OPEN, "escrow: lot not open"

    slashed: uint256 = lot.bond - lot.bond_released
    newly_unbacked: uint256 = 0
    if lot.kind == KIND_TOKENIZED:
        newly_unbacked = lot.capacity - lot.consumed
        self.unbacked[lot.token] += newly_unbacked

    self.lots[lot_id].status = STATUS_SLASHED
    self.lots[lot_id].bond_released = lot.bond
    self._unlink(lot_id, lot.token)
    self.bonds_held -= slashed
    if lot.kind == KIND_TOKENIZED:
        self.insurance_fund[lot.token] += slashed
    else:
        self.forfeited[lot.token] += slashed
    log LotSlashed(lot_id=lot_id, token=lot.token, slashed=slashed, unbacked=newly_unbacked)


@external
@nonreentrant
def buy_back_unbacked(token: address, amount: uint256) -> uint256:
    """
    @notice Sells `amount` of the caller's `token` to that provider's insurance
            fund; the tokens are burned, restoring the backing of what remains
            in circulation.
    @dev Every tendered token gets the same fixed rate, its bond share:
         face value × token_bond_bps ÷ 10,000, rounded down against the
         caller. Every unbacked token brought at least that share to the
         fund (each lot is bonded at exactly the token's share; its
         forfeits round up), so the fund pays every unbacked token at this
         rate whatever the order; it is never pooled with any other money,
         so no failure raises another's recovery. Approve the tokens first.
    @param token A registered provider token with unbacked supply.
    @param amount Tokens (10**-18 units); non-zero, at most `unbacked[token]`.
    @return uint256 USDC paid (10**-6 units).
    """
    assert self.is_provider_token[token], "escrow: unknown token"
    assert amount > 0, "escrow: zero amount"
    outstanding: uint256 = self.unbacked[token]
    assert amount <= outstanding, "escrow: more than unbacked"
    payout: uint256 = self._buy_back_quote(token, amount)
    assert payout > 0, "escrow: nothing to pay"
    # Never fails: the fund holds at least the share of every unbacked token.
    assert payout <= self.insurance_fund[token], "escrow: insurance fund short"

    self.unbacked[token] = outstanding - amount
    self.insurance_fund[token] -= payout

    assert extcall IERC20(token).transferFrom(msg.sender, self, amount), "escrow: token transfer failed"
    extcall IComputeToken(token).burn(amount)
    self._pay_usdc(msg.sender, payout)
    log UnbackedBoughtBack(token=token, holder=msg.sender, tokens_burned=amount, usdc_paid=payout)
    return payout


# ─── Views ───────────────────────────────────────────────────────────────────


@external
@view
def quote_mint(token: address, face_value: uint256) -> (uint256, uint256, uint256):
    """
    @notice What a tokenized lot of `face_value` would mint now.
    @param token A registered provider token.
    @param face_value USD micro-units.
    @return (uint256, uint256, uint256) Total minted, the seller's share, the fee.
    """
    assert self.is_provider_token[token], "escrow: unknown token"
    return self._quote_mint(token, face_value)


@external
@view
def quote_buy_back(token: address, amount: uint256) -> uint256:
    """
    @notice What `buy_back_unbacked(token, amount)` would pay now.
    @param token A registered provider token.
    @param amount Tokens (10**-18 units); at most `unbacked[token]`.
    @return uint256 USDC (10**-6 units).
    """
    assert amount <= self.unbacked[token], "escrow: more than unbacked"
    return self._buy_back_quote(token, amount)


@external
@view
def min_bond(face_value: uint256) -> uint256:
    """
    @notice The smallest bond accepted for a listed lot of `face_value`.
    @param face_value USD micro-units.
    @return uint256 USDC in 10**-6 units (rounded up).
    """
    return self._min_bond(face_value)


@external
@view
def tokenized_bond(token: address, face_value: uint256) -> uint256:
    """
    @notice The bond of a tokenized lot of `token` of `face_value`: the only
            bond accepted, the token's share of face value.
    @param token A registered provider token.
    @param face_value USD micro-units.
    @return uint256 USDC in 10**-6 units (rounded up, against the seller).
    """
    assert self.is_provider_token[token], "escrow: unknown token"
    return self._tokenized_bond(token, face_value)


@external
@view
def remaining(lot_id: uint256) -> uint256:
    """
    @notice Capacity a lot can still serve (0 unless open).
    @param lot_id The lot.
    @return uint256 In the lot's unit (tokens or USD micro-units).
    """
    lot: ICreditEscrow.Lot = self.lots[lot_id]
    if lot.status != STATUS_OPEN:
        return 0
    return lot.capacity - lot.consumed


@external
@view
def is_routable(lot_id: uint256) -> bool:
    """
    @notice Whether a lot may serve new requests now: open, no close
            requested, not past expiry, capacity left.
    @param lot_id The lot.
    @return bool True if the gateway may route to it.
    """
    return self._is_routable(self.lots[lot_id])


@external
@view
def drawable(token: address) -> uint256:
    """
    @notice What one `draw` of `token` could take now: the remaining capacity
            of its tokenized lots that still route (the first MAX_DRAW_LOTS in
            draw order after the up to MAX_PRUNE_LOTS lots past expiry at its
            head, which the draw unlinks first). With MIN_TOKENIZED_FACE, at
            least min(the routable capacity, 255 lots of $10).
    @param token A provider token.
    @return uint256 Tokens (10**-18 units).
    """
    total: uint256 = 0
    lot_id: uint256 = self._first_lot[token]
    for _: uint256 in range(MAX_PRUNE_LOTS):
        if lot_id == 0 or block.timestamp <= convert(self.lots[lot_id].expiry, uint256):
            break
        lot_id = self._next_lot[lot_id]
    for _: uint256 in range(MAX_DRAW_LOTS):
        if lot_id == 0:
            break
        lot: ICreditEscrow.Lot = self.lots[lot_id]
        if self._is_routable(lot):
            total += lot.capacity - lot.consumed
        lot_id = self._next_lot[lot_id]
    return total


@external
@view
def draw_order(token: address, count: uint256) -> DynArray[uint256, MAX_DRAW_LOTS]:
    """
    @notice The first `count` lots of `token` in draw order (nearest expiry
            first), drawable or not yet unlinked.
    @param token A provider token.
    @param count Most ids to return (≤ MAX_DRAW_LOTS).
    @return DynArray[uint256, MAX_DRAW_LOTS] Lot ids.
    """
    ids: DynArray[uint256, MAX_DRAW_LOTS] = []
    lot_id: uint256 = self._first_lot[token]
    for _: uint256 in range(MAX_DRAW_LOTS):
        if lot_id == 0 or len(ids) >= count:
            break
        ids.append(lot_id)
        lot_id = self._next_lot[lot_id]
    return ids


@external
@view
def insert_hint(token: address, expiry: uint64, start: uint256, max_steps: uint256) -> (uint256, uint256):
    """
    @notice Finds `open_lot`'s hint for a lot of `token` expiring at `expiry`:
            the last lot in draw order expiring no later, walking back from
            `start` (0: the tail) past at most `max_steps` lots expiring later.
            Page through a long draw order by calling again from `next_start`.
    @dev For the attestor, off chain (eth_call). A new lot usually expires last:
         found at the first step.
    @param token A provider token.
    @param expiry The new lot's expiry.
    @param start 0, or a `next_start` from the previous call (it must still be
           in the draw order: "escrow: start not in the draw order" otherwise;
           start again from 0).
    @param max_steps Most lots to walk past (1..MAX_HINT_STEPS).
    @return (uint256, uint256) (hint, next_start): found: (the lot, 0), or
            (0, 0) when every lot expires later (the new lot goes first: no hint
            needed); not found within `max_steps`: (0, the lot to start from).
    """
    assert max_steps > 0, "escrow: zero steps"
    lot_id: uint256 = start
    if start == 0:
        lot_id = self._last_lot[token]
    else:
        assert self._is_linked(start, token), "escrow: start not in the draw order"
    for _: uint256 in range(max_steps, bound=MAX_HINT_STEPS):
        if lot_id == 0 or self.lots[lot_id].expiry <= expiry:
            return lot_id, 0
        lot_id = self._prev_lot[lot_id]
    if lot_id == 0 or self.lots[lot_id].expiry <= expiry:
        return lot_id, 0
    return 0, lot_id


# ─── Admin (the Timelock after deploy) ───────────────────────────────────────


@external
def add_provider(token: address, bond_bps: uint256):
    """
    @notice Registers a provider token that lots may name, with the bond
            share of every tokenized lot of it, for good.
    @dev Admin only, once per token. The token must make this contract its
         minter and a burner. A provider needing another share needs a new
         token: a share that moved would pool lots bonded unequally.
    @param token The ComputeToken.
    @param bond_bps Basis points of face value, MIN_BOND_FLOOR_BPS..10,000.
    """
    ownable._check_owner()
    assert token != empty(address), "escrow: zero address"
    assert not self.is_provider_token[token], "escrow: provider already added"
    assert bond_bps >= MIN_BOND_FLOOR_BPS, "escrow: bond share below floor"
    assert bond_bps <= BPS, "escrow: bond share above 100%"
    assert staticcall IComputeToken(token).face_value_usd_micro() > 0, "escrow: not a compute token"
    assert staticcall IComputeToken(token).is_minter(self), "escrow: not the token's minter"
    assert staticcall IComputeToken(token).is_burner(self), "escrow: not the token's burner"
    self.is_provider_token[token] = True
    self.token_bond_bps[token] = bond_bps
    log ProviderAdded(token=token, bond_bps=bond_bps)


@external
def grant_attestor(account: address):
    """
    @notice Grants the attestor role (opens and slashes lots).
    @dev Admin only (timelocked after deploy).
    @param account Not the zero address.
    """
    ownable._check_owner()
    assert account != empty(address), "escrow: zero address"
    self.is_attestor[account] = True
    log RoleAttestorChanged(account=account, status=True)


@external
def revoke_attestor(account: address):
    """
    @notice Revokes the attestor role.
    @dev Admin only; registered as a revocation in the Timelock, so its
         guardian can call it at once.
    @param account A current attestor.
    """
    ownable._check_owner()
    assert self.is_attestor[account], "escrow: not an attestor"
    self.is_attestor[account] = False
    log RoleAttestorChanged(account=account, status=False)


@external
def set_vault(vault_: address):
    """
    @notice Names the CreditsVault, the only caller of `consume` and `draw`.
    @dev Admin only, once (deploy calls it before handing the admin over):
         no later call can give anyone else the power to draw lots.
    @param vault_ The CreditsVault; not the zero address.
    """
    ownable._check_owner()
    assert vault_ != empty(address), "escrow: zero address"
    assert self.vault == empty(address), "escrow: vault already set"
    self.vault = vault_
    log VaultSet(vault=vault_)


@external
def set_mint_fee_bps(new_bps: uint256):
    """
    @notice Sets the mint fee for lots opened from now on.
    @dev Admin only; at most MAX_MINT_FEE_BPS.
    @param new_bps Basis points of minted tokens.
    """
    ownable._check_owner()
    assert new_bps <= MAX_MINT_FEE_BPS, "escrow: fee above cap"
    log MintFeeChanged(old_bps=self.mint_fee_bps, new_bps=new_bps)
    self.mint_fee_bps = new_bps


@external
def set_min_bond_bps(new_bps: uint256):
    """
    @notice Sets the minimum bond, as a share of face value, for new listed
            lots (tokenized lots are bonded at their token's fixed share).
    @dev Admin only; between the immutable MIN_BOND_FLOOR_BPS and 100 %.
    @param new_bps Basis points of face value.
    """
    ownable._check_owner()
    assert new_bps >= MIN_BOND_FLOOR_BPS, "escrow: bond share below floor"
    assert new_bps <= BPS, "escrow: bond share above 100%"
    log MinBondChanged(old_bps=self.min_bond_bps, new_bps=new_bps)
    self.min_bond_bps = new_bps


@external
def set_treasury(new_treasury: address):
    """
    @notice Sets the mint fee recipient.
    @dev Admin only.
    @param new_treasury Not the zero address.
    """
    ownable._check_owner()
    assert new_treasury != empty(address), "escrow: zero address"
    log TreasuryChanged(old_treasury=self.treasury, new_treasury=new_treasury)
    self.treasury = new_treasury


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
@view
def _quote_mint(token: address, face_value: uint256) -> (uint256, uint256, uint256):
    # Tokens round down (against the seller); the fee rounds up (for the treasury).
    capacity: uint256 = face_value * 10**18 // staticcall IComputeToken(token).face_value_usd_micro()
    fee: uint256 = self._ceil_div(capacity * self.mint_fee_bps, BPS)
    return capacity, capacity - fee, fee


@internal
@view
def _min_bond(face_value: uint256) -> uint256:
    return self._ceil_div(face_value * self.min_bond_bps, BPS)


@internal
@view
def _tokenized_bond(token: address, face_value: uint256) -> uint256:
    return self._ceil_div(face_value * self.token_bond_bps[token], BPS)


@internal
@view
def _buy_back_quote(token: address, amount: uint256) -> uint256:
    # The token's bond share of the tendered face value, rounded down: every
    # unbacked token brought at least bond ÷ capacity ≥ this rate to the fund
    # (bond rounded up, capacity down, forfeits up), so a sale never leaves
    # the tokens still outstanding less than their share.
    face: uint256 = staticcall IComputeToken(token).face_value_usd_micro()
    return amount * face * self.token_bond_bps[token] // (10**18 * BPS)


@internal
def _end_lot(lot_id: uint256, lot: ICreditEscrow.Lot, status: uint8, newly_unbacked: uint256) -> (uint256, uint256):
    # Ends a lot; its newly unbacked tokens take their bond share (rounded up)
    # to the insurance fund. Returns (forfeited, owed to the seller).
    # floor(bond × consumed ÷ cap) + ceil(bond × unbacked ÷ cap) ≤ bond, as
    # unbacked ≤ cap − consumed, so the forfeit never exceeds what is held.
    forfeited: uint256 = 0
    if newly_unbacked > 0:
        forfeited = self._ceil_div(lot.bond * newly_unbacked, lot.capacity)
        self.unbacked[lot.token] += newly_unbacked
        self.insurance_fund[lot.token] += forfeited
    held: uint256 = lot.bond - lot.bond_released
    payout: uint256 = held - forfeited
    self.lots[lot_id].status = status
    self.lots[lot_id].bond_released = lot.bond
    self._unlink(lot_id, lot.token)
    self.bonds_held -= held
    return forfeited, payout


@internal
@view
def _is_drawable(lot: ICreditEscrow.Lot) -> bool:
    # Whether settlement may still draw (or credit) this lot: the one place that says so.
    return lot.status == STATUS_OPEN and block.timestamp <= convert(lot.expiry, uint256) + SETTLEMENT_GRACE


@internal
@view
def _is_routable(lot: ICreditEscrow.Lot) -> bool:
    # Whether the gateway may still route to the lot, and so `draw` take from it.
    return (
        lot.status == STATUS_OPEN
        and lot.close_at == 0
        and block.timestamp <= convert(lot.expiry, uint256)
        and lot.consumed < lot.capacity
    )


@internal
def _draw_lot(lot_id: uint256, lot: ICreditEscrow.Lot, amount: uint256, epoch: uint256):
    # Draws `amount` of capacity and releases the bond pro rata to the seller.
    assert amount > 0, "escrow: zero amount"
    assert epoch > 0, "escrow: epochs start at 1"
    assert epoch > lot.last_epoch, "escrow: epoch already consumed"
    assert amount <= lot.capacity - lot.consumed, "escrow: over-consume"

    consumed: uint256 = lot.consumed + amount
    # Release rounds down: the seller never gets bond back ahead of usage.
    released: uint256 = lot.bond * consumed // lot.capacity
    payout: uint256 = released - lot.bond_released

    self.lots[lot_id].consumed = consumed
    self.lots[lot_id].last_epoch = epoch
    self.lots[lot_id].bond_released = released
    if consumed == lot.capacity:
        self.lots[lot_id].status = STATUS_CLOSED
        self._unlink(lot_id, lot.token)
    self.bonds_held -= payout

    if payout > 0:
        self._pay_usdc(lot.seller, payout)
    log LotConsumed(lot_id=lot_id, epoch=epoch, amount=amount, consumed=consumed, bond_released=payout)


@internal
def _link(lot_id: uint256, token: address, expiry: uint64, hint: uint256):
    # Inserts a tokenized lot in its token's draw order, sorted by (expiry, lot
    # id): after every lot expiring no later. With a usable hint it walks
    # forward from the hint, so the draw order's length never refuses a lot.
    # Without one it walks back from the tail past lots that expire later, and
    # if more than MAX_INSERT_WALK do, forward from the head past lots that
    # expire no later: 257 lots expiring far out plus 257 at the minimum
    # validity refuse every lot expiring between them (found: session 6).
    # The hint cures that, and an unlinked hint still serves: read off chain a
    # block or more before the open is mined, it may have been closed, slashed,
    # drawn empty or pruned since (its seller closing it in front of the open:
    # found, session 6). An unlinked lot keeps its predecessor as it left (a
    # tombstone; 0 = it was the head), which expires no later than it, so the
    # tombstones lead from the hint to a linked lot (or the head) where the walk
    # may start. Only more than MAX_INSERT_WALK lots unlinked on that chain, or
    # opened after the start expiring no later, between the read and the open
    # make the hint fall back to the walks, which never revert for a hint.
    after: uint256 = 0
    before: uint256 = 0
    found: bool = False
    if (
        hint != 0
        and self.lots[hint].token == token
        and self.lots[hint].kind == KIND_TOKENIZED
        and self.lots[hint].expiry <= expiry
    ):
        # Every lot on the tombstone chain sorts before the hint (a lot is linked
        # once, never again), so any linked one the chain reaches is a valid start.
        start: uint256 = hint
        for _: uint256 in range(MAX_INSERT_WALK):
            if start == 0 or self._in_order(start, token):
                break
            start = self._prev_lot[start]
        if start == 0 or self._in_order(start, token):
            after = start
            before = self._first_lot[token]
            if start != 0:
                before = self._next_lot[start]
            for _: uint256 in range(MAX_INSERT_WALK):
                if before == 0 or self.lots[before].expiry > expiry:
                    break
                after = before
                before = self._next_lot[before]
            found = before == 0 or self.lots[before].expiry > expiry
    if not found:
        after = self._last_lot[token]
        before = 0
        for _: uint256 in range(MAX_INSERT_WALK):
            if after == 0 or self.lots[after].expiry <= expiry:
                break
            before = after
            after = self._prev_lot[after]
        if after != 0 and self.lots[after].expiry > expiry:
            after = 0
            before = self._first_lot[token]
            for _: uint256 in range(MAX_INSERT_WALK):
                if before == 0 or self.lots[before].expiry > expiry:
                    break
                after = before
                before = self._next_lot[before]
            assert before == 0 or self.lots[before].expiry > expiry, "escrow: too many lots expire later"
    self._prev_lot[lot_id] = after
    self._next_lot[lot_id] = before
    if after == 0:
        self._first_lot[token] = lot_id
    else:
        self._next_lot[after] = lot_id
    if before == 0:
        self._last_lot[token] = lot_id
    else:
        self._prev_lot[before] = lot_id


@internal
@view
def _in_order(lot_id: uint256, token: address) -> bool:
    # Whether a lot of `token` (non-zero) is in its draw order, decided on the
    # next side: `_unlink` and `_prune` zero an unlinked lot's next link, and
    # the tail, the one linked lot without one, is `_last_lot` (unlinking the
    # tail moves it). The prev link of an unlinked lot is its tombstone.
    return self._next_lot[lot_id] != 0 or self._last_lot[token] == lot_id


@internal
@view
def _is_linked(lot_id: uint256, token: address) -> bool:
    # In `token`'s draw order. A listed lot, another token's, or an id never
    # opened is never linked (`_last_lot` holds only linked lots' ids).
    return lot_id != 0 and self.lots[lot_id].token == token and self._in_order(lot_id, token)


@internal
def _prune(token: address, max_lots: uint256) -> uint256:
    # Pops the lots past expiry off the head of the draw order (they are its
    # prefix: it is sorted by expiry). A popped lot's links are zeroed: so a
    # later `_unlink` of it (expire, slash, close) is a no-op, and as a
    # tombstone it says "was at the head" (every lot before it is popped too).
    lot_id: uint256 = self._first_lot[token]
    count: uint256 = 0
    for _: uint256 in range(max_lots, bound=MAX_PRUNE_LOTS):
        if lot_id == 0 or block.timestamp <= convert(self.lots[lot_id].expiry, uint256):
            break
        following: uint256 = self._next_lot[lot_id]
        if count > 0:
            self._prev_lot[lot_id] = 0  # the head's is 0 already
        self._next_lot[lot_id] = 0
        lot_id = following
        count += 1
    if count > 0:
        self._first_lot[token] = lot_id
        if lot_id == 0:
            self._last_lot[token] = 0
        else:
            self._prev_lot[lot_id] = 0
    return count


@internal
def _unlink(lot_id: uint256, token: address):
    # Removes a lot from its token's draw order; a no-op for a lot not in it
    # (a listed lot, or one already unlinked). The lot keeps its prev link, its
    # predecessor as it left, as a tombstone for an open whose hint it is (see
    # `_link`); only its next link is zeroed, which marks it unlinked.
    if not self._in_order(lot_id, token):
        return
    after: uint256 = self._prev_lot[lot_id]
    before: uint256 = self._next_lot[lot_id]
    if after == 0:
        self._first_lot[token] = before
    else:
        self._next_lot[after] = before
    if before == 0:
        self._last_lot[token] = after
    else:
        self._prev_lot[before] = after
        self._next_lot[lot_id] = 0


@internal
def _pay_usdc(to: address, amount: uint256):
    assert extcall IERC20(usdc).transfer(to, amount, default_return_value=True), "escrow: usdc transfer failed"


@internal
@pure
def _ceil_div(a: uint256, b: uint256) -> uint256:
    return (a + b - 1) // b
