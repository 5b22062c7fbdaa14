"""The viewer's HTTP server: a small page of our own on the standard library's
``ThreadingHTTPServer`` (no dependency, no websocket, works offline and in a headless
browser; every view is a URL).

Routes (GET only):

* ``/`` — the page (``static/index.html``); its state lives in the query string
  (``/?identity=a&expression=smile&yaw=30&pitch=0``), so a link reproduces a view.
* ``/viewer.js``, ``/splat.js``, ``/viewer.css`` — the page's scripts (controls; the
  WebGL2 splat preview) and style: any ``.html``/``.js``/``.css`` file of ``static/``.
* ``/api/options`` — JSON: subjects, avatars, expression labels, sizes, the default view.
* ``/gaussians.bin?identity=&expression=&…`` — the view's Gaussians for the page's
  client-side splat preview (float32 rows, see ``Scene.preview_gaussians``).
* ``/render.png?identity=&expression=&identity_b=&identity_mix=&expression_b=&expression_mix=
  &yaw=&pitch=&zoom=&size=`` — the full model output as a PNG. Unknown names or bad
  numbers: HTTP 400 with ``{"error": "..."}`` naming the field and the valid values.

Hardening (the server is meant for this machine, ``127.0.0.1``): a request whose ``Host``
is not this server (``127.0.0.1``/``localhost``/``[::1]`` or the bound address, with the
bound port) is refused with 403, so a web page cannot read renders through DNS rebinding;
a GET/HEAD carrying a body (``Content-Length`` > 0 or ``Transfer-Encoding``) is refused
with 400 and the connection closed (the body is never parsed as a second request); idle
or half-open connections time out (``idle_timeout``), at most ``max_connections`` are
served at once (more get 503), and a client going away mid-request is not an error.

Renders run one at a time (one model, one thread pool: parallel renders only slow each
other down). A request carrying ``stream=ID`` (the page sends one) is dropped with
HTTP 204 when a newer request of the same stream arrived while it waited, so dragging
the camera renders the latest position instead of queueing every intermediate one.
Any exception while serving a request becomes a 500 for that request; the server keeps
running.
"""

from __future__ import annotations

import io
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from gphm.io.images import to_uint8
from gphm.viewer.scene import BadRequest, Scene

__all__ = ["RenderGate", "ViewerServer"]

STATIC_DIR = Path(str(resources.files("gphm.viewer").joinpath("static")))
"""The page's files (package data)."""
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# One path segment, no dot first: nothing outside the static folder can be named.
STATIC_PATH = re.compile(r"^/([A-Za-z0-9_-][A-Za-z0-9_.-]*\.(?:html|js|css))$")
MAX_STREAMS = 256
"""Streams remembered for latest-wins (oldest forgotten first)."""
MAX_STREAM_ID = 64
IDLE_TIMEOUT = 30.0
"""Seconds a connection may stay silent (idle keep-alive or half-open) before it closes."""
MAX_CONNECTIONS = 64
"""Connections served at once (one thread each); more are answered 503 and closed."""
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Content-Length: 45\r\nConnection: close\r\n\r\n"
         b'{"error": "too many connections; try again"}\n')  # fmt: skip


class RenderGate:
    """One render at a time; per stream, only the newest waiting request goes through.

    ``ticket = gate.arrive(stream)`` on arrival, then ``with gate.turn(stream, ticket) as
    go:`` renders only if ``go`` (no newer request of that stream arrived meanwhile).
    ``stream=None`` (scripts, tests) is never dropped.
    """

    def __init__(self) -> None:
        self._render = threading.Lock()
        self._meta = threading.Lock()
        self._latest: dict[str, int] = {}
        self._count = 0
        self.dropped = 0
        self.rendered = 0

    def arrive(self, stream: str | None) -> int:
        with self._meta:
            self._count += 1
            if stream is not None:
                self._latest.pop(stream, None)  # re-insert: most recent streams last
                self._latest[stream] = self._count
                while len(self._latest) > MAX_STREAMS:
                    self._latest.pop(next(iter(self._latest)))
            return self._count

    def exclusive(self):
        """The render lock itself, for other work that must not run beside a render."""
        return self._render

    def _current(self, stream: str | None, ticket: int) -> bool:
        with self._meta:
            return stream is None or self._latest.get(stream, ticket) <= ticket

    def run(self, stream: str | None, ticket: int, fn):
        """``fn()`` under the render lock, or ``None`` when superseded (before or after
        waiting for the lock)."""
        if not self._current(stream, ticket):
            self.dropped += 1
            return None
        with self._render:
            if not self._current(stream, ticket):
                self.dropped += 1
                return None
            self.rendered += 1
            return fn()


def encode_png(image) -> bytes:  # image: Tensor [H, W, 3] in [0, 1]
    buf = io.BytesIO()
    # compress_level 1: a 256² PNG in ~2 ms instead of ~15 ms; the size barely matters
    # on localhost.
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.timeout = self.server.idle_timeout  # socket timeout of this connection
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _refusal(self) -> tuple[int, str] | None:
        """(status, message) when this request must not be served (module docstring)."""
        length = self.headers.get("Content-Length", "0").strip()
        if self.headers.get("Transfer-Encoding") is not None or length not in ("", "0"):
            return 400, f"a {self.command} request carries no body; not serving it"
        host = self.headers.get("Host")
        if host is None:
            return 400, "missing Host header"
        if not self.server.host_allowed(host):
            port = self.server.port
            return 403, (f"Host {host[:80]!r} is not this viewer (expected 127.0.0.1:{port} "
                         f"or localhost:{port})")  # fmt: skip
        return None

    def _send(self, status: int, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        if status >= 500 or self.server.verbose:
            print(f"[viewer] {status} {self.path}: {message}", file=sys.stderr, flush=True)
        self._json(status, {"error": message})

    def do_GET(self) -> None:
        try:
            refusal = self._refusal()
            if refusal is not None:
                self.close_connection = True  # whatever follows is never read as a request
                self._error(*refusal)
                return
            self._route()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away (e.g. a superseded image); nothing to answer
        except Exception as err:  # a bug must cost one request, never the server
            self._error(500, f"{type(err).__name__}: {err}")

    do_HEAD = do_GET

    def _route(self) -> None:
        url = urlsplit(self.path)
        static = STATIC_PATH.match("/index.html" if url.path == "/" else url.path)
        if static and (self.server.static_dir / static.group(1)).is_file():
            name = static.group(1)
            body = (self.server.static_dir / name).read_bytes()
            self._send(200, body, CONTENT_TYPES[Path(name).suffix])
        elif url.path == "/api/options":
            self._json(200, self.server.scene.options())
        elif url.path == "/render.png":
            self._render(url.query)
        elif url.path == "/gaussians.bin":
            self._gaussians(url.query)
        elif url.path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._error(404, f"no such page {url.path!r}; try / or /render.png")

    def _query(self, raw_query: str):
        """(request, stream) of a query string, or None after answering 400."""
        try:
            parsed = parse_qs(raw_query, keep_blank_values=True, strict_parsing=False,
                              max_num_fields=32)  # fmt: skip
        except ValueError as err:
            return self._error(400, f"bad query string: {err}")
        repeated = sorted(k for k, v in parsed.items() if len(v) > 1)
        if repeated:
            return self._error(400, f"parameter {repeated[0]!r} given more than once")
        query = {k: v[0] for k, v in parsed.items()}
        stream = query.pop("stream", None)
        if stream is not None and len(stream) > MAX_STREAM_ID:
            return self._error(400, f"stream: at most {MAX_STREAM_ID} characters")
        try:
            return self.server.scene.parse(query), stream
        except BadRequest as err:
            return self._error(400, str(err))

    def _gaussians(self, raw_query: str) -> None:
        """The view's Gaussians for the client-side preview: little-endian float32 rows
        of 14 (``Scene.preview_gaussians``); the camera fields of the query are ignored."""
        parsed = self._query(raw_query)
        if parsed is None:
            return
        req, _ = parsed
        try:
            with self.server.gate.exclusive():  # the networks: not beside a render
                rows = self.server.scene.preview_gaussians(req)
        except ValueError as err:
            return self._error(400, str(err))
        body = rows.numpy().astype("<f4", copy=False).tobytes()
        self._send(200, body, "application/octet-stream", X_Gaussians=str(rows.shape[0]),
                   X_Gaussian_Floats=str(rows.shape[1]))  # fmt: skip

    def _render(self, raw_query: str) -> None:
        parsed = self._query(raw_query)
        if parsed is None:
            return
        req, stream = parsed
        gate = self.server.gate
        ticket = gate.arrive(stream)
        t0 = time.perf_counter()
        try:
            image = gate.run(stream, ticket, lambda: self.server.scene.render(req))
        except ValueError as err:  # e.g. an expression no subject was trained with
            return self._error(400, str(err))
        if image is None:
            self._send(HTTPStatus.NO_CONTENT, b"", "image/png", X_Superseded="1")
            return
        ms = 1000 * (time.perf_counter() - t0)
        self._send(200, encode_png(image), "image/png", X_Render_Ms=f"{ms:.1f}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A new server may take over a port whose previous server just exited (TIME_WAIT).
    allow_reuse_address = True

    def __init__(self, address, scene: Scene, verbose: bool, static_dir: Path,
                 idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):  # fmt: skip
        self.scene = scene
        self.verbose = verbose
        self.static_dir = static_dir
        self.gate = RenderGate()
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def host_allowed(self, host: str) -> bool:
        """Whether a ``Host`` header names this server: a loopback name or the bound
        address (any IP literal when bound to all interfaces: an IP cannot be rebound),
        with the bound port (or none, on port 80)."""
        try:
            parts = urlsplit("//" + host)
            name, port = parts.hostname, parts.port
        except ValueError:
            return False
        if name is None or (port or 80) != self.port:
            return False
        bound = str(self.server_address[0])
        if name in LOOPBACK_NAMES or name == bound:
            return True
        if bound in ("0.0.0.0", "::", ""):
            try:
                ipaddress.ip_address(name)
            except ValueError:
                return False
            return True
        return False

    def process_request(self, request, client_address) -> None:
        """A thread per connection, at most ``max_connections`` at once (503 beyond)."""
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A client that went away or stayed silent is no error; anything else is."""
        if isinstance(sys.exc_info()[1], (ConnectionError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class ViewerServer:
    """Serve ``scene`` on ``host:port`` (port 0: any free port; see :attr:`url`).

    ``serve_forever()`` blocks (the CLI); ``start()`` serves from a daemon thread and
    ``close()`` stops it (tests, notebooks); also a context manager doing both.
    ``static_dir``: serve the page's files from another folder (a customised page).
    ``idle_timeout`` (seconds) and ``max_connections``: see the module docstring.
    """

    def __init__(self, scene: Scene, host: str = "127.0.0.1", port: int = 8080,
                 verbose: bool = False, static_dir: str | Path | None = None,
                 idle_timeout: float = IDLE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):  # fmt: skip
        static = STATIC_DIR if static_dir is None else Path(static_dir)
        self.httpd = _Server((host, port), scene, verbose, static, idle_timeout, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{self.port}/"

    @property
    def gate(self) -> RenderGate:
        return self.httpd.gate

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> ViewerServer:
        self._thread = threading.Thread(target=self.serve_forever, name="gphm-viewer",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
