"""The labeling page's local server (the standard library's): bound to 127.0.0.1 by default, a
random token in the URL required on every request, the Host header checked (no DNS rebinding),
request bodies of at most MAX_BODY bytes, images served by their row in the pool file (never by
a path from the request), and nothing written but what the session writes (the labels table and
the head)."""

import hmac
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from urllib.parse import parse_qs, urlsplit

from diffclass_cli.console import log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.labeling.session import LabelSession

MAX_BODY = 16 * 1024
STATIC = {"/": ("page.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8")}
IMAGE = re.compile(r"/image/(\d{1,9})")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the page's URL
    "Cache-Control": "no-store",
}


class TooLarge(DiffclassError):
    """A request body over MAX_BODY: refused unread."""


class LabelServer(ThreadingHTTPServer):
    """Serves one LabelSession; `url` (with its token) is what the user opens."""

    daemon_threads = True

    def __init__(self, session: LabelSession, host: str = "127.0.0.1", port: int = 0):
        super().__init__((host, port), _Handler)
        self.session, self.token = session, secrets.token_urlsafe(24)
        self.hosts = {f"{name}:{self.server_port}" for name in (host, "127.0.0.1", "localhost")}
        self.url = f"http://{host}:{self.server_port}/?token={self.token}"

    def run(self) -> None:
        """Serve until Ctrl-C; every answer is on disk already when it stops."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            log.info(f"stopped; the labels are in {self.session.labels_path}")
        finally:
            self.server_close()

    def start_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, daemon=True)
        thread.start()
        return thread


class _Handler(BaseHTTPRequestHandler):
    server: LabelServer

    def log_message(self, format, *args):  # noqa: A002 (the standard library's name)
        log.debug("label page: " + format % args)

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    def _answer(self, route) -> None:
        """Check the request, route it, send the reply: a user mistake is a 400 with its message."""
        if self.headers.get("Host") not in self.server.hosts:
            return self._send(421, {"error": "unexpected Host header"})
        given = self.headers.get("X-Token") or parse_qs(urlsplit(self.path).query).get("token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            return self._send(403, {"error": "a token is needed: open the URL diffclass label printed"})
        try:
            with self.server.session.lock:
                status, body = route(urlsplit(self.path).path)
        except DiffclassError as err:
            status, body = 413 if isinstance(err, TooLarge) else 400, {"error": str(err)}
        self._send(status, body)

    def _get(self, path: str):
        session = self.server.session
        if path in STATIC:
            name, kind = STATIC[path]
            data = (files("diffclass_cli.labeling") / name).read_bytes()
            return 200, (data.replace(b'src="app.js"', f'src="app.js?token={self.server.token}"'.encode()), kind)
        if path == "/api/state":
            return 200, session.state()
        if path == "/api/check":
            return 200, {"labels": session.check()}
        if match := IMAGE.fullmatch(path):
            return 200, (session.thumbnail(int(match.group(1))), "image/png")
        return 404, {"error": "not found"}

    def _post(self, path: str):
        session, body = self.server.session, self._body()
        actions = {
            "/api/label": lambda: session.label(body.get("row"), body.get("label", "")),
            "/api/skip": lambda: session.skip(body.get("row")),
            "/api/undo": session.undo,
            "/api/fit": session.fit,
            "/api/more": lambda: session.more(body.get("n", session.budget)),
        }
        if path not in actions:
            return 404, {"error": "not found"}
        actions[path]()
        return 200, session.state()

    def _body(self) -> dict:
        length = self.headers.get("Content-Length", "0")
        if not length.isdecimal() or int(length) > MAX_BODY:
            raise TooLarge(f"a request body has at most {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise DiffclassError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise DiffclassError("the request body is not a JSON object")
        return body

    def _send(self, status: int, body, kind: str = "application/json") -> None:
        if isinstance(body, tuple):
            body, kind = body
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        for name, value in {**HEADERS, "Content-Type": kind, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
