"""Engine for an OpenAI-compatible `vllm serve` process, over HTTP.

One `vllm serve` process per model is what vLLM's maintainers recommend for several models; this engine
talks to one of them:

* Generation streams `POST /v1/completions` with `stream=true` and vLLM's `return_token_ids=true`, so each
  server-sent chunk carries the ids of exactly the tokens it adds (`choices[0].token_ids`), all of them.
* A prompt is text or a list of token ids (vLLM's completions endpoint takes a list of ints as `prompt`,
  so Orpheus id prompts are never re-tokenised).
* Abort = close the HTTP stream: vLLM aborts a request whose client disconnects. Each request's stream
  is read by its own task; `abort(id)` cancels that task, and closing the `generate()` iterator does too.
* Behind vllm-router (several replicas of one model, docs/ENGINES.md "Scale-out"), generation and templates
  go through it unchanged; the health check asks the router which replicas are down (`GET /workers`).
* `render_chat` asks the server to apply the model's chat template: `POST /tokenize` with `messages` and
  `add_generation_prompt=true` returns the prompt as ids (awaited: it never blocks the event loop).

Uses `httpx` (imported lazily: voicekit runs without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voicekit.engines.base import ChatMessage, Delta, EngineBase, Prompt, SamplingSettings
from voicekit.engines.loop import Channel
from voicekit.engines.vllm_engine import fold_system_message
from voicekit.errors import ModelUnavailableError, VoicekitError, first_line


@dataclass(frozen=True)
class Replicas:
    """The model servers behind a router, by URL, as the router's own health checks see them."""

    healthy: tuple[str, ...]
    down: tuple[str, ...]

    @property
    def total(self) -> int:
        return len(self.healthy) + len(self.down)

    @classmethod
    def of(cls, workers: list[Any]) -> Replicas:
        """From vllm-router's `GET /workers` list (`url`, `is_healthy` per worker)."""
        rows = [w for w in workers if isinstance(w, dict) and "url" in w]
        return cls(tuple(sorted(str(w["url"]) for w in rows if w.get("is_healthy"))),
                   tuple(sorted(str(w["url"]) for w in rows if not w.get("is_healthy"))))


_DONE = object()  # the `[DONE]` event that ends a completion stream
HEALTH_TIMEOUT_S = 5.0  # a server that takes longer to answer its health route is not serving


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ModelUnavailableError("the HTTP engine needs httpx (pip install httpx)") from error
    return httpx


class EngineHTTPError(VoicekitError, RuntimeError):
    """The vLLM server answered with an error (bad request, prompt too long, server failure)."""


def completion_body(
    model: str,
    prompt: Prompt,
    sampling: SamplingSettings,
    request_id: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a streamed vLLM completion for `prompt` with `sampling`."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt if isinstance(prompt, str) else [int(t) for t in prompt],
        "stream": True,
        "return_token_ids": True,
        "request_id": request_id,
        "max_tokens": int(sampling.max_tokens),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "repetition_penalty": float(sampling.repetition_penalty),
    }
    if sampling.top_k and sampling.top_k > 0:
        body["top_k"] = int(sampling.top_k)
    if sampling.stop_token_ids:
        body["stop_token_ids"] = [int(t) for t in sampling.stop_token_ids]
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.seed is not None:
        body["seed"] = int(sampling.seed)
    if extra:
        body.update(extra)
    return body


class HTTPEngine(EngineBase):
    """A voicekit `Engine` backed by a `vllm serve` process (OpenAI-compatible API).

    `sampling_overrides` is merged into every completion body (any vLLM completion field, for example
    `{"ignore_eos": True}`).
    """

    name = "http"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 10.0,
        sampling_overrides: Mapping[str, Any] | None = None,
        tokenizer: Callable[[str], list[int]] | None = None,
    ) -> None:
        super().__init__()
        self._httpx = _import_httpx()
        self._tokenizer = tokenizer  # the model's hub tokenizer, for `tokenize` (Orpheus's prompts)
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = self._httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._sampling_overrides = dict(sampling_overrides or {})
        self._client: Any = None  # created on the loop that first uses it
        self._is_router: bool | None = None  # known after the server first answers GET /workers

    def tokenize(self, text: str) -> list[int]:
        """Ids of `text` from the tokenizer this engine was given (the served model's, from the hub)."""
        if self._tokenizer is None:
            return super().tokenize(text)
        return list(self._tokenizer(text))

    def _async_client(self) -> Any:
        if self._client is None:
            self._client = self._httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        return self._client

    # -- Engine protocol -------------------------------------------------------------------------------

    async def generate(
        self, prompt: Prompt, sampling: SamplingSettings, request_id: str | None = None
    ) -> AsyncIterator[Delta]:
        """Stream one completion; closing this iterator closes the HTTP stream, which aborts it."""
        request_id = self._begin(request_id)
        body = completion_body(self.model, prompt, sampling, request_id, self._sampling_overrides)
        channel: Channel[Delta] = Channel()
        reader = asyncio.create_task(self._read_stream(body, channel), name=f"voicekit-http-{request_id}")
        self._running[request_id] = reader  # abort() cancels it
        finished = False
        try:
            async for delta in channel:
                finished = delta.finished
                yield delta
                if finished:
                    break
            if not finished:
                # The stream ended without a finish reason: it was closed by abort() or by the server.
                yield Delta(finished=True, finish_reason="abort")
        finally:
            self._end(request_id)
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_stream(self, body: dict[str, Any], channel: Channel[Delta]) -> None:
        from httpx_sse import aconnect_sse

        client = self._async_client()
        try:
            async with aconnect_sse(client, "POST", "/v1/completions", json=body) as events:
                response = events.response
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")
                    raise EngineHTTPError(
                        f"vLLM server at {self.base_url} refused the completion "
                        f"({response.status_code}): {_error_message(detail)}"
                    )
                async for event in events.aiter_sse():
                    delta = _delta_of(event.data)
                    if delta is None:
                        continue
                    if delta is _DONE:
                        break
                    channel.put(delta)
                    if delta.finished:
                        break
            channel.end()
        except asyncio.CancelledError:
            channel.end()  # aborted: leaving the `async with` closed the connection
            raise
        except EngineHTTPError as error:
            channel.fail(error)
        except self._httpx.HTTPError as error:
            channel.fail(EngineHTTPError(f"lost the vLLM server at {self.base_url}: {type(error).__name__}: {error}"))
        except Exception as error:
            channel.fail(error)

    async def abort(self, request_id: str) -> None:
        """Close the request's HTTP stream (vLLM aborts on disconnect); its stream ends with an abort delta."""
        reader = self._running.get(request_id)
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def render_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Apply the served model's chat template (server side, `POST /tokenize`) and return ids.

        Awaited on the async client, so the event loop (and every other stream on it) runs on meanwhile.
        A system message is folded into the first user turn when the template refuses the system role.
        """
        client = self._async_client()
        dicts = [message.as_dict() for message in messages]
        response = await client.post("/tokenize", json=self._tokenize_body(dicts))
        if response.status_code != 200 and _refuses_system(dicts, response.text):
            response = await client.post("/tokenize", json=self._tokenize_body(fold_system_message(dicts)))
        return self._tokens_from(response)

    async def health(self) -> bool:
        """True when `GET /health` answers 200."""
        return await self.failure() is None

    async def failure(self) -> str | None:
        """Closed, or the server's `GET /health` fails: no connection, no answer within a few seconds, or not 200
        (vLLM answers 503 once its engine core died). Behind vllm-router, whose `/health` is 503 as soon as any
        replica is down, only a router with no healthy replica left is a failure (`warnings()` names the rest)."""
        if self._closed:
            return f"the HTTP engine for {self.base_url} is closed"
        try:
            response = await self._async_client().get("/health", timeout=HEALTH_TIMEOUT_S)
        except self._httpx.HTTPError as error:
            return f"cannot reach the server at {self.base_url}/health ({type(error).__name__}: {first_line(error)})"
        if response.status_code == 200:
            return None
        replicas = await self.replicas()
        if replicas is None:
            return f"the server at {self.base_url} answered GET /health with {response.status_code}"
        if replicas.healthy:
            return None
        down = ", ".join(replicas.down) or "none listed"
        return f"no healthy replica behind the router at {self.base_url} (down: {down})"

    async def replicas(self) -> Replicas | None:
        """The replicas behind a vllm-router at `base_url` (its `GET /workers`), or None when it is no router."""
        if self._is_router is False:
            return None
        try:
            response = await self._async_client().get("/workers", timeout=HEALTH_TIMEOUT_S)
            workers = response.json()["workers"] if response.status_code == 200 else None
            replicas = Replicas.of(workers) if isinstance(workers, list) else None
        except (self._httpx.HTTPError, ValueError, KeyError, TypeError):
            replicas = None  # the next health check asks again
        else:
            self._is_router = replicas is not None  # settled once the server has answered
        return replicas

    async def warnings(self) -> list[str]:
        """What still serves but is worse than it should be: here, replicas down behind a router."""
        replicas = await self.replicas() if not self._closed else None
        if replicas is None or not replicas.down or not replicas.healthy:
            return []  # all well, or none left: then it is `failure()`'s to say
        return [f"{len(replicas.down)} of {replicas.total} replicas behind the router at {self.base_url} down: "
                f"{', '.join(replicas.down)}"]

    async def close(self) -> None:
        """Abort running requests and close the HTTP client (the server keeps running)."""
        self._closed = True
        for request_id in list(self._running):
            await self.abort(request_id)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- helpers -----------------------------------------------------------------------------------------

    def _tokenize_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "add_generation_prompt": True}

    def _tokens_from(self, response: Any) -> list[int]:
        if response.status_code != 200:
            raise EngineHTTPError(
                f"vLLM server at {self.base_url} could not apply the chat template "
                f"({response.status_code}): {_error_message(response.text)}"
            )
        return [int(t) for t in response.json()["tokens"]]


def _delta_of(data: str) -> Any:
    """The data of one server-sent event (httpx-sse parses the stream) -> a Delta, `_DONE` for `[DONE]`, or
    None for anything else."""
    data = data.strip()
    if not data:
        return None
    if data == "[DONE]":
        return _DONE
    payload = json.loads(data)
    if "error" in payload:
        raise EngineHTTPError(f"vLLM server error: {_error_message(json.dumps(payload))}")
    choices = payload.get("choices") or []
    if not choices:
        return None  # e.g. a usage-only chunk
    choice = choices[0]
    reason = choice.get("finish_reason")
    return Delta(
        text=choice.get("text") or "",
        token_ids=[int(t) for t in choice.get("token_ids") or []],
        finished=reason is not None,
        finish_reason=reason,
    )


def _error_message(detail: str) -> str:
    try:
        payload = json.loads(detail)
    except ValueError:
        return detail.strip()[:500]
    error = payload.get("error", payload) if isinstance(payload, dict) else payload
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:500]
    return str(error)[:500]


def _refuses_system(messages: list[dict[str, str]], detail: str) -> bool:
    return bool(messages) and messages[0]["role"] == "system" and "system" in detail.lower()
