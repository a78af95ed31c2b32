"""The Timelock's constants, mirrored for Python callers (a test checks them against
the contract); `promptex.chain.timelock` deploys it and sends operations through it."""

from promptex.protocol.units import DAY

# Timelock.MIN_DELAY: longer than the vault's MAX_THAW_PERIOD + MAX_PAUSE and
# RedemptionEscrow's MAX_REFUND_DELAY.
MIN_DELAY = 4 * DAY
MAX_DELAY = 30 * DAY
NO_PREDECESSOR = b"\x00" * 32  # an operation that waits for no other
