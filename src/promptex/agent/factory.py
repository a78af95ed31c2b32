"""The redemption agent as the settings describe it (what `promptex agent`, `redeem` and
`fake-billing` run), and the local network's development keys; heavy imports happen only
when an agent is built."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from promptex.config import ConfigurationError, Settings, settings

if TYPE_CHECKING:
    from promptex.agent.service import Agent
    from promptex.ledger import Ledger

# On the local network the agent and the fake billing API sign with anvil's public
# development accounts 8 and 9, which the demo, `promptex up` and the tests leave to them.
LOCAL_AGENT_KEY = "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97"  # account 8
LOCAL_BILLING_SIGNER_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"  # account 9


def agent_key(s: Settings) -> str:
    if s.agent_private_key is not None:
        return s.agent_private_key.get_secret_value()
    if s.agent_network == "local":
        return LOCAL_AGENT_KEY
    raise ConfigurationError("set PROMPTEX_AGENT_PRIVATE_KEY (the key users grant)")


def fake_billing_key(s: Settings) -> str:
    if s.agent_fake_billing_private_key is not None:
        return s.agent_fake_billing_private_key.get_secret_value()
    if s.agent_network == "local":
        return LOCAL_BILLING_SIGNER_KEY
    raise ConfigurationError("set PROMPTEX_AGENT_FAKE_BILLING_PRIVATE_KEY (the billing signer's key)")


def make_agent(s: Settings | None = None, *, open_ledger: Callable[[Settings], Ledger] | None = None) -> Agent:
    """The agent. `open_ledger`: how its ledger is opened (default `Ledger.from_settings`,
    migrated: the `agent run` service; `agent link`/`rule` and `redeem` pass
    `cli.ledgers.market_ledger`, which never migrates)."""
    from promptex.agent.billing import HttpBilling
    from promptex.agent.chain import Web3AgentChain
    from promptex.agent.outbox import SmtpConfig
    from promptex.agent.service import Agent
    from promptex.chain.deployments import load_deployment
    from promptex.chain.identity import check_chain
    from promptex.ledger import Ledger
    from promptex.sealing.envelope import load_master_keys

    s = s or settings()
    rpc_url = s.chain_rpc_url("agent")  # first: no market at all is the thing to say
    try:
        deployment = load_deployment(s.agent_network)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    if "RedemptionEscrow" not in deployment.contracts:
        raise ConfigurationError(f"the {s.agent_network} deployment has no RedemptionEscrow: redeploy")
    chain = Web3AgentChain(rpc_url, deployment, agent_key(s))
    master = s.gateway_master_key.get_secret_value() if s.gateway_master_key else None
    smtp = None
    if s.agent_smtp_host:
        password = s.agent_smtp_password.get_secret_value() if s.agent_smtp_password else None
        smtp = SmtpConfig(
            s.agent_smtp_host, s.agent_smtp_port, s.agent_smtp_user, password, s.agent_smtp_from,
            s.agent_smtp_starttls,
        )  # fmt: skip
    ledger = (open_ledger or Ledger.from_settings)(s)
    check_chain(ledger, service="the agent", rpc_url=s.chain_rpc_url("agent"), network=s.agent_network)
    return Agent(
        ledger.engine,
        chain,
        HttpBilling(timeout=s.agent_billing_timeout_seconds),
        load_master_keys(master, s.gateway_master_key_file),
        rules_interval=s.agent_rules_interval_seconds,
        smtp=smtp,
        billing_url=s.agent_billing_url,
        tx_timeout=s.agent_tx_timeout_seconds,
        swap_deadline=s.agent_swap_deadline_seconds,
        retry_seconds=s.agent_billing_retry_seconds,
        retry_max_seconds=s.agent_billing_retry_max_seconds,
        purchase_margin=s.agent_purchase_margin_seconds,
    )
