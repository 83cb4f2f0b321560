"""Request bodies and OpenAI-shaped errors of the HTTP API (routes: the routers that voicekit.serve.api includes)."""

from __future__ import annotations

import shutil
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

from voicekit.errors import EmptyTextError, TextTooLongError, UnknownVoiceError, VoicekitError
from voicekit.pipeline import Mode
from voicekit.serve.audio import FORMATS, AudioFormat

SPEECH_MODELS = ("voicekit", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # any name is accepted; these are listed


# -- errors -----------------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error JSON."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def voicekit_error(error: VoicekitError, text_param: str) -> ApiError:
    """Map a voicekit input error to a 400 naming the offending parameter."""
    if isinstance(error, UnknownVoiceError):
        return ApiError(400, str(error), param="voice", code="unknown_voice")
    if isinstance(error, EmptyTextError):
        return ApiError(400, str(error), param=text_param, code="empty_input")
    if isinstance(error, TextTooLongError):
        return ApiError(400, str(error), param=text_param, code="input_too_long")
    return ApiError(400, str(error), code="invalid_request")


# -- request bodies ---------------------------------------------------------------------------------


class ChatRequest(BaseModel):
    """Body of `POST /chat`."""

    model_config = ConfigDict(extra="forbid")

    message: str
    voice: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    mode: Mode | None = None
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    seed: int | None = None


class VoiceId(BaseModel):
    """OpenAI's custom-voice reference `{"id": "..."}`."""

    id: str


class SpeechRequest(BaseModel):
    """Body of `POST /v1/audio/speech` (OpenAI's speech API)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "voicekit"
    input: str
    voice: str | VoiceId | None = None
    response_format: str = "mp3"
    speed: float | None = None
    instructions: str | None = None
    stream_format: str | None = None


def check_speech_options(body: SpeechRequest) -> AudioFormat:
    """Refuse what the API cannot honour (never silently ignored); return the response format."""
    fmt = FORMATS.get(body.response_format)
    if fmt is None:
        raise ApiError(400, f"unsupported response_format {body.response_format!r}; use one of "
                            f"{', '.join(FORMATS)}", param="response_format", code="unsupported_format")
    if fmt.needs_ffmpeg and not _ffmpeg_available():
        raise ApiError(400, f"response_format {fmt.name!r} needs ffmpeg, which is not installed; use wav or pcm",
                       param="response_format", code="unsupported_format")
    if body.speed is not None and body.speed != 1.0:
        raise ApiError(400, f"speed {body.speed} is not supported: voicekit speaks at speed 1.0 only",
                       param="speed", code="unsupported_value")
    if body.instructions and body.instructions.strip():
        raise ApiError(400, "instructions are not supported by voicekit's speech models",
                       param="instructions", code="unsupported_value")
    if body.stream_format not in (None, "audio"):
        raise ApiError(400, f"stream_format {body.stream_format!r} is not supported; use 'audio'",
                       param="stream_format", code="unsupported_value")
    if not body.model.strip():
        raise ApiError(400, f"model must be a name such as {', '.join(SPEECH_MODELS)}", param="model",
                       code="invalid_value")
    return fmt


def validation_error(error: RequestValidationError) -> ApiError:
    """FastAPI's 422 as an OpenAI-shaped 400 (malformed JSON, missing or mistyped fields)."""
    problems = error.errors()
    first = problems[0] if problems else {}
    kind = first.get("type", "")
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = location[0] if location else None
    if kind in ("json_invalid", "model_attributes_type") or (kind == "missing" and not location):
        return ApiError(400, "the request body must be a JSON object: "
                             f"{first.get('msg', 'could not parse it')}", code="invalid_json")
    if kind == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if kind == "missing":
        return ApiError(400, f"missing required parameter: {param}", param=param, code="missing_required_parameter")
    where = ".".join(location) or "body"
    return ApiError(400, f"invalid value for {where}: {first.get('msg', 'invalid')}", param=param,
                    code="invalid_value")


def _ffmpeg_available() -> bool:
    return shutil.which("ffmpeg") is not None
