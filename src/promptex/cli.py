"""The `promptex` command line."""

from __future__ import annotations

import importlib
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from promptex import __version__, metering
from promptex.chain.deployments import load_deployment
from promptex.config import settings


class LazyGroup(click.Group):
    """A group whose heavy subcommands (ape, web3, the services) are imported only when used
    or listed, so `promptex usage cost` and the gateway do not pay for importing them.
    `lazy` maps a command name to "module:attribute"."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attribute)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy={
        "wallet": "promptex.wallet:wallet",
        "status": "promptex.wallet:status",
        "coordinator": "promptex.coordinator.cli:coordinator",
        "indexer": "promptex.indexer.cli:indexer",
        "agent": "promptex.agent.cli:agent",
        "redeem": "promptex.agent.cli:redeem",
        "redemptions": "promptex.agent.cli:redemptions",
        "fake-billing": "promptex.agent.cli:fake_billing",
        "dashboard": "promptex.dashboard.cli:dashboard",
        "hedge": "promptex.hedge:hedge",
    },
)
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


@main.group(
    cls=LazyGroup,
    lazy={"proof": "promptex.coordinator.cli:usage_proof", "verify": "promptex.coordinator.cli:usage_verify"},
)
def usage() -> None:
    """Metering: what a call costs, from the model catalog or an ad-hoc rate."""


@usage.command("cost")
@click.option("--model", help="model id from the catalog (with --input-tokens/--output-tokens)")
@click.option("--input-tokens", default="0", show_default=True, help="prompt tokens (with --model)")
@click.option("--output-tokens", default="0", show_default=True, help="completion tokens (with --model)")
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
    listed = f"at the lot's {_whole(lot_rate_bps, 2)} % of list plus a {fee_bps} bps fee"
    if symbol == "USDC":
        return f"paid in USDC {listed}"
    return f"paid in {symbol}: the USDC price {listed}, converted at {symbol}'s TWAP"


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


# ─── fake upstream and gateway ───────────────────────────────────────────────


@main.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option("--latency-ms", default=0.0, show_default=True, type=float, help="delay before every answer")
@click.option("--chunk-delay-ms", default=0.0, show_default=True, type=float, help="delay between streamed chunks")
@click.option("--output-tokens", default=16, show_default=True, type=int, help="tokens an answer has (≤ max_tokens)")
@click.option("--fail-status", type=int, help="answer this HTTP status instead…")
@click.option("--fail-every", default=1, show_default=True, type=int, help="…on every Nth request")
@click.option("--accept-key", multiple=True, help="accepted upstream keys (default: any non-empty key)")
def fake_upstream(
    host: str,
    port: int,
    latency_ms: float,
    chunk_delay_ms: float,
    output_tokens: int,
    fail_status: int | None,
    fail_every: int,
    accept_key: tuple[str, ...],
) -> None:
    """Serve a fake OpenAI- and Anthropic-compatible provider (deterministic text, real usage)."""
    import uvicorn

    from promptex.fakes import FakeUpstreamConfig, create_fake_upstream

    config = FakeUpstreamConfig(
        latency_ms=latency_ms,
        chunk_delay_ms=chunk_delay_ms,
        output_tokens=output_tokens,
        fail_status=fail_status,
        fail_every=fail_every,
        api_keys=frozenset(accept_key) or None,
    )
    uvicorn.run(create_fake_upstream(config), host=host, port=port, log_level="warning", access_log=False)


@main.group()
def gateway() -> None:
    """The OpenAI-compatible /v1 gateway."""


@gateway.command("serve")
@click.option("--host", help="[default: PROMPTEX_GATEWAY_HOST]")
@click.option("--port", type=int, help="[default: PROMPTEX_GATEWAY_PORT]")
def gateway_serve(host: str | None, port: int | None) -> None:
    """Serve /v1 on uvicorn (uvloop, httptools)."""
    import uvicorn

    from promptex.gateway import create_app
    from promptex.serving import listening_sockets

    s = settings()
    host, port = host or s.gateway_host, port or s.gateway_port
    try:
        sockets = listening_sockets(host, port, s.gateway_accept_per_iteration)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    config = uvicorn.Config(
        create_app(s, listeners=sockets), loop="uvloop", http="httptools", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=sockets)


# ─── sellers ─────────────────────────────────────────────────────────────────


@main.group()
def seller() -> None:
    """Sellers: register upstream capacity as a lot."""


def _expiry(text: str) -> int:
    """Unix seconds, an ISO date/time, or a duration from now such as 30d or 12h."""
    import datetime
    import time

    text = text.strip()
    units = {"d": 86_400, "h": 3_600, "m": 60}
    if text[:-1].isdigit() and text[-1:] in units:
        return int(time.time()) + int(text[:-1]) * units[text[-1]]
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.ClickException(f"--expires takes unix seconds, an ISO date or 30d/12h, not {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


@seller.command("add-capacity")
@click.option("--provider", required=True, help="provider as in the catalog: anthropic, openai, google, meta")
@click.option("--api", type=click.Choice(["openai", "anthropic"]), help="upstream API [default: by provider]")
@click.option("--base-url", required=True, help="e.g. https://api.openai.com/v1")
@click.option("--api-key", required=True, envvar="PROMPTEX_SELLER_API_KEY", help="or PROMPTEX_SELLER_API_KEY")
@click.option("--face-value", required=True, help="USD of capacity, e.g. 500")
@click.option("--kind", type=click.Choice(["tokenized", "listed"]), required=True)
@click.option("--rate", default="0.6", show_default=True, help="listed: price as a fraction of list")
@click.option("--expires", required=True, help="unix seconds, ISO date, or 30d / 12h from now")
@click.option("--seller-address", required=True, help="the seller's wallet address")
@click.option("--bond", default="0", show_default=True, help="USDC bond posted with the lot")
@click.option("--declare-resale-permitted", is_flag=True, help="your agreement with the provider permits resale")
@click.option("--no-verify", is_flag=True, help="skip the minimal upstream call that verifies the key")
def seller_add_capacity(
    provider: str,
    api: str | None,
    base_url: str,
    api_key: str,
    face_value: str,
    kind: str,
    rate: str,
    expires: str,
    seller_address: str,
    bond: str,
    declare_resale_permitted: bool,
    no_verify: bool,
) -> None:
    """Verify an upstream key, store it sealed, and attest the lot for CreditEscrow.open_lot."""
    import json
    import time

    from promptex.gateway.envelope import load_master_keys
    from promptex.gateway.sellers import Capacity, CapacityRefused, add_capacity
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger
    from promptex.ledger.binding import checksum_address

    s = settings()
    try:
        address = checksum_address(seller_address)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    capacity = Capacity(
        provider=provider.lower(),
        api=api or ("anthropic" if provider.lower() == "anthropic" else "openai"),
        base_url=base_url,
        api_key=api_key,
        face_value_usd_micro=int(_decimal("--face-value", face_value) * 10**6),
        kind=kind,
        rate_bps=int(_decimal("--rate", rate) * 10_000),
        expires_at=_expiry(expires),
        seller=address,
        resale_permitted=declare_resale_permitted,
        bond_usdc=int(_decimal("--bond", bond) * 10**6),
    )
    secret = s.gateway_master_key.get_secret_value() if s.gateway_master_key else None
    with Ledger.from_settings(s) as ledger:
        store = GatewayStore(ledger.engine)
        try:
            lot_id, attestation = add_capacity(
                store,
                load_master_keys(secret, s.gateway_master_key_file),
                metering.load_catalog(s.model_catalog),
                capacity,
                int(time.time()),
                verify=not no_verify,
            )
        except CapacityRefused as exc:
            raise click.ClickException(str(exc)) from None
        tx, chain_lot_id = None, None
        if s.attestor_private_key is not None:
            from promptex.chain.attest import open_lot

            tx, chain_lot_id = open_lot(
                s.attestor_rpc_url,
                load_deployment(s.attestor_network),
                s.attestor_private_key.get_secret_value(),
                attestation,
            )
        store.set_attestation(lot_id, json.dumps(attestation), tx, chain_lot_id=chain_lot_id)
    click.echo(f"lot {lot_id}: {kind} {capacity.provider} capacity, ${face_value} face value")
    click.echo(json.dumps({"open_lot": attestation, "tx": tx, "chain_lot_id": chain_lot_id}, indent=2))


@seller.command("rotate-master-key")
def seller_rotate_master_key() -> None:
    """Add a master key to the key file and re-wrap every sealed secret's data key with it."""
    from promptex.gateway.envelope import add_master_key, load_master_keys
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger

    s = settings()
    if s.gateway_master_key is not None:
        raise click.ClickException("the master key comes from PROMPTEX_GATEWAY_MASTER_KEY: rotate it there")
    key_id = add_master_key(s.gateway_master_key_file)
    with Ledger.from_settings(s) as ledger:
        changed = GatewayStore(ledger.engine).rewrap_secrets(load_master_keys(None, s.gateway_master_key_file))
    click.echo(f"master key {key_id} is current; {changed} secret(s) re-wrapped")


# ─── buyers ──────────────────────────────────────────────────────────────────


@main.group()
def buyer() -> None:
    """Buyers: accounts, API keys, wallet binding, org member keys."""


def _budget(text: str | None) -> tuple[str, int] | None:
    """ASSET=AMOUNT in whole units → (symbol, smallest units)."""
    if text is None:
        return None
    symbol, sep, amount = text.partition("=")
    if not sep:
        raise click.ClickException(f"--budget takes ASSET=AMOUNT, not {text!r}")
    try:
        paying = metering.asset(symbol)
    except metering.UnknownAsset as exc:
        raise click.ClickException(str(exc)) from None
    return paying.symbol, int(_decimal("--budget", amount) * paying.unit)


@buyer.command("signup")
@click.option("--wallet", help="the wallet to bind; writes the EIP-712 message it must sign")
@click.option("--name", help="an account name")
@click.option("--default-asset", help="USDC or provider (the model's provider token)")
@click.option("--budget", help="this key's budget, ASSET=AMOUNT")
@click.option("--challenge-out", default="binding-challenge.json", show_default=True)
def buyer_signup(
    wallet: str | None, name: str | None, default_asset: str | None, budget: str | None, challenge_out: str
) -> None:
    """Create an account and an API key (shown once); with --wallet, the message to sign."""
    import time
    from pathlib import Path

    from promptex.gateway.buyers import challenge_json, signup
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger

    s = settings()
    with Ledger.from_settings(s) as ledger:
        new = signup(
            ledger,
            GatewayStore(ledger.engine),
            int(time.time()),
            name=name,
            default_asset=default_asset,
            budget=_budget(budget),
        )
        click.echo(f"account {new.account}")
        click.echo(f"API key (shown once, store it now): {new.key}")
        if wallet:
            try:
                message = ledger.issue_binding_challenge(new.account, wallet)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from None
            Path(challenge_out).write_text(challenge_json(message))
            click.echo(f"sign {challenge_out} (typed_data) with {message.wallet}, then: promptex buyer bind")


@buyer.command("bind")
@click.option("--challenge", "challenge_file", default="binding-challenge.json", show_default=True)
@click.option("--signature", help="0x… signature of the challenge's typed data")
@click.option("--sign-with-env", help="(demo) sign with the private key in this environment variable")
def buyer_bind(challenge_file: str, signature: str | None, sign_with_env: str | None) -> None:
    """Bind the wallet that signed the challenge; its first binding brings the welcome credit."""
    import os
    from pathlib import Path

    from promptex.gateway.buyers import bind_wallet, message_from_json
    from promptex.ledger import BindingError, Ledger
    from promptex.ledger.binding import sign

    s = settings()
    message = message_from_json(Path(challenge_file).read_text())
    if sign_with_env:
        key = os.environ.get(sign_with_env)
        if not key:
            raise click.ClickException(f"${sign_with_env} is not set")
        signature = "0x" + sign(message, key).hex()
    if not signature:
        raise click.ClickException("give --signature or --sign-with-env")
    with Ledger.from_settings(s) as ledger:
        try:
            account = bind_wallet(
                ledger,
                message,
                signature,
                welcome_asset=s.welcome_credit_asset,
                welcome_amount=s.welcome_credit_amount,
                treasury=s.welcome_credit_treasury,
            )
        except BindingError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"wallet {message.wallet} bound to account {account}")


@buyer.command("org-key")
@click.option("--org", "org_name", required=True, help="org name (created if new)")
@click.option("--budget", help="the member's budget in the org, ASSET=AMOUNT")
def buyer_org_key(org_name: str, budget: str | None) -> None:
    """A member key that spends from an org's balance (within an optional budget)."""
    import time

    from promptex.gateway.buyers import member_key
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import AccountKind, Ledger, LedgerError

    s = settings()
    with Ledger.from_settings(s) as ledger:
        try:
            org = ledger.create_account(AccountKind.ORG, org_name).id
        except LedgerError:
            from promptex.ledger.accounts import account_by_name

            with ledger.engine.connect() as conn:
                found = account_by_name(conn, AccountKind.ORG, org_name)
            assert found is not None
            org = found.id
        new = member_key(ledger, GatewayStore(ledger.engine), org, int(time.time()), budget=_budget(budget))
    click.echo(f"org {org}, member account {new.account}")
    click.echo(f"API key (shown once, store it now): {new.key}")


# ─── the local market ────────────────────────────────────────────────────────


@main.command("up")
@click.option("--rpc-url", help="use this node instead of starting a local anvil")
@click.option("--chain-port", default=8545, show_default=True, type=int, help="port of the anvil it starts")
@click.option("--gateway-host", default="127.0.0.1", show_default=True)
@click.option("--gateway-port", default=8080, show_default=True, type=int)
@click.option("--upstream-port", default=9000, show_default=True, type=int, help="the fake upstreams' port")
@click.option("--billing-port", default=9100, show_default=True, type=int, help="the fake billing API's port")
@click.option("--dashboard-port", default=8090, show_default=True, type=int, help="the web dashboard's port")
@click.option("--no-seed", is_flag=True, help="do not open the seed pools")
def up_command(
    rpc_url: str | None,
    chain_port: int,
    gateway_host: str,
    gateway_port: int,
    upstream_port: int,
    billing_port: int,
    dashboard_port: int,
    no_seed: bool,
) -> None:
    """Start the local market: anvil, deploy, seed, indexer, coordinator, fake upstreams, the
    gateway, a fake billing API, the redemption agent and the web dashboard (Ctrl-C stops it)."""
    from promptex.up import UpOptions, up

    options = UpOptions(
        rpc_url, chain_port, gateway_host, gateway_port, upstream_port, seed=not no_seed, billing_port=billing_port,
        dashboard_port=dashboard_port,
    )  # fmt: skip
    raise SystemExit(up(options))


if __name__ == "__main__":
    main()
