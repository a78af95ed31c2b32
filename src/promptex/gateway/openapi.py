"""The gateway's OpenAPI 3 schema (what clients and schemathesis read at /openapi.json)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "description": "OpenAI error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            }
        }
    },
}
_ERRORS = {str(code): _ERROR for code in (400, 401, 402, 404, 413, 429, 502, 503, 504)}
_ANTHROPIC_ERROR = {
    "description": "Anthropic error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["type", "error"],
                "properties": {
                    "type": {"type": "string", "enum": ["error"]},
                    "error": {
                        "type": "object",
                        "required": ["type", "message"],
                        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                    },
                    "request_id": {"type": "string"},
                },
            }
        }
    },
}
_ANTHROPIC_ERRORS = {str(code): _ANTHROPIC_ERROR for code in (400, 401, 402, 404, 413, 429, 502, 503, 504, 529)}
_STREAM = {
    "type": "boolean",
}
_MAX = {"type": "integer", "minimum": 1}


def _post(summary: str, schema: dict[str, Any], *, anthropic: bool = False) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "security": [{"apiKey": []}, {"bearer": []}] if anthropic else [{"bearer": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}, "text/event-stream": {}}},
                **(_ANTHROPIC_ERRORS if anthropic else _ERRORS),
            },
        }
    }


def openapi_schema() -> dict[str, Any]:
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"type": "string"},
        },
    }
    chat = {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {"type": "array", "items": message, "minItems": 1},
            "max_tokens": _MAX,
            "stream": _STREAM,
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        },
    }
    completion = {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            "model": {"type": "string"},
            "prompt": {"type": "string"},
            "max_tokens": _MAX,
            "stream": _STREAM,
        },
    }
    embedding = {
        "type": "object",
        "required": ["model", "input"],
        "properties": {"model": {"type": "string"}, "input": {"type": "string"}},
    }
    messages = {  # Anthropic's Messages API (text here; content blocks too, see gateway.messages)
        "type": "object",
        "required": ["model", "max_tokens", "messages"],
        "properties": {
            "model": {"type": "string"},
            "max_tokens": _MAX,
            "system": {"type": "string"},
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": ["user", "assistant"]},
                        "content": {"type": "string"},
                    },
                },
            },
            "stream": _STREAM,
        },
    }
    responses = {  # OpenAI's Responses API, text and stateless (see gateway.responses)
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string"},
            "input": {"type": "string"},
            "instructions": {"type": "string"},
            "max_output_tokens": _MAX,
            "stream": _STREAM,
        },
    }
    schemes = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "PROMPTEX gateway", "version": "1"},
        "components": {"securitySchemes": schemes},
        "paths": {
            "/v1/chat/completions": _post("Chat completion", chat),
            "/v1/completions": _post("Text completion", completion),
            "/v1/embeddings": _post("Embeddings", embedding),
            "/v1/messages": _post("Anthropic Messages API", messages, anthropic=True),
            "/v1/responses": _post("OpenAI Responses API (stateless, text)", responses),
            "/v1/models": {
                "get": {
                    "summary": "Models and their prices per asset",
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "OK", "content": {"application/json": {}}}, **_ERRORS},
                }
            },
            "/v1/promptex/lanes": {
                "get": {
                    "summary": "Signed mode: the current session's lanes (charged, settled, stored voucher, in flight)",
                    "security": [{"bearer": []}],
                    "parameters": [{"name": "asset", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "OK", "content": {"application/json": {}}}, **_ERRORS},
                }
            },
        },
    }
