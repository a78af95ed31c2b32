"""Units and scales shared by every contract and service: one definition each.

Money is an integer in its asset's smallest unit: USDC has 6 decimals (one unit is a
USD micro-unit), every provider token 18. Oracle prices are USDC units per 10**18
token units as an 18-decimal fixed-point number, so PRICE_SCALE converts.
"""

USDC_SYMBOL = "USDC"
USDC_DECIMALS = 6
TOKEN_DECIMALS = 18  # every provider token (and any other PROMPTEX credit token)
USD_MICRO: int = 10**USDC_DECIMALS  # USD micro-units per dollar; equal to USDC's smallest unit
TOKEN_UNIT: int = 10**TOKEN_DECIMALS  # smallest units per whole provider token

WAD = 10**18  # one, in 18-decimal fixed point (Oracle prices, Perp's funding fractions)
# Oracle.consult's scale: USDC units = token units × price / PRICE_SCALE
# (10**18 token units per price × 10**18 fixed point).
PRICE_SCALE = TOKEN_UNIT * WAD
PRICE_UNIT = USD_MICRO * WAD  # the Oracle price of one dollar per whole token

BPS = 10_000  # basis points in one
MAX_UINT256 = 2**256 - 1
ZERO_ADDRESS = "0x" + "00" * 20

HOUR = 3_600  # seconds
DAY = 86_400


def whole_units(amount: int, decimals: int) -> str:
    """`amount` smallest units as whole units, exactly, without trailing zeros: (4500, 3) → "4.5"."""
    whole_part, fraction = divmod(abs(amount), 10**decimals)
    digits = str(fraction).rjust(decimals, "0").rstrip("0")
    return ("-" if amount < 0 else "") + (f"{whole_part}.{digits}" if digits else str(whole_part))
