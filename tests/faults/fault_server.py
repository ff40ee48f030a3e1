"""A fault-injecting chat-completions server on 127.0.0.1: it refuses, errs, stalls and trickles on purpose.

``FaultServer(mode)`` answers every POST according to ``mode`` (see ``MODES``) from a thread per
connection. Each misbehaviour is bounded: a loop that trickles or stalls stops when the client
goes, when the server is closed, or after ``max_seconds``, so no test can leave it running. The
server records when it saw each client connection close (``gone``), which is how a test checks
that a late request's socket was released rather than left open.

Speaking raw HTTP/1.1 on the socket (not ``http.server``) is what lets it send headers one byte
at a time or a chunked body that never ends.
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import threading
import time
from typing import Any

MODES = {
    "ok": "200 with a valid chat completion",
    "refuse": "nothing listens: the connection is refused",
    "500": "HTTP 500 with a JSON error",
    "429": "HTTP 429 with a JSON error",
    "malformed": "200 whose JSON body is cut off",
    "trickle": "200 with a Content-Length body sent one byte at a time",
    "chunked": "200 with a chunked body that never ends",
    "huge": "200 with a 6 MiB body sent at full speed",
    "long_answer": "200 with a valid completion whose content is 1 MB of text",
    "slow_headers": "the status line, then the headers one byte at a time",
    "silent": "reads the request and never answers",
    "stall_once": "the first request stalls like silent, later ones answer ok",
}

ANSWER = "Weights: l1:gan=0.9:0.05\nThoughts: a fault-server answer"


def completion(content: str) -> bytes:
    """A chat-completion JSON body holding ``content``."""
    return json.dumps({
        "id": "chatcmpl-fault", "object": "chat.completion", "created": 0, "model": "fault",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }).encode()


class FaultServer:
    """One server in one ``mode``; ``close()`` stops it and every loop it runs."""

    def __init__(self, mode: str, *, interval: float = 0.05, max_seconds: float = 20.0, answer: str = ANSWER) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        self.mode, self.interval, self.max_seconds, self.answer = mode, interval, max_seconds, answer
        self.requests = 0
        self.gone: list[float] = []  # monotonic times at which a client connection was seen closed
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None
        self._placeholder: socket.socket | None = None
        if mode == "refuse":
            # Bound but not listening: connecting is refused, and the port stays ours meanwhile.
            self._placeholder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._placeholder.bind(("127.0.0.1", 0))
            self.port = self._placeholder.getsockname()[1]
            return
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler, bind_and_activate=False)
        server.daemon_threads = True
        server.allow_reuse_address = True
        server.server_bind()
        server.server_activate()
        server.fault = self  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name=f"fault-server-{mode}").start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def count_request(self) -> int:
        with self._lock:
            self.requests += 1
            return self.requests

    def wait_all_gone(self, timeout: float) -> bool:
        """True once every request's connection has been closed by the client (within ``timeout``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.gone) >= self.requests:
                return True
            time.sleep(0.02)
        return len(self.gone) >= self.requests

    def close(self) -> None:
        self.stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._placeholder is not None:
            self._placeholder.close()


class _Handler(socketserver.BaseRequestHandler):
    server: Any

    def handle(self) -> None:
        fault: FaultServer = self.server.fault
        sock: socket.socket = self.request
        sock.settimeout(5.0)
        try:
            if not _read_request(sock):
                return
            number = fault.count_request()
            mode = fault.mode
            if mode == "stall_once":
                mode = "silent" if number == 1 else "ok"
            _MODE_HANDLERS[mode](fault, sock)
            _wait_gone(fault, sock)  # answered (``Connection: close``): the client closes next
        except _Gone:
            pass
        except OSError:  # a send to a client that has gone
            fault.gone.append(time.monotonic())


def _read_request(sock: socket.socket) -> bool:
    """Read one request's head and body (by Content-Length); False if the client left first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        data += chunk
        if len(data) > 1 << 20:
            return False
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return False
        body += chunk
    return True


def _client_gone(sock: socket.socket, wait: float) -> bool:
    """True if the client closed its side (waiting up to ``wait`` seconds for a sign; anything it
    sends meanwhile is read and dropped)."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return False
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def _wait_gone(fault: FaultServer, sock: socket.socket) -> None:
    end = time.monotonic() + fault.max_seconds
    while not fault.stop.is_set() and time.monotonic() < end:
        if _client_gone(sock, fault.interval):
            fault.gone.append(time.monotonic())
            return


def _send(sock: socket.socket, status: str, body: bytes, content_type: str = "application/json") -> None:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    sock.sendall(head.encode() + body)


def _drip(fault: FaultServer, sock: socket.socket, pieces: Any) -> None:
    """Send ``pieces`` one every ``interval`` until they run out, the client goes, or time is up."""
    end = time.monotonic() + fault.max_seconds
    for piece in pieces:
        if fault.stop.is_set() or time.monotonic() > end:
            return
        if _client_gone(sock, fault.interval):
            fault.gone.append(time.monotonic())
            raise _Gone
        sock.sendall(piece)


class _Gone(Exception):
    """The client closed the connection (already recorded)."""


def _ok(fault: FaultServer, sock: socket.socket) -> None:
    _send(sock, "200 OK", completion(fault.answer))


def _error(status: str, message: str):
    def handler(fault: FaultServer, sock: socket.socket) -> None:
        _send(sock, status, json.dumps({"error": {"message": message, "type": "fault"}}).encode())
    return handler


def _malformed(fault: FaultServer, sock: socket.socket) -> None:
    _send(sock, "200 OK", completion(fault.answer)[:40])


def _trickle(fault: FaultServer, sock: socket.socket) -> None:
    body = completion(fault.answer)
    sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
    _drip(fault, sock, (body[i:i + 1] for i in range(len(body))))


def _chunked(fault: FaultServer, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    forever = iter(lambda: b"1\r\n \r\n", None)  # one space per chunk, never the final 0-chunk
    _drip(fault, sock, forever)


def _huge(fault: FaultServer, sock: socket.socket) -> None:
    _send(sock, "200 OK", completion("a" * (6 * 2**20)))


def _long_answer(fault: FaultServer, sock: socket.socket) -> None:
    _send(sock, "200 OK", completion("Weights: " + "1:" * 500_000))


def _slow_headers(fault: FaultServer, sock: socket.socket) -> None:
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    forever = iter(lambda: b"X", None)  # an endless header name, a byte at a time
    _drip(fault, sock, forever)


def _silent(fault: FaultServer, sock: socket.socket) -> None:
    _drip(fault, sock, iter(lambda: b"", None))  # sends nothing; watches for the client to go


_MODE_HANDLERS = {
    "ok": _ok, "500": _error("500 Internal Server Error", "boom"), "429": _error("429 Too Many Requests", "slow down"),
    "malformed": _malformed, "trickle": _trickle, "chunked": _chunked, "huge": _huge, "long_answer": _long_answer,
    "slow_headers": _slow_headers, "silent": _silent,
}
