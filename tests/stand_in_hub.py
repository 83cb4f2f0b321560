"""A stand-in for the Hugging Face hub on 127.0.0.1 (the real hub cannot be reached here).

It serves the few routes huggingface_hub uses to check access and download: the auth check, a repo's
revision info, the tree listing (LFS files with their sha256), and file HEAD/GET by commit. Repos are dicts of
file name -> bytes; a repo can be marked gated for every token but one, and a file broken (its GET fails). Every
request is recorded (method, path, Authorization header) so tests check exactly what voicekit sends.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from stand_in import send_bytes, send_json, serve

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LFS_SUFFIXES = (".gguf", ".bin", ".onnx", ".safetensors")  # the hub's tree lists these with an "lfs" sha256


@dataclass
class Request:
    method: str
    path: str
    authorization: str | None


@dataclass
class StandInHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: dict[str, str] = field(default_factory=dict)  # repo -> the one token that may read it
    broken: dict[str, int] = field(default_factory=dict)  # file name -> the HTTP status its GET answers
    bytes_per_s: float | None = None  # file bodies at this pace (a slow line); None: at once
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub.answer(self, body=True)

            def do_HEAD(self) -> None:
                hub.answer(self, body=False)

        self.server, self.url = serve(Handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [request.path for request in self.requests]

    # -- routing -------------------------------------------------------------------------------------------

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        path = handler.path.split("?")[0]
        self.requests.append(Request(handler.command, path, handler.headers.get("Authorization")))
        repo, route = self._split(path)
        if repo not in self.repos:  # the hub answers 401 here, as for a private repo
            send_json(handler, 401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}, body)
            return
        wanted, given = self.gated.get(repo), handler.headers.get("Authorization")
        if wanted is not None and given != f"Bearer {wanted}":
            send_json(handler, 401 if given is None else 403, {"error": f"Access to model {repo} is restricted."},
                       {"X-Error-Code": "GatedRepo"}, body)
            return
        if route == "auth-check":
            send_json(handler, 200, {}, {}, body)
        elif route.startswith("revision/"):
            siblings = [{"rfilename": name} for name in sorted(self.repos[repo])]
            send_json(handler, 200, {"id": repo, "sha": COMMIT, "siblings": siblings}, {}, body)
        elif route.startswith("tree/"):
            tree = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest(),
                     **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
                        if name.endswith(LFS_SUFFIXES) else {})}
                    for name, data in sorted(self.repos[repo].items())]
            send_json(handler, 200, tree, body=body)
        elif route.startswith("file/"):
            self._send_file(handler, repo, route.removeprefix("file/"), body)
        else:
            send_json(handler, 404, {"error": "no such route"}, {}, body)

    @staticmethod
    def _split(path: str) -> tuple[str, str]:
        if path.startswith("/api/models/"):
            parts = path.removeprefix("/api/models/").split("/")
            return "/".join(parts[:2]), "/".join(parts[2:])
        parts = path.lstrip("/").split("/")  # /{owner}/{name}/resolve/{revision}/{file...}
        if len(parts) >= 5 and parts[2] == "resolve":
            return "/".join(parts[:2]), "file/" + "/".join(parts[4:])
        return "", ""

    def _send_file(self, handler: BaseHTTPRequestHandler, repo: str, name: str, body: bool) -> None:
        data = self.repos[repo].get(name)
        if body and name in self.broken:
            send_json(handler, self.broken[name], {"error": "Internal Error"}, {}, body)
            return
        if data is None:
            send_json(handler, 404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, body)
            return
        etag = hashlib.sha256(data).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"}
        if not body or not self.bytes_per_s:
            send_bytes(handler, 200, data, headers, body)
            return
        handler.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            handler.send_header(key, value)
        handler.end_headers()
        step = 1 << 18
        try:
            for start in range(0, len(data), step):
                handler.wfile.write(data[start:start + step])
                time.sleep(step / (self.bytes_per_s or 1e12))  # read each time: a test may lift the limit midway
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a cancelled download)
