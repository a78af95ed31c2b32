"""The Timelock that administers every PROMPTEX contract after deploy: deploying it and
sending operations through it (schedule, wait the delay, execute; a guardian's
immediate revocations).

A call is named by an ape contract, a method name and its arguments; the calldata is
what the timelock forwards to that contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ape import project

from promptex.protocol.timelock import NO_PREDECESSOR
from promptex.protocol.units import ZERO_ADDRESS


@dataclass(frozen=True)
class Call:
    """One call the timelock makes: `target.method(*args)`, ABI-encoded."""

    target: str
    data: bytes

    @classmethod
    def of(cls, contract: Any, method: str, *args: Any) -> Call:
        return cls(str(contract.address), bytes(getattr(contract, method).encode_input(*args)))

    @property
    def selector(self) -> bytes:
        return self.data[:4]


def selector(contract: Any, method: str) -> bytes:
    """The 4-byte selector of `contract.method` (a revocation to register)."""
    handler = getattr(contract, method)
    return bytes(contract.provider.network.ecosystem.get_method_selector(handler.abis[0]))


def deploy_timelock(
    deployer: Any,
    *,
    delay: int,
    proposers: list[str],
    guardians: list[str],
    revocations: list[tuple[str, bytes]],
    executors: list[str] | None = None,
) -> Any:
    """Deploy the Timelock. `executors` defaults to the zero address: anyone may
    execute an operation once its delay has passed."""
    return deployer.deploy(
        project.Timelock,
        delay,
        proposers,
        [ZERO_ADDRESS] if executors is None else executors,
        guardians,
        revocations,
    )


def operation_id(timelock: Any, call: Call, salt: bytes = NO_PREDECESSOR) -> bytes:
    return bytes(timelock.hash_operation(call.target, 0, call.data, NO_PREDECESSOR, salt))


def schedule(timelock: Any, call: Call, *, sender: Any, salt: bytes = NO_PREDECESSOR) -> bytes:
    """Schedule `call` with the timelock's current delay; returns the operation id."""
    timelock.schedule(call.target, 0, call.data, NO_PREDECESSOR, salt, timelock.get_minimum_delay(), sender=sender)
    return operation_id(timelock, call, salt)


def execute(timelock: Any, call: Call, *, sender: Any, salt: bytes = NO_PREDECESSOR) -> Any:
    """Execute a scheduled `call` whose delay has passed."""
    return timelock.execute(call.target, 0, call.data, NO_PREDECESSOR, salt, sender=sender)


def revoke(timelock: Any, call: Call, *, sender: Any) -> Any:
    """A guardian's immediate revocation (its selector must be registered for the target)."""
    return timelock.revoke(call.target, call.data, sender=sender)
