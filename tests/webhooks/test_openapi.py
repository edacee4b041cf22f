"""The OpenAPI document at ``/openapi.json``: valid OpenAPI 3.1, and true of the running app.

schemathesis drives every operation of the document against the real Flask app (in
process, through its WSGI support) with generated requests, positive and negative, and
checks each answer: never a 5xx, a documented status, a body and headers that match the
document, 401 without the admin token. Requests it makes to ``POST /webhooks/{source}``
are unsigned, so every one must be refused (4xx) and record nothing. A second run signs
generated canonical events with the generic source's secret, so the accepting side of
the receiver (202, 200, 422 and their bodies) is checked against the document too.

Bounded and repeatable: a fixed seed, derandomized generation, no example database, a
few dozen examples per operation.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
import yaml
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from stack import SECRET, signed_headers, write_config

from webhooks.app import create_app
from webhooks.openapi import openapi_document
from worker.commands import ContactRef, make_command
from worker.config import Settings, load_config
from worker.contacts_api.sandbox import SandboxServer
from worker.ledger.store import NewEvent
from worker.runtime import Runtime

TOKEN = "openapi-test-admin-token"
SEED = 20240601
MAX_EXAMPLES = 40
WEBHOOK = "/webhooks/{source}"
JSON = "application/json"
DEAD_LETTERS = 12
INEXPRESSIBLE = re.compile(r"(\[\d+\]\.)?(channel|id|contact_id)")
"""What a schema-valid event may still be refused for (422): a channel this config does
not have, an id repeated within a batch, an integer contact_id written as 5.0."""
CONFIG_DEPENDENT = (WEBHOOK, "/admin/api/dead-letters/replay", "/admin/api/dead-letters/purge")

SOURCES: dict[str, Any] = {
    # website (generic, Standard Webhooks) comes from write_config.
    "mc": {"kind": "mailchimp", "secret": "mc-secret", "channel": "main", "tags": ["news"]},
    "form": {"kind": "html_form", "secret": "form-secret", "channel": "main"},
    "sf": {
        "kind": "salesforce",
        "secret": "sf-secret",
        "channel": "main",
        "organization_id": "00Dn00000008y2tEAA",
        "token_param": None,  # no URL token: the XML is parsed before anything is refused
    },
    "jot": {"kind": "jotform", "secret": "jot-secret", "channel": "main"},
    "hub": {"kind": "hubspot", "secret": "hub-secret", "channel": "main"},
}
SOURCE_NAMES = ("website", *SOURCES)


@dataclass
class Api:
    """The app under test, its runtime and a client."""

    runtime: Runtime
    app: Flask
    http: FlaskClient

    def counts(self) -> tuple[int, int]:
        """(events, commands) in the ledger."""
        from sqlalchemy import func, select

        from worker.ledger.schema import commands, events

        with self.runtime.ledger.engine.connect() as connection:
            return (
                int(connection.execute(select(func.count()).select_from(events)).scalar_one()),
                int(connection.execute(select(func.count()).select_from(commands)).scalar_one()),
            )


def build_api(root: Path, sandbox: SandboxServer, *, dead: int = 0) -> Api:
    path = write_config(root / "contactsync.yaml", sandbox)
    document = yaml.safe_load(path.read_text())
    document["sources"].update(SOURCES)
    document["admin"] = {"token": TOKEN}
    path.write_text(yaml.safe_dump(document))
    runtime = Runtime(Settings(config=path, data_dir=root / "data"), load_config(path))
    for index in range(dead):
        ref = ContactRef(match_field="email", match_value=f"dead{index}@example.com")
        command = make_command("upsert", "main", ref, fields={"firstName": "Dead"})
        event = NewEvent(f"dead-{index}", "contact.upsert", {"id": f"dead-{index}"}, [command])
        (command_id,) = runtime.ledger.record("website", [event])[0].command_ids
        claimed = runtime.ledger.claim(command_id, lease_s=30)
        assert claimed is not None
        runtime.ledger.kill(claimed, reason="forbidden", status=403, error="no access")
    app = create_app(runtime)
    return Api(runtime, app, app.test_client())


def schemathesis_config() -> SchemathesisConfig:
    """Seeded, derandomized, no example database; the admin token for the bearer scheme."""
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "auth": {"openapi": {"adminToken": {"bearer": TOKEN}}},
        }
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, sandbox_server: SandboxServer) -> Iterator[Api]:
    sandbox_server.state.reset()
    built = build_api(tmp_path_factory.mktemp("openapi"), sandbox_server, dead=DEAD_LETTERS)
    yield built
    built.runtime.ledger.engine.dispose()


# -- the document --------------------------------------------------------------------------------


def test_the_document_is_served_and_is_valid_openapi(api: Api) -> None:
    response = api.http.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document == json.loads(json.dumps(openapi_document()))
    assert document["openapi"].startswith("3.1")
    loaded = schemathesis.openapi.from_dict(document)
    loaded.validate()  # the OpenAPI 3.1 meta-schema
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name


def _examples(node: Any, where: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(where, schema, example) for every media type or parameter example in the document."""
    if isinstance(node, dict):
        if "schema" in node:
            if "example" in node:
                yield where, node["schema"], node["example"]
            for name, example in node.get("examples", {}).items():
                yield f"{where}.examples.{name}", node["schema"], example["value"]
        for key, value in node.items():
            yield from _examples(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _examples(value, f"{where}[{index}]")


def test_every_example_in_the_document_matches_its_schema() -> None:
    document = json.loads(json.dumps(openapi_document()))
    found = list(_examples(document["paths"]))
    assert len(found) >= 8
    for where, schema, example in found:
        validator = jsonschema_rs.Draft202012Validator(
            {**schema, "components": document["components"]}, validate_formats=True
        )
        assert validator.is_valid(example), f"{where}: {example!r}"


def test_the_document_reveals_no_configuration(api: Api) -> None:
    text = api.http.get("/openapi.json").get_data(as_text=True)
    for secret in (TOKEN, SECRET, *(s["secret"] for s in SOURCES.values())):
        assert secret not in text
    for name in SOURCE_NAMES:
        assert f'"{name}"' not in text


def test_what_schemathesis_found_stays_fixed(api: Api) -> None:
    """Its findings, each as a plain request: 500s for ids and offsets past a 64-bit SQL
    integer, a 405 without ``Allow``, and a replay or purge filter of nulls taken as no
    filter at all (so selecting every dead letter)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = "/admin/api/dead-letters"
    too_big = 2**63
    for method, path in (
        ("GET", f"{base}/{too_big}"),
        ("DELETE", f"{base}/{too_big}"),
        ("POST", f"{base}/{too_big}/replay"),
    ):
        answer = api.http.open(path, method=method, headers=auth)
        assert (answer.status_code, answer.get_json()["error"]) == (404, "not_found"), path
    for request, field in (
        ({"query_string": {"offset": str(too_big)}}, "offset"),
        ({"method": "POST", "path": f"{base}/replay", "json": {"ids": [too_big]}}, "ids"),
        (
            {"method": "POST", "path": f"{base}/purge", "json": {"filter": {"channel": None}}},
            "filter.channel",
        ),
        (
            {"method": "POST", "path": f"{base}/purge", "json": {"filter": {"since": None}}},
            "filter.since",
        ),
    ):
        options = {"path": base, "method": "GET", **request}
        before = api.counts()
        answer = api.http.open(headers=auth, **options)
        assert answer.status_code == 400 and answer.get_json()["field"] == field, answer.text
        assert api.counts() == before
    for method, path, allowed in (
        ("PUT", "/healthz", "GET"),
        ("TRACE", base, "GET"),
        ("GET", "/webhooks/website", "POST"),
    ):
        answer = api.http.open(path, method=method, headers=auth)
        assert answer.status_code == 405 and answer.mimetype == JSON, path
        assert allowed in answer.headers["Allow"].split(", "), path


# -- schemathesis against the running app ---------------------------------------------------------

# Loaded at import, for `schema.parametrize()`; the app comes from a fixture and is bound to
# each case. (`schemathesis.pytest.from_fixture`, which would load it from the fixture, fails
# under pytest 9.2 in schemathesis 4.32: it sets `Function._nodeid`, which pytest removed.)
schema = schemathesis.openapi.from_dict(
    json.loads(json.dumps(openapi_document())), config=schemathesis_config()
)


def configured(case: Any) -> str:
    """For most cases a configured source (chosen by the case's content, so the same case
    always goes to the same source), else the generated name itself (an unknown source)."""
    seen = repr((case.path_parameters, case.query, case.media_type, case.body))
    index = zlib.crc32(seen.encode("utf-8", "surrogatepass")) % (len(SOURCE_NAMES) + 1)
    return SOURCE_NAMES[index] if index < len(SOURCE_NAMES) else case.path_parameters["source"]


@schema.parametrize()
def test_every_operation_answers_as_documented(case: Any, api: Api) -> None:
    """Every operation, positive and negative inputs, the admin token supplied (and left out
    by schemathesis' own auth check): documented answers only, never a 5xx. Deliveries are
    unsigned, so all are refused, and nothing unsigned records an event."""
    # The schema is built at import time, the app per module: bind them for the checks
    # that send requests of their own (without auth, with other methods).
    case.operation.app = case.operation.schema.app = api.app
    webhook = case.operation.path == WEBHOOK
    if webhook and not case.meta.is_negative_at(ParameterLocation.PATH):
        case.path_parameters = {"source": configured(case)}
    # "Schema-valid data is accepted" cannot hold for what depends on the config (a source's
    # kind decides its content type, and whether it answers a GET; deliveries here are
    # unsigned), nor for dead letter ids: JSON Schema reads 238.0 as an integer, the API
    # wants 238, and the document cannot say so.
    lenient = [positive_data_acceptance] if case.operation.path in CONFIG_DEPENDENT else []
    before = api.counts()
    response = case.call_and_validate(excluded_checks=lenient)
    assert api.counts()[0] == before[0], "an unsigned request recorded an event"
    if webhook and case.method == "POST":
        assert 400 <= response.status_code < 500, response.text
        assert api.counts() == before


# -- signed canonical events ----------------------------------------------------------------------


def _canonical_only() -> Any:
    """The document with the webhook taking only the canonical JSON body (the generic source)."""
    document = json.loads(json.dumps(openapi_document()))
    operation = document["paths"][WEBHOOK]["post"]
    operation["requestBody"]["content"] = {JSON: operation["requestBody"]["content"][JSON]}
    operation["parameters"] = [p for p in operation["parameters"] if p["in"] != "query"]
    return schemathesis.openapi.from_dict(document, config=schemathesis_config())


canonical_only = _canonical_only()
RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_signed_events_are_answered_as_documented(api: Api, mode: GenerationMode) -> None:
    """Generated bodies, signed: schema-valid ones are accepted unless they name a channel
    the config lacks (or repeat an id in a batch, or spell an integer 5.0: JSON Schema
    cannot say these); schema-invalid ones are refused with 400 or 422; a refusal records
    nothing, an acceptance records its events."""
    strategy = canonical_only[WEBHOOK]["POST"].as_strategy(
        generation_mode=mode,
        path_parameters={"source": "website"},
        headers={"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,"},
    )
    statuses: list[int] = []

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def deliver(case: Any) -> None:
        assert case.meta.is_negative_at(ParameterLocation.BODY) is mode.is_negative
        body = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
        before = api.counts()
        response = api.http.post("/webhooks/website", data=body, headers=signed_headers(body))
        case.validate_response(response, checks=RESPONSE_CHECKS)
        statuses.append(response.status_code)
        answer = response.get_json()
        if response.status_code in (200, 202):
            results = answer.get("events", [answer])
            new = sum(not result["duplicate"] for result in results)
            assert api.counts()[0] == before[0] + new
        else:
            assert api.counts() == before, answer
        if mode.is_negative:
            assert response.status_code in (400, 422), answer
        elif response.status_code == 422:
            assert INEXPRESSIBLE.fullmatch(answer["field"]), answer
        else:
            assert response.status_code in (200, 202), answer

    deliver()
    if mode.is_positive:  # the accepting side was exercised, not only refusals
        assert statuses.count(202) >= MAX_EXAMPLES // 4, statuses
