"""The server: the web page and the HTTP API on one port (`python -m voicekit serve`, or `python app.py`).

    python -m voicekit serve                  # embedded CPU default on http://127.0.0.1:7860
    python -m voicekit serve --preset gpu     # on a pod (listens on 0.0.0.0 when RUNPOD_POD_ID is set)
    VOICEKIT_PASSWORD=me:secret python -m voicekit serve --host 0.0.0.0

The page (voicekit.serve.page, Gradio) is mounted at `/` after the API's routers (voicekit.serve.api: `/chat`,
`/v1/audio/speech`, `/v1/audio/voices`, `/health`, ...) and the Talk page (voicekit.serve.talk: `/talk`, talking out
loud over `/v1/realtime`); uvicorn serves them all. Flags win over environment
variables: VOICEKIT_HOST, VOICEKIT_PORT, VOICEKIT_CONCURRENCY, VOICEKIT_PRESET. VOICEKIT_PASSWORD
(`password` or `user:password`) protects the page and the API; VOICEKIT_API_KEY (a bearer key) protects
the API. Secrets are never printed or logged. VOICEKIT_FALLBACK_REASON (set by runpod/start.sh when the gpu
preset cannot run on the pod) is shown as one line at the top of the page. On the gpu preset the speech recognizer
is loaded at start, in the background (`warm_recognizer`): the first spoken turn does not wait for it, and the page
and /health say at once where it runs (the GPU, or the CPU and why).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voicekit.errors import first_line
from voicekit.serve.admission import Limits
from voicekit.settings import ServeSettings

if TYPE_CHECKING:
    from voicekit.kitlike import ServedKit

ASSETS = Path(__file__).resolve().parent / "assets"  # the page's style, logo and examples: package data, in the wheel

log = logging.getLogger("voicekit.app")

# Set only by the pod's supervisor (runpod/supervise.py): its status.json (the page's top line follows its "line",
# refreshed, and GET /pod/status returns it), and the file this server writes once its kit is loaded, before it
# waits for the port (the supervisor then stops whatever served the port meanwhile: its status page, or the cpu
# preset), so that the pod's page keeps answering while a preset loads.
STATUS_FILE_ENV = "VOICEKIT_POD_STATUS_FILE"
HANDOVER_FILE_ENV = "VOICEKIT_HANDOVER_FILE"


def serve_settings(env: Mapping[str, str] | None = None, **flags: Any) -> ServeSettings:
    """Flags (None: not given), then VOICEKIT_* variables, then defaults (127.0.0.1; 0.0.0.0 on a RunPod pod)."""
    return ServeSettings.resolve(env, **flags)


def pod_status(path: str | Path) -> dict[str, Any]:
    """The pod supervisor's status.json ({} when it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compose(kit: ServedKit, *, password: str | None = None, api_key: str | None = None, concurrency: int | None = None,
            assets_dir: Path | None = ASSETS, notice: str | None = None, limits: Limits | None = None,
            status_file: str | Path | None = None) -> Any:
    """The API app with the page mounted at `/` (both protected by `password` when given; `notice`: a line on top;
    `limits`: the admission bounds the API and the page share, default the preset's; `status_file`: the pod's
    status, whose line replaces the notice while it has one, and `GET /pod/status`)."""
    import gradio as gr

    from voicekit.serve.api import create_app
    from voicekit.serve.audio import ensure_ffmpeg
    from voicekit.serve.auth import check_password
    from voicekit.serve.page import build_blocks
    from voicekit.serve.talk import router as talk_router

    ensure_ffmpeg()  # Gradio re-encodes streamed audio with ffmpeg; the bundled one needs no system install
    # The Talk page (/talk) is one more router; the page's catch-all mount at `/` comes after all of them.
    app = create_app(kit, api_key=api_key, password=password, limits=limits, routers=[talk_router])
    pod_line = None
    if status_file is not None:
        @app.get("/pod/status", include_in_schema=False)
        async def _pod_status() -> dict[str, Any]:  # what the pod is doing (no secrets in it), like /health: open
            return pod_status(status_file)

        def read_line() -> str:
            return str(pod_status(status_file).get("line") or "")
        pod_line = read_line
    blocks = build_blocks(kit, assets_dir=assets_dir, notice=notice, admission=app.state.voicekit.admission,
                          pod_status=pod_line)
    limit = concurrency or (4 if kit.settings.preset == "gpu" else 1)
    blocks.queue(default_concurrency_limit=limit)
    auth = (lambda user, given: check_password(password, user, given)) if password else None
    css_file = assets_dir / "style.css" if assets_dir else None
    favicon = assets_dir / "logo.svg" if assets_dir else None
    return gr.mount_gradio_app(
        app, blocks, path="/", auth=auth, auth_message="voicekit: log in with the configured password",
        theme=gr.themes.Soft(), css=css_file.read_text(encoding="utf-8") if css_file and css_file.is_file() else None,
        favicon_path=str(favicon) if favicon and favicon.is_file() else None, footer_links=["api"],
    )


def compose_for(kit: ServedKit, config: ServeSettings, env: Mapping[str, str] | None = None) -> Any:
    """`compose()` with what `config` says (password, API key, concurrency, the notice line), and the pod's status
    file when its supervisor set one (`env`, default os.environ)."""
    limits = Limits.for_preset(kit.settings.preset, config.max_running, config.max_waiting, config.request_timeout_s,
                               capacity_file=config.capacity_file)
    log.info("voicekit: %d running, %d waiting (%s)", limits.running, limits.waiting, limits.source)
    status_file = (os.environ if env is None else env).get(STATUS_FILE_ENV) or None
    return compose(kit, password=config.secret("password"), api_key=config.secret("api_key"),
                   concurrency=config.concurrency, notice=config.fallback_reason.strip() or None, limits=limits,
                   status_file=status_file)


def hand_over(host: str, port: int, env: Mapping[str, str] | None = None, wait_s: float = 60.0) -> None:
    """On a pod, say that the kit is loaded (write VOICEKIT_HANDOVER_FILE) and wait, up to `wait_s`, until the port
    is free: the supervisor then stops what served it meanwhile. Nothing to do elsewhere."""
    path = (os.environ if env is None else env).get(HANDOVER_FILE_ENV)
    if not path:
        return
    Path(path).write_text(f"{os.getpid()}\n", encoding="utf-8")
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # uvicorn says why it cannot bind
        time.sleep(0.1)


class BackgroundServer:
    """Serve an ASGI app (e.g. `compose(kit)`) from a daemon thread: for notebooks and tests.

        server = BackgroundServer(compose(kit))   # port 0: any free port
        print(server.url); ...; server.stop()
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        import socket
        import threading

        import uvicorn

        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.app = app
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(app, host=host, port=self.port, log_level=log_level, timeout_graceful_shutdown=3)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="voicekit-server", daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread stopped during startup (see the log above)")
            self._thread.join(0.05)

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Ask the server to finish and wait for its thread."""
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def warm_recognizer(kit: ServedKit) -> threading.Thread | None:
    """Load the kit's speech recognizer in a background thread when it runs on the GPU (the gpu preset), so that
    its device, or why it fell back to the CPU, is known before the first spoken turn; None otherwise."""
    if kit.recognizer_facts().get("device") != "cuda":
        return None

    def load() -> None:
        try:
            transcriber = kit.transcriber
        except Exception as error:  # the first spoken turn will say it again; the server goes on
            log.warning("voicekit: the speech recognizer did not load: %s", first_line(error))
            return
        log.info("voicekit: speech recognizer %s on %s%s", transcriber.name, transcriber.device,
                 f" ({transcriber.fallback_reason})" if transcriber.fallback_reason else "")

    thread = threading.Thread(target=load, name="voicekit-recognizer", daemon=True)
    thread.start()
    return thread


def serve(kit: ServedKit, config: ServeSettings) -> None:
    """Serve `kit`'s page and API with uvicorn until interrupted (the caller closes the kit)."""
    import uvicorn

    app = compose_for(kit, config)
    warm_recognizer(kit)
    if config.fallback_reason:
        log.warning("voicekit: %s", config.fallback_reason)
    info = kit.description
    shown_host = "127.0.0.1" if config.host == "0.0.0.0" else config.host
    log.info("voicekit: preset %s, chat %s, speech %s, %s", info.get("preset"), info.get("chat"),
             info.get("tts"), info.get("device"))
    log.info("serving the page and the API on http://%s:%d (listening on %s); password %s, API key %s",
             shown_host, config.port, config.host, "on" if config.password else "off",
             "on" if config.api_key else "off")
    hand_over(config.host, config.port)
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
