"""Contracts for the titanoboa tests, compiled on first use and once per process.

`boa.load_partial` at module level compiled every contract while pytest collected the
suite, in every xdist worker (about half of collection), and once more in each module
that names the same contract; a `LazyPartial` compiles when a test first deploys it.
"""

import functools
from pathlib import Path
from typing import Any

import boa

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def _load(path: str) -> Any:
    # The absolute path, as promptex.chain.gas.vault names them: titanoboa's disk cache keys
    # a compiled contract by the file name it was given, so a relative name compiled every
    # contract the gas pins share a second time, cold.
    return boa.load_partial(str(ROOT / path))


class LazyPartial:
    """`boa.load_partial(path)` (a deployer: `deploy`, `at`, `compiler_data`, …), loaded when
    one of its attributes is first used."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Any:
        # pytest's collection probes every module-level object for its own hooks
        # (`__test__`, `pytestmark`, `_pytestfixturefunction`, …): such a probe must not
        # compile the contract (it compiled a dozen contracts while collecting, ~20 s a worker).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(_load(self.path), name)
