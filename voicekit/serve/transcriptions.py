"""`POST /v1/audio/transcriptions`: OpenAI's transcription API on the kit's speech recognizer (`kit.atranscribe`).

A multipart form as OpenAI's clients send it: `file` (required), `model` (any name: the kit's recognizer
answers), `language`, `prompt` (Whisper's initial prompt), `response_format` (json, text, verbose_json, srt,
vtt), `timestamp_granularities[]` (segment, word: verbose_json's `words`) and `temperature`. Uploads are
bounded (`MAX_UPLOAD_BYTES`, 25 MB like OpenAI: 413 past it). A transcription runs in a worker thread (the event
loop keeps serving) and holds a running slot of the server's Admission meanwhile, like a request that makes
audio: past the running and waiting ones, 429 with Retry-After. The transcriptions in flight and the
recognizer's speed are counted in the server's metrics (metrics.py). docs/API.md, "Transcriptions" and "Limits".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from voicekit.errors import (
    AudioDecodeError,
    AudioTooLongError,
    ModelUnavailableError,
    UnsupportedLanguageError,
    VoicekitError,
)
from voicekit.serve.admission import Busy
from voicekit.serve.deps import Authorized, State, busy_error
from voicekit.serve.schema import ApiError

if TYPE_CHECKING:
    from voicekit.listening.asr import Transcript

log = logging.getLogger("voicekit.server")

MAX_UPLOAD_BYTES = 25 * 1024 * 1024  # OpenAI's limit for one file
FORM_SLACK_BYTES = 64 * 1024  # the form's own fields and boundaries around the file
DRAIN_BYTES = 2 * MAX_UPLOAD_BYTES  # an upload past the limit is read up to here, so its client reads the 413
RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
FIELDS = {"file", "model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
          "stream"}

_FORM_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the audio: WAV, MP3, Ogg/Opus, WebM, FLAC, M4A"},
        "model": {"type": "string", "default": "whisper-1", "description": "any name: the kit's recognizer answers"},
        "language": {"type": "string", "description": "a Whisper language code (en, fr, ...); default: the "
                     "kit's asr_language"},
        "prompt": {"type": "string", "description": "Whisper's initial prompt: spellings, names"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["segment", "word"]},
                                      "description": "word: verbose_json's `words` (each word's start and end)"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0}}}}}}}


router = APIRouter()


@router.post("/v1/audio/transcriptions", openapi_extra=_FORM_SCHEMA, summary="Transcribe audio (OpenAI-compatible)")
async def transcriptions(request: Request, state: State, rid: Authorized) -> Response:
    form = await read_form(request, MAX_UPLOAD_BYTES)
    try:
        data, options, fmt = await parse_form(form, MAX_UPLOAD_BYTES)
    finally:
        await form.close()
    try:
        with state.metrics.transcribing.track_inprogress():  # running or waiting for a slot, for /metrics
            async with state.admission.slot():
                transcript = await state.kit.atranscribe(data, **options)
    except Busy as busy:
        raise busy_error(busy, rid, "transcription") from None
    except VoicekitError as error:
        raise transcription_error(error) from None
    except Exception as error:  # a bug or a broken model: logged, answered in OpenAI's shape
        log.exception("request %s transcription failed", rid)
        raise ApiError(500, f"the server failed to transcribe the audio ({type(error).__name__}); see its log",
                       kind="server_error", code="internal_error") from None
    state.metrics.observe_transcription(transcript.seconds, transcript.duration_s)
    log.info("request %s transcription: %.1f s of audio in %.2f s, %d characters, format %s", rid,
             transcript.duration_s, transcript.seconds, len(transcript.text), fmt)
    headers = {"X-Request-Id": rid, "X-Processing-Seconds": f"{transcript.seconds:.3f}",
               "X-Audio-Seconds": f"{transcript.duration_s:.3f}"}
    return render(transcript, fmt, headers)


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form, its body read with a bound: 413 past `limit` (plus the form's own bytes)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise ApiError(400, "send the audio as multipart/form-data with a 'file' field (as OpenAI's API takes it)",
                       param="file", code="invalid_request")
    declared = request.headers.get("content-length", "")
    too_large = _too_large(f"the upload is over the limit of {_megabytes(limit)}")
    if declared.isdigit() and int(declared) > DRAIN_BYTES:
        raise too_large  # not worth reading: the client may see the connection close instead of the 413
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit + FORM_SLACK_BYTES:
            chunks.append(chunk)
        elif size > DRAIN_BYTES:
            break
    if size > limit + FORM_SLACK_BYTES:
        raise too_large
    try:
        return await MultiPartParser(request.headers, _once(b"".join(chunks)), max_files=1,
                                     max_fields=len(FIELDS) + 4).parse()
    except MultiPartException as error:
        raise ApiError(400, f"the multipart form cannot be read: {error.message}", code="invalid_request") from None


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


async def parse_form(form: FormData, limit: int) -> tuple[bytes, dict[str, Any], str]:
    """The file's bytes, `kit.atranscribe` options and the response format; 400 for what cannot be honoured."""
    unknown = sorted(set(form.keys()) - FIELDS)
    if unknown:
        raise ApiError(400, f"unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                       code="unknown_parameter")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ApiError(400, "missing required parameter: file (an audio file, sent as a file part)", param="file",
                       code="missing_required_parameter")
    fmt = _text(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ApiError(400, f"unsupported response_format {fmt!r}; use one of {', '.join(RESPONSE_FORMATS)}",
                       param="response_format", code="unsupported_format")
    granularities = {str(value).strip() for value in form.getlist("timestamp_granularities[]")}
    unknown = sorted(granularities - {"segment", "word"})
    if unknown:
        raise ApiError(400, f"timestamp_granularities: 'segment' or 'word', not {unknown[0]!r}",
                       param="timestamp_granularities", code="unsupported_value")
    if granularities and fmt != "verbose_json":
        raise ApiError(400, "timestamp_granularities needs response_format verbose_json",
                       param="timestamp_granularities", code="unsupported_value")
    if _text(form, "stream").lower() in ("true", "1"):
        raise ApiError(400, "stream is not supported: the whole transcript comes in one response", param="stream",
                       code="unsupported_value")
    data = await upload.read()
    if len(data) > limit:
        raise _too_large(f"the file is {len(data):,} bytes; the limit is {_megabytes(limit)}")
    options = {"language": _text(form, "language") or None, "prompt": _text(form, "prompt") or None,
               "temperature": _temperature(_text(form, "temperature")), "words": "word" in granularities}
    return data, options, fmt


def _megabytes(limit: int) -> str:
    return f"{limit / 2**20:g} MB ({limit:,} bytes)"


def _too_large(what: str) -> ApiError:
    return ApiError(413, f"{what}: send a shorter or compressed recording (MP3, Ogg/Opus)", param="file",
                    code="file_too_large")


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise ApiError(400, f"{name} must be a form field, not a file", param=name, code="invalid_value")
    return (value or "").strip()


def _temperature(value: str) -> float | None:
    if not value:
        return None
    try:
        temperature = float(value)
    except ValueError:
        temperature = -1.0
    if not 0.0 <= temperature <= 1.0:
        raise ApiError(400, f"temperature must be a number from 0 to 1, not {value!r}", param="temperature",
                       code="invalid_value")
    return temperature


def transcription_error(error: VoicekitError) -> ApiError:
    """A voicekit error of a transcription as an OpenAI-shaped API error."""
    if isinstance(error, AudioDecodeError):
        return ApiError(400, str(error), param="file", code="invalid_audio")
    if isinstance(error, AudioTooLongError):
        return ApiError(400, str(error), param="file", code="audio_too_long")
    if isinstance(error, UnsupportedLanguageError):
        return ApiError(400, str(error), param="language", code="unsupported_language")
    if isinstance(error, ModelUnavailableError):
        return ApiError(503, f"the speech recognizer is not available: {error}", kind="server_error",
                        code="model_unavailable")
    return ApiError(400, str(error), code="invalid_request")


# -- response formats ---------------------------------------------------------------------------------


def render(transcript: Transcript, fmt: str, headers: dict[str, str]) -> Response:
    """The transcript in OpenAI's `response_format`."""
    if fmt == "json":
        return JSONResponse({"text": transcript.text}, headers=headers)
    if fmt == "verbose_json":
        return JSONResponse(verbose(transcript), headers=headers)
    if fmt in ("srt", "vtt"):
        return PlainTextResponse(subtitles(transcript, fmt), headers=headers)
    return PlainTextResponse(transcript.text + "\n", headers=headers)


def verbose(transcript: Transcript) -> dict[str, Any]:
    """OpenAI's verbose_json: the language is Whisper's code (`en`), as voicekit's settings name languages."""
    return {"task": "transcribe", "language": transcript.language, "duration": round(transcript.duration_s, 3),
            "text": transcript.text,
            "segments": [{"id": index, "start": segment.start_s, "end": segment.end_s, "text": segment.text}
                         for index, segment in enumerate(transcript.segments)],
            **({"words": [{"word": word.text, "start": word.start_s, "end": word.end_s} for word in transcript.words]}
               if transcript.words else {})}


def subtitles(transcript: Transcript, fmt: str) -> str:
    """SubRip (`srt`) or WebVTT (`vtt`) cues, one per segment."""
    separator = "," if fmt == "srt" else "."
    cues = []
    for index, segment in enumerate(transcript.segments, 1):
        span = f"{_clock(segment.start_s, separator)} --> {_clock(segment.end_s, separator)}"
        cues.append(f"{index}\n{span}\n{segment.text}\n" if fmt == "srt" else f"{span}\n{segment.text}\n")
    return ("WEBVTT\n\n" if fmt == "vtt" else "") + "\n".join(cues)


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"
