"""`promptex market url NAME` and `promptex market demo-key`: what `promptex up` recorded
in its market folder (the profile's URLs, the demo buyer's key), for scripts and the
README's quick-starts: `export OPENAI_BASE_URL=$(promptex market url gateway)`."""

from __future__ import annotations

import json

import click

from promptex.config import NO_MARKET, PROFILE_FILE, REWRITE_PROFILE, market_dir


def _recorded(name: str) -> dict[str, object]:
    path = market_dir() / name
    try:
        loaded = json.loads(path.read_text())
    except FileNotFoundError:
        raise click.ClickException(NO_MARKET) from None
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise click.ClickException(f"cannot read {path} ({reason}): {REWRITE_PROFILE}") from None
    if not isinstance(loaded, dict):
        raise click.ClickException(f"cannot read {path} (not an object): {REWRITE_PROFILE}")
    return loaded


@click.group("market")
def market() -> None:
    """The market `promptex up` runs here: its URLs and demo key."""


@market.command("url")
@click.argument("name", type=click.Choice(["gateway", "dashboard", "chain", "upstream", "billing", "door"]))
def market_url(name: str) -> None:
    """One of the market's URLs (the gateway's is its /v1 base URL; the door is the coordinator's)."""
    urls = _recorded(PROFILE_FILE).get("urls")
    if not isinstance(urls, dict) or name not in urls:
        raise click.ClickException(f"the market's profile has no {name} URL: run `promptex up` again")
    click.echo(urls[name])


@market.command("demo-key")
def market_demo_key() -> None:
    """The demo buyer's API key (a local key with promotional credit only)."""
    from promptex.ready import READY_FILE

    key = _recorded(READY_FILE).get("buyer_key")
    if not isinstance(key, str):
        raise click.ClickException("this market has no demo buyer: `promptex up` makes one on a local chain")
    click.echo(key)
