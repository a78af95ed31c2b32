"""Deploy PROMPTEX: `ape run deploy --network ethereum:local:foundry`."""

import click
from ape.cli import ConnectedProviderCommand

from promptex.chain.accounts import resolve_account
from promptex.chain.deploy import deploy_all
from promptex.chain.errors import readable_errors


@click.command(cls=ConnectedProviderCommand)
@click.option("--account", "alias", default=None, help="ape account alias (default: test account 0 on a local chain)")
@click.option("--usdc", default=None, help="USDC address (required on live networks)")
@click.option("--treasury", default=None, help="mint-fee recipient (default: deployer)")
@click.option("--attestor", default=None, help="gateway attestor (default: deployer)")
@click.option("--settler", default=None, help="settlement role (default: deployer)")
@click.option("--force", is_flag=True, help="replace a live deployment recorded for this network")
def cli(network, alias, usdc, treasury, attestor, settler, force):
    with readable_errors():
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
