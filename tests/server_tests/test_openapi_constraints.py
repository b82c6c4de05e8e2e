"""The OpenAPI document states what the server enforces (issue 17, item 7): a schema-driven
client that sends what the schema allows never meets a 422 from request validation, and what
the schema refuses the server refuses.

- The budget's pattern accepts exactly the positive budgets the parser reads (checked on a
  list of examples against ``parse_budget_spec``), and the server agrees over HTTP.
- Measurement uploads state ``n >= 1``, ``median_ms > 0`` and the rest of their bounds.
- Each operation's security is the real one: reads optional while public, required when
  ``read_access`` is ``token``; writes need an API token; agent endpoints a device token.
- ``OPTIONS`` answers with the path's methods in ``Allow``.
- For every JSON body, values generated at each documented bound pass the body's validation and
  values just outside fail it (a small property check over the whole document).

Apps are ``create_app`` on real uvicorn (127.0.0.1) over fresh SQLite homes.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from nasvit.errors import NasvitError
from nasvit.searching.budget import parse_budget_spec
from nasvit.server import schemas

from nasvit_testing.agent_api import AgentService, agent_service

# Budgets and whether the parser (and so the pattern) accepts them: as many shapes of number,
# unit, spacing and percentile as the parser knows, and the ways to get each wrong.
BUDGETS = {
    "2ms": True,
    "2 ms": True,
    " 2ms ": True,
    "2MS": True,
    "2Ms": True,
    "1500us": True,
    "1500 US": True,
    "1500µs": True,
    "1500µS": True,
    "0.002s": True,
    "0.002 S": True,
    ".5ms": True,
    "0.5ms": True,
    "00.50ms": True,
    "10ms": True,
    "100ms": True,
    "1e-2s": True,
    "1E+2us": True,
    "2.5e1ms": True,
    "1e07ms": True,
    "0.0001e3s": True,
    "2ms@p90": True,
    "2 ms @ p90": True,
    "2ms@P99": True,
    "2ms@p50": True,
    "2ms@p75": True,
    "2ms@p95": True,
    "2ms@p090": True,
    "2ms @p90 ": True,
    "0": False,
    "0ms": False,
    "0.0ms": False,
    ".0ms": False,
    "000ms": False,
    "0e5ms": False,
    "0.000e-3s": False,
    "-1ms": False,
    "+1ms": False,
    "-0ms": False,
    "abc": False,
    "": False,
    " ": False,
    "2": False,
    "2.ms": False,
    "2 m s": False,
    "2ns": False,
    "2msec": False,
    "ms": False,
    "2ms2": False,
    "2ms@": False,
    "2ms@p": False,
    "2ms@p42": False,
    "2ms@p100": False,
    "2ms@90": False,
    "2ms@p90@p90": False,
    "2ms @ p 90": False,
    "1e-2": False,
    "e2ms": False,
    "1e2.5ms": False,
    "1,5ms": False,
    "1_000us": False,
    "nanms": False,
    "infms": False,
}
#: Budgets the parser reads that the schema (and so the server) refuses, each for a reason the
#: pattern states: three exponent digits (1e400 would overflow), whitespace other than spaces,
#: and the Greek mu that the parser's case-folding lets through and then cannot read.
STRICTER = ["1e100ms", "1e-100s", "2ms\t", "\u20032ms", "2ms\n", "2μs", "2Μs"]


@pytest.fixture(scope="module")
def public(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentService]:
    with agent_service(tmp_path_factory.mktemp("openapi-public")) as served:
        yield served


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentService]:
    with agent_service(tmp_path_factory.mktemp("openapi-token"), read_access="token") as served:
        yield served


def _document(service: AgentService) -> dict[str, Any]:
    response = service.http.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _parses(text: str) -> bool:
    try:
        parse_budget_spec(text)
    except NasvitError:
        return False
    return True


# ---------------------------------------------------------------------- budgets
def test_the_budget_pattern_accepts_what_the_parser_reads() -> None:
    pattern = re.compile(schemas.BUDGET_PATTERN)
    disagree = {
        text: expected
        for text, expected in BUDGETS.items()
        if bool(pattern.fullmatch(text)) != expected or _parses(text) != expected
    }
    assert disagree == {}
    # Stricter than the parser only where the pattern says so (see STRICTER).
    for text in STRICTER:
        assert not pattern.fullmatch(text), text
    assert all(_parses(text) for text in STRICTER if "μ" not in text and "Μ" not in text)


def test_the_budget_pattern_is_plain_ecmascript() -> None:
    """Only constructs Python and ECMAScript (JSON Schema's dialect) read alike: no lookaround,
    named groups, inline flags or Python-only escapes."""
    for construct in ("(?P", "(?=", "(?!", "(?<", "(?i", "\\Z", "\\A", "\\d", "\\s", "\\w"):
        assert construct not in schemas.BUDGET_PATTERN


def test_the_server_refuses_exactly_what_the_budget_schema_refuses(public: AgentService) -> None:
    schema = _document(public)["components"]["schemas"]["SearchCreate"]["properties"]["budget"]
    assert schema["pattern"] == schemas.BUDGET_PATTERN
    assert (schema["minLength"], schema["maxLength"]) == (1, 50)
    pattern = re.compile(schema["pattern"])
    for text in [*BUDGETS, *STRICTER]:
        allowed = bool(pattern.fullmatch(text)) and 1 <= len(text) <= 50
        before = public.http.get("/api/v1/searches").json()["total"]
        response = public.http.post(
            "/api/v1/searches",
            json={"space": "efficientformer", "budget": text},
            headers=public.api_auth,
        )
        assert response.status_code == (202 if allowed else 422), (text, response.text)
        if not allowed:
            assert response.json()["detail"].startswith("budget: ")
            assert public.http.get("/api/v1/searches").json()["total"] == before
    # The case: "0" is refused by the schema, not only by the server.
    assert not pattern.fullmatch("0")


# ---------------------------------------------------------------------- measurements
def test_measurement_uploads_state_their_bounds(public: AgentService) -> None:
    components = _document(public)["components"]["schemas"]
    entry = components["UploadEntry"]["properties"]
    assert entry["median_ms"]["exclusiveMinimum"] == 0
    assert entry["n"]["minimum"] == 1 and entry["n"]["maximum"] == schemas.INT32_MAX
    assert entry["iqr_ms"]["minimum"] == 0
    number = next(o for o in entry["cold_n"]["anyOf"] if o.get("type") == "integer")
    assert number["minimum"] == 1
    assert entry["key"]["pattern"].startswith("^nasvit-block")
    timing = components["Timing"]["properties"]
    assert timing["median_ms"]["exclusiveMinimum"] == 0 and timing["n"]["minimum"] == 1
    assert components["Timing"]["additionalProperties"] is False
    assert components["Fingerprint"]["additionalProperties"] is False

    public.register("uploader", public.device_token("uploader"))
    for change, message in [
        ({"n": 0, "median_ms": 0}, "median_ms: Input should be greater than 0"),
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"iqr_ms": -1}, "iqr_ms: Input should be greater than or equal to 0"),
        ({"key": "other-schema|k|1"}, "key schema 'other-schema' does not match"),
        ({"n": 2**31}, "n: Input should be less than or equal to 2147483647"),
    ]:
        entry_body = {"key": "nasvit-block/1|k|1", "median_ms": 1.0, "iqr_ms": 0.1, "n": 5}
        response = public.http.post(
            "/api/v1/devices/uploader/measurements",
            json={"entries": [entry_body | change]},
            headers=public.api_auth,
        )
        assert response.status_code == 422 and message in response.json()["detail"], change
    assert public.store.entry_count(public.store.device("uploader").id) == 0


# ---------------------------------------------------------------------- security
def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield path, method, operation


#: A value for each path parameter, so that every path can be requested.
PATH_VALUES = {"sha256": "a" * 64, "lease_id": "0" * 32, "name": "best.json"}


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES.get(m.group(1), "missing"), path)


@pytest.mark.parametrize("access", ["public", "token"])
def test_each_operation_states_its_real_security(
    public: AgentService, private: AgentService, access: str
) -> None:
    service = public if access == "public" else private
    document = _document(service)
    schemes = document["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == schemes["DeviceToken"]["scheme"] == "bearer"
    reads = [{}, {"HTTPBearer": []}] if access == "public" else [{"HTTPBearer": []}]
    expected = {
        "/api/v1/health": None,
        "/api/v1/agent.pyz": None,
        "/api/v1/devices/{device_id}/measurements": [{"HTTPBearer": []}, {"DeviceToken": []}],
    }
    for path, method, operation in _operations(document):
        security = operation.get("security")
        if path in expected:
            assert security == expected[path], path
        elif "/work" in path or path == "/api/v1/agents/register":
            assert security == [{"DeviceToken": []}], path
        elif method == "get":
            assert security == reads, path
        else:
            assert security == [{"HTTPBearer": []}], (method, path)
        # ... and the server behaves as stated when no token is sent.
        response = service.http.request(method.upper(), _concrete(path), json={})
        if security is None or {} in security:
            assert response.status_code != 401, (method, path, response.text)
        else:
            assert response.status_code == 401, (method, path, response.text)
            assert "missing" in response.json()["detail"]


def test_options_answers_with_the_allowed_methods(public: AgentService) -> None:
    document = _document(public)
    for path, operations in document["paths"].items():
        response = public.http.options(_concrete(path))
        assert response.status_code == 204, (path, response.text)
        allowed = {m.strip() for m in response.headers["allow"].split(",")}
        assert allowed == {m.upper() for m in operations} | {"OPTIONS"}, path
    assert public.http.options("/api/v1/no-such-thing").status_code == 404
    # A CORS preflight, on a server with no CORS origins: refused, still saying what is allowed.
    preflight = public.http.options(
        "/api/v1/searches",
        headers={"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 405 and preflight.headers["allow"] == "GET, POST"
    assert "access-control-allow-origin" not in preflight.headers
    assert "not enabled" in preflight.json()["detail"]


# ---------------------------------------------------------------------- bodies at their bounds
#: Values for patterned strings (a pattern is not generated from).
PATTERN_EXAMPLES = {
    schemas.BUDGET_PATTERN: "2ms",
    schemas.UPLOAD_PATTERNS["key"]: "nasvit-block/1|k|1",
    schemas.UPLOAD_PATTERNS["key_schema"]: "nasvit-block/1",
}
NAME_EXAMPLE = "agent-7"  # for the other patterns: device names, agent names


class Schemas:
    """The document's component schemas, with ``$ref`` resolved."""

    def __init__(self, document: dict[str, Any]):
        self.components = document["components"]["schemas"]

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def sample(self, schema: dict[str, Any]) -> Any:
        """A value the schema allows: required properties only, numbers and lengths at their
        lower bounds, the first option of a union that is not null."""
        schema = self.resolve(schema)
        if "default" in schema and schema["default"] is not None:
            return schema["default"]
        for union in ("anyOf", "oneOf"):
            if union in schema:
                options = [o for o in schema[union] if self.resolve(o).get("type") != "null"]
                return self.sample(options[0])
        if "enum" in schema:
            return schema["enum"][0]
        if "const" in schema:
            return schema["const"]
        kind = schema.get("type")
        if kind == "object":
            properties = schema.get("properties", {})
            return {name: self.sample(properties[name]) for name in schema.get("required", [])}
        if kind == "array":
            return [self.sample(schema["items"])] * max(1, schema.get("minItems", 1))
        if kind == "string":
            if "pattern" in schema:
                return PATTERN_EXAMPLES.get(schema["pattern"], NAME_EXAMPLE)
            return "x" * max(1, schema.get("minLength", 1))
        if kind == "integer":
            if "minimum" in schema:
                return schema["minimum"]
            return schema["exclusiveMinimum"] + 1 if "exclusiveMinimum" in schema else 1
        if kind == "number":
            if "minimum" in schema:
                return schema["minimum"]
            return schema["exclusiveMinimum"] + 0.5 if "exclusiveMinimum" in schema else 1.0
        if kind == "boolean":
            return True
        return None  # no type stated: anything

    def leaves(
        self, schema: dict[str, Any], path: tuple[Any, ...] = ()
    ) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
        """Every bounded scalar of the baseline instance, and every optional scalar property
        (added to it when varied): its path and its schema (for a union with null, the
        non-null option with the union's own keywords, such as a pattern)."""
        schema = self.nullable(self.resolve(schema))
        kind = schema.get("type")
        if kind == "object":
            required = set(schema.get("required", []))
            for name, prop in schema.get("properties", {}).items():
                if name in required or self.nullable(self.resolve(prop)).get("type") in SCALARS:
                    yield from self.leaves(prop, (*path, name))
        elif kind == "array":
            yield from self.leaves(schema["items"], (*path, 0))
        elif kind in SCALARS:
            yield path, schema

    def nullable(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A union of one schema with null: that schema, with the union's keywords."""
        for union in ("anyOf", "oneOf"):
            if union in schema:
                options = [o for o in schema[union] if self.resolve(o).get("type") != "null"]
                if len(options) != 1:
                    return {}  # a real union: its options are checked one by one
                outer = {k: v for k, v in schema.items() if k not in (union, "default")}
                return {**outer, **self.resolve(options[0])}
        return schema


SCALARS = ("integer", "number", "string")


def _edges(schema: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """Values at each documented bound (allowed) and just past it (refused)."""
    kind = schema["type"]
    step = 1 if kind == "integer" else 1e-9
    if kind == "integer":  # the document writes integer bounds as floats (1.0): exact ints here
        bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
        schema = {**schema, **{k: int(schema[k]) for k in bounds if k in schema}}
    if "minimum" in schema:
        yield schema["minimum"], True
        yield schema["minimum"] - step, False
    if "exclusiveMinimum" in schema:
        yield schema["exclusiveMinimum"], False
        yield schema["exclusiveMinimum"] + step, True
    if "maximum" in schema:
        yield schema["maximum"], True
        yield schema["maximum"] + step, False
    if "exclusiveMaximum" in schema:
        yield schema["exclusiveMaximum"], False
        yield schema["exclusiveMaximum"] - step, True
    if kind == "string" and "pattern" not in schema and "enum" not in schema:
        if "minLength" in schema:
            yield "x" * schema["minLength"], True
            if schema["minLength"] > 0:
                yield "x" * (schema["minLength"] - 1), False
        if "maxLength" in schema:
            yield "x" * schema["maxLength"], True
            yield "x" * (schema["maxLength"] + 1), False


def _with(instance: Any, path: tuple[Any, ...], value: Any) -> Any:
    changed = copy.deepcopy(instance)
    target = changed
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return changed


def _bodies(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """(method, path, body schema, security) of every operation taking a JSON body."""
    for path, method, operation in _operations(document):
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            schema = content["application/json"]["schema"]
            yield method, path, schema, operation.get("security")


def _expanded(found: Schemas, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The body's schema, once per option where a list's items are one of several schemas
    (the results of a lease: block, overhead or network)."""
    schema = found.resolve(body)
    for name, prop in schema.get("properties", {}).items():
        options = found.resolve(prop).get("items", {}).get("oneOf")
        if options:
            return [
                {**schema, "properties": {**schema["properties"], name: {**prop, "items": o}}}
                for o in options
            ]
    return [schema]


def test_every_body_accepts_its_bounds_and_refuses_past_them(public: AgentService) -> None:
    """The server is the judge: a body the schema allows never gets a 422 (a 2xx, or a 404 /
    409 about the state of things, is its answer to a valid request), and a body past a
    documented bound always does. Each body is sent with the token its security names, to a
    registered device's paths."""
    document = _document(public)
    found = Schemas(document)
    device_token = public.device_token("bounds")
    assert public.register("bounds", device_token).status_code == 200
    values = {**PATH_VALUES, "device_id": "bounds"}
    bodies = list(_bodies(document))
    assert len(bodies) >= 6  # searches, measurements, device tokens, register, leases, results
    checked: dict[str, int] = {}
    failures = []
    for method, path, body, security in bodies:
        operation = f"{method.upper()} {path}"
        checked[operation] = 0
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        token = device_token if security == [{"DeviceToken": []}] else public.token

        def refused(instance: Any, url: str = url, token: str = token) -> bool:
            response = public.http.request(
                "POST",
                url,
                content=json.dumps(instance, allow_nan=False),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            assert response.status_code < 500, (url, instance, response.text)
            assert response.status_code not in (400, 401, 403), (url, response.text)
            return response.status_code == 422

        for schema in _expanded(found, body):
            baseline = found.sample(schema)
            if refused(baseline):
                failures.append(f"{operation}: baseline {baseline} refused")
                continue
            for at, leaf in found.leaves(schema):
                if (operation, at) == ("POST /api/v1/searches", ("device",)):
                    continue  # a device the server knows: state, not a bound (see below)
                for value, allowed in _edges(leaf):
                    checked[operation] += 1
                    if refused(_with(baseline, at, value)) == allowed:
                        failures.append(f"{operation} {at}={value!r}: expected {allowed}")
            # Required means required; an unknown field is refused where the schema says so.
            for required in schema.get("required", []):
                if not refused({k: v for k, v in baseline.items() if k != required}):
                    failures.append(f"{operation}: accepted without {required}")
            if schema.get("additionalProperties") is False:
                if not refused({**baseline, "unexpected": 1}):
                    failures.append(f"{operation}: accepted an unknown field")
    assert failures == []
    assert min(checked.values()) >= 2, checked  # every body had bounds to check


def test_a_search_states_its_spaces_controllers_and_evaluations(public: AgentService) -> None:
    """What a search's body may name is this server's: its spaces, controllers and cap on
    evaluations are in the document; a device must be one the server knows (listed by
    ``GET /devices``), which no schema can enumerate, so an unknown one is a 422 saying so."""
    from nasvit.search_spaces import space_names
    from nasvit.searching.controllers import CONTROLLERS

    search = _document(public)["components"]["schemas"]["SearchCreate"]["properties"]
    assert search["space"]["enum"] == space_names()
    assert search["controller"]["enum"] == list(CONTROLLERS)
    assert search["evaluations"]["maximum"] == public.services.settings.max_evaluations
    unknown = public.http.post(
        "/api/v1/searches",
        json={"space": "efficientformer", "budget": "2ms", "device": "nowhere"},
        headers=public.api_auth,
    )
    assert unknown.status_code == 422 and "unknown device 'nowhere'" in unknown.json()["detail"]


def _patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        for value in node.values():
            yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_the_examples_of_the_property_check_match_their_patterns(public: AgentService) -> None:
    """Every pattern of a body compiles, and the example the property check uses for it matches
    it (else the check would test nothing there)."""
    patterns = set(_patterns(_document(public)["components"]["schemas"]))
    assert schemas.BUDGET_PATTERN in patterns and len(patterns) >= 5
    for pattern in patterns:
        example = PATTERN_EXAMPLES.get(pattern, NAME_EXAMPLE)
        assert re.search(pattern, example), (pattern, example)
