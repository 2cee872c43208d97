"""Schemathesis against the OpenAPI document a running proxy serves: schema-valid and
schema-violating requests to every operation, with an admin token; no answer may be a 5xx, use a
status the document does not list, or break its schema.

Requests go out through httpx: the venv's ``urllib3`` can be urllib3-future (pulled in by
niquests, via grafana-client), which breaks the connection counting of schemathesis' own
requests transport. The checks are schemathesis' own, run on each response.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.admin.openapi import build_document
from tests.admin.conftest import SECRET, admin_token
from tests.contract.sdk import ask

MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]


def send(http: httpx.Client, kwargs: dict[str, Any]) -> httpx.Response:
    """A request as schemathesis serialized it for ``requests``, sent with httpx."""
    options: dict[str, Any] = {
        "headers": kwargs.get("headers") or {},
        "params": kwargs.get("params") or None,
        "cookies": kwargs.get("cookies") or None,
    }
    if "json" in kwargs:
        options["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        options["content" if isinstance(data, bytes | str) else "data"] = data
    return http.request(kwargs["method"], kwargs["url"], **options)


@pytest.fixture
def served(make_proxy: Any) -> Any:
    proxy = make_proxy(auth={"hs256_secret": SECRET})
    # Tasks in every state, so listings and details carry trips, previews and timelines.
    for n in range(3):
        task = f"seed-{n}"
        ask("chat", proxy.base_url, headers={"X-Task-Id": task}, prompt=uuid.uuid4().hex)
    return proxy


def test_the_served_document_is_the_built_one(served: Any) -> None:
    with httpx.Client(base_url=served.base_url) as http:
        document = http.get("/tripwire/v1/openapi.json").json()
    assert document == build_document()
    assert document["openapi"].startswith("3.1")
    assert {op for path in document["paths"].values() for op in path} == {"get", "post"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_finds_nothing(served: Any, mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {admin_token(sub='schemathesis')}"}
    with httpx.Client(timeout=10) as http:
        document = http.get(f"{served.base_url}/tripwire/v1/openapi.json").json()
        http.post(
            f"{served.base_url}/tripwire/v1/tasks/seed-0/kill",
            json={"reason": "seeded"},
            headers=headers,
        )
        schema = schemathesis.openapi.from_dict(document)
        base_url = served.base_url + "/tripwire/v1"
        tested: list[str] = []
        unsatisfiable: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            strategy = operation.as_strategy(generation_mode=mode, headers=headers)
            # Known ids too, so the operations on an existing task are exercised, not only 404s.
            if "{task}" in operation.path:
                strategy = st.one_of(
                    strategy,
                    operation.as_strategy(
                        generation_mode=mode,
                        headers=headers,
                        path_parameters={"task": "seed-1"},
                    ),
                )

            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def check(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url=base_url)
                response = send(http, kwargs)
                case.validate_response(
                    response, checks=CHECKS, headers=headers, transport_kwargs=kwargs
                )

            label = f"{operation.method.upper()} {operation.path}"
            try:
                check()
            except Unsatisfiable:
                unsatisfiable.append(label)
            else:
                tested.append(label)
    # Nothing of these can be made schema-violating: no body, no parameter or any string as a
    # task id.
    nothing_to_negate = [
        "GET /tasks/{task}",
        "GET /openapi.json",
        "GET /me",
        "GET /activity",
        "POST /reload",
    ]
    if mode == GenerationMode.POSITIVE:
        assert len(tested) == 12 and not unsatisfiable, (tested, unsatisfiable)
    else:
        assert len(tested) == 7 and sorted(unsatisfiable) == sorted(nothing_to_negate)
