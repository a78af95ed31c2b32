"""The APIs a client may speak to the gateway, and what differs between them: how a
request is checked and bounded, which lots can serve it and through which adapter, the
output limit sent upstream, and the shape of errors.

    chat, completions, embeddings   OpenAI's APIs (`requests`, `adapters`)
    messages                        Anthropic's Messages API (`messages`)
    responses                       OpenAI's Responses API (`responses`)
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from promptex.gateway import messages, responses
from promptex.gateway.adapters import EMBEDDINGS, Adapter, adapter_for, check_anthropic_translatable
from promptex.gateway.errors import GatewayError
from promptex.gateway.messages import MESSAGES
from promptex.gateway.requests import validate as validate_openai
from promptex.gateway.requests import with_output_limit
from promptex.gateway.responses import RESPONSES
from promptex.metering import ImageAllowances

API_ROUTES = {"/v1/messages": MESSAGES, "/v1/responses": RESPONSES}


def validate(
    endpoint: str, body: dict[str, Any], allowances: ImageAllowances | None = None
) -> tuple[str, int, int | None]:
    """(model, an upper bound on the input tokens, the requested output limit or None); a
    chat request's images bounded by the model's image allowance (the catalog's)."""
    if endpoint == MESSAGES:
        return messages.validate_messages(body)
    if endpoint == RESPONSES:
        return responses.validate_responses(body)
    return validate_openai(endpoint, body, allowances)


def check(endpoint: str, body: dict[str, Any], api: str) -> None:
    """400 if a lot speaking `api` cannot serve the body as asked (before any hold)."""
    if endpoint == MESSAGES:
        if api != "anthropic":
            messages.check_translatable(body)
    elif endpoint == RESPONSES:
        responses.check_translatable(body, api)
    elif api == "anthropic":
        check_anthropic_translatable(endpoint, body)


def adapter(endpoint: str, api: str, output: int, body: dict[str, Any]) -> Adapter:
    """How a lot speaking `api` is called for `endpoint`, with `output` the output limit
    the hold was priced for (sent upstream by the Messages and Responses translations)."""
    if endpoint == MESSAGES:
        if api == "anthropic":
            return messages.NativeAdapter(output)
        return messages.ToChatAdapter(adapter_for(api), output)
    if endpoint == RESPONSES:
        return responses.ToChatAdapter(adapter_for(api, output), body, output)
    return adapter_for(api, output)


def upstream_body(endpoint: str, body: dict[str, Any], output: int) -> dict[str, Any]:
    """The body sent upstream: an OpenAI request is sent the output limit its hold covers,
    in the field it used (`max_tokens` when it named none), so the hold is a true upper
    bound (the Messages and Responses adapters set theirs)."""
    if endpoint in (MESSAGES, RESPONSES, EMBEDDINGS) or not output:
        return body
    return with_output_limit(body, output)


def api_of(path: str) -> str:
    """The API a path belongs to, for the shape of its errors (any /v1/messages… path is
    Anthropic's: an Anthropic client reads its errors)."""
    return MESSAGES if path == "/v1/messages" or path.startswith("/v1/messages/") else API_ROUTES.get(path, "")


def id_headers(endpoint: str, request_id: str) -> dict[str, str]:
    """The request id, as `x-request-id` (and `request-id`, which Anthropic's SDK reads)."""
    if endpoint == MESSAGES:
        return {"x-request-id": request_id, "request-id": request_id}
    return {"x-request-id": request_id}


_RAW_ID = b"x-request-id"


def raw_id_headers(endpoint: str, request_id: str) -> list[tuple[bytes, bytes]]:
    """`id_headers` as an ASGI header list."""
    raw = request_id.encode()
    if endpoint == MESSAGES:
        return [(_RAW_ID, raw), (b"request-id", raw)]
    return [(_RAW_ID, raw)]


def error_response(endpoint: str, exc: GatewayError, request_id: str) -> Response:
    return exc.anthropic_response(request_id) if endpoint == MESSAGES else exc.response(request_id)
