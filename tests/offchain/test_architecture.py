"""The package layers hold: `lint-imports` checks the contracts in pyproject.toml
([tool.importlinter]: cli → services → chain → ledger / metering → protocol, no service
importing another, the agent nothing from the coordinator, pure packages no node client)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts__whole_package__all_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), "import-linter is missing: pip install -r requirements.lock"
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
