"""A stand-in for Grafana's HTTP API, since no Grafana server can run in the test environment.

It answers only what ``grafana-client`` calls for a push (list and create folders, import a
dashboard) and behaves as Grafana does where a push depends on it: a bearer token or 401,
folder uids Grafana picks itself, a dashboard found by uid is replaced only with
``overwrite``, an ``id`` that names no dashboard is an error, and every answer carries the
dashboard's URL under Grafana's sub-path. It records every request it receives.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler


@dataclass
class Received:
    method: str
    path: str
    body: Any


@dataclass
class FakeGrafana:
    token: str = "glsa_test_token"
    prefix: str = ""  # Grafana served under a sub-path, e.g. /grafana
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)

    def requests(self, method: str, path: str) -> list[Received]:
        return [r for r in self.received if r.method == method and r.path == self.prefix + path]

    def app(self) -> web.Application:
        @web.middleware
        async def record_and_authorize(
            request: web.Request, handler: Handler
        ) -> web.StreamResponse:
            body = await request.json() if request.can_read_body else None
            self.received.append(Received(request.method, request.path, body))
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return web.json_response({"message": "invalid API key"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[record_and_authorize])
        api = self.prefix + "/api"
        app.router.add_get(api + "/folders", self._list_folders)
        app.router.add_post(api + "/folders", self._create_folder)
        app.router.add_post(api + "/dashboards/db", self._import_dashboard)
        return app

    async def _list_folders(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"id": f["id"], "uid": f["uid"], "title": f["title"]} for f in self.folders.values()]
        )

    async def _create_folder(self, request: web.Request) -> web.Response:
        body = await request.json()
        title = body.get("title")
        if not title:
            return web.json_response({"message": "folder title cannot be empty"}, status=400)
        if any(f["title"] == title for f in self.folders.values()):
            return web.json_response(
                {"message": "a folder with the same name already exists"}, status=409
            )
        number = next(self._ids)
        uid = body.get("uid") or f"f{number:08x}"
        folder = {
            "id": number,
            "uid": uid,
            "title": title,
            "url": f"{self.prefix}/dashboards/f/{uid}/",
        }
        self.folders[uid] = folder
        return web.json_response(folder)

    async def _import_dashboard(self, request: web.Request) -> web.Response:
        body = await request.json()
        board = body.get("dashboard") or {}
        uid, title = board.get("uid"), board.get("title")
        if not uid or not title:
            return web.json_response({"message": "Dashboard title cannot be empty"}, status=400)
        folder_uid = body.get("folderUid") or ""
        if folder_uid and folder_uid not in self.folders:
            return web.json_response({"message": "folder not found"}, status=400)
        stored = self.dashboards.get(uid)
        if board.get("id") is not None and (stored is None or stored["id"] != board["id"]):
            return web.json_response({"message": "Dashboard not found"}, status=404)
        if stored is not None and not body.get("overwrite"):
            return web.json_response(
                {
                    "message": "A dashboard with the same uid already exists",
                    "status": "name-exists",
                },
                status=412,
            )
        number = stored["id"] if stored else next(self._ids)
        version = stored["version"] + 1 if stored else 1
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        self.dashboards[uid] = {
            "id": number,
            "version": version,
            "folderUid": folder_uid,
            "dashboard": board,
        }
        return web.json_response(
            {
                "id": number,
                "uid": uid,
                "url": f"{self.prefix}/d/{uid}/{slug}",
                "status": "success",
                "version": version,
                "slug": slug,
                "folderUid": folder_uid,
            }
        )


class ServerThread:
    """An aiohttp application on a free port of 127.0.0.1, on its own loop and thread."""

    def __init__(self, app: web.Application) -> None:
        self.port = 0
        self._app = app
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("server did not start")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(self._app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
