"""escrow/openapi.json: the hand-written OpenAPI document is the routes' (no drift), and the service serves it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from escrow import FakeClock, Store, create_api
from escrow.api import openapi_document
from tests.escrow.helpers import assert_error, raw_request

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
HOLDS_PATHS = {"/escrow/{escrow_id}/holds", "/escrow/{escrow_id}/holds/{hold_id}/capture",
               "/escrow/{escrow_id}/holds/{hold_id}/void"}


def _documented(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in METHODS}


def _routes(holds: bool, tmp_path: Path) -> set[tuple[str, str]]:
    store = Store(tmp_path / f"routes-{holds}.db", clock=FakeClock())
    try:
        api = create_api(store, holds=holds)
        return {(method, route.path) for route in api.routes if isinstance(route, APIRoute) for method in route.methods}
    finally:
        store.close()


@pytest.mark.parametrize("holds", [True, False], ids=["holds", "no-holds"])
def test_documented_paths_and_methods_are_exactly_the_routes(tmp_path, holds):
    routes = _routes(holds, tmp_path)
    assert _documented(openapi_document(holds=holds)) == routes
    assert {path for _, path in routes} >= {"/agents", "/faucet", "/me", "/escrow", "/escrow/{escrow_id}",
                                            "/openapi.json"}
    assert ({path for _, path in routes} & HOLDS_PATHS) == (HOLDS_PATHS if holds else set())


def test_every_operation_documents_its_path_parameters_auth_and_error_shape():
    document = openapi_document()
    parameters = document["components"]["parameters"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            names = set()
            for parameter in operation.get("parameters", []):
                parameter = parameters[parameter["$ref"].rsplit("/", 1)[1]] if "$ref" in parameter else parameter
                if parameter["in"] == "path":
                    names.add(parameter["name"])
            assert names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, (method, path)
            public = path in ("/agents", "/openapi.json")
            assert operation.get("security", document["security"]) == ([] if public else [{"bearerAuth": []}])
            if not public:
                assert "401" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = document["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
                if int(status) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema["allOf"] == [{"$ref": "#/components/schemas/Error"}], (method, path, status)


def test_the_document_is_served_without_auth_at_every_mount(escrow_server_factory):
    full, no_holds = escrow_server_factory(), escrow_server_factory(holds=False)
    served = full.call(None, "GET", "/openapi.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert json.loads(served.content) == openapi_document()
    assert json.loads(served.content)["openapi"].startswith("3.1")
    without = json.loads(no_holds.call(None, "GET", "/openapi.json").content)
    assert without == openapi_document(holds=False)
    assert not HOLDS_PATHS & set(without["paths"]) and HOLDS_PATHS <= set(json.loads(served.content)["paths"])


@pytest.mark.parametrize("path", [b"/openapi.json/", b"/openapi%2Ejson", b"/openapi.jsonx", b"/x/openapi.json",
                                  b"/openapi.json.", b"/me.json"])
def test_only_the_exact_document_path_may_have_a_dot(escrow_server, path):
    status, _, payload = raw_request(escrow_server, "GET", path)
    assert status == 404, (path, payload)
    assert json.loads(payload)["error"]["code"] == "not_found"


def test_the_document_path_takes_get_only(escrow_server):
    assert_error(escrow_server.call(None, "POST", "/openapi.json", json={}), 405, "method_not_allowed")


def test_the_document_is_served_under_the_spaces_sandbox_prefix(tmp_path):
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    store = Store(tmp_path / "mounted.db", clock=FakeClock())
    try:
        app = Starlette(routes=[Mount("/sandbox/api", create_api(store))])
        with TestClient(app) as client:
            served = client.get("/sandbox/api/openapi.json")
            assert served.status_code == 200 and served.json() == json.loads(json.dumps(openapi_document()))
            assert client.get("/sandbox/api/openapi%2Ejson").status_code == 404
    finally:
        store.close()
