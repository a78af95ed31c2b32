"""Shared test settings: hypothesis profiles, and the shared fixture plugins (tests/fixtures/).

The default profile is what CI runs (30 examples x 50 steps per state machine, which
keeps the whole suite inside CI's time budget); `HYPOTHESIS_PROFILE=deep` runs 1,000 x 50
before a contract change lands; `HYPOTHESIS_PROFILE=quick` is for iterating locally.
`HYPOTHESIS_PROFILE=deep_part` is one part of a deep run (`scripts/deep_parts.sh`): the
deep profile's steps, `PROMPTEX_DEEP_PART_EXAMPLES` examples (100: a tenth of it), no
example database, so that a part is named by its `--hypothesis-seed` alone.
"""

import gc
import json
import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# Fixtures shared by several test modules or directories. pytest imports these modules
# itself, from tests/fixtures/: tests/ is not a package, so pytest's default import mode
# ("prepend") puts this conftest's directory first on sys.path.
pytest_plugins = [
    "fixtures.anvil",
    "fixtures.coordinator",
    "fixtures.ledger",
    "fixtures.market",
    "fixtures.dex",
    "fixtures.options",
    "fixtures.perp",
    "fixtures.redemption",
]

_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=30, stateful_step_count=50, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile(
    "deep", max_examples=1_000, stateful_step_count=50, deadline=None, suppress_health_check=_SLOW_OK
)
# A part replays from its seed, not from a local database (a failure prints its blob too).
settings.register_profile(
    "deep_part",
    max_examples=int(os.environ.get("PROMPTEX_DEEP_PART_EXAMPLES", "100")),
    stateful_step_count=50,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
)
settings.register_profile("quick", max_examples=20, stateful_step_count=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# No test reads the profile of a market someone started in the checkout (`promptex up`
# writes promptex-market/profile.json): commands under test follow an empty market folder
# unless a test points PROMPTEX_UP_STATE_DIR elsewhere (subprocesses inherit it).
os.environ["PROMPTEX_UP_STATE_DIR"] = os.path.join(tempfile.mkdtemp(prefix="promptex-tests-"), "no-market")


# The longest test modules run first, longest first: xdist's worksteal hands each worker a
# contiguous half of the collected order and lets an idle worker take the far end of the
# other's queue, so a long test collected late can run while the other worker sits idle.
# Measured once each way (session 13, fresh clones): not shorter (25 m 7 s with these four
# end-to-end modules first, 24 m 17 s without, within run-to-run noise). The state
# machines need neither ape's project nor its chain (titanoboa compiles what they deploy);
# the end-to-end modules use the project `make setup` compiled.
RUN_FIRST = [
    "tests/e2e/test_up.py",
    "tests/dashboard/test_browser.py",
    "tests/e2e/test_signed_proxy_chain.py",
    "tests/e2e/test_market_machine.py",
] + [
    f"tests/contracts/{name}.py"
    for name in (
        "test_perp_stateful",
        "test_vault_stateful",
        "test_escrow_stateful",
        "test_redemption_stateful",
        "test_options_stateful",
        "test_vault_signed_stateful",
        "test_pool_stateful",
        "test_attacks_round2",
        "test_escrow_share_attacks",
        "test_escrow_dust_attacks",
        "test_amm_math",
    )
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: i for i, module in enumerate(RUN_FIRST)}
    # A stable sort: every other module, and the tests within each module, keep their order.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(RUN_FIRST)))


# ape reads the compiled project (.build/__local__.json) once, when the process starts: a
# worker that started before the other one compiled it would compile it all again on its
# first contract test. Each worker therefore takes the other's compilation from disk the
# first time a test starts after it was written (a manifest ape cannot read is left to
# ape: it compiles, as before). ape still recompiles any source that changed since.
_compiled_read = False


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _compiled_read
    if _compiled_read or "PYTEST_XDIST_WORKER" not in os.environ:
        return
    from ape import project

    if project.manifest.contract_types:
        _compiled_read = True
        return
    try:
        json.loads(project.manifest_path.read_text(encoding="utf8"))  # written whole (ape rewrites it in place)
    except (OSError, ValueError):
        return  # not compiled yet
    _compiled_read = bool(project.load_manifest().contract_types)


# pytest's own clean-up at the end of a process runs five full garbage collections (to
# report unraisable exceptions); over a test process's heap (ape, web3, the chains: half a
# million objects and more) each took 1-2.5 s on a loaded machine. An xdist worker that has
# not ended 5 s after the controller asked is sent SIGINT by execnet, and ape's handler
# exits 130: CI printed "Exception ignored in gc_callback ... SystemExit: 130" (caught in
# hypothesis' gc callback; caught nowhere, it ends the worker mid-clean-up). What is alive
# at the end goes to the permanent generation: those collections scan only what comes after.
@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    gc.freeze()
