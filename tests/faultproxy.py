"""A fault-injecting HTTP proxy for the storage tests: standard library only, threaded, loopback.

It sits between google-cloud-storage and fake-gcs-server (point STORAGE_EMULATOR_HOST at `proxy.url`)
and forwards every request faithfully - method, path, query, headers, body (multipart and resumable
uploads included) - unless a rule fires. A rule matches requests by method and substrings of the path
and query, fires on the first N matches or on a seeded-random share of them, never more than `limit`
times, and does one of:

    status    answer with an error status (503, 429, 500, ... or 412) without forwarding
    after     forward (the server acts on it), then answer with an error status: a lost response
    lost      forward, then reset the connection without answering
    reset     reset the connection without forwarding
    cut       forward, send the headers and half of the body, then reset the connection
    corrupt   forward, flip one byte in the middle of the body (same length, same headers)

Everything the proxy saw is in `proxy.log` (one `Seen` per request). Absolute URLs of the upstream
server in JSON bodies and `Location` headers are rewritten to the proxy, so follow-up requests
(resumable upload sessions, media links) come back through it too.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ACTIONS = ("status", "after", "lost", "reset", "cut", "corrupt")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length", "host"}
MAX_BODY = 256 << 20  # refuse to buffer more than this: tests keep objects small


@dataclass
class Rule:
    action: str
    statuses: tuple[int, ...] = (503,)
    method: str | None = None  # e.g. "GET"; None matches any
    path: str | None = None  # substring of the path
    query: str | None = None  # substring of the raw query, e.g. "alt=media" or "uploadType=multipart"
    body: bytes | None = None  # substring of the request body, e.g. b'"name": "run/manifest.json"' (an
    #                            upload names its object in the multipart body, not in the query)
    skip: int = 0  # let the first N matching requests through untouched (e.g. the publish claim)
    first: int | None = None  # fire on the first N matching requests (after `skip`)
    fraction: float | None = None  # or on this share of them (seeded RNG); neither: on every match
    limit: int | None = None  # and never more than this many times in all
    matched: int = 0
    fired: int = 0

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}: one of {ACTIONS}")

    def matches(self, method: str, path: str, query: str, body: bytes = b"") -> bool:
        return ((self.method is None or self.method == method)
                and (self.path is None or self.path in path)
                and (self.query is None or self.query in query)
                and (self.body is None or self.body in body))


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    action: str  # "forward" or the rule's action
    status: int | None  # what the client got (None: connection reset)


@dataclass
class FaultProxy:
    upstream: str  # e.g. http://127.0.0.1:4443
    seed: int = 0
    rules: list[Rule] = field(default_factory=list)
    log: list[Seen] = field(default_factory=list)

    def __post_init__(self):
        parts = urlsplit(self.upstream)
        self._up_host, self._up_port = parts.hostname, parts.port or 80
        self._up_base = f"{parts.scheme}://{parts.netloc}"
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- rules and observations
    def add(self, action: str, **kwargs) -> Rule:
        rule = Rule(action, **kwargs)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def faults(self) -> int:
        return sum(1 for s in self.log if s.action != "forward")

    def _decide(self, method: str, path: str, query: str, body: bytes = b"") -> tuple[Rule | None, int]:
        with self._lock:
            for rule in self.rules:
                if not rule.matches(method, path, query, body):
                    continue
                rule.matched += 1
                if rule.matched <= rule.skip:
                    continue
                if rule.limit is not None and rule.fired >= rule.limit:
                    continue
                if rule.first is not None:
                    fire = rule.matched - rule.skip <= rule.first
                elif rule.fraction is not None:
                    fire = self._rng.random() < rule.fraction
                else:
                    fire = True
                if fire:
                    rule.fired += 1
                    return rule, self._rng.choice(rule.statuses)
        return None, 0

    def _record(self, *seen) -> None:
        with self._lock:
            self.log.append(Seen(*seen))

    # -- lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            pass

        Handler.proxy = proxy
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"  # every answer says Connection: close, so one request per connection
    timeout = 30  # a client that stops sending cannot hold a thread for ever

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self):
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    # -- request side
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("request body too large for the fault proxy")
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large for the fault proxy")
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        p = self.proxy
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Host"] = f"{p._up_host}:{p._up_port}"
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(p._up_host, p._up_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read() if self.command != "HEAD" else b""
            return resp.status, resp.reason, resp.getheaders(), data
        except OSError as exc:
            return 502, "Bad Gateway", [("Content-Type", "text/plain")], f"upstream: {exc}".encode()
        finally:
            conn.close()

    # -- response side
    def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
              send_bytes: int | None = None) -> None:
        self.send_response_only(status, reason)
        for k, v in headers:
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body if send_bytes is None else body[:send_bytes])
        self.wfile.flush()
        self.close_connection = True

    def _send_error_status(self, status: int) -> None:
        reason = http.client.responses.get(status, "Error")
        body = json.dumps({"error": {"code": status, "message": f"{reason} (injected by faultproxy)",
                                     "errors": [{"message": reason, "reason": "injected"}]}}).encode()
        self._send(status, reason, [("Content-Type", "application/json; charset=UTF-8")], body)

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def _rewrite(self, query: str, headers: list[tuple[str, str]], body: bytes):
        up, me = self.proxy._up_base, self.proxy.url
        headers = [(k, v.replace(up, me) if k.lower() == "location" else v) for k, v in headers]
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "")
        if "alt=media" not in query and "json" in ctype:
            body = body.replace(up.encode(), me.encode())
        return headers, body

    def _handle(self) -> None:
        p = self.proxy
        path, _, query = self.path.partition("?")
        # Each request is recorded before its answer goes out: a client holding its answer finds it
        # in proxy.log (recorded after sending, it raced with a test's check on a loaded machine).
        try:
            body = self._read_body()
        except (ValueError, OSError):
            p._record(self.command, path, query, "reset", None)
            self._reset()
            return
        rule, status = p._decide(self.command, path, query, body)
        action = rule.action if rule else "forward"
        if action == "status":
            p._record(self.command, path, query, action, status)
            self._send_error_status(status)
            return
        if action == "reset":
            p._record(self.command, path, query, action, None)
            self._reset()
            return
        up_status, reason, headers, data = self._forward(body)
        if action == "after":
            p._record(self.command, path, query, action, status)
            self._send_error_status(status)
            return
        if action == "lost":
            p._record(self.command, path, query, action, None)
            self._reset()
            return
        headers, data = self._rewrite(query, headers, data)
        if action == "cut":
            p._record(self.command, path, query, action, None)
            self._send(up_status, reason, headers, data, send_bytes=len(data) // 2)
            self._reset()
            return
        if action == "corrupt" and data:
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        p._record(self.command, path, query, action, up_status)
        self._send(up_status, reason, headers, data)
