"""Deploy PROMPTEX: `ape run deploy --network ethereum:local:foundry`."""

import click
from ape.cli import ConnectedProviderCommand

from promptex.chain.accounts import resolve_account
from promptex.chain.deploy import deploy_all, live_deployment
from promptex.chain.errors import readable_errors


@click.command(cls=ConnectedProviderCommand)
@click.option("--account", "alias", default=None, help="ape account alias (default: test account 0 on a local chain)")
@click.option("--usdc", default=None, help="USDC address (required on live networks)")
@click.option("--treasury", default=None, help="mint-fee recipient (default: deployer)")
@click.option("--attestor", default=None, help="gateway attestor (default: deployer)")
@click.option("--settler", default=None, help="settlement role (default: deployer)")
@click.option("--force", is_flag=True, help="replace a live deployment recorded for this network")
@click.option("--keep-existing", is_flag=True, help="if a live deployment is recorded, keep it and succeed")
def cli(network, alias, usdc, treasury, attestor, settler, force, keep_existing):
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
            settler=settler,
            force=force,
            log=click.echo,
        )
