"""CreditEscrow's constants, mirrored for Python callers (they match the contract's
public constants; tests check that they do)."""

KIND_TOKENIZED = 1
KIND_LISTED = 2

STATUS_OPEN = 1
STATUS_CLOSED = 2
STATUS_EXPIRED = 3
STATUS_SLASHED = 4

# Seconds after a lot's expiry during which usage it served may still be settled.
SETTLEMENT_GRACE = 7_200
MAX_MINT_FEE_BPS = 100
