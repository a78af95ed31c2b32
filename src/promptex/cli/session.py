"""`promptex session create|show|revoke`: the session key of signed mode (issue 23).

`create` makes a fresh session key, has the wallet sign its EIP-712 SessionKey through the
ape account (`--account`, like `promptex wallet`) and writes the grant file `promptex proxy`
reads; the signed SessionKey is posted to the coordinator's door (its URL is in the market's
profile), whose relay registers it on the vault (`register_session_key`), or `--direct` has
the wallet register it itself (`set_session_key`, a transaction).
`show` reads the grant and its voucher logs; `revoke` ends the session on chain (at the
close of the next window) and says until when its vouchers settle, and how to go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from ape.cli import network_option

from promptex.buyerside.sessions import GrantError, SessionGrant, WalletSigner, load, new_grant, save
from promptex.buyerside.voucherlog import VoucherLog, VoucherLogError
from promptex.cli import door
from promptex.cli.errors import readable_errors
from promptex.cli.market import market_command_class, rpc_url_option
from promptex.cli.proxy import describe_stop, grant_path, session_file_option
from promptex.cli.wallet import (
    LOCAL_NODE,
    Session,
    account_option,
    chain_time,
    refuse_while_signed,
    units,
    whole,
    yes_option,
)
from promptex.protocol.units import utc_text


def ape_signer(account: Any) -> WalletSigner:
    """EIP-712 typed data signed by an ape account (a keyfile asks for its passphrase)."""
    return lambda typed: door.sign_typed_data(account, typed)


def _vault_with_sessions(session: Session) -> Any:
    vault = session.contract("CreditsVault")
    if not hasattr(vault, "session_nonce"):
        raise click.ClickException("this vault has no session keys: signed mode's CreditsVault is not deployed here")
    return vault


@click.group("session")
def session() -> None:
    """Signed mode's session key: create (the wallet signs it), show, revoke."""


def _command(name: str) -> Callable[[Callable[..., None]], click.Command]:
    """A `promptex session` subcommand with ape's --network, and --account/--yes/--session."""

    def decorate(fn: Callable[..., None]) -> click.Command:
        fn = rpc_url_option(yes_option(account_option(session_file_option(fn))))
        fn = network_option(default=LOCAL_NODE)(fn)
        command: click.Command = session.command(name, cls=market_command_class())(fn)
        return command

    return decorate


def _keep_anothers_grant(path: Path, account: str, asset: str, chain_id: int) -> None:
    """Refuse to replace a grant file that holds another wallet's (or asset's) session key
    still in time: its private key is in that file only, and the proxy of that session could
    not sign again (a second `session create` in the same market folder, for another wallet,
    overwrote the first's session.json)."""
    if not path.exists():
        return
    try:
        held = load(path)
    except GrantError:
        return  # unreadable: nothing to keep (`promptex session show` says why)
    same = (held.account.lower(), held.asset.lower(), held.chain_id) == (account.lower(), asset.lower(), chain_id)
    if not same and held.expiry > chain_time():
        raise click.ClickException(
            f"{path} holds the session key of {held.account} for {held.asset_symbol} (session {held.session}, until "
            f"{utc_text(held.expiry)}); a new grant there would lose it: give this one its own file (--session FILE, "
            "and `promptex proxy --session FILE`)"
        )


def _not_registered(exc: BaseException) -> bool:
    """Whether `--direct`'s transaction definitely failed: reverted (at its estimate, before
    sending, or mined), refused by the node or out of gas (ape's VirtualMachineError), or
    never signed. Before, its `.pending` grant (0600, the private key of a session never
    registered) was left beside the grant file for every one; a transaction sent with no
    receipt (a timeout, a lost connection) may still register it, and keeps it."""
    from ape.exceptions import SignatureError, VirtualMachineError

    return isinstance(exc, VirtualMachineError | SignatureError)


@_command("create")
@click.option("--asset", "symbol", default="USDC", show_default=True, help="the asset the session spends")
@click.option("--lanes", default=8, show_default=True, type=click.IntRange(1, 64), help="requests in flight at once")
@click.option("--maximum", required=True, help="the most the session key can ever let be taken (whole units)")
@click.option("--days", default=1, show_default=True, type=click.IntRange(1, 365), help="the session's lifetime")
@click.option("--direct", is_flag=True, help="the wallet registers it itself (a transaction) instead of the relay")
def session_create(
    network: Any,
    alias: str | None,
    yes: bool,
    session_file: str | None,
    symbol: str,
    lanes: int,
    maximum: str,
    days: int,
    direct: bool,
) -> None:
    """A new session key, authorized by your wallet's signature; written for `promptex proxy`."""
    from ape import chain

    path = grant_path(session_file)
    with readable_errors():
        if not direct:
            door.door_url()  # the relay's door is known, before the wallet signs anything
        wallet = Session(network, alias, yes)
        vault = _vault_with_sessions(wallet)
        token = wallet.token(symbol)
        refuse_while_signed(vault, wallet.account, token, symbol.upper(), "a new session key")
        _keep_anothers_grant(path, str(wallet.account.address), str(token.address), int(chain.chain_id))
        grant = new_grant(
            ape_signer(wallet.account),
            chain_id=int(chain.chain_id),
            vault=str(vault.address),
            account=str(wallet.account.address),
            asset=str(token.address),
            asset_symbol=symbol,
            lanes=lanes,
            maximum=units(maximum, symbol),
            expiry=chain_time() + days * 86_400,
            nonce=int(vault.session_nonce(wallet.account, token)),
        )
        if direct:
            door.check_session_key(grant.message(), grant.signature)
        # The grant replaces `path` only once its key is registered or queued: written there
        # first, a refusal (the door's 409 already_queued, a rejected key) left a grant the
        # vault never had in place of the one in use (claims s16). Kept beside it meanwhile,
        # under its key's name, so a failure whose outcome is unknown (no answer, a process
        # killed after sending) still has the key.
        pending = path.with_name(f"{path.name}.{grant.key}.pending")
        save(grant, pending)
        try:
            if direct:
                vault.set_session_key(token, grant.key, lanes, grant.maximum, grant.expiry, sender=wallet.account)
            else:
                door.submit_session_key(grant.message(), grant.signature)
        except door.DoorError as exc:
            if exc.refused:  # the door answered no: nothing queued
                pending.unlink(missing_ok=True)
            raise
        except Exception as exc:
            if direct and _not_registered(exc):  # the key is in no session: its private key goes too
                pending.unlink(missing_ok=True)
            raise  # outcome unknown (sent, no receipt): the pending grant stays
        pending.replace(path)
    click.echo(describe(grant))
    click.echo(f"written to {path} (the session key's private key: keep it like the maximum it can spend)")
    if direct:
        click.echo("registered by your wallet: signed mode from the next window")
    else:
        click.echo(
            "queued for the coordinator: it registers it on chain on its next pass (signed mode from the window after)"
        )


def describe(grant: SessionGrant) -> str:
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(grant.expiry))
    return (
        f"session {grant.session} of {grant.account} for {grant.asset_symbol}: key {grant.key}, {grant.lanes} lanes, "
        f"at most {whole(grant.maximum, grant.asset_symbol)}, until {until}"
    )


@session.command("show")
@session_file_option
def session_show(session_file: str | None) -> None:
    """The session grant and what its vouchers allow so far (from the voucher log)."""
    from promptex.buyerside.opening import log_path

    path = grant_path(session_file)
    try:
        grant = load(path)
    except GrantError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(describe(grant))
    log_file = log_path(path.parent, grant)
    if not log_file.exists():
        click.echo("no voucher signed yet")
        return
    try:  # read only: beside a running proxy (which holds the log), and nothing cut off under it
        log = VoucherLog(log_file, grant.identity(), read_only=True)
    except VoucherLogError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        ceilings = [log.ceiling(grant.session, lane) for lane in range(grant.lanes)]
        stopped = log.stopped
    finally:
        log.close()
    exposure = sum(ceilings)
    click.echo(
        f"vouchers signed allow {whole(exposure, grant.asset_symbol)} in total "
        f"({sum(1 for c in ceilings if c)} of {grant.lanes} lanes used)"
    )
    if stopped is not None:
        click.echo(f"{describe_stop(stopped)} (`promptex proxy --resume` signs again)")


@_command("revoke")
@click.option("--asset", "symbol", default="USDC", show_default=True)
def session_revoke(network: Any, alias: str | None, yes: bool, session_file: str | None, symbol: str) -> None:
    """End your session key on chain (its vouchers settle until the close of the next window)."""
    with readable_errors():
        wallet = Session(network, alias, yes)
        vault = _vault_with_sessions(wallet)
        receipt = vault.revoke_session_key(wallet.token(symbol), sender=wallet.account)
        event = next(iter(receipt.events.filter(vault.SessionKeyRevoked)))
    asset = symbol.upper()
    click.echo(
        f"{asset} session {event.session} revoked: its vouchers settle until {utc_text(event.ends_at)}; after that, "
        f"`promptex wallet spend-cap --asset {asset} --per-epoch … --total …` returns the account to plain "
        f"requests (capped), or `promptex session create --asset {asset}` starts the next session"
    )
