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


def listed_credit(consumed_before: int, amount: int, rate_bps: int) -> int:
    """What `CreditEscrow.consume` pays a listed lot's seller for drawing `amount` more
    capacity (USD micro at list price): the step of floor(rate × consumed), so per lot
    Σ credits == rate × Σ consumed, rounded down once, however the draws are split."""
    return (consumed_before + amount) * rate_bps // BPS - consumed_before * rate_bps // BPS
