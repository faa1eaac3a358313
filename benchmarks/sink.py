"""The local HTTP sink that Segment's analytics-python posts its batches to.

    .venv/bin/python -m benchmarks.sink    # prints the port it listens on

A tiny server on 127.0.0.1, in a process of its own (so that its work does
not share the GIL with the calls being timed).  It answers 200 to every
``POST /v1/batch`` and counts the events of each batch; ``GET /count``
returns ``{"events": n, "batches": n, "bad": n}`` (``bad``: posts whose body
was not a JSON object with a ``batch`` list).  It stops when its standard
input closes.  :class:`Sink` runs it from the benchmarks.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .common import ROOT, BenchError


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = self.batches = self.bad = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Segment's requests session expects
    counts: _Counts

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            batch = json.loads(body)["batch"]
            if not isinstance(batch, list):
                raise TypeError("batch is not a list")
        except (ValueError, KeyError, TypeError):
            with self.counts.lock:
                self.counts.bad += 1
        else:
            with self.counts.lock:
                self.counts.events += len(batch)
                self.counts.batches += 1
        self._answer({"success": True})

    def do_GET(self) -> None:
        with self.counts.lock:
            counts = vars(self.counts).copy()
        counts.pop("lock")
        self._answer(counts)

    def _answer(self, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would cost more than the counting


def main() -> None:
    _Handler.counts = _Counts()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes it
    server.shutdown()


class Sink:
    """The sink in a subprocess: ``url`` is what analytics-python's ``host``
    option gets, :meth:`counts` what it received so far."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.sink"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.isdigit():
            self.close()
            raise BenchError(f"the HTTP sink did not start (it printed {line!r})")
        self.url = f"http://127.0.0.1:{line}"

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/count", timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
