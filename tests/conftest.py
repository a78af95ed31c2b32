"""Shared test settings: hypothesis profiles, and the shared fixture plugins (tests/fixtures/).

The default profile is what CI runs (30 examples x 50 steps per state machine, which
keeps the whole suite inside CI's time budget); `HYPOTHESIS_PROFILE=deep` runs 1,000 x 50
before a contract change lands; `HYPOTHESIS_PROFILE=quick` is for iterating locally.
`HYPOTHESIS_PROFILE=deep_part` is one part of a deep run (`scripts/deep_parts.sh`): the
deep profile's steps, `PROMPTEX_DEEP_PART_EXAMPLES` examples (100: a tenth of it), no
example database, so that a part is named by its `--hypothesis-seed` alone.
"""

import os
import tempfile

from hypothesis import HealthCheck, settings

# Fixtures shared by several test modules or directories. pytest imports these modules
# itself, from tests/fixtures/: tests/ is not a package, so pytest's default import mode
# ("prepend") puts this conftest's directory first on sys.path.
pytest_plugins = [
    "fixtures.anvil",
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
