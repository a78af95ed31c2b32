"""The `promptex` command line: one module per command group, each holding only the click
glue over the services' own packages; a group's module is imported when it is used."""

from __future__ import annotations

import warnings

import click

from promptex import __version__
from promptex.cli.errors import OneLineErrors
from promptex.cli.lazy import LazyGroup

# ape's own settings models warn about a forward reference on every start (pydantic-settings
# IncompleteFieldDefinitionWarning): noise a user can do nothing about.
warnings.filterwarnings("ignore", module=r"pydantic_settings(\.|$)")


class RootGroup(OneLineErrors, LazyGroup):
    """Subcommands imported when used; every failure one line (see cli.errors)."""


@click.group(
    cls=RootGroup,
    lazy={
        "deployment": "promptex.cli.deployment:deployment",
        "usage": "promptex.cli.usage:usage",
        "fake-upstream": "promptex.cli.fakes:fake_upstream",
        "fake-billing": "promptex.cli.fakes:fake_billing",
        "gateway": "promptex.cli.gateway:gateway",
        "seller": "promptex.cli.seller:seller",
        "attestor": "promptex.cli.attestor:attestor",
        "buyer": "promptex.cli.buyer:buyer",
        "wallet": "promptex.cli.wallet:wallet",
        "status": "promptex.cli.wallet:status",
        "coordinator": "promptex.cli.coordinator:coordinator",
        "indexer": "promptex.cli.indexer:indexer",
        "keeper": "promptex.cli.keeper:keeper",
        "agent": "promptex.cli.agent:agent",
        "redeem": "promptex.cli.agent:redeem",
        "redemptions": "promptex.cli.agent:redemptions",
        "dashboard": "promptex.cli.dashboard:dashboard",
        "hedge": "promptex.cli.hedge:hedge",
        "org": "promptex.cli.org:org",
        "market": "promptex.cli.market_info:market",
        "up": "promptex.cli.up:up_command",
        "reconcile": "promptex.cli.reconcile:reconcile",
        "proxy": "promptex.cli.proxy:proxy",
        "session": "promptex.cli.session:session",
    },
)
@click.version_option(__version__, prog_name="promptex")
def main() -> None:
    """PROMPTEX: tokenized AI credit, a credits vault, a DEX and a metered /v1 gateway.

    Failures print one line and exit 1; add --debug to any command for the full trace."""
