"""The demo page at /ui: the three static files beside this module, served as they are.

Plain HTML/CSS/JS, no build step, nothing from outside the service (no CDN,
no web fonts); the Content-Security-Policy lets the page load and fetch only
from its own origin. The page calls the API with relative URLs (`../models`),
so it also works behind a proxy that mounts the service under a prefix.

`/ui` redirects to `/ui/` (relative links resolve from there). The page is
open even when GANFORGE_AUTH_TOKEN is set: it holds no data, and its token
field sends `Authorization: Bearer` with the API calls it makes (see
middleware.py, which also leaves GET /ui out of its Content-Type checks).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import error_response

UI_DIR = Path(__file__).resolve().parent
UI_PATH = "/ui"
FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def is_ui_path(path: str) -> bool:
    return path == UI_PATH or path.startswith(UI_PATH + "/")


async def redirect_to_page(request: Request) -> Response:
    # Relative Location: still right when a proxy adds a path prefix.
    return RedirectResponse("ui/", status_code=307)


async def ui_file(request: Request) -> Response:
    name = request.path_params.get("name", "index.html")
    media_type = FILES.get(name)
    if media_type is None:
        return error_response(404, f"no such file under {UI_PATH}/")
    return FileResponse(UI_DIR / name, media_type=media_type, headers=HEADERS)


routes = [
    Route(UI_PATH, redirect_to_page, methods=["GET"]),
    Route(UI_PATH + "/", ui_file, methods=["GET"]),
    Route(UI_PATH + "/{name}", ui_file, methods=["GET"]),
]
