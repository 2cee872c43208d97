"""The admin API while the shared state cannot be reached: 503 ``state_unavailable``, which
the CLI and the console present as "retry shortly", never a 500 with an internal error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.admin.conftest import SECRET, admin_token, error_of, unique
from tests.redis_server import RedisServer


def test_the_admin_api_answers_503_while_redis_is_down(
    make_proxy: Any, admins: Any, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path / "redis")
    try:
        state = {"backend": "redis", "redis_url": server.url, "key_prefix": unique("tw")}
        proxy = make_proxy(auth={"hs256_secret": SECRET}, state=state)
        admin = admins(proxy, admin_token())
        assert admin.get("/tasks").status_code == 200
        server.stop()
        for response in (admin.get("/tasks"), admin.task("job-1")):
            assert response.status_code == 503, response.text
            assert error_of(response)["code"] == "state_unavailable"
    finally:
        server.stop()
