"""``GET /openapi.json``: the OpenAPI 3.1 document of ``flavorkit serve``.

It is checked three ways: as OpenAPI 3.1 (openapi-spec-validator), against the routes the app
really mounts and the fields its hand-written validators really accept, and by schemathesis
against live servers on loopback (a chat model behind an API key, a text-generation model open):
no 5xx, and every answer's status, content type, headers and body as the document says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_fixtures import running

pytest.importorskip("prometheus_client")
openapi_spec_validator = pytest.importorskip("openapi_spec_validator")
pytest.importorskip("schemathesis")

from starlette.routing import Route  # noqa: E402

from flavorkit.serve import create_app  # noqa: E402
from flavorkit.serve import openai_api as oa  # noqa: E402
from flavorkit.serve.errors import APIError  # noqa: E402
from flavorkit.serve.openapi import build_openapi  # noqa: E402

KEY = "sk-openapi-test"
CHAT = "tiny-chat"
TEXT = "tiny-text"
#: Every operation the server has: a new route must be added here and to the document.
OPERATIONS = {
    ("/v1/chat/completions", "post"),
    ("/v1/completions", "post"),
    ("/v1/models", "get"),
    ("/v1/models/{model}", "get"),
    ("/invocations", "post"),
    ("/ping", "get"),
    ("/health", "get"),
    ("/version", "get"),
    ("/metrics", "get"),
}
PROTECTED = {op for op in OPERATIONS if op[0].startswith(("/v1/", "/invocations"))}
MESSAGES = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def chat_app(tiny_model_dir: Path) -> Any:
    return create_app(str(tiny_model_dir), api_key=KEY, served_model_name=CHAT)


@pytest.fixture(scope="module")
def chat_url(chat_app: Any) -> Iterator[str]:
    with running(chat_app) as url:
        yield url


@pytest.fixture(scope="module")
def text_url(tmp_path_factory: pytest.TempPathFactory, tiny_ort: Path) -> Iterator[str]:
    import flavorkit

    path = tmp_path_factory.mktemp("serve-openapi") / TEXT
    flavorkit.package(
        model=str(tiny_ort), backend="onnx-cpu", path=path, task="text-generation", generation={"temperature": 0.0}
    )
    with running(create_app(str(path))) as url:
        yield url


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _document(url: str) -> dict[str, Any]:
    status, headers, body = _get(f"{url}/openapi.json")
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc: dict[str, Any] = json.loads(body)
    return doc


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items() for method in item}


# -- the document ---------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1(chat_url: str, text_url: str) -> None:
    from openapi_spec_validator import OpenAPIV31SpecValidator

    for url, name in ((chat_url, CHAT), (text_url, TEXT)):
        doc = _document(url)
        assert doc["openapi"] == "3.1.0"
        assert doc["info"]["title"] == f"flavorkit serve: {name}"
        OpenAPIV31SpecValidator(doc).validate()  # raises on the first violation


def test_every_route_the_app_mounts_is_documented(chat_app: Any, chat_url: str) -> None:
    mounted = {
        (re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path), method.lower())
        for route in chat_app.app.routes
        if route.include_in_schema
        for method in route.methods - {"HEAD"}
    }
    assert _operations(_document(chat_url)) == mounted == OPERATIONS
    hidden = [(r.path, sorted(r.methods)) for r in chat_app.app.routes if not r.include_in_schema]
    assert hidden == [("/openapi.json", ["GET", "HEAD"])]  # the document itself, as FastAPI leaves it out


def test_a_route_without_an_operation_fails_the_build() -> None:
    async def handler(request: Any) -> Any:
        raise AssertionError("never called")

    routes = [Route("/v1/models", handler, methods=["GET"]), Route("/v1/embeddings", handler, methods=["POST"])]
    with pytest.raises(LookupError, match=r"^POST /v1/embeddings has no operation in the OpenAPI document"):
        build_openapi(routes, served_name="m", task="llm/v1/chat", version="0")
    hidden = [Route("/v1/models", handler, methods=["GET"]), Route("/x", handler, include_in_schema=False)]
    assert _operations(build_openapi(hidden, served_name="m", task="llm/v1/chat", version="0")) == {
        ("/v1/models", "get")
    }


@pytest.mark.parametrize(
    ("model", "fields", "schema", "parse"),
    [
        (oa.ChatCompletionRequest, oa.CHAT_FIELDS, "ChatCompletionRequest", "chat"),
        (oa.CompletionRequest, oa.COMPLETION_FIELDS, "CompletionRequest", "completion"),
    ],
)
def test_the_request_schemas_list_exactly_the_fields_the_validator_accepts(
    chat_url: str, model: Any, fields: tuple[str, ...], schema: str, parse: str
) -> None:
    assert set(model.model_fields) == set(fields)
    described = _document(chat_url)["components"]["schemas"][schema]
    assert set(described["properties"]) == set(fields)
    assert described["additionalProperties"] is False

    def accepts(body: dict[str, Any]) -> None:
        if parse == "chat":
            oa.parse_chat(body, "m")
        else:
            oa.parse_completion(body, "m", guided=True)

    base: dict[str, Any] = {"messages": MESSAGES} if parse == "chat" else {"prompt": "Hi"}
    for name in model.model_fields:  # every described field passes the validator (null: not given)
        if name not in base:
            accepts({**base, name: None})
    with pytest.raises(APIError) as err:
        accepts({**base, "best_of": 2})
    assert (err.value.status, err.value.code, err.value.param) == (400, "unknown_field", "best_of")


def test_numeric_bounds_are_json_schema_keywords(chat_url: str) -> None:
    schemas = _document(chat_url)["components"]["schemas"]
    props = schemas["ChatCompletionRequest"]["properties"]
    assert props["top_p"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0.0, "maximum": 1.0}
    assert props["n"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 16}
    assert props["max_tokens"]["anyOf"][0] == {"type": "integer", "exclusiveMinimum": 0}
    assert schemas["CompletionRequest"]["properties"]["logprobs"]["anyOf"][1] == {
        "type": "integer",
        "minimum": 0,
        "maximum": oa.MAX_TEXT_LOGPROBS,
    }
    assert not re.search(r'"(gt|ge|lt|le)":', json.dumps(schemas))  # pydantic's names, unknown to JSON Schema


def test_streams_and_both_error_shapes_are_described(chat_url: str) -> None:
    doc = _document(chat_url)
    ref = "#/components/schemas/"
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat) == {"200", "400", "401", "404", "413", "429", "500", "503", "504"}
    assert chat["200"]["content"]["application/json"]["schema"] == {"$ref": f"{ref}ChatCompletion"}
    event = chat["200"]["content"]["text/event-stream"]["schema"]
    assert event["required"] == ["data"]
    assert event["properties"]["data"]["anyOf"][0]["contentSchema"] == {
        "anyOf": [{"$ref": f"{ref}ChatCompletionChunk"}, {"$ref": f"{ref}ErrorResponse"}]
    }
    assert all(
        chat[s]["content"]["application/json"]["schema"] == {"$ref": f"{ref}ErrorResponse"} for s in chat if s != "200"
    )
    invocations = doc["paths"]["/invocations"]["post"]["responses"]
    assert invocations["400"]["content"]["application/json"]["schema"] == {"$ref": f"{ref}MLflowError"}
    assert invocations["401"]["content"]["application/json"]["schema"] == {"$ref": f"{ref}MLflowError"}
    assert invocations["413"]["content"]["application/json"]["schema"] == {"$ref": f"{ref}ErrorResponse"}
    assert invocations["415"]["content"] == {"text/plain": {"schema": {"type": "string"}}}
    assert doc["components"]["schemas"]["ErrorDetail"]["required"] == ["message", "type", "param", "code"]
    assert doc["components"]["schemas"]["MLflowError"]["required"] == ["error_code", "message"]


def test_the_key_is_described_where_it_is_needed_and_the_document_is_public(chat_url: str, text_url: str) -> None:
    assert _get(f"{chat_url}/v1/models")[0] == 401  # the API needs the key; its description does not
    doc = _document(chat_url)
    assert doc["components"]["securitySchemes"] == {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "One of the server's API keys: `Authorization: Bearer <key>`.",
        }
    }
    for path, method in OPERATIONS:
        operation = doc["paths"][path][method]
        if (path, method) in PROTECTED:
            assert operation["security"] == [{"bearer": []}], path
            assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]["schema"] == {"type": "string"}
        else:
            assert "security" not in operation and "401" not in operation["responses"], path
    open_doc = _document(text_url)
    assert "securitySchemes" not in open_doc["components"]
    assert all(
        "security" not in op and "401" not in op["responses"]
        for item in open_doc["paths"].values()
        for op in item.values()
    )


def test_the_document_says_which_generation_route_the_model_answers(chat_url: str, text_url: str) -> None:
    chat, text = _document(chat_url)["paths"], _document(text_url)["paths"]
    assert chat["/v1/chat/completions"]["post"]["description"].startswith(
        f"This server's model ('{CHAT}') answers here."
    )
    assert "here every request is a 404" in chat["/v1/completions"]["post"]["description"]
    assert text["/v1/completions"]["post"]["description"].startswith(f"This server's model ('{TEXT}') answers here.")
    example = text["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["examples"]["whole"]
    assert example["value"] == {"model": TEXT, "prompt": "Once upon a time", "max_tokens": 16}


def test_mounted_under_a_prefix_the_document_names_it_in_servers(chat_app: Any, chat_url: str) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    assert "servers" not in _document(chat_url)
    host = Starlette(routes=[Mount("/llm", app=chat_app)])
    with running(host) as url:
        doc = _document(f"{url}/llm")
        assert doc["servers"] == [{"url": "/llm"}]
        assert _get(f"{url}/llm/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200
    assert doc["paths"] == _document(chat_url)["paths"]


# -- schemathesis against the live servers --------------------------------------------------------

#: No 5xx, and each answer's status, content type, headers and body as documented. Not the checks
#: that want every schema-valid body accepted: the document cannot say that a user turn needs content.
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


@pytest.mark.parametrize("server", ["chat", "text"])
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(
    request: pytest.FixtureRequest, tmp_path: Path, server: str
) -> None:
    url = request.getfixturevalue(f"{server}_url")
    headers = ["--header", f"Authorization: Bearer {KEY}"] if server == "chat" else []
    cmd = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        *headers,
        "--checks",
        CHECKS,
        "--max-examples",
        "15",
        "--seed",
        "20",
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert re.search(r"Operations: +9 selected / 9 total", out), out[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out)
    assert cases is not None and cases.group(1) == cases.group(2) and int(cases.group(1)) > 100, out[-3000:]
