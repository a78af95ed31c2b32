"""The OpenAI-compatible gateway: one /v1 base URL, any model per request, paid from a
PROMPTEX balance, served through a seller's capacity whose key the buyer never sees.

    app = create_app(settings())          # ASGI; `promptex gateway serve` runs it on uvicorn
"""

from promptex.gateway.app import create_app

__all__ = ["create_app"]
