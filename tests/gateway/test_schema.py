"""A schemathesis run against the gateway's own OpenAPI schema finds no 5xx.

Models are drawn from the test catalog (and random strings), so requests reach the
fake upstream and the ledger, not only validation; the books must balance after."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from promptex.gateway.openapi import openapi_schema
from promptex.protocol.units import USD_MICRO as USDC

from .conftest import Fake, Harness

MODELS = ["fake-gpt", "fake-claude", "fake-embed", "no-such-model"]


def _with_models(schema: dict[str, Any]) -> dict[str, Any]:
    schema = copy.deepcopy(schema)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/responses"):
        body = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        body["properties"]["model"] = {"type": "string", "enum": MODELS}
    return schema


@pytest.fixture
def served(gw: Harness, fake: Fake) -> Iterator[tuple[Harness, str]]:
    gw.add_lot(fake)
    gw.add_lot(fake, provider="anthropic", api="anthropic")
    _, key = gw.buyer(amount=5 * USDC)
    yield gw, key
    gw.ledger.check()


@pytest.fixture
def api_schema(served: tuple[Harness, str]) -> Any:
    gw, _ = served
    schema = schemathesis.openapi.from_dict(_with_models(openapi_schema()))
    schema.config.base_url = gw.url
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api__generated_requests__no_server_error(case: Any, served: tuple[Harness, str]) -> None:
    gw, key = served
    case.call_and_validate(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error])
