"""Serves the console's files with a strict Content-Security-Policy.

Only the files named in ``FILES`` are served, read once at start-up. The policy allows
scripts, styles and fetches from this origin only, no inline script or style, no framing, no
plugins, no form posts: data shown by the page is set as text, never as markup.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, bytes]:
    folder = resources.files("proxy.console") / "static"
    return {name: (folder / name).read_bytes() for name in FILES}


def build_console_app() -> web.Application:
    """The console as an aiohttp sub-application, to mount at ``/tripwire/ui``."""
    files = _load()

    def answer(name: str) -> web.Response:
        return web.Response(
            body=files[name],
            headers={"Content-Type": FILES[name], **SECURITY_HEADERS},
        )

    async def index(request: web.Request) -> web.Response:
        return answer("index.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound(text="no such file in the console", headers=SECURITY_HEADERS)
        return answer(name)

    async def to_index(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.path + "/")

    app = web.Application()
    app.router.add_get("", to_index)
    app.router.add_get("/", index)
    app.router.add_get("/{name}", asset)
    return app
