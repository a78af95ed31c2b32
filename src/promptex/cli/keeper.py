"""`promptex keeper`: the local market's Oracle keeper, as a long-lived service (`promptex up`
supervises it like the indexer and the coordinator)."""

from __future__ import annotations

import logging
import signal
import threading

import click

from promptex.cli.market import rpc_url_option
from promptex.config import ConfigurationError, settings


@click.command("keeper")
@click.option(
    "--period", type=click.FloatRange(min=1), help="seconds between rounds [default: the Oracle's own period]"
)
@rpc_url_option
def keeper(period: float | None) -> None:
    """Call Oracle.update for every provider token once per Oracle period, so TWAPs stay
    current (Ctrl-C stops). Local chains only: it signs with anvil's unlocked development
    account 3; on a live network any keeper bot calling Oracle.update does this."""
    from promptex.chain.deployments import load_deployment
    from promptex.chain.node import connect, deployed_contract
    from promptex.ready import KEEPER, OracleKeeper, is_local_chain

    s = settings()
    try:
        rpc_url = s.chain_rpc_url("indexer")
        deployment = load_deployment(s.indexer_network)
    except (FileNotFoundError, ConfigurationError) as exc:
        raise click.ClickException(str(exc)) from None
    if not is_local_chain(rpc_url):
        raise click.ClickException(f"{rpc_url} is not a local anvil: the keeper signs with anvil's unlocked account")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
    every = period or int(deployed_contract(connect(rpc_url), deployment, "Oracle").functions.period().call())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop between rounds, never inside a transaction
        signal.signal(sig, lambda *_: stop.set())
    symbols = ", ".join(deployment.token_symbols())
    click.echo(f"oracle keeper: Oracle.update for {symbols} every {every:g} s, signed by {KEEPER}")
    OracleKeeper(rpc_url, deployment, every, stop).run()
