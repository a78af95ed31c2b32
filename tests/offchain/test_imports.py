"""What importing a package pulls in, checked in a fresh interpreter (this test process has
ape and web3 loaded already): `promptex.protocol` is pure, and the gateway and metering
run without a node client, so neither ape nor web3 is imported by any of their modules."""

import json
import subprocess
import sys

# Imports every module of the named packages, then prints what got loaded.
_PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(package.__path__, name + "."):
        importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after_importing(*packages: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *packages], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def roots(modules: set[str]) -> set[str]:
    return {name.split(".", 1)[0] for name in modules}


def test_protocol_gateway_metering__fresh_interpreter__import_neither_ape_nor_web3() -> None:
    loaded = roots(loaded_after_importing("promptex.protocol", "promptex.gateway", "promptex.metering"))
    assert "promptex" in loaded  # the probe did import them
    assert not {"ape", "web3"} & loaded


def test_protocol__fresh_interpreter__imports_no_other_promptex_package_nor_io_library() -> None:
    loaded = loaded_after_importing("promptex.protocol")
    promptex = {name for name in loaded if name.startswith("promptex.")}
    assert promptex and all(name.startswith("promptex.protocol") for name in promptex)
    assert not {"ape", "web3", "click", "sqlalchemy", "httpx", "starlette"} & roots(loaded)
