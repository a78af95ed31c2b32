"""docs/architecture.md stays true: its import-graph block lists the layers that
`lint-imports` enforces, and each flow in its where-to-look table names a real entry point."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
FLOWS = ("tokenize", "deposit", "call", "settle", "prove", "reconcile", "redeem", "hedge")


def _layers_in_pyproject() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    return [" | ".join(part.strip() for part in layer.split("|")) for layer in layers]


def _layers_in_doc() -> list[str]:
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def _where_to_look() -> dict[str, str]:
    section = DOC.read_text().split("## Where to look", 1)[1]
    rows = re.findall(r"^\| (\w+) \| `([\w.]+)` \|", section, re.M)
    return dict(rows)


def _resolve(dotted: str) -> tuple[str, object]:
    """Import the longest module prefix of `dotted`, then walk attributes: (module, object)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        try:
            target: object = importlib.import_module(module)
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return module, target
    raise ModuleNotFoundError(dotted)


def test_import_graph__doc_block__matches_the_enforced_layers() -> None:
    assert _layers_in_doc() == _layers_in_pyproject()


def test_where_to_look__every_flow__named_once() -> None:
    assert sorted(_where_to_look()) == sorted(FLOWS)


def test_where_to_look__each_entry_point__defined_in_the_named_module() -> None:
    for flow, dotted in _where_to_look().items():
        module, target = _resolve(dotted)
        assert module != dotted, f"{flow}: {dotted} names a module, not an entry point"
        function = getattr(target, "callback", None) or target  # a click command wraps its function
        assert callable(function), f"{flow}: {dotted} is not callable"
        assert inspect.getmodule(function).__name__ == module, f"{flow}: {dotted} is not defined in {module}"
