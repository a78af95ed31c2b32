"""The web dashboard's server: the built front end (dashboard/dist) plus small read-only
JSON endpoints for what a browser cannot read from the chain itself, a read-only JSON-RPC
proxy, the gateway's /v1 on the same origin, and the wallet-signed way to obtain an API key.
"""

from promptex.dashboard.app import create_app
from promptex.dashboard.options import DashboardOptions

__all__ = ["DashboardOptions", "create_app"]
