"""A real HTTPS server on loopback that records every byte it receives and can misbehave on cue."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def make_test_tls(d: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, made with openssl."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=edge-recorder test CA")
    ssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class Recorded:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes, raw: bytes,
                 answer: str) -> None:
        self.method, self.path, self.headers, self.body, self.raw = method, path, headers, body, raw
        self.answer = answer
        self.at = time.monotonic()


class UploadServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: dict[str, Path]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(tls["cert"], tls["key"])
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.script: deque[str] = deque()
        """Answers for the next requests: "200", "503", "429:1", "reset", "sleep:S", "404",
        "trickle" (the answer one byte at a time), "redirect:CODE:LOCATION", "endless" (a 200 whose
        body never ends: 64 KiB every 10 ms, counted in reply_bytes, until the client goes)."""
        self.reply_bytes = 0
        self.requests: list[Recorded] = []
        self.accepted: dict[str, int] = {}
        """Idempotency-Key -> how many times a complete POST with it was answered 2xx."""
        self.deleted: list[str] = []
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server_address[1]}/clips"

    def next_answer(self) -> str:
        with self.lock:
            return self.script.popleft() if self.script else "200"

    def everything_received(self) -> bytes:
        with self.lock:
            return b"".join(r.raw for r in self.requests)

    def posts(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST"]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: UploadServer
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        answer = self.server.next_answer()
        length = int(self.headers.get("Content-Length") or 0)
        body = self._read_body(length, slow=answer.startswith("slowread"))
        head = f"{self.requestline}\r\n{self.headers}".encode()
        complete = len(body) == length
        rec = Recorded(self.command, self.path, dict(self.headers), body, head + body, answer)
        with self.server.lock:
            self.server.requests.append(rec)
        if not complete:
            return
        if answer == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if answer.startswith("sleep:"):
            time.sleep(float(answer.split(":")[1]))
            answer = "200"
        if answer == "trickle":  # a status line at one byte every half second, for a minute
            for byte in b"HTTP/1.1 200 OK\r\n" * 8:
                try:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                except OSError:
                    break
                time.sleep(0.5)
            self.close_connection = True
            return
        if answer.startswith("redirect:"):  # redirect:302:http://... (the Location)
            _, redirect_code, location = answer.split(":", 2)
            self.send_response(int(redirect_code))
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if answer.startswith("slowread"):
            answer = "200"
        endless, answer = answer == "endless", "200" if answer == "endless" else answer
        status, _, retry_after = answer.partition(":")
        code = int(status)
        if 200 <= code < 300 and self.command == "POST":
            key = self.headers.get("Idempotency-Key", "")
            with self.server.lock:
                self.server.accepted[key] = self.server.accepted.get(key, 0) + 1
        if 200 <= code < 300 and self.command == "DELETE":
            with self.server.lock:
                self.server.deleted.append(self.path.rsplit("/", 1)[-1])
        self.send_response(code)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(1 << 40) if endless else "0")
        self.end_headers()
        if endless:
            self._endless_body()

    def _endless_body(self) -> None:
        chunk = b"x" * 65536
        while True:
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except OSError:
                break
            with self.server.lock:
                self.server.reply_bytes += len(chunk)
            time.sleep(0.01)
        self.close_connection = True

    def _read_body(self, length: int, slow: bool) -> bytes:
        chunks, got = [], 0
        while got < length:
            try:
                chunk = self.rfile.read(min(4096 if slow else 65536, length - got))
            except (ConnectionError, ssl.SSLError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    do_POST = _handle
    do_DELETE = _handle

    def log_message(self, *args: Any) -> None:
        pass
