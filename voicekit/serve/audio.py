"""Audio for the HTTP API and the web page: the bundled ffmpeg, response formats and streaming encoders.

ffmpeg: Gradio re-encodes streamed audio with ffmpeg, and the API's mp3/opus/aac/flac formats need it too.
The `imageio-ffmpeg` wheel bundles a static binary; `ensure_ffmpeg()` puts a folder holding an `ffmpeg`
link to it at the front of PATH, so a fresh machine needs no system ffmpeg.

Formats (OpenAI's speech API names): `wav` (a streaming header of unknown length, then PCM as it is made),
`pcm` (raw signed 16-bit little-endian mono at the kit's sample rate, no header), and `mp3`, `opus`
(Ogg), `aac` (ADTS) and `flac`, encoded on the fly by one ffmpeg process per response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from voicekit.audio import WavStreamWriter, float_to_pcm16

log = logging.getLogger("voicekit.server")

_READ_SIZE = 1 << 15


@dataclass(frozen=True)
class AudioFormat:
    """One response format: its MIME type and, for compressed ones, the ffmpeg output arguments."""

    name: str
    media_type: str
    ffmpeg_args: tuple[str, ...] = ()

    @property
    def needs_ffmpeg(self) -> bool:
        """True for the formats ffmpeg encodes."""
        return bool(self.ffmpeg_args)


FORMATS: dict[str, AudioFormat] = {
    "wav": AudioFormat("wav", "audio/wav"),
    "pcm": AudioFormat("pcm", "audio/pcm"),
    "mp3": AudioFormat("mp3", "audio/mpeg", ("-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3")),
    # libopus takes 8/12/16/24/48 kHz only, so the stream is resampled to 24 kHz on the way.
    "opus": AudioFormat("opus", "audio/ogg", ("-c:a", "libopus", "-b:a", "32k", "-ar", "24000",
                                              "-page_duration", "20000", "-f", "ogg")),
    "aac": AudioFormat("aac", "audio/aac", ("-c:a", "aac", "-b:a", "64k", "-f", "adts")),
    "flac": AudioFormat("flac", "audio/flac", ("-c:a", "flac", "-f", "flac")),
}


# -- the bundled ffmpeg ------------------------------------------------------------------------------


def bundled_ffmpeg() -> str | None:
    """Path of the ffmpeg binary inside the imageio-ffmpeg wheel, or None when it is not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        path = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the wheel has no binary for this platform
        return None
    return path if path and os.path.isfile(path) else None


def ensure_ffmpeg() -> str | None:
    """Make `ffmpeg` resolvable on PATH, preferring the bundled binary; return the path it resolves to.

    Idempotent. Returns None (and logs a warning) when neither the bundled nor a system ffmpeg exists:
    WAV and PCM still work then, the compressed formats and the page's streamed audio do not.
    """
    binary = bundled_ffmpeg()
    if binary is not None:
        folder = Path(tempfile.gettempdir()) / f"voicekit-ffmpeg-{os.getuid() if hasattr(os, 'getuid') else 0}"
        link = folder / ("ffmpeg.exe" if os.name == "nt" else "ffmpeg")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not (link.exists() and os.path.realpath(link) == os.path.realpath(binary)):
                tmp = folder / f".ffmpeg-{os.getpid()}"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                try:
                    tmp.symlink_to(binary)
                except OSError:  # no symlinks (some Windows setups): copy instead
                    shutil.copy2(binary, tmp)
                os.replace(tmp, link)
            _prepend_path(str(folder))
        except OSError as error:
            log.warning("could not put the bundled ffmpeg on PATH (%s); using any system ffmpeg", error)
    found = shutil.which("ffmpeg")
    if found is None:
        log.warning("ffmpeg not found: install imageio-ffmpeg (pip install 'voicekit[serve]'); the page's "
                    "streamed audio and the mp3/opus/aac/flac formats need it")
    return found


def _prepend_path(folder: str) -> None:
    parts = [part for part in os.environ.get("PATH", "").split(os.pathsep) if part]
    if parts and parts[0] == folder:
        return
    os.environ["PATH"] = os.pathsep.join([folder, *[part for part in parts if part != folder]])


# -- encoders ----------------------------------------------------------------------------------------


def pcm16_array(samples: np.ndarray) -> np.ndarray:
    """Float samples as an int16 array (clipped, not peak-normalised: chunks keep their relative loudness)."""
    return np.frombuffer(float_to_pcm16(samples), dtype="<i2")


async def encode_stream(chunks: AsyncIterator[np.ndarray], fmt: AudioFormat,
                        sample_rate: int) -> AsyncGenerator[bytes, None]:
    """Turn float32 chunks into the bytes of `fmt`, yielding as soon as each piece is encoded."""
    if fmt.name in ("wav", "pcm"):
        writer = WavStreamWriter(sample_rate)
        if fmt.name == "wav":
            yield writer.header()
        async for samples in chunks:
            data = writer.encode(samples)
            if data:
                yield data
        return
    async with contextlib.aclosing(_ffmpeg_encode(_pcm_bytes(chunks), fmt, sample_rate)) as encoded:
        async for data in encoded:
            yield data


async def _pcm_bytes(chunks: AsyncIterator[np.ndarray]) -> AsyncGenerator[bytes, None]:
    async for samples in chunks:
        if len(samples):
            yield float_to_pcm16(samples)


async def _ffmpeg_encode(pcm: AsyncIterator[bytes], fmt: AudioFormat,
                         sample_rate: int) -> AsyncGenerator[bytes, None]:
    """Pipe s16le PCM through one ffmpeg process, yielding its output as it comes."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise RuntimeError("ffmpeg is not available")
    process = await asyncio.create_subprocess_exec(
        binary, "-hide_banner", "-nostdin", "-v", "error", "-probesize", "32", "-analyzeduration", "0",
        "-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
        *fmt.ffmpeg_args, "-flush_packets", "1", "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    stdin = process.stdin  # narrowed to not None, for the closure below

    async def feed() -> None:
        try:
            async for data in pcm:
                stdin.write(data)
                await stdin.drain()
        finally:
            with contextlib.suppress(Exception):
                stdin.close()

    feeder = asyncio.create_task(feed())
    errors = asyncio.create_task(process.stderr.read())
    try:
        while data := await process.stdout.read(_READ_SIZE):
            yield data
        await feeder  # re-raises an error of the audio source
        code = await process.wait()
        if code != 0:
            detail = (await errors).decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"ffmpeg ({fmt.name}) exited with {code}: {detail[-1] if detail else 'no details'}")
    finally:
        with anyio.CancelScope(shield=True):  # a disconnect cancels the response: still stop ffmpeg
            await _stop(process, feeder, errors)


async def _stop(process: asyncio.subprocess.Process, *tasks: asyncio.Task) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
