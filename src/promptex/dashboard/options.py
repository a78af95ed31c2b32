"""Where the dashboard's server finds the chain, the gateway and the built front end."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from promptex.config import Settings

# dashboard/dist in a source checkout (src/promptex/dashboard → the repository root).
DEFAULT_DIST = Path(__file__).resolve().parents[3] / "dashboard" / "dist"


@dataclass(frozen=True)
class DashboardOptions:
    rpc_url: str  # the node the read-only /rpc proxy and the pools view read (never shown to the browser)
    network: str  # deployments/<network>.json
    gateway_url: str  # the gateway's origin; the browser reaches it as /v1 on the dashboard's origin
    dist: Path  # the built front end (`make setup` builds it)
    deployments_dir: Path
    new_accounts_per_hour: int = 20  # per client address: each unbound wallet's challenge creates one

    @classmethod
    def from_settings(cls, s: Settings) -> DashboardOptions:
        """From the `dashboard_*` settings (PROMPTEX_DASHBOARD_*); unset ones fall back to the
        indexer's chain and the gateway's address."""
        gateway_host = "127.0.0.1" if s.gateway_host in ("0.0.0.0", "::") else s.gateway_host
        return cls(
            rpc_url=s.chain_rpc_url("dashboard"),
            network=s.dashboard_network or s.indexer_network,
            gateway_url=s.dashboard_gateway_url or f"http://{gateway_host}:{s.gateway_port}",
            dist=s.dashboard_dist_dir or DEFAULT_DIST,
            deployments_dir=s.deployments_dir,
        )
