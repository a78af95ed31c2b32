"""Turns contract reverts and other user-caused failures into one readable line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click
from ape.exceptions import ApeException, ContractLogicError


def revert_reason(exc: ContractLogicError) -> str:
    message = exc.revert_message or str(exc)
    return message.strip() or "transaction reverted without a reason"


@contextmanager
def readable_errors() -> Iterator[None]:
    """Re-raise reverts and ape failures as click errors: one line, exit code 1."""
    try:
        yield
    except ContractLogicError as exc:
        raise click.ClickException(f"reverted: {revert_reason(exc)}") from None
    except (ApeException, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
