"""A small HTTP proxy on loopback in front of moto_server that misbehaves on
purpose, the way S3 and networks do: 503 SlowDown, dropped connections,
403 answers, slow uploads."""
from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


def _error_xml(code: str, message: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()


class FaultyProxy:
    def __init__(self, upstream: str):
        self.upstream = urlparse(upstream)
        self.mode = "pass"
        self.faults_left = 0  # how many requests still get the fault
        self.delay_puts = 0.0  # seconds before forwarding a PUT of a blob
        self.seen = []  # (method, path) of every request
        self.puts_started = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.seen.append((self.command, self.path))
                if proxy.faults_left > 0:
                    proxy.faults_left -= 1
                    if proxy.mode == "slowdown":
                        return self._reply(503, _error_xml("SlowDown", "Please reduce your request rate."))
                    if proxy.mode == "reset":
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        self.connection.close()
                        self.close_connection = True
                        return
                if proxy.mode == "deny":
                    return self._reply(403, _error_xml("AccessDenied", "Access Denied"))
                if proxy.mode == "badcreds":
                    return self._reply(403, _error_xml("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."))
                if self.command == "PUT" and "/cas/" in self.path and proxy.delay_puts:
                    proxy.puts_started.set()
                    time.sleep(proxy.delay_puts)
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            def _reply(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *args: None  # a client that hung up is part of the game
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, mode: str, count: int = 1_000_000) -> None:
        self.mode, self.faults_left = mode, count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
