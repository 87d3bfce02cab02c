"""The OpenAPI description: served at /api/openapi.json, valid, complete, and true of the live server (schemathesis)."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import (  # the public registry of built-in checks
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from opp_auth.http import indieauth
from opp_auth.http.openapi import OPENAPI_FILE

PROVIDER = {"type": "insecure_example", "users": [{"username": "alice", "password": "alice-pw", "name": "Alice"}]}
ALICE = {"username": "alice", "password": "alice-pw"}
HANDLER = ["insecure_example", None]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_MODE = 25


def checked_in() -> dict[str, Any]:
    """The document in the source tree."""
    return dict(json.loads(OPENAPI_FILE.read_text(encoding="utf-8")))


@pytest.fixture
async def client(onboarded: Path, opp_auth_factory: Any, opp_auth_client: Any) -> Any:
    """A live onboarded server with the insecure_example provider."""
    auth = await opp_auth_factory(providers=[PROVIDER], mfa_modules=[])
    return await opp_auth_client(auth)


async def test_served_document_is_the_checked_in_file(client: Any) -> None:
    """GET /api/openapi.json needs no token and answers the file in the package."""
    async with client.request("GET", "/api/openapi.json") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.json() == checked_in()


def test_document_is_valid_openapi() -> None:
    """openapi-spec-validator accepts the document."""
    validate_openapi(checked_in())


async def test_every_route_is_described_and_nothing_else(client: Any) -> None:
    """The document's operations are exactly the app's routes (static assets aside)."""
    served = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method in ("HEAD", "*"):
            continue  # the static assets directory; HEAD comes with every GET
        served.add((route.method.lower(), path))
    described = {(method, path) for path, item in checked_in()["paths"].items() for method in item if method != "parameters"}
    assert described == served


# ---- schemathesis against the live server ---------------------------------------------------------


async def _refused_resolve(host: str, port: int) -> list[Any]:
    """Tests send no traffic off this machine: every name a fuzzed client id names fails to resolve."""
    raise socket.gaierror(socket.EAI_NONAME, "name resolution is off in tests")


def _fuzz(document: dict[str, Any], base_url: str, access_token: str) -> dict[str, int]:
    """Fuzz every operation (invalid bodies too); return how many requests each got."""
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {access_token}"}
    session = requests.Session()
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [schemathesis.GenerationMode.POSITIVE]
        if len(operation.body):
            modes.append(schemathesis.GenerationMode.NEGATIVE)  # a string path parameter has no wrong value
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
            )
            def run(case: Any) -> None:
                sent[case.operation.label] = sent.get(case.operation.label, 0) + 1
                case.call_and_validate(base_url=base_url, session=session, headers=headers, checks=CHECKS)

            try:
                run()
            except Exception as err:
                err.add_note(f"while fuzzing {operation.label} ({mode.value})")
                raise
    session.close()
    return sent


async def test_live_server_answers_every_generated_request_as_documented(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No 500, no undocumented status, content type or body, whatever schemathesis sends (valid or not)."""
    monkeypatch.setattr(indieauth, "_resolve", _refused_resolve)
    tokens = await client.login.tokens(HANDLER, [ALICE])
    async with client.request("GET", "/api/openapi.json") as response:
        document = await response.json()
    # The server runs on this loop; schemathesis' blocking client runs beside it.
    sent = await asyncio.to_thread(_fuzz, document, client.base, tokens["access_token"])
    described = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item if method != "parameters"}
    assert set(sent) == described
    assert sent["POST /auth/login_flow"] > EXAMPLES_PER_MODE  # valid and invalid bodies both went out
