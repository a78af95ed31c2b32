"""The README's quick-starts, extracted and run as written: each ```bash block after a
`<!-- quickstart: NAME -->` marker runs under `bash -euo pipefail`, in order, and every
`# → TEXT` in it (at the end of a line or alone) must appear in its output."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

MARKER = re.compile(r"<!-- quickstart: (\w+) -->\s*```bash\n(.*?)```", re.S)
EXPECT = re.compile(r"#\s*→\s*(.+?)\s*$", re.M)


@dataclass(frozen=True)
class QuickStart:
    name: str
    script: str
    expected: list[str]


def quickstarts(readme: Path) -> list[QuickStart]:
    return [QuickStart(m.group(1), m.group(2), EXPECT.findall(m.group(2))) for m in MARKER.finditer(readme.read_text())]


def run_quickstart(qs: QuickStart, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", qs.script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"quick-start {qs.name} failed (exit {done.returncode}):\n{output[-3000:]}"
    for text in qs.expected:
        assert text in output, f"quick-start {qs.name}: {text!r} not in its output:\n{output[-3000:]}"
    return output
