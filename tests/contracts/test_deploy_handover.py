"""The real deploy hands every governed contract to the Timelock: after `deploy_all`
the deployer pulls no lever directly, grants wait the delay, and the guardian revokes
the registered roles at once."""

import ape
import pytest

from promptex.chain.deploy import GOVERNED, REVOCATIONS, contract_at, deploy_all
from promptex.chain.timelock import Call, selector
from promptex.chain.timelock import execute as execute_call
from promptex.chain.timelock import schedule as schedule_call
from promptex.protocol.timelock import MIN_DELAY

NOT_OWNER = "ownable: caller is not the owner"


@pytest.fixture(scope="module")
def handed_over(admin, treasury, attestor, attacker, tmp_path_factory):
    return deploy_all(
        admin,
        "local",
        treasury=treasury.address,
        attestor=attestor.address,
        force=True,
        root=tmp_path_factory.mktemp("handover"),
        log=lambda _: None,
    )


@pytest.fixture(scope="module")
def timelock(handed_over):
    return contract_at(handed_over, "Timelock")


def test_deploy__every_governed_contract__owned_by_the_timelock(handed_over, timelock, admin):
    for name in GOVERNED:
        contract = contract_at(handed_over, name)
        assert contract.owner() == timelock.address, name
        assert contract.pending_owner() == "0x" + "00" * 20, name
    assert timelock.get_minimum_delay() == MIN_DELAY
    assert timelock.hasRole(timelock.PROPOSER_ROLE(), admin)  # the deployer on a local chain
    assert timelock.hasRole(timelock.GUARDIAN_ROLE(), admin)


def test_deploy__revocations_registered_for_each_governed_contract(handed_over, timelock):
    for name, methods in REVOCATIONS.items():
        contract = contract_at(handed_over, name)
        for method in methods:
            assert timelock.is_revocation(contract, selector(contract, method)), (name, method)


def test_deploy__a_pauser_acts_at_once_on_every_pausable_contract(handed_over, admin):
    # The admin's own pause waits the Timelock's delay, so each pausable contract gets a
    # pauser at deploy (the deployer on a local chain), whom the guardian can revoke at once.
    for name in ("CreditsVault", "RedemptionEscrow", "Perp"):
        assert contract_at(handed_over, name).is_pauser(admin), name
    vault = contract_at(handed_over, "CreditsVault")
    vault.pause(sender=admin)
    assert vault.paused()


def test_deploy__token_roles_fixed(handed_over):
    escrow, vault = contract_at(handed_over, "CreditEscrow"), contract_at(handed_over, "CreditsVault")
    for symbol in handed_over.token_symbols():
        token = contract_at(handed_over, f"token:{symbol}")
        assert (token.escrow(), token.vault(), token.owner()) == (escrow.address, vault.address, "0x" + "00" * 20)


def test_deploy__deployer_goes_around_the_timelock__refused(handed_over, admin, attacker):
    escrow = contract_at(handed_over, "CreditEscrow")
    with ape.reverts(NOT_OWNER):
        escrow.grant_attestor(attacker, sender=admin)
    with ape.reverts(NOT_OWNER):
        escrow.set_min_bond_bps(2_000, sender=admin)


def test_deploy__grant_through_the_timelock__after_the_delay(handed_over, timelock, admin, attacker, chain):
    escrow = contract_at(handed_over, "CreditEscrow")
    grant = Call.of(escrow, "grant_attestor", attacker.address)
    schedule_call(timelock, grant, sender=admin)
    chain.pending_timestamp += MIN_DELAY
    execute_call(timelock, grant, sender=attacker)
    assert escrow.is_attestor(attacker)
    timelock.revoke(escrow, Call.of(escrow, "revoke_attestor", attacker.address).data, sender=admin)
    assert not escrow.is_attestor(attacker)


def test_min_delay__longer_than_any_exit_or_refund_a_user_may_need(handed_over, timelock):
    # A user who dislikes an announced change can always leave before it applies: the
    # longest thaw plus the longest pause (≤ MAX_THAW_PERIOD by construction) and the
    # longest redemption refund delay all end before the shortest timelock delay.
    vault, redemption = contract_at(handed_over, "CreditsVault"), contract_at(handed_over, "RedemptionEscrow")
    min_delay = timelock.MIN_DELAY()
    assert min_delay > 2 * vault.MAX_THAW_PERIOD() >= vault.MAX_THAW_PERIOD() + vault.MAX_PAUSE()
    assert min_delay > redemption.MAX_REFUND_DELAY()
    assert min_delay > contract_at(handed_over, "CreditEscrow").close_delay()
