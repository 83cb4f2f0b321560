"""voicekit's health checks behind a real vllm-router: a replica down is a warning, every replica down a failure.

The router is the real one (vllm-router from PyPI); the replicas behind it are stand-ins for `vllm serve`'s
health route, since no vLLM server runs in the main suite (tests/test_vllm_router.py puts real `vllm serve`
replicas behind it and generates through it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from router import router_binary, running_router
from stand_in import send_json, serve
from test_server import kit_over

from voicekit.engines.http_engine import HTTPEngine
from voicekit.serve import BackgroundServer
from voicekit.serve.api import create_app

pytestmark = [pytest.mark.slow, pytest.mark.skipif(router_binary() is None, reason="needs vllm-router")]


def replica() -> tuple[type[BaseHTTPRequestHandler], str, Callable[[], None]]:
    """A stand-in replica with its own health status: its handler class, base URL and a stop function."""

    class Replica(BaseHTTPRequestHandler):
        status: ClassVar[int] = 200

        def do_GET(self) -> None:
            send_json(self, self.status if self.path == "/health" else 404, {})

        def log_message(self, *args: Any) -> None:
            pass

    server, url = serve(Replica)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return Replica, url, stop


@pytest.fixture
def two_replicas() -> Iterator[list[tuple[type[BaseHTTPRequestHandler], str]]]:
    made = [replica(), replica()]
    yield [(handler, url) for handler, url, _stop in made]
    for _handler, _url, stop in made:
        stop()


def health_until(url: str, wanted: Callable[[httpx.Response], bool], timeout_s: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = httpx.get(f"{url}/health", timeout=30)
        if wanted(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.3)


def test_a_replica_down_behind_the_router_is_a_warning_and_every_replica_down_a_failure(
        kit: Any, two_replicas: list[tuple[Any, str]], tmp_path: Path) -> None:
    (first, first_url), (second, second_url) = two_replicas
    urls = [first_url, second_url]
    with running_router(urls, tmp_path / "router.log") as router, \
            kit_over(HTTPEngine(router, "tiny"), kit.tts) as routed_kit, \
            BackgroundServer(create_app(routed_kit)) as api:
        healthy = httpx.get(f"{api.url}/health").json()
        assert (healthy["status"], healthy["warnings"]) == ("ok", [])

        first.status = 503  # its engine core died: the router's own /health turns 503 at once
        one_down = health_until(api.url, lambda r: bool(r.json()["warnings"]))
        assert one_down.status_code == 200 and one_down.json()["status"] == "ok", "the other replica still serves"
        assert one_down.json()["warnings"] == [
            f"chat model: 1 of 2 replicas behind the router at {router} down: {first_url}"]

        second.status = 503
        all_down = health_until(api.url, lambda r: r.status_code == 503)
        assert all_down.status_code == 503, all_down.json()
        assert all_down.json()["reason"] == (
            f"chat model: no healthy replica behind the router at {router} (down: {', '.join(sorted(urls))})")
        assert all_down.json()["warnings"] == [], "said once, as the reason"

        first.status = second.status = 200
        back = health_until(api.url, lambda r: r.status_code == 200 and not r.json()["warnings"])
        assert back.status_code == 200 and back.json()["warnings"] == [], back.json()


def test_a_plain_vllm_server_is_asked_once_whether_it_is_a_router(kit: Any) -> None:
    handler, url, stop = replica()
    asked: list[str] = []
    original = handler.do_GET

    def record(self: BaseHTTPRequestHandler) -> None:
        asked.append(self.path)
        original(self)

    handler.do_GET = record  # type: ignore[method-assign]
    try:
        with kit_over(HTTPEngine(url, "tiny"), kit.tts) as plain_kit:
            for _ in range(3):
                assert plain_kit.health() is None and plain_kit.warnings() == []
    finally:
        stop()
    assert asked == ["/health", "/workers", "/health", "/health"]
