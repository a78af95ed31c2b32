"""Which market a command talks to: its `--rpc-url` flag, else the environment, else the
profile `promptex up` wrote into its market folder (see `promptex.config`). Without any
of them a command refuses in one line (config.NO_MARKET) instead of using port 8545 —
and the ape-signed commands never let ape start an anvil of its own there."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import click

from promptex.cli.errors import quiet_ape
from promptex.config import NO_MARKET, market_dir, settings

# What `--rpc-url` sets for the rest of the command: every service's own chain setting too
# (a flag beats the environment), and ape's local node.
RPC_VARIABLES = (
    "PROMPTEX_RPC_URL",
    "PROMPTEX_INDEXER_RPC_URL",
    "PROMPTEX_COORDINATOR_RPC_URL",
    "PROMPTEX_AGENT_RPC_URL",
    "PROMPTEX_ATTESTOR_RPC_URL",
    "PROMPTEX_DASHBOARD_RPC_URL",
    "APE_FOUNDRY_HOST",
)


def _set_environment(ctx: click.Context, values: dict[str, str]) -> None:
    """Set `values` in the environment until the command ends (in-process callers, e.g.
    tests, get theirs back), re-reading the settings."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    settings.cache_clear()

    def restore() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        settings.cache_clear()

    # On the root context: a later option's parse error never closes this command's own
    # context, and the values stayed in an in-process caller's environment (a test's next
    # `promptex up` then gave its dashboard the walk's "x" as its node).
    ctx.find_root().call_on_close(restore)


def _use_rpc_url(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        _set_environment(ctx, dict.fromkeys(RPC_VARIABLES, value))


rpc_url_option = click.option(
    "--rpc-url",
    expose_value=False,
    callback=_use_rpc_url,
    help="the market's chain (JSON-RPC URL) [default: PROMPTEX_RPC_URL, else the profile `promptex up` wrote]",
)


def node_answers(url: str) -> bool:
    import httpx

    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        return httpx.post(url, json=body, timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


def local_node_url() -> str:
    """The node ape's local network (`ethereum:local:foundry`) uses: APE_FOUNDRY_HOST, else
    the market's chain. One-line ClickException when there is none or it does not answer."""
    url = os.environ.get("APE_FOUNDRY_HOST") or settings().rpc_url
    if not url:
        raise click.ClickException(NO_MARKET)
    if not node_answers(url):
        raise click.ClickException(
            f"no node answers at {url} (the market in {market_dir()}): start it with `promptex up` or pass --rpc-url"
        )
    return url


def _provider(ctx: click.Context) -> Any:
    """The provider ape's --network option chose (where ape's own parse_network finds it)."""
    from ape.cli.options import NETWORK_META_KEY

    meta = ctx.meta.get(NETWORK_META_KEY) or {}
    if meta.get("provider") is not None:
        return meta["provider"]
    if isinstance(ctx.obj, dict) and "provider" in ctx.obj:
        return ctx.obj["provider"]
    return ctx.params.get("network")


def _is_local_node(provider: Any) -> bool:
    network = getattr(provider, "network", None)
    return getattr(provider, "name", None) == "foundry" and getattr(network, "name", None) == "local"


@lru_cache(maxsize=1)
def market_command_class() -> type[click.Command]:
    """ape's ConnectedProviderCommand that points its local node at the market first (ape
    is imported only by the commands that sign with it)."""
    from ape.cli import ConnectedProviderCommand

    class MarketCommand(ConnectedProviderCommand):
        def invoke(self, ctx: click.Context) -> Any:
            quiet_ape()
            if _is_local_node(_provider(ctx)):
                _set_environment(ctx, {"APE_FOUNDRY_HOST": local_node_url()})
            return super().invoke(ctx)

    return MarketCommand
