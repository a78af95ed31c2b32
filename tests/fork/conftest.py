"""Property tests against a fork: the contracts exactly as they are deployed on a chain.

By default a throwaway origin anvil gets the project's own deployment (`ape run deploy`,
`ape run seed_market`) and a second anvil forks it. To test another chain's deployment
instead (e.g. a public testnet), set

    PROMPTEX_FORK_URL=https://…            # the RPC to fork
    PROMPTEX_FORK_DEPLOYMENT=deployments/sepolia.json

The fork lets the tests impersonate the deployment's admin (its Timelock) to give roles to anvil's
development accounts, and needs the deployment's USDC to be MockUSDC (an open faucet)
and its market seeded (a CLD/USDC pool with liquidity). The origin chain never changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from forkchain import ForkChain, Roles
from world import build_world

from anvil_node import ROOT, ape_env, ape_run, running_anvil
from promptex.chain.deployments import Deployment, load_deployment

FORK_URL = os.environ.get("PROMPTEX_FORK_URL")
FORK_DEPLOYMENT = os.environ.get("PROMPTEX_FORK_DEPLOYMENT")


@pytest.fixture(scope="session")
def origin(tmp_path_factory):
    """(RPC URL, deployment) of the chain to fork."""
    if FORK_URL:
        if not FORK_DEPLOYMENT:
            pytest.fail("PROMPTEX_FORK_URL needs PROMPTEX_FORK_DEPLOYMENT: the deployment record of that chain")
        path = Path(FORK_DEPLOYMENT)
        yield FORK_URL, Deployment.model_validate_json((path if path.is_absolute() else ROOT / path).read_text())
        return
    root = tmp_path_factory.mktemp("deployments")
    with running_anvil() as url:
        env = ape_env(url, root)
        for script in ("deploy", "seed_market"):
            result = ape_run(env, script)
            assert result.returncode == 0, f"ape run {script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        yield url, load_deployment("local", root)


@pytest.fixture(scope="session")
def fork_chain(origin):
    """A fork of the origin, with roles for anvil's development accounts (see `Roles`)."""
    url, deployment = origin
    with running_anvil("--fork-url", url) as fork_url:
        chain = ForkChain(fork_url, deployment)
        # The Timelock administers the contracts after deploy; the fork acts as it, without its delay.
        governor = deployment.address("Timelock") if "Timelock" in deployment.contracts else deployment.deployer
        admin = chain.impersonate(governor)
        roles = Roles(chain)
        chain.send(chain.contract("CreditsVault").functions.grant_coordinator(roles.coordinator), admin)
        escrow = chain.contract("CreditEscrow")
        chain.send(escrow.functions.grant_attestor(roles.attestor), admin)
        yield chain


@pytest.fixture(scope="session")
def world(fork_chain):
    """Users with USDC and CLD, a listed and a tokenized lot, on the fork (see world.py)."""
    return build_world(fork_chain)


@pytest.fixture
def fresh_world(world):
    """The world, restored after the test."""
    snapshot = world.chain.snapshot()
    yield world
    world.chain.restore(snapshot)
