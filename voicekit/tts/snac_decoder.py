"""SNAC 24 kHz decoding for Orpheus: model loading and a seamless, low-overhead streaming decoder.

Streaming strategy (overlap-and-discard). The SNAC decoder is a stack of non-causal convolutions with a
receptive field of about +-10 latent steps (+-2.5 frames). `StreamingDecoder` decodes a chunk of new
frames together with ``left_context`` already-emitted frames before it and ``lookahead`` frames after it,
and emits only the new frames' samples (2048 per frame). At the start of a stream there is nothing on the
left and at the end (``flush``) nothing on the right, which is exactly what a one-shot decode sees there,
so only the interior seams are approximations; 2 frames of context each side puts them ~90 dB down.

One decode call has a large fixed cost (and each seam re-decodes ``left_context + lookahead`` frames),
so chunks grow geometrically: the first chunk is small for a fast first audio, later ones are larger to
keep the total work close to a one-shot decode. See `StreamingDecoder` for the defaults and why.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from voicekit.device import torch_device
from voicekit.errors import ModelUnavailableError
from voicekit.hub import fetch_model
from voicekit.tts.orpheus_codes import CODEBOOK_SIZE, FRAME_TOKENS, SAMPLE_RATE, SAMPLES_PER_FRAME, frames_to_codes

if TYPE_CHECKING:
    import torch
    from snac import SNAC

#: hubertsiuzdak/snac_24khz config.json; ``SNAC(**SNAC_24KHZ_CONFIG)`` builds it with random weights.
SNAC_24KHZ_CONFIG: dict[str, Any] = {
    "sampling_rate": SAMPLE_RATE,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}
DEFAULT_WEIGHTS = "hubertsiuzdak/snac_24khz"
WARM_UP_FRAMES = 16  # ~1.4 s of audio: the small windows that start every reply, then a larger one

log = logging.getLogger("voicekit.snac")


def _import_snac() -> type[SNAC]:
    try:
        from snac import SNAC
    except ImportError as exc:  # torch or snac missing: a setup problem the user can fix
        raise ModelUnavailableError(f'the SNAC codec needs torch and snac: pip install "voicekit[orpheus]" ({exc})') \
            from exc
    return SNAC


def _load_pretrained(snac_cls: type[SNAC], weights: str, token: str | None) -> SNAC:
    folder = fetch_model(weights, token)  # a hub id is downloaded (clear errors); a local folder is used as is
    try:
        return snac_cls.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelUnavailableError(
            f"could not load SNAC weights {weights!r}: {exc}. A local folder needs the hub's layout: "
            "config.json and pytorch_model.bin"
        ) from exc


def disable_noise(model: torch.nn.Module) -> int:
    """Replace every SNAC ``NoiseBlock`` by an identity; return how many were replaced.

    ``NoiseBlock`` computes ``x + randn(B, 1, T) * conv1x1(x)``. A model built with ``noise=False`` simply
    has no such block, so swapping in ``nn.Identity`` gives exactly that network (with the pretrained
    weights of every other layer), and decoding becomes deterministic.
    """
    import torch
    from snac.layers import NoiseBlock

    replaced = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, NoiseBlock):
                setattr(parent, name, torch.nn.Identity())
                replaced += 1
    return replaced


def fold_weight_norm(model: torch.nn.Module) -> int:
    """Bake weight-norm parametrizations into plain weights; return how many were folded.

    SNAC wraps every conv in weight norm, which recomputes each weight on every forward: ~40 ms per
    decode call on CPU for nothing at inference time. Folding keeps the same weights (float rounding).
    """
    from torch.nn.utils import parametrize

    folded = 0
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            folded += 1
    return folded


def build_snac(device: str | None = "cpu", weights: str | None = DEFAULT_WEIGHTS, noise: bool = False,
               token: str | None = None, warm: bool | None = None) -> SNAC:
    """Load SNAC 24 kHz for inference (float32, eval, weight norm folded) on ``device``.

    ``weights`` is a hub id or a local folder (``SNAC.from_pretrained``); None builds the same network
    with random weights (tests, benchmarks; no download). ``noise=False`` removes the decoder's random
    noise so decoding is deterministic. ``device=None`` picks the GPU when there is one. ``warm`` decodes
    one short stream at load (`warm_up`); None warms up on CUDA only.
    Raises `ModelUnavailableError` when the weights cannot be found or fetched.
    """
    snac_cls = _import_snac()
    model = snac_cls(**SNAC_24KHZ_CONFIG) if weights is None else _load_pretrained(snac_cls, str(weights), token)
    if not noise:
        disable_noise(model)
    fold_weight_norm(model)
    model = model.float().eval().requires_grad_(False).to(device or torch_device())
    if warm or (warm is None and model_device(model).type == "cuda"):
        warm_up(model)
    return model


def warm_up(model: SNAC, frames: int = WARM_UP_FRAMES) -> float:
    """Decode one stream of `frames` frames as `StreamingDecoder` would; return the seconds it took.

    The first decodes on a GPU load kernels and set up cuDNN (hundreds of ms): done at load, that cost
    stays out of the first user's first audio. Every window size a reply's first second uses is decoded once.
    """
    started = time.perf_counter()
    decoder = StreamingDecoder(model)
    codes = np.arange(frames * FRAME_TOKENS, dtype=np.int64).reshape(frames, FRAME_TOKENS) % CODEBOOK_SIZE
    for frame in codes:  # one at a time, as a stream arrives: the small first windows are the ones that matter
        decoder.push([frame])
    decoder.flush()
    seconds = time.perf_counter() - started
    log.info("SNAC warmed up on %s: %d frames in %d calls, %.2f s", model_device(model), frames,
             decoder.decode_calls, seconds)
    return seconds


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights are on."""
    return next(model.parameters()).device


def decode_code_rows(model: SNAC, c0: Any, c1: Any, c2: Any) -> np.ndarray:
    """Decode rows of SNAC codes (shapes (B, n), (B, 2n), (B, 4n)) in one call: float32 of shape (B, n * 2048)."""
    import torch

    device = model_device(model)
    codes = [torch.as_tensor(np.asarray(c, dtype=np.int64), device=device) for c in (c0, c1, c2)]
    with torch.inference_mode():
        audio = model.decode(codes)
    return audio.reshape(codes[0].shape[0], -1).float().cpu().numpy()


def decode_codes(model: SNAC, c0: Sequence[int], c1: Sequence[int], c2: Sequence[int]) -> np.ndarray:
    """One-shot decode of SNAC codes (lengths n, 2n, 4n) to float32 mono audio of n * 2048 samples."""
    return decode_code_rows(model, *(np.asarray(c, dtype=np.int64).reshape(1, -1) for c in (c0, c1, c2)))[0]


def decode_frames(model: SNAC, frames: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """One-shot decode of Orpheus frames (7 codes each) to float32 audio of len(frames) * 2048 samples."""
    return decode_codes(model, *frames_to_codes(frames))


class StreamingDecoder:
    """Decode Orpheus frames as they arrive into float32 audio chunks that join without seams.

    ``push(frames)`` returns the chunks that became ready; ``flush()`` returns the rest at end of stream.
    Concatenated, the chunks are exactly ``frames * 2048`` samples and match a one-shot decode of the same
    frames (random weights, noise off: ~93 dB SNR at the defaults; tests require >= 60 dB).

    Defaults, and why (CPU: one call costs a fixed ~50-90 ms plus ~35 ms per frame; on a GPU the fixed
    cost dominates even more, so fewer calls matter most):

    * ``left_context=2, lookahead=2``: measured SNR vs one-shot is ~51 dB with 1 frame each side, ~93 dB
      with 2, and float-exact (~130 dB) with 3 (the receptive field is ~10 latents, 2.5 frames); a third
      lookahead frame would delay the first audio for no audible gain.
    * ``first_chunk=1``: the first audio leaves once 1 + lookahead = 3 frames (21 audio tokens) are in.
    * ``growth=2, max_chunk=32``: chunk sizes 1, 2, 4, 8, 16, 32...; few calls and few seams (each seam
      re-decodes left_context + lookahead frames) keep the work near one-shot: for 48 frames, 6 calls
      over 67 frames (1.40x the frames; ~1.2x the one-shot time, as smaller calls are more cache-friendly).
      Each chunk is about as long as all the audio sent before it, so playback has time to cover it.
    * A backlog (frames that arrived faster than they were decoded) is decoded in one call, up to
      ``max_chunk`` frames.

    ``decode_window`` decodes one window of frames (default: `decode_frames` on ``model``); streams that
    share a model pass `SnacBatcher.decode`, which serialises and batches their calls.
    """

    def __init__(
        self,
        model: SNAC,
        *,
        first_chunk: int = 1,
        max_chunk: int = 32,
        growth: float = 2.0,
        left_context: int = 2,
        lookahead: int = 2,
        decode_window: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        if first_chunk < 1 or max_chunk < first_chunk or growth < 1 or left_context < 0 or lookahead < 0:
            raise ValueError("need 1 <= first_chunk <= max_chunk, growth >= 1, context >= 0")
        self.model = model
        self._decode_window = decode_window or (lambda frames: decode_frames(model, frames))
        self.first_chunk, self.max_chunk, self.growth = first_chunk, max_chunk, growth
        self.left_context, self.lookahead = left_context, lookahead
        self._frames = np.zeros((0, FRAME_TOKENS), dtype=np.int64)  # kept frames, from index _base on
        self._base = 0  # stream index of self._frames[0]
        self._received = 0  # frames pushed so far
        self._emitted = 0  # frames whose audio was returned
        self._next_chunk = first_chunk
        self._finished = False
        self.first_audio_frames: int | None = None  # frames received when the first audio left
        self.decode_calls = 0
        self.decoded_frames = 0  # frames run through SNAC, context included (the work done)

    @property
    def frames_received(self) -> int:
        """Frames pushed so far."""
        return self._received

    @property
    def samples_emitted(self) -> int:
        """Samples returned so far (2048 per emitted frame)."""
        return self._emitted * SAMPLES_PER_FRAME

    def push(self, frames: Iterable[Sequence[int]]) -> list[np.ndarray]:
        """Add frames (7 codes each, slot order); return the audio chunks now ready (maybe none)."""
        if self._finished:
            raise RuntimeError("push() after flush(): start a new StreamingDecoder")
        new = np.asarray(list(frames), dtype=np.int64).reshape(-1, FRAME_TOKENS)
        if new.size and (new.min() < 0 or new.max() >= CODEBOOK_SIZE):
            raise ValueError(f"frame codes must be in 0..{CODEBOOK_SIZE - 1}")
        self._frames = np.concatenate([self._frames, new])
        self._received += len(new)
        chunks = []
        while (ready := self._received - self._emitted - self.lookahead) >= self._next_chunk:
            size = min(max(ready, self._next_chunk), self.max_chunk)
            chunks.append(self._emit(size, self.lookahead))
            self._next_chunk = min(self.max_chunk, max(size, math.ceil(self._next_chunk * self.growth)))
        return chunks

    def flush(self) -> np.ndarray:
        """End the stream: decode and return the remaining audio (empty when nothing is left)."""
        self._finished = True
        remaining = self._received - self._emitted
        if remaining == 0:
            return np.zeros(0, dtype=np.float32)
        return self._emit(remaining, 0)

    def _emit(self, size: int, lookahead: int) -> np.ndarray:
        """Decode frames [emitted - left, emitted + size + lookahead) and return the middle ``size``."""
        start = self._emitted
        left = min(self.left_context, start)
        lo, hi = start - left - self._base, start + size + lookahead - self._base
        audio = self._decode_window(self._frames[lo:hi])
        self.decode_calls += 1
        self.decoded_frames += hi - lo
        self._emitted += size
        if self.first_audio_frames is None:
            self.first_audio_frames = self._received
        self._drop_old_frames()
        return audio[left * SAMPLES_PER_FRAME : (left + size) * SAMPLES_PER_FRAME]

    def _drop_old_frames(self) -> None:
        # Only the last `left_context` emitted frames are needed again; keeps long streams bounded.
        keep_from = max(self._base, self._emitted - self.left_context)
        self._frames = self._frames[keep_from - self._base :]
        self._base = keep_from
