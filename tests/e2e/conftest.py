"""Real anvil nodes for end-to-end tests (helpers in tests/anvil_node.py)."""

import pytest

from anvil_node import ape_env as make_ape_env
from anvil_node import ape_run as run_ape
from anvil_node import running_anvil


@pytest.fixture
def anvil_url():
    """A fresh anvil on a free loopback port, stopped after the test."""
    with running_anvil() as url:
        yield url


@pytest.fixture
def ape_env(anvil_url, tmp_path):
    """Environment for an `ape run` subprocess attached to the test's anvil."""
    return make_ape_env(anvil_url, tmp_path / "deployments")


@pytest.fixture
def ape_run(ape_env):
    """Run `ape run <script> [args]` against the test's anvil, as a user would."""

    def _run(*args):
        return run_ape(ape_env, *args)

    return _run


@pytest.fixture(scope="module")
def deployed_anvil(tmp_path_factory):
    """One anvil and one `ape run deploy` for a whole test module: (rpc url, deployments dir).
    Tests that must not see each other's state snapshot and revert it themselves."""
    deployments = tmp_path_factory.mktemp("module-deployments")
    with running_anvil() as url:
        deploy = run_ape(make_ape_env(url, deployments), "deploy")
        assert deploy.returncode == 0, deploy.stderr[-2000:]
        yield url, deployments
