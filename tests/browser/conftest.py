"""Fixtures of the browser tests: Debian's Chromium driven by playwright, and
a loopback HTTP server serving eventlib's endpoint and the test pages.

The browser is launched once per module (``browser``); every test gets a
context and a page of its own (``page``, ``page_log``) and a server of its
own (``site``).  The server is wsgiref's, threaded, on 127.0.0.1 and a free
port: handlers run in its request threads, in this process, when the test
configures ``always_eager``.  ``site.hold(path)`` makes it hold requests, as a
slow network would, to tell the requests a browser keeps alive when the page
goes away from those it cancels.
"""

from __future__ import annotations

import io
import os
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

from eventlib.http import make_application

from ..waiting import wait_for

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT = 10.0  # seconds, for anything the browser or the server should do
LAUNCH_TIMEOUT = 120.0  # seconds: Chromium starts slowly on a loaded machine

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
#: The environ key under which the handler passes the request's socket to
#: ``Site`` (which removes it before a mounted application sees the environ).
CONNECTION = "eventlib.tests.connection"


def browser_required() -> bool:
    """CI sets EVENTLIB_REQUIRE_BROWSER=1: a missing browser fails there."""
    return os.environ.get("EVENTLIB_REQUIRE_BROWSER") == "1"


# ----------------------------------------------------------------- server ---


@dataclass(frozen=True)
class Received:
    """A request a mounted application answered."""

    method: str
    path: str
    query: str
    #: Header names in lower case.
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    status: int
    response: bytes


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    timeout = TIMEOUT  # an idle connection the browser opened ends, eventually

    def get_environ(self) -> dict[str, Any]:
        environ = super().get_environ()
        environ[CONNECTION] = self.connection
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        pass


def hung_up(connection: socket.socket, within: float) -> bool:
    """Whether the client closes ``connection`` within ``within`` seconds (it
    returns as soon as it does).  Called once a request's body is read: a
    browser sends nothing more on the connection until it has the answer, so
    anything readable is the end of the stream."""
    readable, _, _ = select.select([connection], [], [], within)
    if not readable:
        return False
    try:
        return connection.recv(1, socket.MSG_PEEK) == b""
    except OSError:  # reset
        return True


@dataclass
class Hold:
    """Requests to ``path`` that the server holds, body read, until the test
    calls ``release()`` (or ``TIMEOUT`` passes), as a slow network would.

    Over loopback a request is at the server before the page that sent it can
    go away, so a request the browser cancels with its page still arrives.
    A held request is answered only if its client still waits for the answer
    when released (``grace`` seconds after, at most): one whose client hung
    up is dropped, never reaching the mounted application, as a request that
    had not got through the network by then would be.

    ``arrived`` counts the requests held; ``outcomes`` lists, in order, what
    became of each one: ``"answered"`` or ``"dropped"``.
    """

    path: str
    grace: float = 0.5
    arrived: int = 0
    outcomes: list[str] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def release(self) -> None:
        self._released.set()

    def keep(self, connection: socket.socket) -> bool:
        """Hold a request (in its server thread); whether to answer it."""
        with self._lock:
            self.arrived += 1
        self._released.wait(TIMEOUT)
        kept = not hung_up(connection, self.grace)
        with self._lock:
            self.outcomes.append("answered" if kept else "dropped")
        return kept


@dataclass
class Site:
    """The test's web site on http://127.0.0.1:<port>.

    ``pages`` maps paths to the HTML served there; a request for any other
    path goes to the application mounted at the longest matching prefix of
    ``mounts`` (by default ``/event``: ``make_application()``), which gets
    the environ unchanged.  ``received`` lists what the mounted applications
    answered; ``errors`` the exceptions they raised; ``holds`` the paths whose
    requests the server holds (``hold()``).
    """

    pages: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, WSGIApp] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    holds: dict[str, Hold] = field(default_factory=dict)
    port: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __repr__(self) -> str:
        return f"<Site {self.url()} pages={sorted(self.pages)} mounts={sorted(self.mounts)}>"

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def page(self, html: str, path: str = "/") -> str:
        """Serve ``html`` at ``path`` and return its URL."""
        self.pages[path] = html
        return self.url(path)

    def hold(self, path: str, grace: float = 0.5) -> Hold:
        """Hold the requests to ``path`` (a mounted application's) until the
        returned ``Hold`` is released: see ``Hold``."""
        self.holds[path] = Hold(path, grace=grace)
        return self.holds[path]

    def requests_to(self, path: str) -> list[Received]:
        return [request for request in list(self.received) if request.path == path]

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            self._active += 1
        connection = environ.pop(CONNECTION)
        try:
            return self._route(environ, start_response, connection)
        except BaseException as error:
            self.errors.append(error)
            raise
        finally:
            with self._lock:
                self._active -= 1

    def _route(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        connection: socket.socket,
    ) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in self.pages:
            body = self.pages[path].encode("utf-8")
            start_response(
                "200 OK",
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]
        prefixes = [
            prefix
            for prefix in self.mounts
            if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/")
        ]
        if not prefixes:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no page here"]
        return self._record(
            self.mounts[max(prefixes, key=len)], environ, start_response, connection
        )

    def _record(
        self,
        app: WSGIApp,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        connection: socket.socket,
    ) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        hold = self.holds.get(environ.get("PATH_INFO", ""))
        if hold is not None and not hold.keep(connection):
            start_response("499 Client Closed Request", [("Content-Type", "text/plain")])
            return [b""]
        statuses: list[int] = []

        def recording_start_response(status: str, headers: list, exc_info: Any = None) -> Any:
            statuses.append(int(status.split()[0]))
            return start_response(status, headers, exc_info)

        response = b"".join(app(environ, recording_start_response))
        self.received.append(
            Received(
                method=environ["REQUEST_METHOD"],
                path=environ.get("PATH_INFO", ""),
                query=environ.get("QUERY_STRING", ""),
                headers={
                    key[5:].replace("_", "-").lower(): value
                    for key, value in environ.items()
                    if key.startswith("HTTP_")
                }
                | {"content-type": environ.get("CONTENT_TYPE", "")},
                body=body,
                status=statuses[-1],
                response=response,
            )
        )
        return [response]

    def idle(self) -> bool:
        with self._lock:
            return self._active == 0


@pytest.fixture
def site(isolation) -> Iterator[Site]:
    """A server of the test's own (after ``isolation``, so that it stops
    before eventlib's state is restored)."""
    built = Site(mounts={"/event": make_application()})
    server = make_server("127.0.0.1", 0, built, server_class=_Server, handler_class=_QuietHandler)
    built.port = server.server_address[1]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        yield built
    finally:
        for hold in list(built.holds.values()):
            hold.release()
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        wait_for(built.idle, what="the server's requests to end")
    assert not built.errors, f"the server raised {built.errors!r}"


# ---------------------------------------------------------------- browser ---


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, once per module."""
    if not CHROMIUM.exists():  # the module skips unless EVENTLIB_REQUIRE_BROWSER=1
        pytest.fail(
            f"{CHROMIUM} is missing and EVENTLIB_REQUIRE_BROWSER=1 forbids skipping: "
            "apt-get install chromium"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if browser_required():
            pytest.fail("playwright is not installed and EVENTLIB_REQUIRE_BROWSER=1")
        pytest.skip("playwright is not installed: pip install 'eventlib[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, timeout=LAUNCH_TIMEOUT * 1000
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class PageLog:
    """What a page reported: uncaught exceptions and unhandled rejections
    (``errors``), console messages (``console``, as ``(type, text)``)."""

    errors: list[str] = field(default_factory=list)
    console: list[tuple[str, str]] = field(default_factory=list)

    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


@pytest.fixture
def page(browser, site, page_log) -> Iterator[Any]:
    """A page in a context of its own, closed before the server stops; no
    test may leave an uncaught exception in it."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    opened = context.new_page()
    opened.on("pageerror", lambda error: page_log.errors.append(str(error)))
    opened.on("console", lambda message: page_log.console.append((message.type, message.text)))
    try:
        yield opened
    finally:
        context.close()
    assert not page_log.errors, f"the page raised {page_log.errors!r}"
