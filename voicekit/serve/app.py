"""The server: the web page and the HTTP API on one port (`python -m voicekit serve`, or `python app.py`).

    python -m voicekit serve                  # embedded CPU default on http://127.0.0.1:7860
    python -m voicekit serve --preset gpu     # on a pod (listens on 0.0.0.0 when RUNPOD_POD_ID is set)
    VOICEKIT_PASSWORD=me:secret python -m voicekit serve --host 0.0.0.0

The page (voicekit.serve.page, Gradio) is mounted at `/` beside the API routes (voicekit.serve.api: `/chat`,
`/v1/audio/speech`, `/v1/audio/voices`, `/health`) and the Talk page (voicekit.serve.talk: `/talk`, talking out
loud over `/v1/realtime`); uvicorn serves them all. Flags win over environment
variables: VOICEKIT_HOST, VOICEKIT_PORT, VOICEKIT_CONCURRENCY, VOICEKIT_PRESET. VOICEKIT_PASSWORD
(`password` or `user:password`) protects the page and the API; VOICEKIT_API_KEY (a bearer key) protects
the API. Secrets are never printed or logged. VOICEKIT_FALLBACK_REASON (set by runpod/start.sh when the gpu
preset cannot run on the pod) is shown as one line at the top of the page.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from voicekit.serve.admission import Limits
from voicekit.settings import ServeSettings

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # the repository's assets/ (a checkout, as on a pod)

log = logging.getLogger("voicekit.app")


def serve_settings(env: Mapping[str, str] | None = None, **flags: Any) -> ServeSettings:
    """Flags (None: not given), then VOICEKIT_* variables, then defaults (127.0.0.1; 0.0.0.0 on a RunPod pod)."""
    return ServeSettings.resolve(env, **flags)


def compose(kit: Any, *, password: str | None = None, api_key: str | None = None, concurrency: int | None = None,
            assets_dir: Path | None = ASSETS, notice: str | None = None, limits: Limits | None = None) -> Any:
    """The API app with the page mounted at `/` (both protected by `password` when given; `notice`: a line on top;
    `limits`: the admission bounds the API and the page share, default the preset's)."""
    import gradio as gr

    from voicekit.serve.api import create_app
    from voicekit.serve.audio import ensure_ffmpeg
    from voicekit.serve.auth import check_password
    from voicekit.serve.page import build_blocks
    from voicekit.serve.talk import add_talk_routes

    ensure_ffmpeg()  # Gradio re-encodes streamed audio with ffmpeg; the bundled one needs no system install
    app = create_app(kit, api_key=api_key, password=password, limits=limits)
    add_talk_routes(app, api_key=api_key, password=password)  # /talk: before the page's catch-all mount at `/`
    blocks = build_blocks(kit, assets_dir=assets_dir, notice=notice, admission=app.state.voicekit.admission)
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


def compose_for(kit: Any, config: ServeSettings) -> Any:
    """`compose()` with what `config` says (password, API key, concurrency, the notice line)."""
    limits = Limits.for_preset(kit.settings.preset, config.max_running, config.max_waiting, config.request_timeout_s)
    return compose(kit, password=config.secret("password"), api_key=config.secret("api_key"),
                   concurrency=config.concurrency, notice=config.fallback_reason.strip() or None, limits=limits)


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


def serve(kit: Any, config: ServeSettings) -> None:
    """Serve `kit`'s page and API with uvicorn until interrupted (the caller closes the kit)."""
    import uvicorn

    app = compose_for(kit, config)
    if config.fallback_reason:
        log.warning("voicekit: %s", config.fallback_reason)
    info = kit.description
    shown_host = "127.0.0.1" if config.host == "0.0.0.0" else config.host
    log.info("voicekit: preset %s, chat %s, speech %s, %s", info.get("preset"), info.get("chat"),
             info.get("tts"), info.get("device"))
    log.info("serving the page and the API on http://%s:%d (listening on %s); password %s, API key %s",
             shown_host, config.port, config.host, "on" if config.password else "off",
             "on" if config.api_key else "off")
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
