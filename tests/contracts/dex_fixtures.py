"""DEX fixtures for the ape contract tests (test_pool, test_factory, test_router,
test_oracle, test_dex_gas). A test module takes them all with
`from dex_fixtures import *` (pytest registers fixtures found in the module's
namespace) and imports the constants it uses by name; the personas and the
PROMPTEX deployment come from conftest.py.

The DEX is deployed by the real deploy code (`promptex.chain.dex.deploy_dex`) once
per test module, next to conftest's deployment; ape reverts the chain around every
test, so each starts from it.
"""

import pytest

from promptex.chain.dex import create_pool_at_price, deploy_dex, pool_at
from promptex.protocol.dex import DEFAULT_FEE, LOCAL_ORACLE_PERIOD
from promptex.protocol.escrow import KIND_TOKENIZED
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO

__all__ = [  # the fixtures; constants are imported by name
    "add_liquidity",
    "deadline",
    "dex",
    "factory",
    "lp",
    "markets",
    "oracle",
    "plain",
    "provider_tokens",
    "router",
    "trader",
]

CLD_PRICE = 4_218  # USDC units per whole CLD ($0.004218)
GPT_PRICE = 3_695_000  # $3.695


@pytest.fixture(scope="module")
def dex(admin, usdc):
    return deploy_dex(admin, lambda _: None, quote_token=usdc.address, oracle_period=LOCAL_ORACLE_PERIOD)


@pytest.fixture(scope="module")
def factory(dex):
    return dex["Factory"]


@pytest.fixture(scope="module")
def router(dex):
    return dex["Router"]


@pytest.fixture(scope="module")
def oracle(dex):
    return dex["Oracle"]


@pytest.fixture(scope="module")
def lp(seller):
    """Provides liquidity (a seller making a market in its own tokens)."""
    return seller


@pytest.fixture(scope="module")
def trader(buyer):
    """Swaps through the router."""
    return buyer


@pytest.fixture(scope="module")
def plain(project, admin, lp, trader, attacker, router):
    """Three plain 18-decimal ERC-20s sorted by address; lp, trader and attacker each
    hold 10**12 of every one and have approved the router without limit."""
    tokens = [admin.deploy(project.MockERC20, f"Plain {i}", f"PLN{i}", 18) for i in range(3)]
    tokens.sort(key=lambda t: int(t.address, 16))
    for token in tokens:
        for account in (lp, trader, attacker):
            token.mint(account, 10**12 * UNIT, sender=account)
            token.approve(router, MAX_UINT, sender=account)
    return tokens


@pytest.fixture
def deadline(chain):
    return chain.pending_timestamp + 3_600


@pytest.fixture
def add_liquidity(router, lp, chain):
    """Add liquidity through the router as `lp` (creating the pool if needed); returns the pool."""

    def _add(token_a, token_b, amount_a, amount_b, fee=DEFAULT_FEE, provider=None):
        provider = lp if provider is None else provider
        router.add_liquidity(
            token_a,
            token_b,
            fee,
            amount_a,
            amount_b,
            0,
            0,
            provider,
            chain.pending_timestamp + 3_600,
            sender=provider,
        )
        return pool_at(router.pool_for(token_a, token_b, fee))

    return _add


@pytest.fixture
def provider_tokens(open_lot, escrow, lp, usdc, cld, gpt, router, trader):
    """`lp` holds freshly minted CLD and GPT (tokenized lots of $500,000 each) and USDC;
    `trader` holds USDC; both approved the router for all three."""
    for token in (cld, gpt):
        open_lot(lp, token, kind=KIND_TOKENIZED, face_value=500_000 * USD_MICRO)
    usdc.mint(lp, 10**6 * USD_MICRO, sender=lp)
    usdc.mint(trader, 10**6 * USD_MICRO, sender=trader)
    for account in (lp, trader):
        for token in (cld, gpt, usdc):
            token.approve(router, MAX_UINT, sender=account)
    return cld, gpt, usdc


@pytest.fixture
def markets(provider_tokens, router, factory, lp, trader):
    """CLD/USDC and GPT/USDC 0.30 % pools at the reference prices, $100,000 deep each
    (seeded with `create_pool_at_price`); the trader holds 10M CLD."""
    cld, gpt, usdc = provider_tokens
    depth = 100_000 * USD_MICRO
    cld_pool = create_pool_at_price(router, factory, cld, usdc, depth * 10**18 // CLD_PRICE, CLD_PRICE, lp)
    gpt_pool = create_pool_at_price(router, factory, gpt, usdc, depth * 10**18 // GPT_PRICE, GPT_PRICE, lp)
    cld.transfer(trader, 10_000_000 * UNIT, sender=lp)
    return cld, gpt, usdc, cld_pool, gpt_pool
