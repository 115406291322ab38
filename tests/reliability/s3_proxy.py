"""A TCP proxy on loopback in front of the S3 server that a test can slow down, make answer 503, or take down.

Modes (``proxy.mode``): ``pass`` forwards; ``slow`` forwards each chunk after ``delay`` seconds; ``error`` answers
every request with ``503 SlowDown`` without forwarding; ``down`` accepts and drops every connection, like a server
that went away. Switching away from ``pass``/``slow`` also cuts the connections already open, so a client's
keep-alive connection meets the fault on its next request. ``requests`` counts the requests that reached the proxy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlparse

_METHODS = (b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE ")
_BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
_SLOW_DOWN = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


class FaultyProxy:
    def __init__(self, upstream: str):
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.mode = "pass"
        self.delay = 0.2
        self.requests = 0
        self.faulted = 0  # requests or connections that met a fault
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closing = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str, delay: float | None = None) -> None:
        assert mode in ("pass", "slow", "error", "down"), mode
        if delay is not None:
            self.delay = delay
        self.mode = mode
        if mode in ("error", "down"):
            with self._lock:
                for s in list(self._open):
                    _close(s)
                self._open.clear()

    def close(self) -> None:
        self._closing = True
        _close(self._server)
        self.set("down")

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        mode = self.mode
        if mode == "down":
            self.faulted += 1
            _close(client)
            return
        if mode == "error":
            self._answer_503(client)
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._open |= {client, upstream}
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        self._pump(upstream, client, False)

    def _answer_503(self, client: socket.socket) -> None:
        try:
            client.settimeout(5)
            data = client.recv(65536)
            if data.startswith(_METHODS):
                self.requests += 1
            self.faulted += 1
            client.sendall(_SLOW_DOWN)
        except OSError:
            pass
        finally:
            _close(client)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        import time

        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and data.startswith(_METHODS):
                    self.requests += 1
                if self.mode in ("error", "down"):
                    self.faulted += 1
                    break
                if self.mode == "slow":
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {src, dst}
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        s.close()
