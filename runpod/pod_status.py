"""The pod's status, for people (standard library only; runpod/supervise.py explains the pod): the one line of what
it is doing in $WORKSPACE/run/status.json (the app's page shows it, refreshed), the supervisor's own status page on
the app's port while no app serves it, and the figures in that line (download progress, a step's last log line)."""

from __future__ import annotations

import contextlib
import html
import json
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOG_EVERY_S = 30.0  # how often a refreshed status line also goes to the pod log


def say(message: str) -> None:
    """One line in the pod log."""
    print(f"[voicekit {time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


def duration(seconds: float) -> str:
    """'45 s', '3 min 20 s'."""
    seconds = int(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def amount(done: int, total: int | None) -> str:
    """'1.2/6.2 GB' (the unit of the total), or '340 MB' when the total is unknown."""
    scale = total if total else done
    unit, size = next(((name, size) for name, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)) if scale >= size),
                      ("B", 1.0))
    digits = 0 if unit == "B" else 1
    if total is None:
        return f"{done / size:.{digits}f} {unit}"
    return f"{min(done, total) / size:.{digits}f}/{total / size:.{digits}f} {unit}"


class Status:
    """What the pod is doing, for people: run/status.json (the app's page shows its line, refreshed) and the
    status page. States: starting, preparing, switching, serving, restarting, fallback, failed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {"state": "starting", "line": "starting up", "preset": None}
        self._logged = 0.0

    def set(self, state: str, line: str, *, quiet: bool = False, **extra: Any) -> None:
        """`quiet`: a refresh of a running step, logged at most every LOG_EVERY_S."""
        with self.lock:
            changed = (state, line) != (self.data["state"], self.data["line"])
            if not changed and all(self.data.get(key) == value for key, value in extra.items()):
                return
            self.data.update(extra, state=state, line=line, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text(json.dumps(self.data))
                tmp.replace(self.path)
            except OSError:
                pass
            now = time.monotonic()
            if line and changed and (not quiet or now - self._logged >= LOG_EVERY_S):
                self._logged = now
                say(f"status: {line}")

    def get(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.data)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5"><title>voicekit: {state}</title>
<style>body {{ font-family: system-ui, sans-serif; max-width: 42em; margin: 3em auto; padding: 0 1em; }}</style>
</head><body><h1>voicekit</h1><p id="vk-pod-status">{line}</p>
<p><small>This page reloads itself every 5 s; voicekit's page takes its place as soon as it is ready.</small></p>
</body></html>
"""


class StatusPage:
    """The supervisor's own page on the app's port while no app serves it: up in a second, standard library."""

    def __init__(self, host: str, port: int, status: Status) -> None:
        self.host, self.port, self.status = host, port, status
        self.server: ThreadingHTTPServer | None = None
        self.failed_once = False

    @property
    def running(self) -> bool:
        return self.server is not None

    def start(self) -> bool:
        """Take the port; False when it is still taken (an app that is exiting): try again later."""
        if self.server is not None:
            return True
        status = self.status

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes, kind: str, head: bool = False) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                if code == 503:
                    self.send_header("Retry-After", "5")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_GET(self, head: bool = False) -> None:
                data = status.get()
                path = self.path.split("?")[0]
                if path == "/pod/status":
                    self._send(200, json.dumps(data).encode(), "application/json", head)
                elif path == "/health":
                    body = {"status": "starting", "reason": data["line"], "pod": data}
                    self._send(503, json.dumps(body).encode(), "application/json", head)
                else:
                    page = PAGE.format(state=html.escape(data["state"]), line=html.escape(data["line"]))
                    self._send(200, page.encode(), "text/html; charset=utf-8", head)

            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_POST(self) -> None:
                body = {"error": {"message": f"voicekit is not ready yet: {status.get()['line']}",
                                  "type": "unavailable"}}
                self._send(503, json.dumps(body).encode(), "application/json")

            do_PUT = do_DELETE = do_PATCH = do_POST

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        try:
            server = Server((self.host, self.port), Handler)
        except OSError as error:
            if not self.failed_once:
                say(f"status page: port {self.port} is taken ({error.strerror}); trying again")
                self.failed_once = True
            return False
        self.failed_once = False
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="status-page",
                         daemon=True).start()
        self.server = server
        return True

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def hub_progress(repos: Sequence[str], sizes: Mapping[str, int | None], cache: Path) -> str:
    """'3.4/12.0 GB (canopylabs/orpheus-3b-0.1-ft: 1.2/6.2 GB)': the bytes in the Hugging Face cache (finished
    blobs and .incomplete ones) against the hub's sizes; the repo is the first one not complete."""
    done = {repo: _folder_bytes(cache / f"models--{repo.replace('/', '--')}" / "blobs") for repo in repos}
    totals = [sizes.get(repo) for repo in repos]
    known = all(total is not None for total in totals)
    overall = amount(sum(done.values()), sum(total or 0 for total in totals) if known else None)
    current = next((repo for repo in repos if sizes.get(repo) is None or done[repo] < (sizes[repo] or 0)), None)
    return overall + (f" ({current}: {amount(done[current], sizes.get(current))})" if current else "")


def _folder_bytes(folder: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


def last_line(path: Path, prefixes: Sequence[str] = ("",), tail: int = 16384) -> str:
    """The last line of a log that starts with one of `prefixes` (pip's progress, models.py's error)."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - tail))
            text = file.read().decode(errors="replace")
    except OSError:
        return ""
    for line in reversed(text.replace("\r", "\n").splitlines()):
        line = line.strip()
        if line and line.startswith(tuple(prefixes)):
            return line
    return ""
