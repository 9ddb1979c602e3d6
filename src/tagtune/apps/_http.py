"""What the HTTP apps share (serve and annotate): errors as JSON, request bodies read within a
limit, the pages of static/, the loopback Host check, binding and running under uvicorn."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from importlib import resources
from urllib.parse import urlsplit

from tagtune.data.schemes import OUTSIDE, entity_type
from tagtune.errors import TagtuneError
from tagtune.version import __version__


def excerpt(value, limit: int = 40) -> str:
    """``repr(value)``, cut to about ``limit`` characters, saying how long it was."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    return repr(value)


class ApiError(Exception):
    """An answer other than 200: ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def entity_labels(tags: list[str]) -> list[str]:
    """Entity labels of a model's tags, in order of first appearance: B-person, I-person -> person."""
    out: list[str] = []
    for tag in tags:
        if tag == OUTSIDE:
            continue
        label = entity_type(tag)
        if label not in out:
            out.append(label)
    return out


async def read_body(request, limit: int) -> bytes:
    """The request body, or ApiError 413 as soon as it is known to pass ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, f"bad Content-Length {excerpt(length)}")
        if int(length) > limit:
            raise ApiError(413, f"the body has {int(length)} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body has more than {limit} bytes; the limit is {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _version() -> str:
    return __version__


def page_html(name: str = "index.html") -> str:
    """A page of ``static/`` (by default the one at ``/``): one HTML file with inline CSS and JavaScript."""
    return resources.files("tagtune.apps").joinpath("static", name).read_text(encoding="utf-8")


def error_handlers() -> dict:
    """Starlette exception handlers that answer ``{"error": ...}``: an HTTPException (404, 405)
    with its status, any other exception (a bug, which uvicorn logs) with 500."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    async def http_error(request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def internal_error(request, exc: Exception):  # uvicorn logs it and closes the connection
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500,
                            headers={"Connection": "close"})

    return {HTTPException: http_error, Exception: internal_error}


def host_of(value: str | None) -> tuple[str, int | None] | None:
    """The name and port of a ``Host`` header: ``"LocalHost:8080"`` -> ``("localhost", 8080)``,
    ``"[::1]"`` -> ``("::1", None)``; None when there is none or it is not ``host[:port]``."""
    if not value or any(c in value for c in "@/\\?# \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    if not parts.hostname:
        return None
    return parts.hostname, port


def loopback(name: str) -> bool:
    """Whether the host ``name`` (as :func:`host_of` gives it) is this machine seen from itself:
    localhost, a name under .localhost (browsers resolve those to loopback themselves), or a
    loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


class Refusing:
    """ASGI middleware: an HTTP request for which ``refusal(scope, headers)`` returns a reason gets
    403 ``{"error": reason}`` before the app sees it, its body unread."""

    def __init__(self, app, refusal):
        self.app = app
        self.refusal = refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from starlette.datastructures import Headers
            from starlette.responses import JSONResponse

            reason = self.refusal(scope, Headers(scope=scope))
            if reason is not None:
                await JSONResponse({"error": reason}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def loopback_hosts(scope, headers) -> str | None:
    """Why a request to a server listening on a loopback address is refused: its ``Host`` names
    another machine (a page whose name was rebound to 127.0.0.1). None if it is not; a request
    without ``Host`` (HTTP/1.0) is not from a browser and passes."""
    value = headers.get("host")
    if value is None:
        return None
    found = host_of(value)
    if found is not None and loopback(found[0]):
        return None
    return (f"Host {excerpt(value)} is not this machine: the server listens on a loopback address and answers "
            "requests for localhost, 127.0.0.1 or [::1] only (a web page that points its own name at this "
            "address is refused)")


async def client_gone(receive) -> None:
    """Returns once the client has closed its connection (ASGI ``http.disconnect``); call it only after the
    body has been read. Any other message means the server does not report disconnects: never returns."""
    message = await receive()
    if message["type"] != "http.disconnect":
        await asyncio.Event().wait()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a one-line TagtuneError (port in use, unknown host)."""
    if not 0 <= port <= 65535:
        raise TagtuneError(f"port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise TagtuneError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise TagtuneError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def require_server_packages() -> None:
    """A one-line TagtuneError unless uvicorn and starlette can be imported."""
    import importlib

    try:
        for name in ("uvicorn", "starlette"):
            importlib.import_module(name)
    except ImportError:
        raise TagtuneError("serving needs uvicorn and starlette: pip install 'tagtune[serve]'") from None


def url_host(address: str) -> str:
    """An address as a URL or ``Host`` header writes it: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def run_app(app, host: str = "127.0.0.1", port: int = 8080, access_log: bool = False, shown="the app",
            sock: socket.socket | None = None, path: str = "") -> None:
    """Serve ``app`` (from create_app) until interrupted, on ``sock`` (from :func:`bind`) or else
    on ``host:port``; prints ``serving SHOWN on URL`` (``path`` after the address) once listening."""
    import sys

    import uvicorn

    if sock is None:
        sock = bind(host, port)
    shown_host, shown_port = sock.getsockname()[:2]
    print(f"tagtune: serving {shown} on http://{url_host(shown_host)}:{shown_port}{path}", file=sys.stderr,
          flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="on")
    if access_log:  # uvicorn gives its access logger the server's level, which would hide every line
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    uvicorn.Server(config).run(sockets=[sock])
