"""Timelock: every lever waits the delay and is announced; a guardian revokes at once,
but only what is registered as a revocation; the timelock administers itself.

The governed contract is a small stand-in (contracts/test/MockGoverned.vy) so these
tests pin the timelock's own rules; the deployment's hand-over is tested with the
real contracts in test_deploy_handover.py.
"""

import ape
import pytest
from ape import project
from eth_utils import keccak

from promptex.chain.timelock import Call, deploy_timelock, selector
from promptex.chain.timelock import execute as execute_call
from promptex.chain.timelock import schedule as schedule_call
from promptex.protocol.timelock import MAX_DELAY, MIN_DELAY
from promptex.protocol.units import DAY, ZERO_ADDRESS

ADMIN_ROLE = b"\x00" * 32
PROPOSER_ROLE = keccak(text="PROPOSER_ROLE")
EXECUTOR_ROLE = keccak(text="EXECUTOR_ROLE")
CANCELLER_ROLE = keccak(text="CANCELLER_ROLE")
GUARDIAN_ROLE = keccak(text="GUARDIAN_ROLE")
NOT_READY = "timelock_controller: operation is not ready"


@pytest.fixture(scope="module")
def proposer(accounts):
    return accounts[1]


@pytest.fixture(scope="module")
def guardian(accounts):
    return accounts[2]


@pytest.fixture(scope="module")
def operator(accounts):
    return accounts[3]


@pytest.fixture(scope="module")
def governed(admin, operator, attacker):
    # `attacker` is requested here so session fixtures exist before the module's snapshot.
    contract = admin.deploy(project.MockGoverned)
    contract.grant_operator(operator, sender=admin)
    return contract


@pytest.fixture(scope="module")
def timelock(admin, proposer, guardian, governed):
    timelock = deploy_timelock(
        admin,
        delay=MIN_DELAY,
        proposers=[proposer.address],
        guardians=[guardian.address],
        revocations=[(governed.address, selector(governed, "revoke_operator"))],
    )
    governed.transfer_ownership(timelock, sender=admin)
    timelock.accept_ownership(governed, sender=admin)
    return timelock


def _wait(chain, seconds):
    chain.pending_timestamp += seconds


# ─── Deployment ──────────────────────────────────────────────────────────────


def test_constants__match_python_mirror(timelock):
    assert timelock.MIN_DELAY() == MIN_DELAY == 4 * DAY
    assert timelock.MAX_DELAY() == MAX_DELAY
    assert timelock.GUARDIAN_ROLE() == GUARDIAN_ROLE


@pytest.mark.parametrize("delay", [0, MIN_DELAY - 1, MAX_DELAY + 1])
def test_deploy__delay_out_of_range__reverts(admin, proposer, delay):
    with ape.reverts("timelock: delay out of range"):
        deploy_timelock(admin, delay=delay, proposers=[proposer.address], guardians=[], revocations=[])


def test_deploy__no_proposer__reverts(admin):
    with ape.reverts("timelock: no proposer"):
        deploy_timelock(admin, delay=MIN_DELAY, proposers=[], guardians=[], revocations=[])


def test_deploy__roles__deployer_keeps_nothing(timelock, admin, proposer, guardian, governed):
    assert timelock.hasRole(ADMIN_ROLE, timelock)
    assert not timelock.hasRole(ADMIN_ROLE, admin)
    assert timelock.hasRole(PROPOSER_ROLE, proposer) and timelock.hasRole(CANCELLER_ROLE, proposer)
    assert timelock.hasRole(GUARDIAN_ROLE, guardian) and timelock.hasRole(CANCELLER_ROLE, guardian)
    assert not timelock.hasRole(PROPOSER_ROLE, guardian)
    assert timelock.hasRole(EXECUTOR_ROLE, ZERO_ADDRESS)  # anyone executes a ready operation
    assert timelock.is_revocation(governed, selector(governed, "revoke_operator"))
    assert not timelock.is_revocation(governed, selector(governed, "grant_operator"))
    assert timelock.get_minimum_delay() == MIN_DELAY


def test_accept_ownership__handover__timelock_is_admin(timelock, governed, admin):
    assert governed.owner() == timelock
    with ape.reverts("ownable: caller is not the owner"):
        governed.set_fee_bps(1, sender=admin)


def test_accept_ownership__not_pending__reverts(timelock, admin):
    other = admin.deploy(project.MockGoverned)
    with ape.reverts():
        timelock.accept_ownership(other, sender=admin)
    assert other.owner() == admin


# ─── Schedule → wait → execute ───────────────────────────────────────────────


def test_execute__after_delay__applies_and_is_announced(timelock, governed, proposer, attacker, chain):
    call = Call.of(governed, "set_fee_bps", 42)
    receipt = timelock.schedule(call.target, 0, call.data, b"\x00" * 32, b"\x00" * 32, MIN_DELAY, sender=proposer)
    [event] = receipt.events.filter(timelock.CallScheduled)
    assert (event.target, bytes(event.payload), event.delay) == (governed.address, call.data, MIN_DELAY)
    _wait(chain, MIN_DELAY - 2)
    with ape.reverts(NOT_READY):
        execute_call(timelock, call, sender=attacker)
    assert governed.fee_bps() == 0
    _wait(chain, 2)
    execute_call(timelock, call, sender=attacker)  # the executor role is open to anyone
    assert governed.fee_bps() == 42
    with ape.reverts(NOT_READY):  # an operation runs once
        execute_call(timelock, call, sender=attacker)


def test_schedule__shorter_than_delay__reverts(timelock, governed, proposer):
    call = Call.of(governed, "set_fee_bps", 1)
    with ape.reverts("timelock_controller: insufficient delay"):
        timelock.schedule(call.target, 0, call.data, b"\x00" * 32, b"\x00" * 32, MIN_DELAY - 1, sender=proposer)


@pytest.mark.parametrize("who", ["guardian", "attacker", "admin"])
def test_schedule__not_a_proposer__reverts(timelock, governed, who, request):
    call = Call.of(governed, "set_fee_bps", 1)
    with ape.reverts("access_control: account is missing role"):
        schedule_call(timelock, call, sender=request.getfixturevalue(who))


def test_execute__target_reverts__bubbles_up_and_stays_pending(timelock, governed, proposer, attacker, chain):
    call = Call.of(governed, "set_fee_bps", 10_001)
    op = schedule_call(timelock, call, sender=proposer)
    _wait(chain, MIN_DELAY)
    with ape.reverts("governed: fee too high"):
        execute_call(timelock, call, sender=attacker)
    assert timelock.is_operation_pending(op)


def test_cancel__guardian__operation_never_runs(timelock, governed, proposer, guardian, attacker, chain):
    call = Call.of(governed, "set_fee_bps", 7)
    op = schedule_call(timelock, call, sender=proposer)
    with ape.reverts("access_control: account is missing role"):
        timelock.cancel(op, sender=attacker)
    timelock.cancel(op, sender=guardian)
    _wait(chain, MIN_DELAY)
    with ape.reverts(NOT_READY):
        execute_call(timelock, call, sender=attacker)
    assert governed.fee_bps() == 0


# ─── Revoking at once ────────────────────────────────────────────────────────


def test_revoke__registered_revocation__applies_at_once(timelock, governed, guardian, operator):
    receipt = timelock.revoke(governed, Call.of(governed, "revoke_operator", operator).data, sender=guardian)
    assert not governed.is_operator(operator)
    [event] = receipt.events.filter(timelock.RevokedAtOnce)
    assert (event.guardian, event.target) == (guardian.address, governed.address)


@pytest.mark.parametrize("method,args", [("grant_operator", ("attacker",)), ("set_fee_bps", (10_000,))])
def test_revoke__not_a_revocation__reverts(timelock, governed, guardian, attacker, method, args):
    # A guardian can never grant a role or move a parameter at once.
    args = tuple(attacker if a == "attacker" else a for a in args)
    with ape.reverts("timelock: not a registered revocation"):
        timelock.revoke(governed, Call.of(governed, method, *args).data, sender=guardian)
    assert not governed.is_operator(attacker) and governed.fee_bps() == 0


def test_revoke__registered_for_another_target__reverts(timelock, governed, guardian, operator, admin):
    other = admin.deploy(project.MockGoverned)
    other.grant_operator(operator, sender=admin)
    other.transfer_ownership(timelock, sender=admin)
    timelock.accept_ownership(other, sender=admin)
    with ape.reverts("timelock: not a registered revocation"):
        timelock.revoke(other, Call.of(other, "revoke_operator", operator).data, sender=guardian)
    assert other.is_operator(operator)


@pytest.mark.parametrize("who", ["proposer", "attacker"])
def test_revoke__not_a_guardian__reverts(timelock, governed, operator, who, request):
    with ape.reverts("access_control: account is missing role"):
        sender = request.getfixturevalue(who)
        timelock.revoke(governed, Call.of(governed, "revoke_operator", operator).data, sender=sender)
    assert governed.is_operator(operator)


def test_revoke__short_payload__reverts(timelock, governed, guardian):
    with ape.reverts("timelock: payload without selector"):
        timelock.revoke(governed, b"\x01\x02", sender=guardian)


def test_set_revocation__only_through_a_timelocked_operation(timelock, governed, proposer, attacker, chain):
    grant = selector(governed, "grant_operator")
    with ape.reverts("timelock: caller is not the timelock"):
        timelock.set_revocation(governed, grant, True, sender=proposer)
    call = Call.of(timelock, "set_revocation", governed.address, selector(governed, "set_fee_bps"), True)
    schedule_call(timelock, call, sender=proposer)
    _wait(chain, MIN_DELAY)
    execute_call(timelock, call, sender=attacker)
    assert timelock.is_revocation(governed, selector(governed, "set_fee_bps"))


def test_set_revocation__on_the_timelock_itself__reverts(timelock, proposer, attacker, chain):
    # Otherwise a registered `grantRole` would let a guardian grant itself anything at once.
    call = Call.of(timelock, "set_revocation", timelock.address, selector(timelock, "grantRole"), True)
    schedule_call(timelock, call, sender=proposer)
    _wait(chain, MIN_DELAY)
    with ape.reverts("timelock: not for the timelock itself"):
        execute_call(timelock, call, sender=attacker)


# ─── The timelock's own roles and delay ──────────────────────────────────────


def test_revoke_role__guardian_removes_a_proposer_at_once(timelock, governed, guardian, proposer):
    timelock.revoke_role(PROPOSER_ROLE, proposer, sender=guardian)
    assert not timelock.hasRole(PROPOSER_ROLE, proposer)
    with ape.reverts("access_control: account is missing role"):
        schedule_call(timelock, Call.of(governed, "set_fee_bps", 1), sender=proposer)


def test_revoke_role__admin_role__reverts(timelock, guardian):
    with ape.reverts("timelock: admin role is timelocked"):
        timelock.revoke_role(ADMIN_ROLE, timelock, sender=guardian)
    assert timelock.hasRole(ADMIN_ROLE, timelock)


def test_revoke_role__not_a_guardian__reverts(timelock, proposer, guardian):
    with ape.reverts("access_control: account is missing role"):
        timelock.revoke_role(GUARDIAN_ROLE, guardian, sender=proposer)


def test_grant_role__directly__reverts(timelock, proposer, guardian, attacker):
    # Granting is timelocked: only the timelock itself holds the admin role.
    for who in (proposer, guardian, attacker):
        with ape.reverts("access_control: account is missing role"):
            timelock.grantRole(PROPOSER_ROLE, attacker, sender=who)


def test_update_delay__bounds_hold_through_the_timelock(timelock, proposer, attacker, chain):
    with ape.reverts("timelock: caller is not the timelock"):
        timelock.update_delay(MIN_DELAY, sender=proposer)
    low, ok = Call.of(timelock, "update_delay", MIN_DELAY - 1), Call.of(timelock, "update_delay", 5 * DAY)
    schedule_call(timelock, low, sender=proposer)
    schedule_call(timelock, ok, sender=proposer)
    _wait(chain, MIN_DELAY)
    with ape.reverts("timelock: delay out of range"):
        execute_call(timelock, low, sender=attacker)
    execute_call(timelock, ok, sender=attacker)
    assert timelock.get_minimum_delay() == 5 * DAY
