"""`GET /metrics`: what the server is doing, in Prometheus' text format (prometheus-client), behind the API key or
password when one is set. docs/API.md, "Metrics", lists every series; docs/grafana-voicekit.json charts them.

Each app has its own `CollectorRegistry` (tests run many apps in one process). Labels are bounded: a route is its
template (`/chat/{request_id}`, never the raw path; `unmatched` when no route matched), a method one of the
HTTP verbs or `other`, a status a number; no label carries a request, session or voice id. What changes with every
request is counted by hooks (`RouteMetrics` middleware, `observe_stream` when a chat or speech stream ends,
`observe_event` for what a realtime session sends, `transcribing` around a transcription); what the server holds
now (slots, sessions, memory) is read at scrape time by `_StateCollector`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicekit.build import resources
from voicekit.serve.deps import Authorized, State

# Few buckets: a scrape's cost is prometheus-client formatting each bucket of each histogram (~10 us a line here)
LATENCY_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
TURN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 120.0)
RTF_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
STREAM_ROUTES = {"chat": "/chat", "speech": "/v1/audio/speech"}  # RequestRecord.route -> its route template
REALTIME_ROUTE = "/v1/realtime"
TRANSCRIPTION_ROUTE = "/v1/audio/transcriptions"
RESPONSE_STATUSES = frozenset({"completed", "cancelled", "failed", "incomplete"})

# No `*_created` twin of every counter and histogram (a process-wide switch of prometheus-client): it doubles the
# scrape and Prometheus does not need it.
disable_created_metrics()


class Metrics:
    """The series of one app and the hooks that move them (`state`: the app's ServerState, read at scrape time)."""

    def __init__(self, state: Any) -> None:
        registry = self.registry = CollectorRegistry()
        self.requests = Counter("voicekit_http_requests", "HTTP requests answered, by route template, method and "
                                "status", ["route", "method", "status"], registry=registry)
        self.turned_away = Counter("voicekit_turned_away", "requests turned away because the server was busy: HTTP "
                                   "429, realtime replies refused (`busy`) and sessions refused", ["route"],
                                   registry=registry)
        self.timed_out = Counter("voicekit_timed_out", "chat and speech streams stopped at the request time limit "
                                 "(a 504 before any audio, or cut mid-stream)", ["route"], registry=registry)
        self.streams = Counter("voicekit_streams", "chat and speech streams ended, by outcome (done, timeout, "
                               "disconnected, failed)", ["route", "outcome"], registry=registry)
        self.first_audio = Histogram("voicekit_first_audio_seconds", "chat and speech: from the request's arrival "
                                     "(its wait in line included) to its first audio", ["route"],
                                     buckets=LATENCY_BUCKETS, registry=registry)
        self.admission_wait = Histogram("voicekit_admission_wait_seconds", "chat and speech: wait in line for a "
                                        "running slot", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.turn = Histogram("voicekit_turn_seconds", "a whole turn, to its last audio: chat and speech from the "
                              "request's arrival, realtime replies from their start", ["route"],
                              buckets=TURN_BUCKETS, registry=registry)
        self.rtf = Histogram("voicekit_speech_real_time_factor", "speech synthesis seconds per second of audio of "
                             "a finished turn (above 1: slower than real time)", ["route"], buckets=RTF_BUCKETS,
                             registry=registry)
        self.realtime_first_audio = Histogram(
            "voicekit_realtime_turn_end_to_first_audio_seconds", "realtime: from the end of the user's turn "
            "(speech_stopped) to the reply's first audio", buckets=LATENCY_BUCKETS, registry=registry)
        self.realtime_responses = Counter("voicekit_realtime_responses", "realtime replies ended, by status",
                                          ["status"], registry=registry)
        self.sessions_opened = Counter("voicekit_realtime_sessions_opened", "realtime sessions accepted",
                                       registry=registry)
        self.asr_rtf = Histogram("voicekit_transcription_real_time_factor", "speech recognition seconds per second "
                                 "of speech", ["route"], buckets=RTF_BUCKETS, registry=registry)
        self.transcribing = Gauge("voicekit_transcriptions_in_flight", "POST /v1/audio/transcriptions running or "
                                  "waiting", registry=registry)
        ProcessCollector(registry=registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        registry.register(_StateCollector(state))

    def scrape(self) -> bytes:
        """The exposition text of every series."""
        return generate_latest(self.registry)

    def observe_stream(self, record: Any, now: float) -> None:
        """A chat or speech stream ended (ServerState.finish): its outcome, first audio, turn and RTF."""
        route = STREAM_ROUTES.get(record.route, record.route)
        self.streams.labels(route, record.outcome).inc()
        if record.outcome == "timeout":
            self.timed_out.labels(route).inc()
        if record.first_audio_s is not None:
            self.first_audio.labels(route).observe(record.first_audio_s)
            self.admission_wait.labels(route).observe(max(0.0, record.started - record.arrived))
        timings = record.reply.timings if record.reply is not None else None
        if record.outcome == "done" and timings is not None:
            self.turn.labels(route).observe(now - record.arrived)
            if timings.rtf is not None:
                self.rtf.labels(route).observe(timings.rtf)

    def observe_event(self, event: Any) -> None:
        """An event a realtime session sends: replies, refusals and transcripts are counted."""
        if event.type == "response.done":
            response = event.data.get("response") or {}
            status = response.get("status")
            self.realtime_responses.labels(status if status in RESPONSE_STATUSES else "other").inc()
            timings = response.get("timings") or {}
            if timings.get("turn_end_to_first_audio_s") is not None:
                self.realtime_first_audio.observe(timings["turn_end_to_first_audio_s"])
            if status == "completed" and timings.get("total_s") is not None:
                self.turn.labels(REALTIME_ROUTE).observe(timings["total_s"])
                if timings.get("rtf") is not None:
                    self.rtf.labels(REALTIME_ROUTE).observe(timings["rtf"])
        elif event.type == "error" and (event.data.get("error") or {}).get("code") == "busy":
            self.turned_away.labels(REALTIME_ROUTE).inc()
        elif event.type == "conversation.item.input_audio_transcription.completed" and event.data.get("duration_s"):
            self.asr_rtf.labels(REALTIME_ROUTE).observe(event.data["asr_s"] / event.data["duration_s"])

    def observe_transcription(self, seconds: float, duration_s: float) -> None:
        """A file transcribed by POST /v1/audio/transcriptions."""
        if duration_s > 0:
            self.asr_rtf.labels(TRANSCRIPTION_ROUTE).observe(seconds / duration_s)


class _StateCollector:
    """What the server holds at scrape time: slots, sessions, streams, engine requests, GPU and vLLM memory."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        state, admission = self.state, self.state.admission
        limits = admission.limits
        yield _gauge("voicekit_running", "requests and realtime replies holding a running slot", admission.running)
        yield _gauge("voicekit_waiting", "requests waiting in line for a running slot", admission.waiting)
        yield _gauge("voicekit_max_running", "running slots (VOICEKIT_MAX_RUNNING)", limits.running)
        yield _gauge("voicekit_max_waiting", "places in line (VOICEKIT_MAX_WAITING)", limits.waiting)
        yield _gauge("voicekit_realtime_sessions", "realtime sessions open", len(state.sessions))
        yield _gauge("voicekit_max_realtime_sessions", "realtime sessions the server keeps open at once",
                     limits.max_sessions)
        yield _gauge("voicekit_active_streams", "chat and speech streams in flight", len(state.active))
        engine = getattr(state.kit.chat_model, "engine", None)
        yield _gauge("voicekit_engine_requests", "chat engine requests in flight",
                     len(engine.active_requests()) if engine is not None else 0)
        turned_away = CounterMetricFamily("voicekit_admission_turned_away", "everything admission control turned "
                                          "away: API, page and realtime replies")
        turned_away.add_metric([], admission.turned_away)
        yield turned_away
        info = GaugeMetricFamily("voicekit_info", "the kit served (always 1)", labels=["preset", "chat", "tts"])
        description = state.kit.description
        info.add_metric([str(description.get(key, "")) for key in ("preset", "chat", "tts")], 1)
        yield info
        yield from _memory(state.kit)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _memory(kit: Any) -> Iterator[Metric]:
    """GPU memory and each in-process vLLM engine's share and KV cache (voicekit.build.resources: loads nothing;
    nothing without a GPU). vLLM's live KV-cache use is not here: its stats are off in-process."""
    loaded = resources(kit)
    gpu = loaded.get("gpu")
    if gpu:
        for key, what in (("total_bytes", "total"), ("used_bytes", "in use by every process"),
                          ("torch_allocated_bytes", "allocated by this process's torch")):
            if gpu.get(key) is not None:
                yield _gauge(f"voicekit_gpu_memory_{key}", f"GPU memory: {what}", gpu[key])
    engines = loaded.get("vllm_engines") or []
    if engines:
        tokens = GaugeMetricFamily("voicekit_vllm_kv_cache_tokens", "KV-cache tokens of each in-process vLLM "
                                   "engine", labels=["role"])
        share = GaugeMetricFamily("voicekit_vllm_memory_share", "gpu_memory_utilization of each in-process vLLM "
                                  "engine", labels=["role"])
        for facts in engines:
            if facts.get("kv_cache_tokens") is not None:
                tokens.add_metric([facts["role"]], facts["kv_cache_tokens"])
            share.add_metric([facts["role"]], facts.get("gpu_memory_utilization") or 0)
        yield tokens
        yield share


class RouteMetrics:
    """ASGI middleware: counts every HTTP response by route template, method and status (429s: turned away)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception before the response started: the server's error page answers 500

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.count(scope, status[0])

    def count(self, scope: Scope, status: int) -> None:
        # The router left the matched route in the scope (the innermost: a mounted app's own); its template, never
        # the path, keeps the series bounded.
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(route, method if method in METHODS else "other", str(status)).inc()
        if status == 429:
            self.metrics.turned_away.labels(route).inc()


router = APIRouter()


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def scrape(state: State, rid: Authorized) -> Response:
    """`GET /metrics` behind the API's credentials: the app's series (ServerState.metrics)."""
    return Response(state.metrics.scrape(), headers={"Content-Type": CONTENT_TYPE_LATEST})
