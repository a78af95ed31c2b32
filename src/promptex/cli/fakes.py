"""`promptex fake-upstream` and `promptex fake-billing`: the local stand-ins for a
provider's API and its billing API, for the demo, `promptex up` and the tests."""

from __future__ import annotations

import click

from promptex.cli.amounts import usd_micro
from promptex.config import ConfigurationError, settings


@click.command("fake-upstream")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
@click.option("--latency-ms", default=0.0, show_default=True, type=float, help="delay before every answer")
@click.option("--chunk-delay-ms", default=0.0, show_default=True, type=float, help="delay between streamed chunks")
@click.option("--output-tokens", default=16, show_default=True, type=int, help="tokens an answer has (≤ max_tokens)")
@click.option("--fail-status", type=int, help="answer this HTTP status instead…")
@click.option("--fail-every", default=1, show_default=True, type=int, help="…on every Nth request")
@click.option("--accept-key", multiple=True, help="accepted upstream keys (default: any non-empty key)")
@click.option("--ignore-max-tokens", is_flag=True, help="answer --output-tokens whatever limit a request sets")
@click.option("--die-after-chunks", type=int, help="drop every stream's connection after this many words")
@click.option("--record-timings", is_flag=True, help="time requests by their `user` field (GET /_timings; bench)")
def fake_upstream(
    host: str,
    port: int,
    latency_ms: float,
    chunk_delay_ms: float,
    output_tokens: int,
    fail_status: int | None,
    fail_every: int,
    accept_key: tuple[str, ...],
    ignore_max_tokens: bool,
    die_after_chunks: int | None,
    record_timings: bool,
) -> None:
    """Serve a fake OpenAI- and Anthropic-compatible provider (deterministic text, real usage)."""
    import uvicorn

    from promptex.fakes import FakeUpstreamConfig, create_fake_upstream

    config = FakeUpstreamConfig(
        latency_ms=latency_ms,
        chunk_delay_ms=chunk_delay_ms,
        output_tokens=output_tokens,
        fail_status=fail_status,
        fail_every=fail_every,
        api_keys=frozenset(accept_key) or None,
        ignore_max_tokens=ignore_max_tokens,
        die_after_chunks=die_after_chunks,
        record_timings=record_timings,
    )
    # Said when it starts (before: nothing, so a seller following the README could not tell it
    # served, nor which key to give add-capacity).
    keys = "the keys --accept-key names" if accept_key else "any non-empty key"
    click.echo(f"fake upstream on http://{host}:{port}/v1 (OpenAI and Anthropic APIs; {keys})", err=True)
    uvicorn.run(create_fake_upstream(config), host=host, port=port, log_level="warning", access_log=False)


@click.command("fake-billing")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=None, type=int, help="default: PROMPTEX_AGENT_FAKE_BILLING_PORT")
@click.option("--provider", default="anthropic", show_default=True)
@click.option("--balance", "balances", multiple=True, help="ACCOUNT_ID=USD starting balance (repeatable)")
@click.option("--fail-status", type=int, default=None, help="answer this status…")
@click.option("--fail-times", type=int, default=0, help="…to the next N requests")
def fake_billing(
    host: str, port: int | None, provider: str, balances: tuple[str, ...], fail_status: int | None, fail_times: int
) -> None:
    """Serve a fake provider billing API that signs receipts for the agent's deployment's escrow."""
    import uvicorn
    from eth_account import Account

    from promptex.agent.factory import fake_billing_key
    from promptex.agent.fake_billing import FakeBillingConfig, create_fake_billing
    from promptex.chain.deployments import load_deployment

    s = settings()
    try:
        deployment = load_deployment(s.agent_network)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        key = fake_billing_key(s)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    starting = {}
    for item in balances:
        account, _, usd = item.partition("=")
        starting[account] = usd_micro(usd)
    config = FakeBillingConfig(
        signer_key=key, chain_id=deployment.chain_id, escrow=deployment.address("RedemptionEscrow"), provider=provider,
        balances=starting, fail_status=fail_status, fail_times=fail_times,
    )  # fmt: skip
    click.echo(f"fake {provider} billing signer {Account.from_key(key).address}", err=True)
    uvicorn.run(
        create_fake_billing(config), host=host, port=port or s.agent_fake_billing_port, log_level="warning",
        access_log=False,
    )  # fmt: skip
