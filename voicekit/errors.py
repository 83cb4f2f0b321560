"""Errors voicekit raises for problems a user can fix.

Every face (CLI, HTTP API, web page, notebooks) shows `str(error)` as one clear line; anything that is
not a `VoicekitError` is a bug and may carry a traceback.
"""

from __future__ import annotations

from typing import Any


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name (library errors often append long dumps)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class VoicekitError(Exception):
    """Base class: a problem with the user's input, settings or environment."""


class EmptyTextError(VoicekitError, ValueError):
    """The text (or chat message) has nothing to speak."""

    def __init__(self, what: str = "text") -> None:
        super().__init__(f"the {what} is empty: give some words to speak")


class TextTooLongError(VoicekitError, ValueError):
    """The text is over the documented limit (`Settings.max_text_chars`)."""

    def __init__(self, length: int, limit: int, what: str = "text") -> None:
        self.length = length
        self.limit = limit
        super().__init__(
            f"the {what} is {length} characters long; the limit is {limit} "
            "(set VOICEKIT_MAX_TEXT_CHARS to change it)"
        )


class InvalidHistoryError(VoicekitError, ValueError):
    """A conversation to restore (`history=`) that is not user and assistant messages with text."""


class UnknownVoiceError(VoicekitError, ValueError):
    """The voice is not one the active speech backend offers."""

    def __init__(self, voice: str, voices: list[str]) -> None:
        self.voice = voice
        self.voices = list(voices)
        super().__init__(f"unknown voice {voice!r}; available voices: {', '.join(self.voices)}")


class ModelUnavailableError(VoicekitError, RuntimeError):
    """A model or voice could not be found locally or fetched from the hub."""


class SettingsError(VoicekitError, ValueError):
    """A setting (keyword argument or VOICEKIT_* variable) has a bad value."""


class NoAudioError(VoicekitError, RuntimeError):
    """The speech model finished without producing any audio for a text."""


# -- listening (speech recognition) -----------------------------------------------------------------


class AudioDecodeError(VoicekitError, ValueError):
    """The audio to transcribe cannot be read: not an audio file, or samples of the wrong type or shape."""


class AudioTooLongError(VoicekitError, ValueError):
    """The audio to transcribe is longer than the documented limit (voicekit.listening.asr.MAX_TRANSCRIBE_S)."""

    def __init__(self, seconds: float, limit: float) -> None:
        self.seconds = seconds
        self.limit = limit
        super().__init__(f"the audio is {seconds:.1f} s long; the limit is {limit:g} s: cut it into shorter parts")


class UnsupportedLanguageError(VoicekitError, ValueError):
    """The language asked for is not one the speech recognizer knows."""


# -- a voicekit server's answers (voicekit.connect) -----------------------------------------------


class RemoteError(VoicekitError):
    """The server answered with an error the kit itself has no class for; `status`, `code` say which."""

    status: int | None = None
    code: str | None = None


class AuthenticationError(RemoteError, PermissionError):
    """The server wants an API key or password (401)."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """No voicekit server answers at the URL."""


class InvalidRequestError(RemoteError, ValueError):
    """The server refused the request's arguments (a 400 other than the kit's own input errors)."""


def server_error(cls: type[Exception], message: str, **attributes: Any) -> Exception:
    """An instance of `cls` carrying the server's own message (the kit's classes build theirs from arguments)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(attributes)
    return error
