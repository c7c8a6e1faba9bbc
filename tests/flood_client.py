"""A small, fast HTTP/1.1 load generator for the flood tests: one thread, non-blocking sockets.

`keep_alive(...)` sends a stream of requests over a few persistent connections (the distinct
tokens of a subject or token-cache flood); `one_per_connection(...)` opens a new connection for
every request, each from its own loopback source address (a client-address flood). Both keep
`concurrency` requests in flight and return how many answers had each status (`keep_alive` can
count by status and the value of one response header instead). Responses are read by their
Content-Length; Envoy's and the sidecar's short answers all carry one.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from collections import Counter
from typing import Iterator


class FloodError(RuntimeError):
    pass


def _response_end(buffer: bytes) -> tuple[int, int, bytes] | None:
    """(status, length of the whole response, lower-cased head) once `buffer` holds a complete
    response."""
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buffer[:head_end].lower()
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        raise FloodError(f"response without content-length: {bytes(buffer[:200])!r}")
    end = head.find(b"\r\n", start + 2)
    length = int(head[start + 17: end if end >= 0 else len(head)])
    total = head_end + 4 + length
    if len(buffer) < total:
        return None
    return int(buffer[9:12]), total, bytes(head)


def _header(head: bytes, name: str) -> str | None:
    start = head.find(b"\r\n" + name.lower().encode() + b":")
    if start < 0:
        return None
    end = head.find(b"\r\n", start + 2)
    return head[start + 3 + len(name): end if end >= 0 else len(head)].strip().decode("latin-1")


def keep_alive(host: str, port: int, requests: Iterator[bytes], concurrency: int = 8,
               timeout_s: float = 300.0, header: str | None = None) -> Counter:
    """Sends every request of `requests` over `concurrency` persistent connections. With
    `header`, answers are counted by (status, that header's value or None)."""
    statuses: Counter = Counter()
    selector = selectors.DefaultSelector()
    buffers: dict = {}
    deadline = time.monotonic() + timeout_s

    def send_next(sock) -> bool:
        request = next(requests, None)
        if request is None:
            selector.unregister(sock)
            sock.close()
            return False
        sock.sendall(request)
        return True

    for _ in range(concurrency):
        sock = socket.create_connection((host, port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
        if not send_next(sock):
            break
    try:
        while selector.get_map():
            if time.monotonic() > deadline:
                raise FloodError("the flood did not finish in time")
            for key, _ in selector.select(timeout=5):
                sock = key.fileobj
                data = sock.recv(262144)
                if not data:
                    raise FloodError("Envoy closed a keep-alive connection")
                buffer = buffers[sock]
                buffer += data
                while (end := _response_end(buffer)) is not None:
                    status, length, head = end
                    statuses[status if header is None else (status, _header(head, header))] += 1
                    del buffer[:length]
                    if not send_next(sock):
                        break
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return statuses


def one_per_connection(host: str, port: int, request: bytes, sources: Iterator[str], concurrency: int = 32,
                       timeout_s: float = 300.0) -> Counter:
    """Sends `request` once from each address of `sources`, on a new connection each time,
    closed with a reset afterwards (so no TIME_WAIT is left per address)."""
    statuses: Counter = Counter()
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout_s
    linger = struct.pack("ii", 1, 0)

    def open_next() -> bool:
        source = next(sources, None)
        if source is None:
            return False
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise FloodError(f"connect from {source} failed: {errno.errorcode.get(code, code)}")
        selector.register(sock, selectors.EVENT_WRITE, {"source": source, "buffer": bytearray(), "sent": False})
        return True

    for _ in range(concurrency):
        if not open_next():
            break
    try:
        while selector.get_map():
            if time.monotonic() > deadline:
                raise FloodError("the flood did not finish in time")
            for key, events in selector.select(timeout=5):
                sock, state = key.fileobj, key.data
                if not state["sent"]:
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise FloodError(f"connect from {state['source']} failed: {errno.errorcode.get(error)}")
                    sock.sendall(request)
                    state["sent"] = True
                    selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                data = sock.recv(65536)
                if not data:
                    raise FloodError(f"Envoy closed the connection from {state['source']} without an answer")
                state["buffer"] += data
                end = _response_end(state["buffer"])
                if end is None:
                    continue
                statuses[end[0]] += 1
                selector.unregister(sock)
                sock.close()
                open_next()
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
    return statuses
