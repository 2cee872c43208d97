from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from proxy.app import LEDGER
from proxy.session.base import Ledger
from tests.harness import ProxyThread
from tests.redis_server import PATIENT_REDIS_TIMEOUT_S


@pytest.fixture
def task(request: pytest.FixtureRequest) -> str:
    """A task id of this test's own, from its name and parameters."""
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:90]


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ``state`` section of each backend: the behaviour under test is the same in both."""
    if request.param == "memory":
        return {"backend": "memory"}
    server = request.getfixturevalue("redis_server")
    return {
        "backend": "redis",
        "redis_url": server.url,
        "key_prefix": "tw" + uuid.uuid4().hex[:8],
        "redis_timeout": PATIENT_REDIS_TIMEOUT_S,
    }


def ledger_of(proxy: ProxyThread) -> Ledger:
    assert proxy._app is not None
    return proxy._app[LEDGER]  # type: ignore[no-any-return]
