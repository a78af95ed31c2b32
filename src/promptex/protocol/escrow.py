"""CreditEscrow's constants, mirrored for Python callers (they match the contract's
public constants; tests check that they do)."""

from promptex.protocol.units import BPS

KIND_TOKENIZED = 1
KIND_LISTED = 2

STATUS_OPEN = 1
STATUS_CLOSED = 2
STATUS_EXPIRED = 3
STATUS_SLASHED = 4

# Seconds after a lot's expiry during which usage it served may still be settled: the
# expiry's window, the longest vault pause (one day) and two windows to post, windows at
# their longest (one hour), so no pause lets a keeper expire a lot before it settles.
SETTLEMENT_GRACE = 3 * 3_600 + 86_400
MAX_MINT_FEE_BPS = 100
# The immutable floor of the minimum bond (10 % of face value) and the shortest validity
# a lot may open with (7 days).
MIN_BOND_FLOOR_BPS = 1_000
MIN_LOT_VALIDITY = 7 * 86_400
# The smallest face value of a tokenized lot ($10, USD micro): one draw walks at most
# MAX_DRAW_LOTS lots in expiry order, so a full walk always draws at least 255 x $10 and a
# crowd of lots expiring soonest cannot hold the draw away from honest capacity for long.
MIN_TOKENIZED_FACE = 10 * 10**6
# Lots one draw walks (routable ones), and lots past expiry it, or one `prune`, unlinks
# from the head of a token's draw order first (not counted against the walk).
MAX_DRAW_LOTS = 256
MAX_PRUNE_LOTS = 256
# Lots `open_lot` walks past forward from its hint (and, without a usable one, from each
# end of the draw order); lots one `insert_hint` call walks (the attestor pages longer orders).
MAX_INSERT_WALK = 256
MAX_HINT_STEPS = 1024
# The largest face value, capacity or bond of a lot (products of two fit 256 bits).
MAX_LOT_AMOUNT = 2**128 - 1
# The bond share deploy gives every provider token (`add_provider`): every tokenized lot
# of a token is bonded at exactly its token's share, fixed for good, so pooling the
# token's failures is fair (a failed seller tendering its own tokens recovers at most
# what it posted for them), and an unbacked token buys back at this share of its face.
TOKEN_BOND_BPS = 1_000


def listed_credit(consumed_before: int, amount: int, rate_bps: int) -> int:
    """What `CreditEscrow.consume` pays a listed lot's seller for drawing `amount` more
    capacity (USD micro at list price): the step of floor(rate × consumed), so per lot
    Σ credits == rate × Σ consumed, rounded down once, however the draws are split."""
    return (consumed_before + amount) * rate_bps // BPS - consumed_before * rate_bps // BPS


def tokenized_bond(face_value_usd_micro: int, bond_bps: int = TOKEN_BOND_BPS) -> int:
    """The only bond `CreditEscrow.open_lot` accepts for a tokenized lot (USDC units):
    its token's share of face value, rounded up against the seller."""
    return -(-face_value_usd_micro * bond_bps // BPS)


def buy_back_payout(amount: int, token_face_value_usd_micro: int, bond_bps: int = TOKEN_BOND_BPS) -> int:
    """What `CreditEscrow.buy_back_unbacked` pays for `amount` tokens (10**-18 units):
    the token's bond share of their face value, rounded down against the holder."""
    return amount * token_face_value_usd_micro * bond_bps // (10**18 * BPS)
