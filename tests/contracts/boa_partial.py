"""Contracts for the titanoboa tests, compiled on first use and once per process.

`boa.load_partial` at module level compiled every contract while pytest collected the
suite, in every xdist worker (about half of collection), and once more in each module
that names the same contract; a `LazyPartial` compiles when a test first deploys it.
"""

import functools
from typing import Any

import boa


@functools.cache
def _load(path: str) -> Any:
    return boa.load_partial(path)


class LazyPartial:
    """`boa.load_partial(path)` (a deployer: `deploy`, `at`, `compiler_data`, …), loaded when
    one of its attributes is first used."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Any:
        return getattr(_load(self.path), name)
