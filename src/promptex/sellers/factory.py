"""The tokenize/list path as the settings describe it: the chain (the attestor's key, the
seller's if given), the database (checked to mirror that chain), the sealing keys and
the catalog. Raises config.ConfigurationError (a one-line CLI error) for what to set."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pydantic import SecretStr

from promptex import metering
from promptex.chain.sender import TxSigner
from promptex.config import ConfigurationError, Settings
from promptex.ledger import Ledger
from promptex.sellers.chain import SellerChain
from promptex.sellers.manage import Closing
from promptex.sellers.onboard import Onboarded, Onboarding
from promptex.sellers.store import SellerStore
from promptex.sellers.terms import Capacity

# On the local network without PROMPTEX_ATTESTOR_PRIVATE_KEY: anvil's public development
# accounts that `ape run deploy` makes attestors — account 7 (`promptex up`'s
# `--extra-attestor`, so opening a lot never races the coordinator's nonces), else the
# deployer, account 0.
LOCAL_ATTESTOR_KEY = "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356"  # account 7
LOCAL_ATTESTOR_KEYS = (
    LOCAL_ATTESTOR_KEY,
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",  # account 0
)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def make_chain(s: Settings, seller: TxSigner | None = None) -> SellerChain:
    """The chain; `seller` (an ape account's signer) signs the seller's transactions instead of
    PROMPTEX_SELLER_PRIVATE_KEY."""
    from promptex.chain.deployments import load_deployment

    try:
        deployment = load_deployment(s.attestor_network)
    except FileNotFoundError as exc:
        raise ConfigurationError(str(exc)) from None
    rpc_url = s.chain_rpc_url("attestor")
    seller_key: str | TxSigner | None = seller if seller is not None else _secret(s.seller_private_key)
    attestor_key = _secret(s.attestor_private_key)
    chain = SellerChain(rpc_url, deployment, attestor_key=attestor_key, seller_key=seller_key)
    if attestor_key is None and s.attestor_network == "local":
        for key in LOCAL_ATTESTOR_KEYS:
            candidate = SellerChain(rpc_url, deployment, attestor_key=key, seller_key=seller_key)
            assert candidate.attestor is not None
            if candidate.is_attestor(candidate.attestor.sender):
                return candidate
    return chain


def check_ledger_chain(s: Settings, ledger: Ledger) -> None:
    """Refuse (one line) a database that mirrors another chain or deployment."""
    from promptex.chain.identity import check_chain

    check_chain(ledger, service="the seller commands", rpc_url=s.chain_rpc_url("attestor"), network=s.attestor_network)


def make_onboarding(s: Settings, ledger: Ledger, chain: SellerChain) -> Onboarding:
    from promptex.sealing.envelope import load_master_keys

    secret = _secret(s.gateway_master_key)
    return Onboarding(
        SellerStore(ledger.engine),
        chain,
        load_master_keys(secret, s.gateway_master_key_file),
        metering.load_catalog(s.model_catalog),
        posting_margin=s.seller_posting_margin_seconds,
        tx_timeout=s.seller_tx_timeout_seconds,
    )


def make_closing(s: Settings, ledger: Ledger, chain: SellerChain) -> Closing:
    return Closing(SellerStore(ledger.engine), chain, tx_timeout=s.seller_tx_timeout_seconds)


@contextmanager
def seller_session(
    s: Settings, seller: TxSigner | None = None, *, open_ledger: Callable[[Settings], Ledger] | None = None
) -> Iterator[tuple[Ledger, SellerChain]]:
    """The database (checked to mirror the chain) and the chain; ConfigurationError (one
    line) when either cannot be used, a node that does not answer included. `open_ledger`:
    how the database is opened (default `Ledger.from_settings`, migrated: `promptex up`;
    the seller's commands pass `cli.ledgers.market_ledger`'s open, which never migrates)."""
    import requests

    try:
        with (open_ledger or Ledger.from_settings)(s) as ledger:
            chain = make_chain(s, seller)
            check_ledger_chain(s, ledger)
            yield ledger, chain
    except requests.ConnectionError:
        raise ConfigurationError(
            f"no JSON-RPC node answers at {s.optional_rpc_url('attestor')}: start it or fix the URL"
        ) from None


def open_capacity(
    s: Settings,
    capacities: Sequence[Capacity],
    *,
    verify: bool = True,
    before_each: Callable[[Capacity], None] | None = None,
    seller: TxSigner | None = None,
    open_ledger: Callable[[Settings], Ledger] | None = None,
) -> list[Onboarded]:
    """Open each capacity as a lot on the one tokenize/list path, in one session (one
    database and chain connection, the onboarding's pending work resumed once): what
    `promptex seller add-capacity` runs for its one lot and `promptex up` for its demo
    lots. `before_each` runs before each lot is opened (`up` approves that lot's exact
    bond). The first refusal stops it (CapacityRefused, LotNotOpened, LotPending or
    ConfigurationError: one line each). `open_ledger`: as `seller_session`'s."""
    opened = []
    with seller_session(s, seller, open_ledger=open_ledger) as (ledger, chain):
        onboarding = make_onboarding(s, ledger, chain)
        onboarding.resume()
        for capacity in capacities:
            if before_each is not None:
                before_each(capacity)
            opened.append(onboarding.add(capacity, verify=verify))
    return opened
