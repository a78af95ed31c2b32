# pragma version ~=0.4.3
"""
@title Timelock
@license MIT
@notice The admin of every PROMPTEX contract after deploy. Every grant and
        every parameter that touches users' money is an operation that a
        proposer schedules (announced by `CallScheduled`), that waits at least
        `get_minimum_delay` (never below MIN_DELAY), and that an executor (or
        anyone, when the executor role is open) then executes. A guardian may
        cancel a pending operation, and may REVOKE a role at once: `revoke`
        calls a target without delay, but only a function whose selector is
        registered as a revocation for that target (registered at deploy, and
        later only through a timelocked operation). Revoking is never delayed;
        granting always is.
@dev Composes snekmate's `timelock_controller` (an audited port of
     OpenZeppelin's TimelockController) and `access_control`: roles PROPOSER,
     EXECUTOR (granted to the zero address = anyone may execute a ready
     operation), CANCELLER (proposers and guardians) and GUARDIAN. The
     timelock administers itself: its roles and revocation selectors change
     only through its own timelocked operations, except that a guardian may
     revoke a proposer, executor, canceller or guardian at once
     (`revoke_role`). MIN_DELAY is longer than the vault's MAX_THAW_PERIOD
     plus MAX_PAUSE and RedemptionEscrow's MAX_REFUND_DELAY, so a user who
     dislikes an announced change always has time to leave first.
"""

from snekmate.auth import access_control
from snekmate.governance import timelock_controller

initializes: access_control
initializes: timelock_controller[access_control := access_control]

exports: (
    access_control.DEFAULT_ADMIN_ROLE,
    access_control.hasRole,
    access_control.getRoleAdmin,
    access_control.grantRole,
    access_control.revokeRole,
    access_control.renounceRole,
    timelock_controller.PROPOSER_ROLE,
    timelock_controller.EXECUTOR_ROLE,
    timelock_controller.CANCELLER_ROLE,
    timelock_controller.get_timestamp,
    timelock_controller.get_minimum_delay,
    timelock_controller.is_operation,
    timelock_controller.is_operation_pending,
    timelock_controller.is_operation_ready,
    timelock_controller.is_operation_done,
    timelock_controller.get_operation_state,
    timelock_controller.hash_operation,
    timelock_controller.hash_operation_batch,
    timelock_controller.schedule,
    timelock_controller.schedule_batch,
    timelock_controller.cancel,
    timelock_controller.execute,
    timelock_controller.execute_batch,
)


# ─── Constants ───────────────────────────────────────────────────────────────

# @notice The shortest delay any operation can ever have: 4 days, longer than
#         the vault's MAX_THAW_PERIOD (1 day) + MAX_PAUSE (≤ 1 day) and
#         RedemptionEscrow's MAX_REFUND_DELAY (3 days).
MIN_DELAY: public(constant(uint256)) = 4 * 86_400
# @notice The longest delay the timelock may set itself, so a mistaken
#         `update_delay` cannot freeze every lever for years.
MAX_DELAY: public(constant(uint256)) = 30 * 86_400

# @notice May cancel pending operations and revoke roles at once.
GUARDIAN_ROLE: public(constant(bytes32)) = keccak256("GUARDIAN_ROLE")

_MAX_MEMBERS: constant(uint256) = 16
_MAX_REVOCATIONS: constant(uint256) = 64


struct Revocation:
    target: address
    selector: bytes4


# ─── Storage ─────────────────────────────────────────────────────────────────

# @notice target → 4-byte selector → whether a guardian may call it at once.
is_revocation: public(HashMap[address, HashMap[bytes4, bool]])


# ─── Events ──────────────────────────────────────────────────────────────────

event RevocationRegistered:
    target: indexed(address)
    selector: bytes4
    status: bool

event RevokedAtOnce:
    guardian: indexed(address)
    target: indexed(address)
    selector: bytes4
    payload: Bytes[1_024]


@deploy
def __init__(
    delay_: uint256,
    proposers_: DynArray[address, _MAX_MEMBERS],
    executors_: DynArray[address, _MAX_MEMBERS],
    guardians_: DynArray[address, _MAX_MEMBERS],
    revocations_: DynArray[Revocation, _MAX_REVOCATIONS],
):
    """
    @notice Deploys the timelock; it administers itself, the deployer keeps no role.
    @param delay_ Seconds every operation waits; MIN_DELAY .. MAX_DELAY.
    @param proposers_ Accounts that schedule operations (they may also cancel).
    @param executors_ Accounts that execute ready operations; the zero address
           lets anyone execute.
    @param guardians_ Accounts that cancel operations and revoke roles at once.
    @param revocations_ (target, selector) pairs a guardian may call at once:
           the targets' role-revoking functions.
    """
    assert delay_ >= MIN_DELAY and delay_ <= MAX_DELAY, "timelock: delay out of range"
    assert len(proposers_) > 0, "timelock: no proposer"
    access_control.__init__()
    timelock_controller.__init__(
        delay_,
        proposers_,
        executors_,
        empty(address),
    )
    for guardian: address in guardians_:
        assert guardian != empty(address), "timelock: zero address"
        access_control._grant_role(GUARDIAN_ROLE, guardian)
        access_control._grant_role(timelock_controller.CANCELLER_ROLE, guardian)
    for revocation: Revocation in revocations_:
        self._register(revocation.target, revocation.selector, True)


# ─── Revoking at once ────────────────────────────────────────────────────────


@external
def revoke(target: address, payload: Bytes[1_024]):
    """
    @notice Calls a role-revoking function of `target` now, without delay.
    @dev Guardian only. The payload's 4-byte selector must be registered as a
         revocation for `target`; the target's own checks (e.g. that the
         account holds the role) still apply. Reverts bubble up.
    @param target The contract whose role is revoked.
    @param payload ABI-encoded call of a registered revocation, e.g.
           `revoke_attestor(account)`.
    """
    access_control._check_role(GUARDIAN_ROLE, msg.sender)
    assert len(payload) >= 4, "timelock: payload without selector"
    selector: bytes4 = convert(slice(payload, 0, 4), bytes4)
    assert self.is_revocation[target][selector], "timelock: not a registered revocation"
    timelock_controller._execute(target, 0, payload)
    log RevokedAtOnce(guardian=msg.sender, target=target, selector=selector, payload=payload)


@external
def revoke_role(role: bytes32, account: address):
    """
    @notice Takes one of the timelock's own roles from `account` at once
            (a leaked proposer or executor key, a rogue guardian).
    @dev Guardian only; never the self-administration role, so the timelock
         can always change its roles through its own operations, and never
         the executor role of the zero address (anyone may execute): it is no
         key that can leak, and taking it would stop every operation for
         good, the one granting an executor back included. Limit: taking the
         last proposer stops scheduling for good (deploy with two or more).
    @param role PROPOSER_ROLE, EXECUTOR_ROLE, CANCELLER_ROLE or GUARDIAN_ROLE.
    @param account The holder.
    """
    access_control._check_role(GUARDIAN_ROLE, msg.sender)
    assert role != access_control.DEFAULT_ADMIN_ROLE, "timelock: admin role is timelocked"
    assert not (
        role == timelock_controller.EXECUTOR_ROLE and account == empty(address)
    ), "timelock: the open executor role is timelocked"
    assert access_control.hasRole[role][account], "timelock: account lacks role"
    access_control._revoke_role(role, account)


# ─── Handover ────────────────────────────────────────────────────────────────


@external
def accept_ownership(target: address):
    """
    @notice Accepts a two-step admin handover of `target` to this timelock.
    @dev Anyone may call it: accepting only puts `target` under the timelock,
         and succeeds only if `target` named this timelock its pending owner.
    @param target A contract with `accept_ownership()`.
    """
    raw_call(target, method_id("accept_ownership()"))


# ─── Self-administration (timelocked: only the timelock calls these) ─────────


@external
def update_delay(new_delay: uint256):
    """
    @notice Changes the delay of operations scheduled from now on.
    @dev Only the timelock itself (a scheduled operation); MIN_DELAY .. MAX_DELAY.
    @param new_delay Seconds.
    """
    assert msg.sender == self, "timelock: caller is not the timelock"
    assert new_delay >= MIN_DELAY and new_delay <= MAX_DELAY, "timelock: delay out of range"
    log timelock_controller.MinimumDelayChange(
        old_duration=timelock_controller.get_minimum_delay, new_duration=new_delay
    )
    timelock_controller.get_minimum_delay = new_delay


@external
def set_revocation(target: address, selector: bytes4, status: bool):
    """
    @notice Registers (or removes) a function a guardian may call at once.
    @dev Only the timelock itself (a scheduled operation), so what counts as
         a revocation is announced a whole delay before it can be used.
    @param target The contract.
    @param selector The 4-byte selector of its role-revoking function.
    @param status True to register.
    """
    assert msg.sender == self, "timelock: caller is not the timelock"
    self._register(target, selector, status)


# ─── Internals ───────────────────────────────────────────────────────────────


@internal
def _register(target: address, selector: bytes4, status: bool):
    assert target != empty(address), "timelock: zero address"
    # The timelock's own roles are revoked through `revoke_role`, which spares the admin role.
    assert target != self, "timelock: not for the timelock itself"
    self.is_revocation[target][selector] = status
    log RevocationRegistered(target=target, selector=selector, status=status)
