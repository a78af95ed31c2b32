"""The dashboard's tests: the browser suite needs Debian's chromium and the built front end
(`make setup` provides both); without them it fails under CI=true and skips elsewhere."""

import os
import shutil
from pathlib import Path

import pytest

from anvil_node import ROOT

CHROMIUM = os.environ.get("PROMPTEX_CHROMIUM", "/usr/bin/chromium")
DASHBOARD = ROOT / "dashboard"


def missing_browser_parts() -> list[str]:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append(f"chromium at {CHROMIUM} (apt-get install -y chromium)")
    if shutil.which("node") is None:
        missing.append("node")
    if not (DASHBOARD / "node_modules" / "playwright-core").exists():
        missing.append("dashboard/node_modules (make setup)")
    if not (DASHBOARD / "dist" / "index.html").exists():
        missing.append("dashboard/dist (cd dashboard && npm run build)")
    return missing


@pytest.fixture
def browser_parts():
    """Fails in CI (CI=true) when a part is missing, skips on a developer's machine."""
    missing = missing_browser_parts()
    if missing:
        message = "the browser tests need: " + "; ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM
