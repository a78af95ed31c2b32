"""The `promptex` command line. Later issues add the buyer, seller and service commands."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

import click
from rich.console import Console
from rich.table import Table

from promptex import __version__, metering
from promptex.chain.deployments import load_deployment
from promptex.config import settings


@click.group()
@click.version_option(__version__, prog_name="promptex")
def main() -> None:
    """PROMPTEX: tokenized AI credit, a credits vault, a DEX and a metered /v1 gateway."""


@main.group()
def deployment() -> None:
    """Recorded contract deployments (deployments/<network>.json)."""


@deployment.command("show")
@click.option("--network", default="local", show_default=True, help="network name, e.g. local, sepolia")
def deployment_show(network: str) -> None:
    """Print where each contract of a deployment lives."""
    try:
        record = load_deployment(network)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"{record.network} (chain {record.chain_id}, block {record.block_number})")
    table.add_column("contract")
    table.add_column("address")
    for name, contract in record.contracts.items():
        table.add_row(name, contract.address)
    Console().print(table)


# ─── usage ───────────────────────────────────────────────────────────────────


@main.group()
def usage() -> None:
    """Metering: what a call costs, from the model catalog or an ad-hoc rate."""


@usage.command("cost")
@click.option("--model", help="model id from the catalog (with --input-tokens/--output-tokens)")
@click.option("--input-tokens", default="0", show_default=True, help="prompt tokens (with --model)")
@click.option("--output-tokens", default="0", show_default=True, help="completion tokens (with --model)")
@click.option("--rate", help="ad-hoc rate: whole units of the asset per 1,000 tokens (with --tokens)")
@click.option("--tokens", help="tokens processed (with --rate)")
@click.option("--asset", help="paying asset: the model's provider token (default), USDC, another token; CREDIT")
@click.option("--lot-rate-bps", default="10000", show_default=True, help="USDC: the listed lot's rate, bps of list")
@click.option("--fee-bps", help="USDC: protocol fee in bps on top [default: PROMPTEX_PROTOCOL_FEE_BPS]")
@click.option("--twap", multiple=True, help="SYMBOL=USDC per whole token, to pay in another provider's token")
def usage_cost(
    model: str | None,
    input_tokens: str,
    output_tokens: str,
    rate: str | None,
    tokens: str | None,
    asset: str | None,
    lot_rate_bps: str,
    fee_bps: str | None,
    twap: tuple[str, ...],
) -> None:
    """Price one call; the cost, in whole units of the paying asset, is the last line.

    \b
    promptex usage cost --model claude-sonnet-4-5 --input-tokens 1000 --output-tokens 500
    promptex usage cost --model gpt-4o --input-tokens 1000 --asset USDC --lot-rate-bps 6000
    promptex usage cost --rate 3 --tokens 1500            # 4.5 (18-decimal credit token)
    """
    try:
        if (model is None) == (rate is None):
            raise click.ClickException(
                "give either --model (with --input-tokens/--output-tokens) or --rate with --tokens"
            )
        if rate is not None:
            if tokens is None:
                raise click.ClickException("--rate needs --tokens")
            paying = metering.asset(asset or metering.CREDIT_SYMBOL)
            rates = metering.flat_rates(paying.symbol, Fraction(_decimal("--rate", rate)) * paying.unit)
            count = _count("--tokens", tokens)
            cost = metering.message_cost(rates, count)
            click.echo(f"{count:,} tokens at {rate.strip()} {paying.symbol} per 1,000 tokens")
        else:
            assert model is not None
            s = settings()
            price = metering.load_catalog(s.model_catalog).price(model)
            paying = metering.asset(asset or metering.provider_token(price.provider).symbol)
            fee = _count("--fee-bps", fee_bps) if fee_bps is not None else s.protocol_fee_bps
            lot_bps = _count("--lot-rate-bps", lot_rate_bps)
            twaps = dict(_twap(item) for item in twap)
            rates = metering.rates_for(price, paying.symbol, lot_rate_bps=lot_bps, fee_bps=fee, twaps=twaps)
            n_in, n_out = _count("--input-tokens", input_tokens), _count("--output-tokens", output_tokens)
            cost = metering.message_cost(rates, n_in, n_out)
            list_usd_nano = price.input_usd_micro_per_1k * n_in + price.output_usd_micro_per_1k * n_out
            click.echo(
                f"{price.model} ({price.provider}): {n_in:,} input + {n_out:,} output tokens "
                f"at ${_whole(price.input_usd_micro_per_1k, 3)} / ${_whole(price.output_usd_micro_per_1k, 3)} "
                f"per million = ${_whole(list_usd_nano, 9)} list"
            )
            click.echo(_paid_in(price, paying.symbol, lot_bps, fee))
    except (metering.UnknownAsset, metering.UnknownModel, metering.CatalogError, metering.PricingError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(_whole(cost, paying.decimals))


def _paid_in(price: metering.ModelPrice, symbol: str, lot_rate_bps: int, fee_bps: int) -> str:
    own = metering.provider_token(price.provider)
    if symbol == own.symbol:
        return f"paid in {symbol} at its face value ${_whole(own.face_value_usd_micro, 6)}"
    if symbol == "USDC":
        return f"paid in USDC at the lot's {_whole(lot_rate_bps, 2)} % of list plus a {fee_bps} bps fee"
    return f"paid in {symbol}, converted from {own.symbol} at the TWAPs given"


def _decimal(option: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.ClickException(f"{option} must be a number, not {text!r}") from None
    if not value.is_finite() or value < 0:
        raise click.ClickException(f"{option} must be a non-negative number, not {text!r}")
    return value


def _count(option: str, text: str) -> int:
    value = _decimal(option, text)
    if value != value.to_integral_value():
        raise click.ClickException(f"{option} must be a whole number, not {text!r}")
    return int(value)


def _twap(item: str) -> tuple[str, Fraction]:
    """--twap SYMBOL=PRICE: whole USDC per whole token → USDC smallest units per whole token."""
    symbol, sep, price = item.partition("=")
    if not sep or not symbol:
        raise click.ClickException(f"--twap takes SYMBOL=USDC_PER_TOKEN, not {item!r}")
    return symbol.upper(), Fraction(_decimal("--twap", price)) * 10**6


def _whole(amount: int, decimals: int) -> str:
    """`amount` smallest units as whole units, exactly, without trailing zeros: (4500, 3) → 4.5."""
    whole, fraction = divmod(abs(amount), 10**decimals)
    digits = str(fraction).rjust(decimals, "0").rstrip("0")
    return ("-" if amount < 0 else "") + (f"{whole}.{digits}" if digits else str(whole))
