"""The DEX's constants and its constant-product arithmetic, mirrored exactly from
`contracts/Router.vy` and `contracts/Pool.vy` (tests check both against the
contracts). `promptex.chain.dex` deploys the DEX and seeds pools through ape."""

from __future__ import annotations

from promptex.protocol.units import BPS

# Mirrors of the contracts' constants (tests check that they match).
DEFAULT_FEE = 30  # Factory.DEFAULT_FEE: 0.30 %, in parts per FEE_DENOMINATOR
FEE_DENOMINATOR = BPS  # pool fees are in basis points
MINIMUM_LIQUIDITY = 1_000  # Pool.MINIMUM_LIQUIDITY, locked at the zero address
MAX_RESERVE = 2**112 - 1  # Pool.MAX_RESERVE: reserves are packed as uint112

# Least seconds between two Oracle observations of a token: a minute on a demo
# chain, fifteen minutes on a live one (64 observations then cover 16 hours).
LOCAL_ORACLE_PERIOD = 60
LIVE_ORACLE_PERIOD = 900


def amount_out(amount_in: int, reserve_in: int, reserve_out: int, fee: int = DEFAULT_FEE) -> int:
    """Output of one hop for an exact input, rounded down (`Router.get_amount_out`)."""
    with_fee = amount_in * (FEE_DENOMINATOR - fee)
    return with_fee * reserve_out // (reserve_in * FEE_DENOMINATOR + with_fee)


def amount_in(amount_out: int, reserve_in: int, reserve_out: int, fee: int = DEFAULT_FEE) -> int:
    """Least input of one hop for an exact output, rounded up (`Router.get_amount_in`);
    `amount_out` must be below `reserve_out`."""
    numerator = reserve_in * amount_out * FEE_DENOMINATOR
    denominator = (reserve_out - amount_out) * (FEE_DENOMINATOR - fee)
    return -(-numerator // denominator)


def quote_amount_at_price(token_amount: int, price: int, token_decimals: int = 18) -> int:
    """Quote units worth `token_amount` at `price` quote units per whole token, rounded
    down. CLD at $0.004218 against USDC: price 4_218, so 10**18 CLD units ↔ 4_218."""
    return int(token_amount * price // 10**token_decimals)
