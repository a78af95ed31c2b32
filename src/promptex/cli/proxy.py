"""`promptex proxy`: signed mode's local endpoint — point an unchanged OpenAI or Anthropic
SDK at it (`OPENAI_BASE_URL=http://127.0.0.1:8788/v1`) and every request carries a voucher
of your session key, written to disk before it leaves; each answer is checked.

Once signing stopped (an answer beyond its request, a gateway answering errors without the
lane's total again and again, …) the stop is in the voucher log: a restarted proxy says so
and refuses every request until `promptex proxy --resume`, after you looked at why."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from promptex.config import market_dir, settings
from promptex.protocol.units import utc_text

if TYPE_CHECKING:
    import httpx

    from promptex.buyerside.recovery import ChainSession
    from promptex.buyerside.sessions import SessionGrant
    from promptex.buyerside.signer import Signer
    from promptex.buyerside.voucherlog import Stop
    from promptex.config import Settings

LOOPBACK = "127.0.0.1"
GRANT_FILE = "session.json"

session_file_option = click.option("--session", "session_file", help="the grant file [default: <market>/session.json]")


def grant_path(option: str | None) -> Path:
    """--session, else PROMPTEX_PROXY_SESSION_FILE, else <market folder>/session.json."""
    if option:
        return Path(option)
    return settings().proxy_session_file or market_dir() / GRANT_FILE


def _api_key(option: str | None) -> str:
    s = settings()
    if option:
        return option
    if s.proxy_api_key is not None:
        return s.proxy_api_key.get_secret_value()
    from promptex.ready import read_ready

    ready = read_ready(market_dir())
    if ready is None or not ready.buyer_key:
        raise click.ClickException("no API key: pass --api-key or set PROMPTEX_PROXY_API_KEY")
    return ready.buyer_key


def _chain(grant: SessionGrant) -> ChainSession | None:
    """The vault's session views, when a chain and a signed-mode vault are at hand."""
    from promptex.buyerside.opening import chain_session
    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract

    s = settings()
    url = s.optional_rpc_url("indexer")
    if url is None:
        return None
    try:
        w3 = connect(url, timeout=5.0)
        vault = deployed_contract(w3, load_deployment(s.indexer_network, s.deployments_dir), "CreditsVault")
        return chain_session(vault, grant)
    except Exception as exc:  # no node, no deployment, a vault without session views: recovered without it
        click.echo(f"the chain was not read ({type(exc).__name__}: {str(exc)[:120]})", err=True)
        return None


def max_rate_bps(text: str) -> int:
    """`--max-rate` in basis points of list price: a fraction of list price ("0.9", as a
    seller's `--rate`) or a percentage ("90%", "87.5 %"), above 0 and at most list price."""
    from decimal import Decimal, InvalidOperation

    given = text.strip()
    percent = given.endswith("%")
    try:
        value = Decimal(given.removesuffix("%").strip())
    except InvalidOperation:
        value = Decimal("NaN")
    bps = value * (100 if percent else 10_000) if value.is_finite() else Decimal(-1)
    if bps != bps.to_integral_value() or not 0 < bps <= 10_000:
        raise click.ClickException(
            f"--max-rate is a fraction of list price (0.9) or a percentage (90%), above 0, at most 1 (100%), "
            f"in steps of 0.0001 (0.01%): not {text!r}"
        )
    return int(bps)


def describe_stop(stop: Stop) -> str:
    """A recorded stop in one line: when, on which lane, why."""
    when = utc_text(stop.at)
    where = "" if stop.lane is None else f" on lane {stop.lane}"
    return f"signing stopped {when}{where}: {stop.reason}"


def max_rate_line(signer: Signer) -> str:
    """The start line's max rate: what a seller's lot may charge at most, and how to bound it."""
    from promptex.gateway.errors import percent

    if signer.max_rate_bps is not None:
        return f"  lots charge at most {percent(signer.max_rate_bps)} of list price (--max-rate)"
    defaults = signer.default_max_rates()  # fixed now: later reads of /v1/models never raise them
    if not defaults:
        return (
            "  lots charge at most, per model, the highest rate the gateway lists at its first request (none listed "
            "now), never raised after; bound it with --max-rate"
        )
    if len(defaults) > 1 and len(set(defaults.values())) == 1:  # one rate: said once, not once per model
        # (before: "Llama-3.3-70B-Instruct 60 %, … text-embedding-3-small 60 %", 25 models on a local market)
        (bps,) = set(defaults.values())
        return (
            f"  lots charge at most the highest rate the gateway lists now: {percent(bps)} of list price for each of "
            f"its {len(defaults)} models, never raised while this runs; bound it with --max-rate"
        )
    shown = ", ".join(f"{model} {percent(bps)}" for model, bps in defaults.items())
    return (
        f"  lots charge at most the highest rate the gateway lists now, per model ({shown} of list price), never "
        f"raised while this runs; bound it with --max-rate"
    )


def gateway_client(base: str, auth: dict[str, str], s: Settings) -> httpx.AsyncClient:
    """The proxy's client of the gateway: it waits for an answer as long as the gateway may take
    (`Settings.gateway_client_wait_seconds`). It waited 600 s, the gateway's own deadline, which
    starts a little later: an answer charged in its last moments was taken for a drop."""
    import httpx

    return httpx.AsyncClient(
        base_url=base, headers=auth, timeout=httpx.Timeout(s.gateway_client_wait_seconds(), connect=10.0)
    )


@click.command("proxy")
@click.option("--port", type=int, help="[default: PROMPTEX_PROXY_PORT, 8788]")
@click.option("--gateway", "gateway_url", help="the gateway [default: PROMPTEX_PROXY_GATEWAY_URL, the local one]")
@click.option("--api-key", help="your gateway API key [default: PROMPTEX_PROXY_API_KEY, the demo buyer's]")
@click.option("--max-hold", help="the most one request may hold, whole units [default: the session maximum]")
@click.option(
    "--max-rate",
    help="the most a seller's lot may charge, as a fraction of list price (0.9) or a percentage (90%): requests "
    "go only to lots at or below it [default: per model, the highest rate the gateway lists when the proxy starts "
    "(the gateway's word), never raised while it runs]",
)
@click.option(
    "--resume",
    is_flag=True,
    help="sign again after a stop (see why it stopped first); without a recorded stop: exit 1, nothing served",
)
@session_file_option
def proxy(
    port: int | None,
    gateway_url: str | None,
    api_key: str | None,
    max_hold: str | None,
    max_rate: str | None,
    resume: bool,
    session_file: str | None,
) -> None:
    """Serve a signing OpenAI/Anthropic-compatible endpoint on 127.0.0.1."""
    import httpx
    import uvicorn

    from promptex.buyerside.opening import open_signer
    from promptex.buyerside.proxy import create_proxy
    from promptex.buyerside.sessions import GrantError, load
    from promptex.buyerside.voucherlog import VoucherLogError
    from promptex.cli.amounts import asset_units
    from promptex.metering import load_catalog
    from promptex.protocol.units import money
    from promptex.serving import KEEP_ALIVE_SECONDS, KeepAliveProtocol

    s = settings()
    path = grant_path(session_file)
    try:
        grant = load(path)
    except GrantError as exc:
        raise click.ClickException(str(exc)) from None
    base = (gateway_url or s.proxy_gateway_url or f"http://{s.gateway_host}:{s.gateway_port}").rstrip("/")
    base = base.removesuffix("/v1")
    auth = {"authorization": f"Bearer {_api_key(api_key)}"}
    hold = asset_units(max_hold, grant.asset_symbol) if max_hold else s.proxy_max_hold_units
    most = None if max_rate is None else max_rate_bps(max_rate)
    chain = _chain(grant)
    try:
        with httpx.Client(base_url=base, headers=auth, timeout=10.0) as client:
            opened = open_signer(
                grant,
                client,
                path.parent,
                chain=chain,
                catalog=load_catalog(s.model_catalog),
                max_hold=hold,
                default_output_tokens=s.proxy_default_output_tokens,
                lane_wait_seconds=s.proxy_lane_wait_seconds,
                stop_after_errors=s.proxy_stop_after_errors,
                tolerance_bp=s.proxy_stop_tolerance_bp,
                reasoning_bp=s.proxy_reasoning_bp,
                max_rate_bps=most,
            )
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"cannot open the session at {base}: {exc}") from None
    except VoucherLogError as exc:  # another session's log, one in use, one that cannot be written
        raise click.ClickException(str(exc)) from None
    for note in opened.notes:
        click.echo(note, err=True)
    signer = opened.signer
    recorded = signer.log.stopped
    if recorded is not None and resume:
        signer.resume()
        click.echo(f"resumed: {describe_stop(recorded)}", err=True)
    elif recorded is not None:
        click.echo(
            f"{describe_stop(recorded)}\n  every request is refused until you restart with `promptex proxy --resume` "
            f"(check the gateway first: `promptex session show`, GET /promptex/status)",
            err=True,
        )
    elif resume:
        # Nothing was resumed, so nothing is served: a proxy always started with --resume
        # would clear every stop unread; this says so the first time instead.
        click.echo(
            "nothing to resume: signing is not stopped (no stop in the voucher log); start without --resume", err=True
        )
        sys.exit(1)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))  # one line per refusal
    for name in ("promptex.proxy", "promptex.buyerside"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    port = port or s.proxy_port
    app = create_proxy(signer, gateway_client(base, auth, s))
    click.echo(
        f"signing for session {grant.session} ({grant.lanes} lanes, at most {money(grant.maximum, grant.asset_symbol)}"
        f") → {base}\n  OPENAI_BASE_URL=http://{LOOPBACK}:{port}/v1   "
        f"ANTHROPIC_BASE_URL=http://{LOOPBACK}:{port}\n{max_rate_line(signer)}"
    )
    uvicorn.run(
        app, host=LOOPBACK, port=port, log_config=None, access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS, http=KeepAliveProtocol,
    )  # fmt: skip
