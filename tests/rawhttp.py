"""A raw HTTP/1.1 exchange over one loopback socket, for requests no well-behaved client sends.

`requests` normalizes what the hostile tests need to send as is: duplicate headers, bytes that
are not valid header text, chunked bodies with chosen chunk sizes, bodies dripped byte by byte,
bodies larger than the server wants to read. `exchange` writes exactly the given bytes (from a
writer thread, so an early answer to a half-sent body is still read), optionally from a chosen
127.x.y.z source address, and parses what comes back; `status` is None when the server closed
the connection without answering.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass
class Response:
    status: int | None
    headers: list = field(default_factory=list)
    body: bytes = b""
    elapsed_s: float = 0.0

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for n, v in self.headers if n == name), None)

    def error(self) -> dict | None:
        """The `error` object of a JSON error answer (filter or sidecar), or None."""
        if not (self.header("content-type") or "").startswith("application/json"):
            return None
        try:
            error = json.loads(self.body).get("error")
        except (ValueError, AttributeError):
            return None
        return error if isinstance(error, dict) else None

    @property
    def code(self) -> str | None:
        error = self.error()
        return error.get("code") if error else None


@dataclass
class Piece:
    """Bytes to write, then a pause before the next piece."""

    data: bytes
    pause_s: float = 0.0


def request_bytes(method: str, path: str, headers: list, body: bytes = b"",
                  content_length: bool = True) -> bytes:
    """An HTTP/1.1 request; `headers` are (name, value) pairs written in order, as given."""
    lines = [f"{method} {path} HTTP/1.1".encode("latin-1")]
    names = {n.lower() if isinstance(n, str) else n.decode("latin-1").lower() for n, _ in headers}
    for name, value in headers:
        lines.append(_bytes(name) + b": " + _bytes(value))
    if content_length and body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(b"content-length: " + str(len(body)).encode())
    return CRLF.join(lines) + CRLF + CRLF + body


def chunked(body: bytes, chunk_size: int) -> bytes:
    """`body` in the chunked transfer coding, `chunk_size` bytes per chunk."""
    out = bytearray()
    for start in range(0, len(body), chunk_size):
        chunk = body[start:start + chunk_size]
        out += f"{len(chunk):x}".encode() + CRLF + chunk + CRLF
    return bytes(out + b"0" + CRLF + CRLF)


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _connect(host: str, port: int, source: str | None, timeout: float) -> socket.socket:
    """A connected socket, bound to `source` (any 127.0.0.0/8 address routes over lo)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source is not None:
            sock.bind((source, 0))
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class _Reader:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def fill(self) -> bool:
        if self.closed:
            return False
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buffer += data
        return True

    def until(self, marker: bytes) -> bytes | None:
        while marker not in self.buffer:
            if not self.fill():
                return None
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def exactly(self, count: int) -> bytes:
        while len(self.buffer) < count and self.fill():
            pass
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def rest(self) -> bytes:
        while self.fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


def read_response(sock: socket.socket, head_request: bool = False) -> Response:
    """Reads one answer (skipping 1xx); status None when the connection closed first."""
    reader = _Reader(sock)
    while True:
        head = reader.until(CRLF + CRLF)
        if head is None:
            return Response(status=None, body=reader.buffer)
        status_line, *header_lines = head.split(CRLF)
        parts = status_line.split(b" ", 2)
        status = int(parts[1])
        headers = []
        for line in header_lines:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
        if 100 <= status < 200:
            continue
        response = Response(status=status, headers=headers)
        break
    if head_request or status in (204, 304):
        return response
    if "chunked" in (response.header("transfer-encoding") or "").lower():
        body = bytearray()
        while True:
            size_line = reader.until(CRLF)
            if size_line is None:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while reader.until(CRLF):  # trailers, up to the empty line
                    pass
                break
            body += reader.exactly(size)
            reader.exactly(2)
        response.body = bytes(body)
    elif response.header("content-length") is not None:
        response.body = reader.exactly(int(response.header("content-length")))
    else:
        response.body = reader.rest()
    return response


def _write(sock: socket.socket, pieces: list, answered: threading.Event) -> None:
    try:
        for piece in pieces:
            if answered.is_set():
                return
            if piece.data:
                sock.sendall(piece.data)
            if piece.pause_s:
                answered.wait(piece.pause_s)
    except OSError:
        # The server answered and closed before reading everything: the answer is what counts.
        pass


def exchange(host: str, port: int, request: bytes | list, source: str | None = None,
             timeout: float = 30.0, head_request: bool = False) -> Response:
    """Sends `request` (bytes, or a list of `Piece`s for paced writes) and reads the answer."""
    pieces = [Piece(request)] if isinstance(request, bytes) else list(request)
    started = time.monotonic()
    answered = threading.Event()
    with _connect(host, port, source, timeout) as sock:
        writer = threading.Thread(target=_write, args=(sock, pieces, answered), daemon=True)
        writer.start()
        try:
            response = read_response(sock, head_request)
        except socket.timeout:
            response = Response(status=None)
        response.elapsed_s = time.monotonic() - started
        answered.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        writer.join(timeout=timeout)
    return response
