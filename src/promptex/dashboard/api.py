"""The JSON API's plumbing: the error a handler raises for the user, reading a JSON body,
and the guard that turns a handler's result or known failure into a JSON response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from starlette.requests import Request
from starlette.responses import Response

from promptex.dashboard import enterprise, views

Handler = Callable[[Request], Awaitable[Any]]


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


async def read_body(request: Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def guarded(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """The handler's result as JSON; the failures a user or the chain can cause as
    `{"error": …}` with their status (one mapping for every area's routes)."""

    async def endpoint(request: Request) -> Response:
        try:
            result = await handler(request)
            # A handler that answers something else than JSON (the usage CSV) returns its Response.
            return result if isinstance(result, Response) else json_response(result)
        except ApiError as exc:
            return json_response({"error": exc.message}, exc.status)
        except views.NotFound as exc:
            return json_response({"error": str(exc)}, 404)
        except views.NoProof as exc:
            return json_response({"error": str(exc)}, 409)
        except enterprise.NotOwner as exc:
            return json_response({"error": str(exc)}, 403)
        except FileNotFoundError as exc:
            return json_response({"error": f"no deployment: {exc}"}, 503)
        except httpx.HTTPError:
            return json_response({"error": "the chain's node does not answer"}, 502)

    return endpoint
