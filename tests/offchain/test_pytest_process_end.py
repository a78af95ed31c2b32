"""The end of a test process (tests/conftest.py's pytest_unconfigure)."""

import gc
from pathlib import Path

import pytest


def test_process_end__pytest_clean_up_collections_scan_only_what_comes_after__the_heap_is_frozen(
    pytestconfig: pytest.Config,
) -> None:
    """pytest's clean-up collects garbage five times over every tracked object once the
    hooks have run; xdist's controller sends a worker still at it after 5 s a SIGINT (ape's
    handler: exit 130). After the shared conftest's pytest_unconfigure, what a collection
    scans (gc.get_objects: the permanent generation is not scanned) is a few objects, not
    this process's heap."""
    shared = (Path(__file__).parents[1] / "conftest.py").resolve()
    conftest = next(
        plugin
        for plugin in pytestconfig.pluginmanager.get_plugins()
        if Path(getattr(plugin, "__file__", None) or "/").resolve() == shared
    )
    assert len(gc.get_objects()) > 100_000  # a pytest process with ape, web3 and the project loaded
    try:
        conftest.pytest_unconfigure(pytestconfig)
        assert len(gc.get_objects()) < 10_000
    finally:
        gc.unfreeze()
