"""A dashboard TypeScript module run over the cases its Python twin answers: esbuild bundles
dashboard/src/<name>.ts into an ES module once (~0.1 s), and node runs
dashboard/tests/<name>_cases.mjs over JSON cases, the module's path in $<NAME>_MODULE
(test_money, test_exit_request, test_signed, test_hold)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from anvil_node import ROOT

DASHBOARD = ROOT / "dashboard"
ESBUILD = DASHBOARD / "node_modules" / ".bin" / "esbuild"


def ts_cases(name: str, folder: Path) -> Callable[[Any], Any]:
    """dashboard/src/`name`.ts bundled into `folder`, and the function that runs JSON cases
    through it (its answers, parsed). Skips without node or dashboard/node_modules."""
    if shutil.which("node") is None or not ESBUILD.exists():
        pytest.skip("needs node and dashboard/node_modules (make setup)")
    module = folder / f"{name}.mjs"
    subprocess.run(
        [str(ESBUILD), str(DASHBOARD / "src" / f"{name}.ts"), "--bundle", "--format=esm", "--platform=node",
         f"--outfile={module}", "--log-level=error"],
        check=True, timeout=120, cwd=DASHBOARD,
    )  # fmt: skip

    def run(cases: Any) -> Any:
        answer = subprocess.run(
            ["node", str(DASHBOARD / "tests" / f"{name}_cases.mjs")],
            input=json.dumps(cases),
            env={**os.environ, f"{name.upper()}_MODULE": str(module)},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(answer.stdout)

    return run
