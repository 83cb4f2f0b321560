"""`GET /metrics` over real HTTP on the real cpu kit: parsed with prometheus-client's own parser, the series move as
requests stream, are turned away (429) and realtime sessions talk; credentials are asked when set; unknown paths add
no series (routes are templates).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from voicekit.bench.talk import _spoken, spoken_turn
from voicekit.serve import BackgroundServer
from voicekit.serve.admission import Limits
from voicekit.serve.api import create_app

pytestmark = pytest.mark.slow

SPEECH = {"model": "tts-1", "input": "Hello there. This is voicekit speaking.", "response_format": "pcm"}
LONG_SPEECH = {"model": "tts-1", "input": "This sentence goes on and on for a while. " * 30, "response_format": "pcm"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of /metrics by (name, sorted labels)."""
    response = httpx.get(f"{url}/metrics", headers=headers or {}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def server(kit: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(kit, limits=Limits(running=4, waiting=2))) as running:
        yield running


def test_a_stream_moves_its_counters_and_histograms(server: BackgroundServer) -> None:
    before = scrape(server.url)
    response = httpx.post(f"{server.url}/v1/audio/speech", json=SPEECH, timeout=60)
    assert response.status_code == 200 and len(response.content) > 10_000
    after = scrape(server.url)
    route = {"route": "/v1/audio/speech"}
    assert value(after, "voicekit_http_requests_total", method="POST", status="200", **route) == \
        value(before, "voicekit_http_requests_total", method="POST", status="200", **route) + 1
    assert value(after, "voicekit_streams_total", outcome="done", **route) == \
        value(before, "voicekit_streams_total", outcome="done", **route) + 1
    for histogram in ("voicekit_first_audio_seconds", "voicekit_turn_seconds", "voicekit_speech_real_time_factor",
                      "voicekit_admission_wait_seconds"):
        assert value(after, f"{histogram}_count", **route) == value(before, f"{histogram}_count", **route) + 1
    first_audio = value(after, "voicekit_first_audio_seconds_sum", **route) - \
        value(before, "voicekit_first_audio_seconds_sum", **route)
    turn = value(after, "voicekit_turn_seconds_sum", **route) - value(before, "voicekit_turn_seconds_sum", **route)
    assert 0 < first_audio <= turn < 30
    assert value(after, "voicekit_max_running") == 4 and value(after, "voicekit_running") == 0
    assert value(after, "process_resident_memory_bytes") > 50e6
    assert value(after, "voicekit_info", preset="cpu", chat=_description(server, "chat"),
                 tts=_description(server, "tts")) == 1


def _description(server: BackgroundServer, key: str) -> str:
    return str(server.app.state.voicekit.kit.description[key])


def test_unknown_paths_and_ids_add_no_series(server: BackgroundServer) -> None:
    for _ in range(3):  # every kind once, so that the series exist before counting them
        _stray_requests(server.url)
    before = scrape(server.url)
    for _ in range(5):
        _stray_requests(server.url)
    after = scrape(server.url)
    assert set(after) == set(before), "only the counts moved"
    assert value(after, "voicekit_http_requests_total", route="/v1/{rest:path}", method="GET", status="404") >= 8
    assert value(after, "voicekit_http_requests_total", route="unmatched", method="GET", status="404") >= 8
    assert value(after, "voicekit_http_requests_total", route="/chat/{request_id}", method="GET", status="404") >= 8
    assert value(after, "voicekit_http_requests_total", route="unmatched", method="other", status="404") >= 8
    assert not any(uuid_part in str(key) for key in after for uuid_part in ("stray-", "nothing-"))


def _stray_requests(url: str) -> None:
    token = uuid.uuid4().hex
    httpx.get(f"{url}/v1/stray-{token}")
    httpx.get(f"{url}/nothing-{token}")
    httpx.get(f"{url}/chat/{token}")
    httpx.request("PROPFIND", f"{url}/nothing-{token}")


def test_turned_away_requests_are_counted(kit: Any) -> None:
    with BackgroundServer(create_app(kit, limits=Limits(running=1, waiting=0))) as server:
        before = scrape(server.url)
        # A long text, read no further than its first audio: the server is held on a full socket, its slot taken.
        with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=LONG_SPEECH, timeout=60) as held:
            assert held.status_code == 200
            chunks = held.iter_bytes()  # kept: a dropped iterator would close the stream
            next(chunks)
            during = scrape(server.url)
            busy = httpx.post(f"{server.url}/v1/audio/speech", json=SPEECH, timeout=30)
            assert busy.status_code == 429
            after = scrape(server.url)
    route = {"route": "/v1/audio/speech"}
    assert value(during, "voicekit_running") == 1 and value(during, "voicekit_active_streams") == 1
    assert value(after, "voicekit_turned_away_total", **route) == value(before, "voicekit_turned_away_total",
                                                                       **route) + 1
    assert value(after, "voicekit_http_requests_total", method="POST", status="429", **route) == 1
    assert value(after, "voicekit_admission_turned_away_total") == 1


def test_a_spoken_realtime_turn_moves_the_session_series(server: BackgroundServer, kit: Any) -> None:
    socket_url = server.url.replace("http://", "ws://") + "/v1/realtime"
    before = scrape(server.url)

    async def one_open_session() -> Samples:
        from websockets.asyncio.client import connect

        async with connect(socket_url, max_size=None) as ws:
            await ws.recv()  # session.created: the session is open
            return await asyncio.to_thread(scrape, server.url)

    during = asyncio.run(one_open_session())
    assert value(during, "voicekit_realtime_sessions") == value(before, "voicekit_realtime_sessions") + 1
    turn = asyncio.run(spoken_turn(socket_url, _spoken(kit, "What is the capital of France?")))
    assert turn["status"] == "completed" and turn["turn_end_to_first_audio_s"] is not None
    deadline = time.monotonic() + 10
    while (after := scrape(server.url)) and value(after, "voicekit_realtime_sessions") and time.monotonic() < deadline:
        time.sleep(0.1)  # the sessions close just after the client does
    realtime = {"route": "/v1/realtime"}
    assert value(after, "voicekit_realtime_sessions") == 0
    assert value(after, "voicekit_realtime_sessions_opened_total") == \
        value(before, "voicekit_realtime_sessions_opened_total") + 2
    assert value(after, "voicekit_realtime_responses_total", status="completed") == \
        value(before, "voicekit_realtime_responses_total", status="completed") + 1
    assert value(after, "voicekit_realtime_turn_end_to_first_audio_seconds_count") == \
        value(before, "voicekit_realtime_turn_end_to_first_audio_seconds_count") + 1
    assert value(after, "voicekit_turn_seconds_count", **realtime) == \
        value(before, "voicekit_turn_seconds_count", **realtime) + 1
    assert value(after, "voicekit_transcription_real_time_factor_count", **realtime) >= 1


def test_metrics_need_the_api_key_or_password_when_one_is_set(kit: Any) -> None:
    app = create_app(kit, api_key="sk-metrics", password="ops:hunter2")
    with BackgroundServer(app) as server:
        refused = httpx.get(f"{server.url}/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        by_key = scrape(server.url, {"Authorization": "Bearer sk-metrics"})
        basic = base64.b64encode(b"ops:hunter2").decode()
        by_password = scrape(server.url, {"Authorization": f"Basic {basic}"})
        assert value(by_password, "voicekit_http_requests_total", route="/metrics", method="GET", status="401") == 2
        assert value(by_key, "voicekit_max_running") == 2, "the cpu preset's limits"
        assert httpx.get(f"{server.url}/health").status_code == 200, "health never asks"


def test_the_grafana_dashboard_charts_only_series_the_server_exports(server: BackgroundServer, repo_root: Any) -> None:
    board = json.loads((repo_root / "docs" / "grafana-voicekit.json").read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    named = {re.sub(r"_(bucket|count|sum)$", "", name) for query in queries
             for name in re.findall(r"\b((?:voicekit|process)_[a-z_]+)", query)}
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    exported = {family.name for family in text_string_to_metric_families(text)}
    exported |= {f"{name}_total" for name in exported}  # the parser names a counter without its _total
    on_a_gpu_only = {"voicekit_gpu_memory_used_bytes", "voicekit_gpu_memory_total_bytes",
                     "voicekit_vllm_kv_cache_tokens"}
    assert named - exported == on_a_gpu_only
