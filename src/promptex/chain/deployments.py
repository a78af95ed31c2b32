"""Reading and writing `deployments/<network>.json`: the one record of where
each contract lives on a network and where its ABI is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from promptex.config import settings
from promptex.files import write_whole
from promptex.protocol.units import USDC_SYMBOL


class DeployedContract(BaseModel):
    address: str
    abi: str  # path of the ABI file, relative to the project root


class Deployment(BaseModel):
    network: str
    chain_id: int
    block_number: int
    deployer: str
    contracts: dict[str, DeployedContract]  # "CreditEscrow", "MockUSDC", "token:CLD", ...

    def address(self, name: str) -> str:
        try:
            return self.contracts[name].address
        except KeyError:
            raise KeyError(f"no contract {name!r} in the {self.network} deployment") from None

    def token_symbols(self) -> list[str]:
        return [name.split(":", 1)[1] for name in self.contracts if name.startswith("token:")]

    def asset_symbols(self) -> list[str]:
        """What the vault holds: USDC, then every provider token."""
        return [USDC_SYMBOL, *self.token_symbols()]

    def asset_address(self, symbol: str) -> str:
        """A vault asset's address, by symbol ("USDC", "CLD", ...)."""
        name = "USDC" if symbol == USDC_SYMBOL else f"token:{symbol}"
        if name not in self.contracts:
            raise KeyError(f"asset {symbol!r} is not in the {self.network} deployment")
        return self.contracts[name].address


def deployments_root(root: Path | None = None) -> Path:
    return root if root is not None else settings().deployments_dir


def deployment_path(network: str, root: Path | None = None) -> Path:
    return deployments_root(root) / f"{network}.json"


def load_deployment(network: str, root: Path | None = None) -> Deployment:
    path = deployment_path(network, root)
    if not path.exists():
        raise FileNotFoundError(
            f"no deployment for network {network!r} at {path}: deploy first (`ape run deploy`), or run this in the "
            "folder `promptex up` runs in (or set PROMPTEX_UP_STATE_DIR to its market folder)"
        )
    return Deployment.model_validate_json(path.read_text())


def save_deployment(deployment: Deployment, root: Path | None = None) -> Path:
    """Write the record whole or not at all (`files.write_whole`): a crash never leaves a
    half-written file."""
    path = deployment_path(deployment.network, root)
    write_whole(path, deployment.model_dump_json(indent=2) + "\n")
    return path


def abi_of(container: Any) -> list[dict[str, Any]]:
    """The ABI of an ape contract container, as plain JSON."""
    return [item.model_dump(mode="json", by_alias=True) for item in container.contract_type.abi]


def write_abi(name: str, abi: list[dict[str, Any]], root: Path | None = None) -> str:
    path = deployments_root(root) / "abi" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(abi, indent=1) + "\n")
    return str(path)


def address_of(value: Any) -> str:
    """An address given as a string or as a contract/account object with `.address`."""
    return str(getattr(value, "address", value))
