"""Helpers for the local HTTP stand-ins of remote services the tests cannot reach (hub, RunPod, vLLM-Omni)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def serve(handler: type[BaseHTTPRequestHandler]) -> tuple[ThreadingHTTPServer, str]:
    """Start a threaded server for ``handler`` on a free 127.0.0.1 port; return it and its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def send_bytes(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict[str, str] | None = None,
               body: bool = True) -> None:
    """Answer with ``data`` and a Content-Length (``body=False`` for HEAD requests)."""
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    if body:
        handler.wfile.write(data)


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None,
              body: bool = True) -> None:
    """Answer with ``payload`` as JSON."""
    send_bytes(handler, status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})},
               body)
