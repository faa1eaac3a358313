"""Serve a WSGI application on a real loopback socket, in a background thread.

For tests that need real HTTP (the endpoint's own tests, browser tests)::

    from tests.http_server import serve

    with serve(application) as server:
        reply = server.request("GET", "/event/eventlib.js")
        assert reply.status == 200
        page_url = server.url + "/page.html"   # what a browser would load

:func:`serve` binds ``127.0.0.1`` on a free port (port 0) and starts
listening before it returns, so the server accepts connections at once: no
waiting, no sleeping.  Each request runs in its own thread
(:class:`ThreadingWSGIServer`); leaving the ``with`` block stops the server,
waits for the requests still running and closes the socket.

The server is ``wsgiref``'s, quiet: it logs no request lines.  Whatever it
would have written to stderr about an exception escaping the application
(its plain-text "500 A server error occurred") is kept in
:attr:`LiveServer.errors`, so a test can assert that the application never
let one escape.

:func:`serve_gunicorn` serves an application with gunicorn instead, in a
process of its own, for what wsgiref cannot do (a chunked request body,
which it cannot read) or to test the server a site deploys with::

    with serve_gunicorn("endpoint:application", cwd=app_dir) as server:
        reply = server.request("POST", "/event/log", iter([b"a=", b"1"]))
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

#: Seconds a client may take to send its request, and a test to wait for an
#: answer, before the connection is dropped: a bound, not a delay.
TIMEOUT = 10.0
#: Seconds between the serving loop's checks for a stop request.
POLL_INTERVAL = 0.02
#: Seconds a closing connection waits for the client to close its side.
LINGER = 2.0


class _ErrorLog:
    """A stderr for wsgiref's handlers: keeps what they write."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.entries.append(text)
        return len(text)

    def flush(self) -> None:
        pass


class QuietRequestHandler(WSGIRequestHandler):
    """wsgiref's handler, without the request log line, writing what it
    reports about application errors to the server's :class:`_ErrorLog`."""

    timeout = TIMEOUT
    server: ThreadingWSGIServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def get_stderr(self) -> Any:
        return self.server.error_log


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request.  ``server_close()`` waits
    for the request threads."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.error_log = _ErrorLog()
        super().__init__(address, QuietRequestHandler)

    def shutdown_request(self, request: Any) -> None:
        """Close the connection as HTTP servers do ("lingering close"): end
        our side, then read what the client still sends (a body the
        application did not read, say for a 413) until it closes, so that
        the kernel does not reset the connection before the client has read
        the response."""
        try:
            request.shutdown(socket.SHUT_WR)
            request.settimeout(LINGER)
            while request.recv(65536):
                pass
        except OSError:
            pass
        self.close_request(request)


@dataclass(frozen=True)
class Reply:
    """A response, read in full."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Loopback:
    """A server listening on a loopback address: what a client needs."""

    #: ``127.0.0.1``.
    host: str
    port: int

    @property
    def netloc(self) -> str:
        """``host:port``: what a client sends as ``Host``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port``, without a trailing slash."""
        return f"http://{self.netloc}"

    @property
    def origin(self) -> str:
        """The origin of this server's pages, as a browser sends it in
        ``Origin``: the same as :attr:`url`."""
        return self.url

    def connection(self) -> http.client.HTTPConnection:
        """A new connection to the server; close it when done."""
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def request(
        self,
        method: str,
        target: str,
        body: bytes | str | Iterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request on a new connection and read the whole reply.

        ``http.client`` adds ``Host`` (this server's ``host:port``) and, for
        a body, ``Content-Length``; ``headers`` may override either.  A body
        that is an iterable of bytes (not bytes or str) is sent chunked
        (``Transfer-Encoding: chunked``), each non-empty item a chunk.
        """
        connection = self.connection()
        try:
            connection.request(method, target, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return Reply(response.status, response.reason, response.headers, response.read())
        finally:
            connection.close()

    def request_bytes(self, raw: bytes, method: str = "POST") -> Reply:
        """Send ``raw``, a whole request as bytes (for what ``http.client``
        refuses to write, such as raw non-ASCII bytes in the target), and
        read the reply; ``method`` tells the parser whether a body follows."""
        with socket.create_connection((self.host, self.port), timeout=TIMEOUT) as sock:
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock, method=method)
            try:
                response.begin()
                return Reply(response.status, response.reason, response.headers, response.read())
            finally:
                response.close()


@dataclass
class LiveServer(Loopback):
    """A running server; see :func:`serve`."""

    httpd: ThreadingWSGIServer
    thread: threading.Thread

    @property
    def errors(self) -> list[str]:
        """What wsgiref wrote about exceptions that escaped the application."""
        return list(self.httpd.error_log.entries)


@contextmanager
def serve(application: Any, host: str = "127.0.0.1") -> Iterator[LiveServer]:
    """Serve the WSGI ``application`` on ``host`` and a free port for the
    duration of the ``with`` block."""
    httpd = ThreadingWSGIServer((host, 0))
    httpd.set_app(application)
    thread = threading.Thread(
        target=httpd.serve_forever,
        kwargs={"poll_interval": POLL_INTERVAL},
        name=f"wsgi-server-{httpd.server_port}",
        daemon=True,
    )
    thread.start()
    try:
        yield LiveServer(host, httpd.server_port, httpd, thread)
    finally:
        httpd.shutdown()
        thread.join(TIMEOUT)
        httpd.server_close()


@dataclass
class ServerProcess(Loopback):
    """A server running in a process of its own; see :func:`serve_gunicorn`."""

    process: subprocess.Popen[bytes]
    #: Where the server writes its log.
    log: Path

    def output(self) -> str:
        """What the server has written to its log so far."""
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the server and wait for it; kill it when it takes
        longer than ``TIMEOUT`` seconds."""
        self.process.terminate()
        try:
            self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def serve_gunicorn(
    application: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> Iterator[ServerProcess]:
    """Serve ``application`` (gunicorn's ``module:name``, imported from
    ``cwd``) with gunicorn, one synchronous worker, in a process of its own,
    on ``host`` and a free port, for the duration of the ``with`` block;
    ``env`` is added to the environment.

    The socket is bound and listening before gunicorn starts (gunicorn
    takes it as ``fd://N``), so a request sent at once waits in its backlog
    until the worker is up: no waiting, no sleeping.  Leaving the block
    stops gunicorn and waits for it; a gunicorn that had stopped on its own
    (say, the application failed to import) fails the test with its log."""
    listener = socket.create_server((host, 0))
    listener.set_inheritable(True)
    log = cwd / "gunicorn.log"
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        f"--bind=fd://{listener.fileno()}",
        "--workers=1",
        "--log-level=warning",
        application,
    ]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": str(cwd), **(env or {})},
            pass_fds=(listener.fileno(),),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    port = listener.getsockname()[1]
    listener.close()  # gunicorn has its own copy
    server = ServerProcess(host, port, process, log)
    try:
        yield server
    finally:
        stopped = process.poll()
        server.stop()
    if stopped is not None:
        raise AssertionError(f"gunicorn stopped with {stopped}:\n{server.output()}")
