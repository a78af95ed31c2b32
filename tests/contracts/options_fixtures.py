"""Options fixtures for the ape contract tests (test_options*.py). A test module
takes them with `from options_fixtures import *`, which brings the DEX fixtures
too, and imports the constants it uses by name.

Options is deployed by the real code (`promptex.chain.options.deploy_options`)
once per module over the DEX of dex_fixtures.py (Oracle period 60 s, settlement
window 600 s). `tradable` builds the usual world: CLD/USDC and GPT/USDC markets
tracked by the Oracle; `writer` (the DEX's lp, a seller of capacity) and `holder`
(the trader, a company buying compute) each hold USDC and approved Options.
"""

import dex_fixtures
import pytest
from dex_fixtures import *  # noqa: F403  (the DEX fixtures)
from dex_fixtures import CLD_PRICE, GPT_PRICE

from promptex.chain.options import deploy_options, read_observations
from promptex.protocol.dex import LOCAL_ORACLE_PERIOD as PERIOD
from promptex.protocol.options import CALL, PUT, Terms, settlement_ranks
from promptex.protocol.options import LOCAL_TWAP_WINDOW as TWAP_WINDOW
from promptex.protocol.units import DAY
from promptex.protocol.units import MAX_UINT256 as MAX_UINT
from promptex.protocol.units import TOKEN_UNIT as UNIT
from promptex.protocol.units import USD_MICRO as USD
from promptex.protocol.units import WAD as FIXED

__all__ = [  # the fixtures (dex_fixtures' included); constants are imported by name
    *dex_fixtures.__all__,
    "call_terms",
    "holder",
    "keeper",
    "observe_through",
    "options",
    "put_terms",
    "settle_series",
    "tradable",
    "writer",
    "written",
]

CLD_SPOT = CLD_PRICE * FIXED  # $0.004218
GPT_SPOT = GPT_PRICE * FIXED  # $3.695
# A capped call on 1M CLD ($4,218): strike $0.004, cap $0.006 → $2,000 of collateral a unit.
CALL_STRIKE, CALL_CAP, CALL_SIZE = 4_000 * FIXED, 6_000 * FIXED, 10**6 * UNIT
CALL_COLLATERAL = 2_000 * USD
# A put on 1,000 GPT ($3,695): strike $3.50, no floor → $3,500 of collateral a unit.
PUT_STRIKE, PUT_FLOOR, PUT_SIZE = 3_500_000 * FIXED, 0, 1_000 * UNIT
PUT_COLLATERAL = 3_500 * USD
TERM = DAY


@pytest.fixture(scope="module")
def options(admin, oracle, usdc):
    return deploy_options(admin, oracle, usdc, twap_window=TWAP_WINDOW, log=lambda _: None)


@pytest.fixture(scope="module")
def writer(lp):
    """Writes options (a seller of capacity, the DEX's lp)."""
    return lp


@pytest.fixture(scope="module")
def holder(trader):
    """Buys options (a company that pays for compute)."""
    return trader


@pytest.fixture(scope="module")
def keeper(accounts):
    """Updates the Oracle and settles series; holds nothing."""
    return accounts[7]


@pytest.fixture
def tradable(markets, oracle, options, usdc, writer, holder, keeper):
    """Markets tracked by the Oracle; writer and holder approved Options for USDC."""
    cld, gpt = markets[0], markets[1]
    for token in (cld, gpt):
        oracle.update(token, sender=keeper)
    for account in (writer, holder):
        usdc.approve(options, MAX_UINT, sender=account)
    return markets


@pytest.fixture
def call_terms(tradable, chain):
    """A capped call on CLD expiring TERM from now (not yet created)."""
    return Terms(tradable[0].address, CALL, CALL_STRIKE, CALL_CAP, chain.pending_timestamp + TERM, CALL_SIZE)


@pytest.fixture
def put_terms(tradable, chain):
    """A put on GPT expiring TERM from now (not yet created)."""
    return Terms(tradable[1].address, PUT, PUT_STRIKE, PUT_FLOOR, chain.pending_timestamp + TERM, PUT_SIZE)


@pytest.fixture
def written(options, call_terms, writer, keeper):
    """Create the call series and have `writer` write `units` of it; returns its id."""

    def _written(units=10, terms=None, by=None):
        terms = call_terms if terms is None else terms
        if options.series(terms.id).token != terms.token:
            options.create_series(*terms.args(), sender=keeper)
        options.write(terms.id, units, sender=writer if by is None else by)
        return terms.id

    return _written


@pytest.fixture
def observe_through(oracle, chain, keeper):
    """Oracle updates of `token` every `step` seconds from `start` to `end` inclusive
    (each transaction at exactly that time)."""

    def _observe(token, start, end, step=PERIOD):
        t = start
        while t <= end:
            chain.pending_timestamp = t
            oracle.update(token, sender=keeper)
            t += step

    return _observe


@pytest.fixture
def settle_series(options, oracle, chain, keeper, observe_through):
    """Record observations across the settlement window of `terms` (from before its
    start to its expiry), then settle at `at` (default expiry + 1) with the ranks the
    off-chain mirror computes; returns the receipt."""

    def _settle(terms, at=None, sender=None):
        token = terms.token
        observe_through(token, terms.expiry - TWAP_WINDOW - PERIOD, terms.expiry)
        at = terms.expiry + 1 if at is None else at
        chain.pending_timestamp = at
        start, end = settlement_ranks(read_observations(oracle, token), at, terms.expiry, TWAP_WINDOW)
        return options.settle(terms.id, start, end, sender=keeper if sender is None else sender)

    return _settle
