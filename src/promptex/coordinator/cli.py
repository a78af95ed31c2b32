"""Click commands for the coordinator; the main CLI (`promptex.cli`) mounts them:
`promptex coordinator [--once]`, `promptex usage proof REQUEST_ID`,
`promptex usage verify REQUEST_ID | --proof-file FILE`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from promptex import proofs
from promptex.config import Settings, settings
from promptex.coordinator.store import CoordinatorStore

ANVIL_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's public dev account 0


def coordinator_key(s: Settings) -> str:
    if s.coordinator_private_key is not None:
        return s.coordinator_private_key.get_secret_value()
    if s.coordinator_network == "local":
        return ANVIL_KEY_0
    raise click.ClickException("set PROMPTEX_COORDINATOR_PRIVATE_KEY (the vault coordinator's key)")


def make_chain(s: Settings) -> Any:
    from promptex.chain.deployments import load_deployment
    from promptex.coordinator.chain import Web3Chain

    try:
        deployment = load_deployment(s.coordinator_network)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    return Web3Chain(s.coordinator_rpc_url, deployment, coordinator_key(s))


def _engine(s: Settings) -> Any:
    from promptex.ledger import Ledger

    return Ledger.from_settings(s).engine


def make_coordinator(s: Settings) -> Any:
    from promptex.coordinator.service import Coordinator

    return Coordinator(
        _engine(s),
        make_chain(s),
        holder=s.coordinator_instance_id,
        lease_seconds=s.coordinator_lease_seconds,
        tx_timeout=s.coordinator_tx_timeout_seconds,
        release_expiry=s.coordinator_release_expiry_seconds,
    )


@click.group("coordinator", invoke_without_command=True)
@click.option("--once", is_flag=True, help="run one pass and exit")
@click.pass_context
def coordinator(ctx: click.Context, once: bool) -> None:
    """Settle usage on chain every epoch window (crash-safe; SIGTERM stops it cleanly)."""
    if ctx.invoked_subcommand is not None:
        return
    from promptex.coordinator.service import serve

    s = settings()
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    coord = make_coordinator(s)
    if once:
        report = coord.run_once()
        click.echo(
            json.dumps(
                {
                    "leader": report.leader,
                    "confirmed": report.confirmed,
                    "failed": report.failed,
                    "quarantined": report.quarantined,
                    "lots_drawn": report.consumed,
                    "spend_caps": report.caps,
                    "waiting": report.waiting,
                }
            )
        )
        return
    serve(coord, s.coordinator_poll_seconds)


@coordinator.command("release")
@click.option("--address", required=True, help="the wallet that will exit (must be bound to an account)")
@click.option("--asset", "symbol", required=True, help="USDC or a provider token symbol")
@click.option("--amount", required=True, type=click.IntRange(min=1), help="smallest units of the asset")
def coordinator_release(address: str, symbol: str, amount: int) -> None:
    """Co-sign an instant exit if the amount is free of unsettled usage; print the release as JSON
    (the wallet submits it with `promptex wallet exit-instant --release FILE`)."""
    from promptex.coordinator.store import ReleaseRefused

    try:
        release = make_coordinator(settings()).sign_release(address, symbol.upper(), amount)
    except (ReleaseRefused, ValueError) as exc:
        raise click.ClickException(f"release refused: {exc}") from None
    click.echo(
        json.dumps(
            {
                "address": release.address,
                "asset": release.asset,
                "amount": str(release.amount),
                "nonce": release.nonce,
                "expiry": release.expiry,
                "signature": release.signature,
            },
            indent=2,
        )
    )


def _build_proof(store: CoordinatorStore, request_id: str) -> dict[str, Any]:
    """`proofs.build_proof`, its refusals as one-line click errors."""
    try:
        return proofs.build_proof(store, request_id)
    except proofs.ProofError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("proof")
@click.argument("request_id")
def usage_proof(request_id: str) -> None:
    """Print a usage record's Merkle proof (record, leaf, root, proof) as JSON."""
    click.echo(json.dumps(_build_proof(CoordinatorStore(_engine(settings())), request_id), indent=2))


@click.command("verify")
@click.argument("request_id", required=False)
@click.option(
    "--proof-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="a `usage proof` output"
)
def usage_verify(request_id: str | None, proof_file: Path | None) -> None:
    """Check a usage record against the Merkle root the vault holds on chain for its epoch."""
    if (request_id is None) == (proof_file is None):
        raise click.UsageError("give a REQUEST_ID or --proof-file, not both")
    s = settings()
    if proof_file is not None:
        proof = json.loads(proof_file.read_text())
    else:
        assert request_id is not None
        proof = _build_proof(CoordinatorStore(_engine(s)), request_id)
    try:
        result = proofs.verify_proof(proof, make_chain(s))
    except proofs.MalformedProof as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(result.as_json(), indent=2))
    if not result.verified:
        click.echo("MISMATCH: the record does not prove into the root on chain", err=True)
        sys.exit(1)
