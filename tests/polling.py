"""The one bounded wait the tests use: poll a condition until it holds, or fail after a
deadline saying what never happened. A wait, never a timing assert: the deadline is there
so that a broken run fails instead of hanging, and is far above what a loaded machine needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(condition: Callable[[], T], what: str, seconds: float = 60.0, every: float = 0.05) -> T:
    """Call `condition` every `every` seconds until it returns something truthy, and return
    that; AssertionError naming `what` once `seconds` have passed without it."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what} (waited {seconds:g} s)")
        time.sleep(every)
