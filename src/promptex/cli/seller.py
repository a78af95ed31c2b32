"""`promptex seller add-capacity|rotate-master-key`: register upstream capacity as a lot
(verified, sealed, attested for CreditEscrow.open_lot) and rotate the sealing master key."""

from __future__ import annotations

import click

from promptex import metering
from promptex.chain.deployments import load_deployment
from promptex.cli.amounts import decimal_of
from promptex.cli.market import rpc_url_option
from promptex.config import settings


@click.group()
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
@rpc_url_option
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

    from promptex.gateway.sellers import Capacity, CapacityRefused, add_capacity
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger
    from promptex.ledger.binding import checksum_address
    from promptex.sealing.envelope import load_master_keys

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
        face_value_usd_micro=int(decimal_of("--face-value", face_value) * 10**6),
        kind=kind,
        rate_bps=int(decimal_of("--rate", rate) * 10_000),
        expires_at=_expiry(expires),
        seller=address,
        resale_permitted=declare_resale_permitted,
        bond_usdc=int(decimal_of("--bond", bond) * 10**6),
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
                s.chain_rpc_url("attestor"),
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
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger
    from promptex.sealing.envelope import add_master_key, load_master_keys

    s = settings()
    if s.gateway_master_key is not None:
        raise click.ClickException("the master key comes from PROMPTEX_GATEWAY_MASTER_KEY: rotate it there")
    key_id = add_master_key(s.gateway_master_key_file)
    with Ledger.from_settings(s) as ledger:
        changed = GatewayStore(ledger.engine).rewrap_secrets(load_master_keys(None, s.gateway_master_key_file))
    click.echo(f"master key {key_id} is current; {changed} secret(s) re-wrapped")


@seller.command("health")
@click.option("--lot", "lot_id", type=int, help="one lot [default: every lot]")
@click.option("--seller-address", help="only this seller's lots")
def seller_health(lot_id: int | None, seller_address: str | None) -> None:
    """Each lot's upstream health as the gateways saw it: calls, error rate, mean latency,
    the last error, whether its circuit is open (skipped for a cool-down), and whether
    the provider refused the lot's key (revoked upstream?). Health moves no money."""
    import datetime

    from promptex.gateway.health import reports
    from promptex.gateway.store import GatewayStore
    from promptex.ledger import Ledger

    def when(unix: int) -> str:
        return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    with Ledger.from_settings(settings()) as ledger:
        lots = GatewayStore(ledger.engine).lots()
        if seller_address is not None:
            lots = [lot for lot in lots if lot.seller.lower() == seller_address.lower()]
        if lot_id is not None:
            lots = [lot for lot in lots if lot.id == lot_id]
        found = {r.lot_id: r for r in reports(ledger.engine, [lot.id for lot in lots])}
    if not lots:
        raise click.ClickException("no such lot" if lot_id is not None else "no lots")
    for lot in lots:
        r = found.get(lot.id)
        if r is None:
            click.echo(f"lot {lot.id} ({lot.provider}): no upstream calls yet")
            continue
        latency = f", mean latency {r.mean_latency_ms} ms" if r.mean_latency_ms is not None else ""
        line = f"lot {lot.id} ({lot.provider}): {r.requests} calls, {r.error_rate:.1%} errors{latency}"
        if r.last_error is not None and r.last_error_at is not None:
            line += f"; last error {r.last_error} at {when(r.last_error_at)}"
        if r.circuit_open_until is not None and r.circuit_open_until > r.updated_at:
            line += f"; skipped until {when(r.circuit_open_until)} (circuit open)"
        click.echo(line)
        if r.key_refused_at is not None:
            click.echo(
                f"  the provider refused this lot's API key at {when(r.key_refused_at)}: revoked upstream? "
                "Requests fail over to other lots; add capacity with a working key."
            )
