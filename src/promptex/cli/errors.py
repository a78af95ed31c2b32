"""Every CLI failure as one readable line on stderr, exit code 1: a revert decoded to its
reason, a missing node, file or binary, bad input. `--debug` (anywhere on the command
line) shows the traceback and ape's call trace instead. ape is imported only if the
command already did."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

DEBUG_FLAG = "--debug"
HEX_DATA = re.compile(r"0x[0-9a-fA-F]{16,}")
SECRET_SETTING = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|URL|MNEMONIC", re.IGNORECASE)


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def revert_reason(exc: Any) -> str:
    """The revert's reason string; raw revert data (a custom error, a panic) is not one."""
    message = str(getattr(exc, "revert_message", "") or "").strip() or first_line(str(exc))
    if not message or HEX_DATA.fullmatch(message) or message.lower().startswith("0x"):
        return "the contract refused without a reason"
    return HEX_DATA.sub("…", first_line(message))


def _is_revert(exc: BaseException) -> bool:
    for module in ("ape.exceptions", "web3.exceptions"):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, loaded.ContractLogicError):
            return True
    return False


def _is_ape(exc: BaseException) -> bool:
    loaded = sys.modules.get("ape.exceptions")
    return loaded is not None and isinstance(exc, loaded.ApeException)


def _is_connection(exc: BaseException) -> bool:
    for module, names in (("httpx", ("TransportError",)), ("requests", ("ConnectionError", "Timeout"))):
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, tuple(getattr(loaded, n) for n in names)):
            return True
    return isinstance(exc, ConnectionError)


def _bad_setting(exc: BaseException) -> str:
    """A setting the environment (or .env) gave a value it refuses: named as it is set."""
    loaded = sys.modules.get("pydantic")
    if loaded is None or not isinstance(exc, loaded.ValidationError) or exc.title != "Settings":
        return ""
    errors = exc.errors()
    if not errors:
        return ""
    first = errors[0]
    name = "PROMPTEX_" + "_".join(str(part) for part in first.get("loc", ())).upper()
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    # A value that may carry a secret (a key, a password in a URL) is never echoed.
    shown = "" if SECRET_SETTING.search(name) else f"={first.get('input')!r}"
    return f"bad setting {name}{shown}: {first.get('msg', 'refused')}{more}"


def describe(exc: BaseException) -> str:
    """One line saying what happened (and, for the unexpected, how to see more)."""
    from promptex.config import ConfigurationError

    if _is_revert(exc):
        return f"reverted: {revert_reason(exc)}"
    if isinstance(exc, ConfigurationError | FileNotFoundError | PermissionError):
        return first_line(str(exc)) or type(exc).__name__
    setting = _bad_setting(exc)
    if setting:
        return setting
    if _is_connection(exc):
        return f"cannot reach a service: {first_line(str(exc)) or type(exc).__name__} (is `promptex up` running?)"
    if _is_ape(exc):
        return HEX_DATA.sub("…", first_line(str(exc))) or type(exc).__name__
    detail = first_line(str(exc))
    what = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return f"{HEX_DATA.sub('…', what)} (run again with {DEBUG_FLAG} for the trace)"


class _State:
    debug = False  # `--debug` was given: let every exception through with its trace


@contextmanager
def readable_errors() -> Iterator[None]:
    """Inside a command: reverts, ape failures and user errors (ValueError, OSError) as
    click errors with their own message."""
    try:
        yield
    except click.ClickException:
        raise
    except Exception as exc:
        if _State.debug:
            raise
        if _is_revert(exc) or _is_ape(exc):
            message = describe(exc)
        elif isinstance(exc, ValueError | OSError):
            message = first_line(str(exc)) or type(exc).__name__
        else:
            raise
        raise click.ClickException(message) from None


def _one(message: str) -> str:
    """A message's first line (ape's bad --network lists every ecosystem after "Options:")."""
    line = first_line(message)
    return line.removesuffix("Options:").rstrip() if line.endswith("Options:") else line


def fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


class OneLineErrors(click.Group):
    """The root group: every failure below it is one line on stderr and exit code 1 (click's
    usage errors too, which would print the usage and exit 2); `--debug` anywhere shows
    the trace."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kwargs: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **kwargs)
        argv = list(sys.argv[1:] if args is None else args)
        debug = _State.debug = DEBUG_FLAG in argv
        argv = [a for a in argv if a != DEBUG_FLAG]
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            fail(f"{_one(exc.format_message())}{where}")
        except click.ClickException as exc:
            fail(_one(exc.format_message()))
        except (click.Abort, KeyboardInterrupt):
            fail("aborted")
        except SystemExit:
            raise
        except Exception as exc:
            if debug:
                raise
            fail(describe(exc))
        sys.exit(result if isinstance(result, int) else 0)


def quiet_ape() -> None:
    """ape logs what it does and what failed on its own (it sets its level when imported);
    the command's own output and one-line errors say it, unless --debug."""
    import logging

    from ape.logging import logger
    from ape_ethereum.trace import Trace

    logger.set_level(logging.DEBUG if _State.debug else logging.CRITICAL)
    if not _State.debug:
        # ape prints a call trace to stdout with every revert it raises (its foundry
        # provider's error path has no switch): the one-line error says what happened.
        Trace.show = _no_trace  # type: ignore[method-assign]


def _no_trace(*_args: Any, **_kwargs: Any) -> None:
    return None
