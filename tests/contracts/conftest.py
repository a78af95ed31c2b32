"""Personas and a fresh PROMPTEX deployment for contract tests (through ape).

The deployment is made once per session by the real deploy code; ape reverts the
chain to a snapshot around every test, so each test starts from it.
"""

import pytest
from ape import project
from eth_utils import keccak

from promptex.chain.deploy import contract_at, deploy_all
from promptex.protocol.escrow import KIND_LISTED, KIND_TOKENIZED
from promptex.protocol.units import DAY, USD_MICRO
from promptex.protocol.vault import pack_debits, pack_lot_amount

TERMS = keccak(text="seller declares its provider agreement permits resale")


# ─── ape's isolation: every shared fixture of a module comes in with its first test ──
# ape reverts the chain to a snapshot per scope. When a test asks for a session-scoped
# fixture no earlier test of its module used (`seller` under `plain`, `worlds` under a
# world…), ape "rebases": it reverts to before the module's own fixtures and builds them
# all again (the DEX, Perp, the plain tokens…: 2-5 s each time, three or four times in
# test_perp alone), since a session fixture made inside the module's snapshot would be
# undone with it. Asking for every session- and module-scoped fixture the module's tests
# use when the module's first test starts (in this process: xdist may split a module)
# makes each once, in scope order, and no later test brings a new one. ape's warning of a
# rebase is an error in these tests, so a fixture that would bring one back fails its test.
_SHARED = ("session", "package", "module")
_upfront: dict[str, list[str]] = {}
NO_REBASE = pytest.mark.filterwarnings("error::ape.pytest.warnings.InvalidIsolationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or "accounts" not in item.fixturenames:  # not an ape chain test
            continue
        item.add_marker(NO_REBASE)
        names = _upfront.setdefault(item.nodeid.split("::", 1)[0], [])
        for name in item.fixturenames:
            defs = info.name2fixturedefs.get(name)
            if defs and defs[-1].scope in _SHARED and not defs[-1].params and name not in names:
                names.append(name)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    module = item.getparent(pytest.Module)
    if module is None or module in item.session._setupstate.stack:
        return  # not the first test of its module in this run
    names = _upfront.get(item.nodeid.split("::", 1)[0], [])
    # A new list: a parametrized test's items share the one they were collected with.
    item.fixturenames = [*item.fixturenames, *(name for name in names if name not in item.fixturenames)]


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
    """An account with no escrow role (only the vault draws lots)."""
    return accounts[4]


@pytest.fixture(scope="session")
def treasury(accounts):
    return accounts[5]


@pytest.fixture(scope="session")
def attacker(accounts):
    return accounts[6]


@pytest.fixture(scope="session")
def deployment(admin, treasury, attestor, tmp_path_factory):
    return deploy_all(
        admin,
        "local",
        treasury=treasury.address,
        attestor=attestor.address,
        hand_over=False,  # the admin stays `admin`, so tests call admin functions directly
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
    """Open a lot for `seller`, funding and approving its bond: a tokenized lot's (its
    token's share, the only one accepted), a listed lot's minimum."""

    def _open(seller, token, kind=KIND_TOKENIZED, face_value=10_000 * USD_MICRO, rate_bps=0, bond=None):
        if bond is None:
            tokenized = kind == KIND_TOKENIZED
            bond = escrow.tokenized_bond(token, face_value) if tokenized else escrow.min_bond(face_value)
        usdc.mint(seller, bond, sender=seller)
        usdc.approve(escrow, bond, sender=seller)
        escrow.open_lot(seller, token, kind, face_value, expiry, bond, TERMS, rate_bps, sender=attestor)
        return escrow.lot_count()

    return _open


# ─── CreditsVault ─────────────────────────────────────────────────────────────
# Personas and helpers for tests/contracts/test_credits_vault.py. The deployment
# above makes `admin` the vault's admin and first coordinator; `coordinator` is
# granted the role here so tests can tell the two apart.

RATE_BPS = 10_000  # the listed lot sells at list price, so a credit equals the capacity it draws


@pytest.fixture(scope="session")
def coordinator(accounts):
    return accounts[7]


@pytest.fixture(scope="session")
def pauser(accounts):
    return accounts[8]


@pytest.fixture(scope="session")
def org(accounts):
    return accounts[9]


@pytest.fixture(scope="session")
def vault(deployment, admin, coordinator, pauser):
    vault = contract_at(deployment, "CreditsVault")
    vault.grant_coordinator(coordinator, sender=admin)
    vault.grant_pauser(pauser, sender=admin)
    return vault


@pytest.fixture
def fund(vault, usdc):
    """Mint `amount` of USDC (or take a token holder's tokens) and deposit them for `account`."""

    def _fund(account, amount, asset=None, holder=None):
        asset = usdc if asset is None else asset
        payer = account if holder is None else holder
        if asset.address == usdc.address:
            usdc.mint(payer, amount, sender=payer)
        asset.approve(vault, amount, sender=payer)
        vault.deposit_for(account, asset, amount, sender=payer)

    return _fund


@pytest.fixture
def cap(vault, usdc):
    """Give `account` a spend cap on `asset` (direct call, no signature)."""

    def _cap(account, per_epoch=2**256 - 1, total=10**30, asset=None, expiry=2**32 - 1):
        asset = usdc if asset is None else asset
        vault.set_spend_cap(asset, per_epoch, total, expiry, sender=account)

    return _cap


@pytest.fixture
def next_window(vault, chain):
    """Move time to the first moment the next settlement of `asset` may be posted."""

    def _next(asset):
        at = vault.next_settlement_at(asset)
        if chain.pending_timestamp < at:
            chain.pending_timestamp = at

    return _next


@pytest.fixture
def listed_lot(open_lot, seller, gpt):
    """An open listed lot (USDC-paid) of `seller`, at list price."""
    return open_lot(seller, gpt, kind=KIND_LISTED, face_value=5_000 * USD_MICRO, rate_bps=RATE_BPS)


@pytest.fixture
def tokenized_lot(open_lot, seller, cld):
    """An open tokenized CLD lot of `seller` (seller holds the minted CLD)."""
    return open_lot(seller, cld)


@pytest.fixture
def draw_down(vault, escrow, usdc, coordinator, buyer, chain, accounts):
    """Draw `amount` of a lot's capacity the only way there is: a vault settlement.
    A tokenized lot: `payer` (default: the lot's seller) deposits and spends `amount`
    of its tokens, burned while the escrow draws nearest expiry first. A listed lot:
    `payer` (default: `buyer`) pays the seller's credit in USDC."""

    def _draw(lot_id, amount, payer=None):
        lot = escrow.lots(lot_id)
        tokenized = lot.kind == KIND_TOKENIZED
        token = project.ComputeToken.at(lot.token) if tokenized else usdc
        if payer is None:
            payer = next(a for a in accounts if a.address == lot.seller) if tokenized else buyer
        at = vault.next_settlement_at(token)
        if chain.pending_timestamp < at:
            chain.pending_timestamp = at
        if tokenized:
            debit, credits, burn = amount, [], amount
        else:
            debit = (lot.consumed + amount) * lot.rate_bps // 10_000 - lot.consumed * lot.rate_bps // 10_000
            credits, burn = [pack_lot_amount(lot_id, amount)], 0
            usdc.mint(payer, debit, sender=payer)
        debits = []
        if debit:
            token.approve(vault, debit, sender=payer)
            vault.deposit(token, debit, sender=payer)
            vault.set_spend_cap(token, 2**256 - 1, 10**30, 2**32 - 1, sender=payer)
            debits = pack_debits({str(payer): debit})
        epoch = vault.last_epoch(token) + 1
        return vault.settle(epoch, token, debits, credits, burn, 0, b"\x33" * 32, sender=coordinator)

    return _draw
