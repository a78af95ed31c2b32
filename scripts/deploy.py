"""Deploy PROMPTEX: `ape run deploy --network ethereum:local:foundry`."""

import click
from ape.cli import ConnectedProviderCommand

from promptex.chain.accounts import resolve_account
from promptex.chain.deploy import deploy_all, live_deployment
from promptex.cli.errors import readable_errors


@click.command(cls=ConnectedProviderCommand)
@click.option("--account", "alias", default=None, help="ape account alias (default: test account 0 on a local chain)")
@click.option("--usdc", default=None, help="USDC address (required on live networks)")
@click.option("--treasury", default=None, help="mint-fee recipient (default: deployer)")
@click.option("--attestor", default=None, help="gateway attestor (default: deployer)")
@click.option(
    "--extra-attestor",
    "extra_attestors",
    multiple=True,
    help="another address with the attestor role, e.g. the dashboard's (repeatable)",
)
@click.option("--coordinator", default=None, help="the vault's settlement coordinator (default: deployer)")
@click.option(
    "--billing-signer",
    "billing_signers",
    multiple=True,
    help="PROVIDER=ADDRESS: the provider's billing signer RedemptionEscrow trusts for receipts (repeatable)",
)
@click.option(
    "--proposer",
    "proposers",
    multiple=True,
    help="an address that schedules Timelock operations (repeatable; default: the deployer)",
)
@click.option(
    "--guardian",
    "guardians",
    multiple=True,
    help="an address that cancels Timelock operations and revokes roles at once (repeatable; default: the deployer)",
)
@click.option(
    "--live-parameters",
    is_flag=True,
    help="on a local chain, the live network's Oracle period and TWAP windows (what `promptex up` deploys)",
)
@click.option("--force", is_flag=True, help="replace a live deployment recorded for this network")
@click.option("--keep-existing", is_flag=True, help="if a live deployment is recorded, keep it and succeed")
def cli(
    network,
    alias,
    usdc,
    treasury,
    attestor,
    extra_attestors,
    coordinator,
    billing_signers,
    proposers,
    guardians,
    live_parameters,
    force,
    keep_existing,
):
    signers = {}
    for item in billing_signers:
        provider, _, address = item.partition("=")
        if not provider or not address.startswith("0x") or len(address) != 42:
            raise click.BadParameter(f"{item!r}: expected PROVIDER=0xADDRESS", param_hint="--billing-signer")
        signers[provider] = address
    with readable_errors():
        existing = live_deployment(network.name)
        if keep_existing and existing is not None and not force:
            click.echo(f"live deployment kept (CreditEscrow at {existing.address('CreditEscrow')})")
            return
        deployer = resolve_account(alias)
        deploy_all(
            deployer,
            network.name,
            usdc=usdc,
            treasury=treasury,
            attestor=attestor,
            extra_attestors=extra_attestors,
            coordinator=coordinator,
            billing_signers=signers or None,
            proposers=proposers,
            guardians=guardians,
            live_parameters=live_parameters,
            force=force,
            log=click.echo,
        )
