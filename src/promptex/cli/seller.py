"""`promptex seller add-capacity|lots|close|finalize|rotate-master-key`: a lot's life on the one
tokenize/list path (`promptex.sellers`), and rotating the sealing master key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from promptex.cli.accounts import account_options, ape_account
from promptex.cli.amounts import decimal_of, usd_micro
from promptex.cli.market import rpc_url_option
from promptex.config import ConfigurationError, Settings, settings

if TYPE_CHECKING:
    from promptex.chain.sender import TxSigner
    from promptex.gateway.health import LotReport
    from promptex.ledger import Ledger
    from promptex.sellers import Capacity, Onboarded, SellerChain


@click.group()
def seller() -> None:
    """Sellers: open upstream capacity as a lot on chain, list and close lots."""


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


def _dollars(option: str, text: str) -> int:
    try:
        return usd_micro(text)
    except click.BadParameter as exc:
        raise click.ClickException(f"{option}: {exc.message}") from None


def _signer(alias: str | None, yes: bool) -> TxSigner | None:
    """--account ALIAS: the seller's ape account signs its transactions (as `buyer bind
    --account` signs a challenge: the same texts), instead of PROMPTEX_SELLER_PRIVATE_KEY."""
    from promptex.chain.accounts import ApeTxSigner

    return None if alias is None else ApeTxSigner(ape_account(alias, yes=yes))


@contextmanager
def _seller_session(s: Settings, seller: TxSigner | None = None) -> Iterator[tuple[Ledger, SellerChain]]:
    """The database (checked to mirror the chain) and the chain; any refusal in one line."""
    from promptex.cli.ledgers import market_ledger
    from promptex.sellers import factory

    try:  # the market's ledger, never migrated (`cli.ledgers`)
        with factory.seller_session(s, seller, open_ledger=market_ledger) as pair:
            yield pair
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


def open_capacity(s: Settings, capacity: Capacity, *, verify: bool = True, seller: TxSigner | None = None) -> Onboarded:
    """Open one lot (`promptex.sellers.factory.open_capacity`); a refusal in one line."""
    from promptex.cli.ledgers import market_ledger
    from promptex.sellers import CapacityRefused, LotNotOpened, LotPending, factory

    def starts(s: Settings) -> Ledger:  # a market run by hand: its ledger made where there is none, never migrated
        return market_ledger(s, starts=True)

    try:
        [opened] = factory.open_capacity(s, [capacity], verify=verify, seller=seller, open_ledger=starts)
    except (ConfigurationError, CapacityRefused, LotNotOpened, LotPending) as exc:
        raise click.ClickException(str(exc)) from None
    return opened


def seller_address_of(s: Settings) -> str | None:
    """The address of PROMPTEX_SELLER_PRIVATE_KEY, the seller's own key (None without one)."""
    from eth_account import Account

    key = s.seller_private_key
    return None if key is None else str(Account.from_key(key.get_secret_value()).address)


@seller.command("add-capacity")
@click.option("--provider", required=True, help="provider as in the catalog: anthropic, openai, google, meta")
@click.option("--api", type=click.Choice(["openai", "anthropic"]), help="upstream API [default: by provider]")
@click.option("--base-url", required=True, help="e.g. https://api.openai.com/v1")
@click.option("--api-key", required=True, envvar="PROMPTEX_SELLER_API_KEY", help="or PROMPTEX_SELLER_API_KEY")
@click.option("--face-value", required=True, help="USD of capacity, e.g. 500")
@click.option("--kind", type=click.Choice(["tokenized", "listed"]), required=True)
@click.option("--rate", default="0.6", show_default=True, help="listed: price as a fraction of list")
@click.option("--expires", required=True, help="unix seconds, ISO date, or 30d / 12h from now")
@click.option(
    "--seller-address", help="the seller's wallet [default: --account's, or PROMPTEX_SELLER_PRIVATE_KEY's address]"
)
@click.option(
    "--bond",
    help="USDC bond posted with the lot [default: a tokenized lot's only bond, its token's share of face "
    "value; a listed lot's minimum, which may be exceeded]",
)
@click.option("--declare-resale-permitted", is_flag=True, help="your agreement with the provider permits resale")
@click.option("--no-verify", is_flag=True, help="skip the minimal upstream call that verifies the key")
@click.option("--json", "as_json", is_flag=True, help="print the opened lot as JSON")
@account_options
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
    seller_address: str | None,
    bond: str | None,
    declare_resale_permitted: bool,
    no_verify: bool,
    as_json: bool,
    account_alias: str | None,
    yes: bool,
) -> None:
    """Verify an upstream key, approve the bond, open the lot on CreditEscrow and record it.

    The lot is routed only once the chain has opened it. Anything that would be refused
    (terms, key, bond, attestor role) is said in one line before anything is stored or sent.
    """
    import json

    from promptex.ledger.binding import checksum_address
    from promptex.sellers import Capacity

    s = settings()
    seller = _signer(account_alias, yes)
    signer = seller.address if seller is not None else seller_address_of(s)
    if seller_address is None and signer is None:
        raise click.ClickException(
            "give --seller-address, or --account ALIAS (the seller's ape account) or PROMPTEX_SELLER_PRIVATE_KEY"
        )
    try:
        address = checksum_address(seller_address or str(signer))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    capacity = Capacity(
        provider=provider.lower(),
        api=api or ("anthropic" if provider.lower() == "anthropic" else "openai"),
        base_url=base_url,
        api_key=api_key,
        face_value_usd_micro=_dollars("--face-value", face_value),
        kind=kind,
        rate_bps=int(decimal_of("--rate", rate) * 10_000),
        expires_at=_expiry(expires),
        seller=address,
        resale_permitted=declare_resale_permitted,
        bond_usdc=_dollars("--bond", bond) if bond is not None else 0,
    )
    opened = open_capacity(s, capacity, verify=not no_verify, seller=seller)
    if as_json:
        click.echo(json.dumps(opened.as_json(), indent=2))
    else:
        click.echo("\n".join(opened.summary()))


@seller.command("lots")
@click.option("--seller-address", help="only this seller's lots")
@rpc_url_option
def seller_lots(seller_address: str | None) -> None:
    """This gateway's lots: id, provider, kind, state, face value, remaining, expiry, and
    why each is or is not routed (the chain's word: read now). Remaining is what the lot
    can still serve: the chain's capacity less what settlements drew and less the usage it
    served (or holds for requests in flight) that no settlement has drawn yet; never shown as
    more than that (dollars exactly when not whole cents, tokens rounded down)."""
    import time

    from promptex.protocol.units import usd_text
    from promptex.sellers import SellerStore, factory, lot_rows

    s = settings()
    with _seller_session(s) as (ledger, chain):
        factory.make_onboarding(s, ledger, chain).resume()
        rows = lot_rows(SellerStore(ledger.engine), chain, chain.now(), seller=seller_address)
    if not rows:
        click.echo("no lots: add one with `promptex seller add-capacity`")
        return
    click.echo(f"{'lot':>4} {'chain':>5} {'provider':<10} {'kind':<9} {'state':<9} {'face value':>12} "
               f"{'remaining':>32} {'expiry':<16}  why")  # fmt: skip
    for r in rows:
        expiry = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.expires_at))
        chain_id = "—" if r.chain_lot_id is None else str(r.chain_lot_id)
        face = usd_text(r.face_value_usd_micro)
        click.echo(f"{r.lot_id:>4} {chain_id:>5} {r.provider:<10} {r.kind:<9} {r.state:<9} {face:>12} "
                   f"{r.remaining:>32} {expiry:<16}  {r.why}")  # fmt: skip


@seller.command("close")
@click.argument("lot", type=int)
@account_options
@rpc_url_option
def seller_close(lot: int, account_alias: str | None, yes: bool) -> None:
    """Close escrow lot LOT (signed with --account's ape account or PROMPTEX_SELLER_PRIVATE_KEY): request_close stops
    its routing at once; run it again once the close delay is over to finalize_close and
    take back the rest of the bond (or leave `promptex seller finalize --watch` running)."""
    from promptex.sellers import CloseRefused, factory

    s = settings()
    with _seller_session(s, _signer(account_alias, yes)) as (ledger, chain):
        try:
            lines = factory.make_closing(s, ledger, chain).close(lot)
        except CloseRefused as exc:
            raise click.ClickException(str(exc)) from None
    click.echo("\n".join(lines))


@seller.command("finalize")
@click.option("--watch", type=click.FloatRange(min=1), help="keep finalizing every SECONDS until stopped (Ctrl-C)")
@account_options
@rpc_url_option
def seller_finalize(watch: float | None, account_alias: str | None, yes: bool) -> None:
    """Finalize every one of your lots whose close delay is over (signed with --account's ape
    account or PROMPTEX_SELLER_PRIVATE_KEY): the rest of each bond comes back. With --watch it keeps
    running, so a close requested with `promptex seller close` finishes by itself."""
    import logging
    import time

    from promptex.sellers import CloseRefused, factory

    s, seller = settings(), _signer(account_alias, yes)
    while True:
        try:
            with _seller_session(s, seller) as (ledger, chain):
                lines, next_due = factory.make_closing(s, ledger, chain).finalize_due()
        except CloseRefused as exc:
            raise click.ClickException(str(exc)) from None
        except click.ClickException as exc:  # no node answers: said once, or tried again when watching
            if watch is None:
                raise
            logging.getLogger("promptex.sellers").warning("finalize: %s; trying again", exc.message)
            lines, next_due = [], None
        for line in lines:
            click.echo(line)
        if watch is None:
            if not lines:
                due = "" if next_due is None else f"; the next is due from {_when(next_due)}"
                click.echo(f"no close is due to finalize{due}")
            return
        time.sleep(watch)  # the seller's own long-running process: its period is theirs to choose


def _when(moment: int) -> str:
    from promptex.protocol.units import utc_text

    return utc_text(moment)


@seller.command("rotate-master-key")
def seller_rotate_master_key() -> None:
    """Add a master key to the key file and re-wrap every sealed secret's data key with it."""
    from promptex.cli.ledgers import market_ledger
    from promptex.gateway.store import GatewayStore
    from promptex.sealing.envelope import add_master_key, load_master_keys

    s = settings()
    if s.gateway_master_key is not None:
        raise click.ClickException("the master key comes from PROMPTEX_GATEWAY_MASTER_KEY: rotate it there")
    with market_ledger(s) as ledger:  # refused before a key is added where there is no market
        key_id = add_master_key(s.gateway_master_key_file)
        changed = GatewayStore(ledger.engine).rewrap_secrets(load_master_keys(None, s.gateway_master_key_file))
    click.echo(f"master key {key_id} is current; {changed} secret(s) re-wrapped")


def health_line(lot_id: int, provider: str, r: LotReport, now: int) -> str:
    """One lot's line of `seller health`: "lot 3 (openai): 1 call, 0.0% errors, …" — its
    circuit said open only while it is, at `now` (as the attestor and the dashboard read it)."""
    from promptex.protocol.units import utc_text as when

    latency = f", mean latency {r.mean_latency_ms} ms" if r.mean_latency_ms is not None else ""
    calls = f"{r.requests:,} call{'' if r.requests == 1 else 's'}"
    line = f"lot {lot_id} ({provider}): {calls}, {r.error_rate:.1%} errors{latency}"
    if r.last_error is not None and r.last_error_at is not None:
        line += f"; last error {r.last_error} at {when(r.last_error_at)}"
    if r.circuit_open_until is not None and r.circuit_open_until > now:
        line += f"; skipped until {when(r.circuit_open_until)} (circuit open)"
    return line


@seller.command("health")
@click.option("--lot", "lot_id", type=int, help="one lot [default: every lot]")
@click.option("--seller-address", help="only this seller's lots")
def seller_health(lot_id: int | None, seller_address: str | None) -> None:
    """Each lot's upstream health as the gateways saw it: calls, error rate, mean latency,
    the last error, whether its circuit is open (skipped for a cool-down), and whether
    the provider refused the lot's key (revoked upstream?). Health moves no money."""

    from promptex.cli.ledgers import market_ledger
    from promptex.gateway.health import reports
    from promptex.gateway.store import GatewayStore
    from promptex.protocol.units import utc_text as when

    with market_ledger() as ledger:
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
        click.echo(health_line(lot.id, lot.provider, r, int(time.time())))
        if r.key_refused_at is not None:
            click.echo(
                f"  the provider refused this lot's API key at {when(r.key_refused_at)}: revoked upstream? "
                "Requests fail over to other lots; add capacity with a working key."
            )
