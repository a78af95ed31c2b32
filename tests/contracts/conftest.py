"""Personas and a fresh PROMPTEX deployment for contract tests (through ape).

The deployment is made once per session by the real deploy code; ape reverts the
chain to a snapshot around every test, so each test starts from it.
"""

import pytest
from eth_utils import keccak

from promptex.chain.deploy import contract_at, deploy_all
from promptex.chain.providers import USD_MICRO

KIND_TOKENIZED = 1
KIND_LISTED = 2
DAY = 86_400
TERMS = keccak(text="seller declares its provider agreement permits resale")


@pytest.fixture(scope="session")
def admin(accounts):
    return accounts[0]


@pytest.fixture(scope="session")
def seller(accounts):
    return accounts[1]


@pytest.fixture(scope="session")
def buyer(accounts):
    return accounts[2]


@pytest.fixture(scope="session")
def attestor(accounts):
    return accounts[3]


@pytest.fixture(scope="session")
def settler(accounts):
    return accounts[4]


@pytest.fixture(scope="session")
def treasury(accounts):
    return accounts[5]


@pytest.fixture(scope="session")
def attacker(accounts):
    return accounts[6]


@pytest.fixture(scope="session")
def deployment(admin, treasury, attestor, settler, tmp_path_factory):
    return deploy_all(
        admin,
        "local",
        treasury=treasury.address,
        attestor=attestor.address,
        settler=settler.address,
        force=True,
        root=tmp_path_factory.mktemp("deployments"),
        log=lambda _: None,
    )


@pytest.fixture(scope="session")
def usdc(deployment):
    return contract_at(deployment, "USDC")


@pytest.fixture(scope="session")
def escrow(deployment):
    return contract_at(deployment, "CreditEscrow")


@pytest.fixture(scope="session")
def cld(deployment):
    return contract_at(deployment, "token:CLD")


@pytest.fixture(scope="session")
def gpt(deployment):
    return contract_at(deployment, "token:GPT")


@pytest.fixture
def expiry(chain):
    return chain.pending_timestamp + 30 * DAY


@pytest.fixture
def open_lot(escrow, usdc, attestor, expiry):
    """Open a lot for `seller`, funding and approving its minimum bond."""

    def _open(seller, token, kind=KIND_TOKENIZED, face_value=10_000 * USD_MICRO, rate_bps=0, bond=None):
        bond = escrow.min_bond(face_value) if bond is None else bond
        usdc.mint(seller, bond, sender=seller)
        usdc.approve(escrow, bond, sender=seller)
        escrow.open_lot(seller, token, kind, face_value, expiry, bond, TERMS, rate_bps, sender=attestor)
        return escrow.lot_count()

    return _open
