"""The enterprise hedging example: `ape run hedge_scenarios --network ethereum:local:foundry`.

A company expects to spend $2,000,000 on GPT-priced compute next quarter and fears the
price will rise. On a fresh local market (deploy, GPT/USDC pool at $3.695), a dealer
writes capped calls and provides the perpetual's liquidity; the company takes each hedge
sized to its exposure. Three scenarios then play out from the same starting state (a
chain snapshot restored between them), the quarter compressed into an hour of chain
time, the price moved by real swaps and read only through the Oracle's TWAP:

    A  GPT +40 %              B  flat              C  the company switches to Claude
                                                      (GPT demand falls: GPT −20 %)

Every profit and loss in the table is what the contracts paid: the capped call's
payout (claimed after settlement) minus its premium, each perpetual position's payout on
close minus its margin. The seed's narrative said a *short* profits when the price rises;
it does not (scenario A's short column): a buyer exposed to rising prices hedges with a
capped call or a long, and a seller of capacity (who loses when prices fall) with a put
or a short.
"""

from __future__ import annotations

import tempfile
from decimal import Decimal
from math import isqrt
from pathlib import Path
from typing import NamedTuple

import click
from ape import accounts, chain
from ape.cli import ConnectedProviderCommand
from rich.console import Console
from rich.table import Table

from promptex.chain.deploy import contract_at, deploy_all
from promptex.chain.dex import pool_at
from promptex.chain.options import settle
from promptex.chain.seed import mint_tokens, reserves, seed_pools
from promptex.cli.errors import readable_errors
from promptex.protocol.dex import DEFAULT_FEE
from promptex.protocol.options import CALL, PUT, Terms, units_for_exposure
from promptex.protocol.perp import DEFAULT_MARKET
from promptex.protocol.units import HOUR, PRICE_UNIT, TOKEN_UNIT, USD_MICRO
from promptex.protocol.units import MAX_UINT256 as MAX_UINT

console = Console(width=150)
EXPOSURE_USD = 2_000_000
# Each side of the GPT/USDC pool: a $2M perpetual hedge needs a pool ≥ $20M deep, since a side's
# open interest is capped at 10 % of the depth of the pool the Oracle reads (DEFAULT_MARKET).
POOL_DEPTH_USD = 25_000_000
PERP_LIQUIDITY_USD = 5_000_000  # the dealer's USDC in the perpetual's pool
SIZE = 1_000 * TOKEN_UNIT  # GPT tokens one option unit covers
CALL_PREMIUM = 150 * USD_MICRO  # per unit (1,000 GPT, $3,695 of compute at the strike)
PUT_PREMIUM = 120 * USD_MICRO
LEVERAGE = 5

SCENARIOS = (
    ("A", "GPT +40 %", Decimal("1.4")),
    ("B", "flat", Decimal(1)),
    ("C", "to Claude, GPT −20 %", Decimal("0.8")),
)


def dollars(micro: int) -> str:
    sign = "−" if micro < 0 else ""
    return f"{sign}${abs(micro) / USD_MICRO:,.0f}"


@click.command(cls=ConnectedProviderCommand)
def cli(network):
    with readable_errors():
        run(network.name)


class Hedges(NamedTuple):  # (not a dataclass: ape loads scripts outside sys.modules)
    call: Terms
    put: Terms
    units: int
    long_id: int
    short_id: int
    margin: int


def run(network_name: str) -> None:
    admin, dealer, company, seller, trader = accounts.test_accounts[0:5]
    root = Path(tempfile.mkdtemp(prefix="promptex-hedge-"))
    deployment = deploy_all(admin, network_name, force=True, root=root, log=lambda _: None)
    gpt = contract_at(deployment, "token:GPT")
    oracle, options, perp = (contract_at(deployment, n) for n in ("Oracle", "Options", "Perp"))
    seed_pools(deployment, admin, POOL_DEPTH_USD, symbols=("GPT",))
    window, period = int(options.twap_window()), int(oracle.period())
    keep_oracle_fresh(oracle, gpt, admin, window + period)  # a TWAP window of history

    price0 = int(oracle.consult(gpt, window))
    tokens = EXPOSURE_USD * USD_MICRO * TOKEN_UNIT * PRICE_UNIT // (price0 * USD_MICRO)
    console.print(f"[bold]GPT at ${price0 / PRICE_UNIT:,.4f} (TWAP)[/]: ${EXPOSURE_USD:,} buys "
                  f"{tokens / TOKEN_UNIT:,.0f} GPT of compute next quarter")  # fmt: skip
    expiry = chain.pending_timestamp + HOUR
    hedges = open_hedges(deployment, dealer, company, seller, price0, tokens, expiry)
    console.print(f"  capped call: strike ${hedges.call.strike / PRICE_UNIT:,.4f}, cap "
                  f"${hedges.call.bound / PRICE_UNIT:,.4f}, {hedges.units} units × 1,000 GPT, premium "
                  f"{dollars(CALL_PREMIUM)} a unit; perpetual: ${EXPOSURE_USD:,} notional long and short, "
                  f"{LEVERAGE}× ({dollars(hedges.margin)} margin each); a capacity seller buys puts")  # fmt: skip

    table = Table(title="The $2M GPT exposure, hedged (every P&L paid by the contracts)")
    for column in ("scenario", "GPT TWAP", "compute bill", "call P&L", "bill + call",
                   "long P&L", "bill + long", "short P&L", "bill + short", "seller's put P&L"):  # fmt: skip
        table.add_column(column, justify="right")
    results = {}
    start = chain.snapshot()
    for label, name, factor in SCENARIOS:
        move_price(deployment, trader, admin, factor)
        chain.pending_timestamp = expiry - window - 2 * period
        keep_oracle_fresh(oracle, gpt, admin, 3 * period + window)  # observations around the expiry
        result = settle_hedges(deployment, admin, company, seller, hedges, tokens)
        bill = result["price"] * tokens // TOKEN_UNIT // 10**18 if label != "C" else EXPOSURE_USD * USD_MICRO
        results[label] = (bill, result)
        table.add_row(
            f"{label}: {name}", f"${result['price'] / PRICE_UNIT:,.4f}", dollars(bill),
            dollars(result["call"]), dollars(bill - result["call"]),
            dollars(result["long"]), dollars(bill - result["long"]),
            dollars(result["short"]), dollars(bill - result["short"]), dollars(result["put"]),
        )  # fmt: skip
        chain.restore(start)
        start = chain.snapshot()
    console.print(table)
    check_story(results, hedges.units)


def keep_oracle_fresh(oracle, token, keeper, seconds: int) -> None:
    """A keeper's Oracle.update every period for `seconds` of chain time."""
    period = int(oracle.period())
    for _ in range(seconds // period + 1):
        oracle.update(token, sender=keeper)
        chain.pending_timestamp += period


def open_hedges(deployment, dealer, company, seller, price0: int, tokens: int, expiry: int) -> Hedges:
    usdc, gpt = contract_at(deployment, "USDC"), contract_at(deployment, "token:GPT")
    options, perp = contract_at(deployment, "Options"), contract_at(deployment, "Perp")
    # Strikes on a whole-cent grid so that each unit's collateral is whole USDC units.
    strike = price0 // (PRICE_UNIT // 100) * (PRICE_UNIT // 100)
    call = Terms(gpt.address, CALL, strike, strike * 3 // 2, expiry, SIZE)
    put = Terms(gpt.address, PUT, strike, 0, expiry, SIZE)
    units = units_for_exposure(tokens, SIZE)
    for who, amount in ((dealer, 100_000_000 * USD_MICRO), (company, 10_000_000 * USD_MICRO),
                        (seller, 1_000_000 * USD_MICRO)):  # fmt: skip
        usdc.mint(who, amount, sender=who)
        usdc.approve(options, MAX_UINT, sender=who)
        usdc.approve(perp, MAX_UINT, sender=who)
    offers = {}
    for terms, premium, buyer in ((call, CALL_PREMIUM, company), (put, PUT_PREMIUM, seller)):
        options.create_series(*terms.args(), sender=dealer)
        options.write(terms.id, units, sender=dealer)
        options.offer(terms.id, units, premium, sender=dealer)
        offers[terms.id] = options.offer_count()
        options.buy(offers[terms.id], units, sender=buyer)
    perp.deposit(PERP_LIQUIDITY_USD * USD_MICRO, 0, sender=dealer)
    notional = EXPOSURE_USD * USD_MICRO
    margin = notional // LEVERAGE + notional * DEFAULT_MARKET.open_fee_bps // 10_000 + 1
    perp.open_position(gpt, True, margin, notional, sender=company)
    long_id = int(perp.position_count())
    perp.open_position(gpt, False, margin, notional, sender=company)
    return Hedges(call, put, units, long_id, int(perp.position_count()), margin)


def move_price(deployment, trader, attestor, factor: Decimal) -> None:
    """Trade the GPT/USDC pool until its spot price is about `factor` × now (fees included);
    a sale's GPT comes from a tokenized lot the attestor opens."""
    if factor == 1:
        return
    usdc, gpt, router = (contract_at(deployment, n) for n in ("USDC", "token:GPT", "Router"))
    factory = contract_at(deployment, "Factory")
    pool = factory.get_pool(gpt.address, usdc.address, DEFAULT_FEE)
    token_reserve, usdc_reserve = reserves(pool_at(pool), gpt)
    root = Decimal(isqrt(int(factor * 10**12))) / 10**6  # √factor, six decimals
    if factor > 1:  # buy GPT: the USDC reserve grows by √factor
        path, amount = [usdc.address, gpt.address], int((root - 1) * usdc_reserve * 1000 / 997)
        usdc.mint(trader, amount, sender=trader)
        usdc.approve(router, amount, sender=trader)
    else:  # sell GPT: the GPT reserve grows by 1/√factor
        path, amount = [gpt.address, usdc.address], int((1 / root - 1) * token_reserve * 1000 / 997)
        mint_tokens(contract_at(deployment, "CreditEscrow"), usdc, gpt, attestor, amount)
        gpt.transfer(trader, amount, sender=attestor)
        gpt.approve(router, amount, sender=trader)
    router.swap_exact_in(amount, 0, path, [DEFAULT_FEE], trader, chain.pending_timestamp + 600, sender=trader)


def settle_hedges(deployment, keeper, company, seller, hedges: Hedges, tokens: int) -> dict[str, int]:
    usdc, options = contract_at(deployment, "USDC"), contract_at(deployment, "Options")
    perp = contract_at(deployment, "Perp")
    result = {}
    for key, terms, holder, premium in (("call", hedges.call, company, CALL_PREMIUM),
                                         ("put", hedges.put, seller, PUT_PREMIUM)):  # fmt: skip
        settle(options, terms.id, keeper)
        before = usdc.balanceOf(holder)
        options.claim(terms.id, sender=holder)
        result[key] = usdc.balanceOf(holder) - before - hedges.units * premium
        result["price"] = int(options.series(terms.id).settlement_price)
    for key, position in (("long", hedges.long_id), ("short", hedges.short_id)):
        before = usdc.balanceOf(company)
        perp.close_position(position, 0, sender=company)
        result[key] = usdc.balanceOf(company) - before - hedges.margin
    return result


def check_story(results, units: int) -> None:
    """Fail loudly if the numbers do not tell the story the README tells."""
    (bill_a, a), (_, b), (_, c) = results["A"], results["B"], results["C"]
    facts = [
        (a["call"] > 0 and a["long"] > 0, "A: the capped call and the long pay when GPT rises"),
        (a["short"] < 0, "A: the short LOSES when GPT rises (the seed's narrative was wrong)"),
        (bill_a - a["call"] < bill_a and bill_a - a["long"] < bill_a, "A: the call and the long cut the bill"),
        (-units * CALL_PREMIUM <= b["call"] < 0, "B: flat, the call costs at most its premium"),
        (c["call"] < 0 and c["long"] < 0 and c["put"] > 0, "C: GPT falls: call and long lose, the seller's put pays"),
    ]
    for ok, what in facts:
        if not ok:
            raise click.ClickException(f"does not reconcile: {what}")
        console.print(f"  [green]✓[/] {what}")
