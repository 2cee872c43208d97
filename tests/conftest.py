from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import MockProviderThread, ProxyThread, running


@pytest.fixture(autouse=True)
def local_admin_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test's own local admin token file: a `tripwire serve` the test starts writes it
    there, the CLI reads it there, and the user's home is never touched."""
    path = tmp_path / "local-admin-token"
    monkeypatch.setenv("TRIPWIRE_AUTH__LOCAL_ADMIN_FILE", str(path))
    return path


@pytest.fixture(scope="session")
def mock_thread() -> Iterator[MockProviderThread]:
    with MockProviderThread() as mock:
        yield mock


@pytest.fixture
def mock(mock_thread: MockProviderThread) -> MockProviderThread:
    """The mock provider, with its recorded requests and usage cleared for this test."""
    mock_thread.provider.reset()
    return mock_thread


@pytest.fixture
def make_proxy(mock: MockProviderThread) -> Iterator[Any]:
    """``make_proxy(policy={...}, ...)`` starts a proxy in front of the mock provider."""
    stack: list[Any] = []

    def start(**sections: Any) -> ProxyThread:
        context = running(mock, **sections)
        proxy = context.__enter__()
        stack.append(context)
        return proxy

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)


@pytest.fixture
def proxy(make_proxy: Any) -> ProxyThread:
    """A proxy with the default policy."""
    return make_proxy()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server of the tests' own, shared by the session; tests use distinct task ids."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()
