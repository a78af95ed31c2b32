"""`promptex usage cost|proof|verify`: what a call costs (the gateway's pricing rule,
`metering.rates_for`), and a usage record's Merkle proof against the vault's root."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from promptex import metering
from promptex.cli.amounts import count_of, decimal_of
from promptex.cli.market import rpc_url_option
from promptex.config import ConfigurationError, settings
from promptex.protocol.units import whole_units as whole


@click.group()
def usage() -> None:
    """Metering: what a call costs, from the model catalog or an ad-hoc rate."""


@usage.command("cost")
@click.option("--model", help="model id from the catalog (with --input-tokens/--output-tokens)")
@click.option("--input-tokens", default="0", show_default=True, help="prompt tokens (with --model)")
@click.option("--output-tokens", default="0", show_default=True, help="completion tokens (with --model)")
@click.option("--cache-read-tokens", default="0", show_default=True, help="of the input: read from the prompt cache")
@click.option("--cache-write-tokens", default="0", show_default=True, help="of the input: written to the prompt cache")
@click.option("--cache-write-1h-tokens", default="0", show_default=True, help="of the cache writes: one-hour ones")
@click.option("--rate", help="ad-hoc rate: whole units of the asset per 1,000 tokens (with --tokens)")
@click.option("--tokens", help="tokens processed (with --rate)")
@click.option("--asset", help="paying asset: the model's provider token (default), USDC, another token; CREDIT")
@click.option("--lot-rate-bps", default="10000", show_default=True, help="not own token: the listed lot's rate, bps")
@click.option("--fee-bps", help="not own token: protocol fee in bps on top [default: PROMPTEX_PROTOCOL_FEE_BPS]")
@click.option("--twap", multiple=True, help="SYMBOL=USDC per whole token: the paying token's TWAP (another token)")
def usage_cost(
    model: str | None,
    input_tokens: str,
    output_tokens: str,
    cache_read_tokens: str,
    cache_write_tokens: str,
    cache_write_1h_tokens: str,
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
    promptex usage cost --model gpt-4o --input-tokens 1000 --asset CLD --lot-rate-bps 6000 --twap CLD=0.004
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
            rates = metering.flat_rates(paying.symbol, Fraction(decimal_of("--rate", rate)) * paying.unit)
            count = count_of("--tokens", tokens)
            cost = metering.message_cost(rates, count)
            click.echo(f"{count:,} tokens at {rate.strip()} {paying.symbol} per 1,000 tokens")
        else:
            assert model is not None
            s = settings()
            price = metering.load_catalog(s.model_catalog).price(model)
            paying = metering.asset(asset or metering.provider_token(price.provider).symbol)
            fee = count_of("--fee-bps", fee_bps) if fee_bps is not None else s.protocol_fee_bps
            lot_bps = count_of("--lot-rate-bps", lot_rate_bps)
            twaps = dict(_twap(item) for item in twap)
            rates = metering.rates_for(price, paying.symbol, lot_rate_bps=lot_bps, fee_bps=fee, twaps=twaps)
            n_in, n_out = count_of("--input-tokens", input_tokens), count_of("--output-tokens", output_tokens)
            try:
                used = metering.TokenUsage(
                    n_in,
                    n_out,
                    cache_read_tokens=count_of("--cache-read-tokens", cache_read_tokens),
                    cache_write_tokens=count_of("--cache-write-tokens", cache_write_tokens),
                    cache_write_1h_tokens=count_of("--cache-write-1h-tokens", cache_write_1h_tokens),
                )
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
            cost = metering.usage_cost(rates, used)
            list_usd = metering.exact_usage_cost(metering.list_rates(price), used)
            cached = f" ({used.cache_read_tokens:,} read from / {used.cache_write_tokens:,} written to the cache)"
            click.echo(
                f"{price.model} ({price.provider}): {n_in:,} input"
                f"{cached if used.cache_read_tokens or used.cache_write_tokens else ''} + {n_out:,} output tokens "
                f"at ${whole(price.input_usd_micro_per_1k, 3)} / ${whole(price.output_usd_micro_per_1k, 3)} "
                f"per million = ${whole(-(-list_usd.numerator * 1000 // list_usd.denominator), 9)} list"
            )
            click.echo(_paid_in(price, paying.symbol, lot_bps, fee))
    except (metering.UnknownAsset, metering.UnknownModel, metering.CatalogError, metering.PricingError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(whole(cost, paying.decimals))


def _paid_in(price: metering.ModelPrice, symbol: str, lot_rate_bps: int, fee_bps: int) -> str:
    own = metering.provider_token(price.provider)
    if symbol == own.symbol:
        return f"paid in {symbol} at its face value ${whole(own.face_value_usd_micro, 6)}"
    listed = f"at the lot's {whole(lot_rate_bps, 2)} % of list plus a {fee_bps} bps fee"
    if symbol == "USDC":
        return f"paid in USDC {listed}"
    return f"paid in {symbol}: the USDC price {listed}, converted at {symbol}'s TWAP"


def _twap(item: str) -> tuple[str, Fraction]:
    """--twap SYMBOL=PRICE: whole USDC per whole token → USDC smallest units per whole token."""
    symbol, sep, price = item.partition("=")
    if not sep or not symbol:
        raise click.ClickException(f"--twap takes SYMBOL=USDC_PER_TOKEN, not {item!r}")
    return symbol.upper(), Fraction(decimal_of("--twap", price)) * 10**6


# ─── proofs (the coordinator's batches and the chain: imported only when used) ──


def _proof_of(request_id: str) -> dict[str, Any]:
    from promptex import proofs
    from promptex.cli.ledgers import market_ledger
    from promptex.coordinator.store import CoordinatorStore

    try:
        with market_ledger() as ledger:
            return proofs.build_proof(CoordinatorStore(ledger.engine), request_id)
    except proofs.ProofError as exc:
        raise click.ClickException(str(exc)) from None


@usage.command("status")
@click.argument("request_id")
def usage_status(request_id: str) -> None:
    """Where a usage record's charge stands: settled on chain (its epoch), in a batch,
    waiting for the next settlement, held back (and why), or refunded to the payer (and why)."""
    from promptex.cli.ledgers import market_ledger
    from promptex.coordinator.store import CoordinatorStore
    from promptex.ledger.usage import settlement_note

    with market_ledger() as ledger:
        store = CoordinatorStore(ledger.engine)
        record = store.record(request_id)
        if record is None:
            raise click.ClickException(f"no usage record for request {request_id!r}")
        batch = store.batch(record.batch_id).status if record.batch_id is not None else None
        failed = store.failed_batches_naming([record]).get(request_id)  # it may wait past the next settlement
    cost = whole(record.cost, metering.asset(record.asset).decimals)
    note = settlement_note(
        record,
        batch,
        failed=None if failed is None else (failed.id, failed.epoch),
        depth=settings().coordinator_reorg_window_blocks,
    )
    click.echo(f"{request_id}: {record.model}, {cost} {record.asset} — {note}")


@usage.command("proof")
@click.argument("request_id")
def usage_proof(request_id: str) -> None:
    """Print a usage record's Merkle proof (record, leaf, root, proof) as JSON."""
    click.echo(json.dumps(_proof_of(request_id), indent=2))


@usage.command("verify")
@click.argument("request_id", required=False)
@rpc_url_option
@click.option(
    "--proof-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="a `usage proof` output"
)
@click.option("--json", "as_json", is_flag=True, help="the leaf, the root on chain and the verdict as JSON")
def usage_verify(request_id: str | None, proof_file: Path | None, as_json: bool) -> None:
    """Check a usage record against the Merkle root the vault holds on chain for its epoch:
    one line saying whether it proves into it (--json: the leaf and root too); exit 1 when not."""
    from promptex import proofs
    from promptex.coordinator import factory

    if (request_id is None) == (proof_file is None):
        raise click.UsageError("give a REQUEST_ID or --proof-file, not both")
    if proof_file is not None:
        proof = json.loads(proof_file.read_text())
    else:
        assert request_id is not None
        proof = _proof_of(request_id)
    try:
        result = proofs.verify_proof(proof, factory.make_chain(settings()))
    except (proofs.MalformedProof, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    where = f"the usage root the vault holds on chain for {result.asset} epoch {result.epoch}"
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    elif result.verified:
        click.echo(f"verified: {result.request_id} is in {where} (0x{result.root_on_chain.hex()})")
    if not result.verified:
        click.echo(f"MISMATCH: the record of {result.request_id} does not prove into {where}", err=True)
        sys.exit(1)
