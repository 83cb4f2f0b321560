"""voicekit's web page and HTTP API in one server: `python app.py`.

    python app.py                         # embedded CPU default on http://127.0.0.1:7860
    python app.py --preset gpu            # on a pod (listens on 0.0.0.0 when RUNPOD_POD_ID is set)
    VOICEKIT_PASSWORD=me:secret python app.py --host 0.0.0.0

The page (voicekit.web, Gradio) is mounted at `/` beside the API routes (voicekit.server: `/chat`,
`/v1/audio/speech`, `/v1/audio/voices`, `/health`); uvicorn serves both. Flags win over environment
variables: VOICEKIT_HOST, VOICEKIT_PORT, VOICEKIT_CONCURRENCY, VOICEKIT_PRESET. VOICEKIT_PASSWORD
(`password` or `user:password`) protects the page and the API; VOICEKIT_API_KEY (a bearer key) protects
the API. Secrets are never printed or logged. VOICEKIT_FALLBACK_REASON (set by runpod/start.sh when the gpu
preset cannot run on the pod) is shown as one line at the top of the page.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
ASSETS = ROOT / "assets"
DEFAULT_PORT = 7860

log = logging.getLogger("voicekit.app")


@dataclass
class AppConfig:
    """Where and how to serve; secrets are kept out of repr."""

    host: str
    port: int
    concurrency: int | None  # None: 1 on the cpu preset, 4 on gpu
    preset: str | None
    password: str | None = None
    api_key: str | None = None
    notice: str | None = None  # one line shown on the page, e.g. why the pod runs the cpu preset

    def __repr__(self) -> str:
        return (f"AppConfig(host={self.host!r}, port={self.port}, concurrency={self.concurrency}, "
                f"preset={self.preset!r}, password={'set' if self.password else 'unset'}, "
                f"api_key={'set' if self.api_key else 'unset'})")


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AppConfig:
    """Flags, then VOICEKIT_* variables, then defaults (127.0.0.1 locally, 0.0.0.0 on a RunPod pod)."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(description="voicekit web page + HTTP API")
    parser.add_argument("--host", help="interface to listen on (VOICEKIT_HOST; default 127.0.0.1, 0.0.0.0 on pods)")
    parser.add_argument("--port", type=int, help=f"port (VOICEKIT_PORT; default {DEFAULT_PORT})")
    parser.add_argument("--concurrency", type=int,
                        help="page requests run at once per event (VOICEKIT_CONCURRENCY; default 1 cpu, 4 gpu)")
    parser.add_argument("--preset", help="auto (default), cpu or gpu (VOICEKIT_PRESET)")
    args = parser.parse_args(argv)
    on_pod = bool(env.get("RUNPOD_POD_ID"))
    host = args.host or env.get("VOICEKIT_HOST") or ("0.0.0.0" if on_pod else "127.0.0.1")
    port = args.port if args.port is not None else _int(env, "VOICEKIT_PORT", DEFAULT_PORT)
    concurrency = args.concurrency if args.concurrency is not None else _int(env, "VOICEKIT_CONCURRENCY", None)
    if concurrency is not None and concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return AppConfig(host=host, port=port, concurrency=concurrency, preset=args.preset,
                     password=env.get("VOICEKIT_PASSWORD") or None, api_key=env.get("VOICEKIT_API_KEY") or None,
                     notice=env.get("VOICEKIT_FALLBACK_REASON", "").strip() or None)


def _int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not a whole number") from None


def compose(kit: Any, *, password: str | None = None, api_key: str | None = None, concurrency: int | None = None,
            assets_dir: Path | None = ASSETS, notice: str | None = None) -> Any:
    """The API app with the page mounted at `/` (both protected by `password` when given; `notice`: a line on top)."""
    import gradio as gr

    from voicekit.server import create_app
    from voicekit.server_audio import ensure_ffmpeg
    from voicekit.server_schema import check_password
    from voicekit.web import build_blocks

    ensure_ffmpeg()  # Gradio re-encodes streamed audio with ffmpeg; the bundled one needs no system install
    app = create_app(kit, api_key=api_key, password=password)
    blocks = build_blocks(kit, assets_dir=assets_dir, notice=notice)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Load the kit and serve the page and the API until interrupted."""
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    import voicekit
    from voicekit.errors import VoicekitError

    try:
        kit = voicekit.load(config.preset)
    except VoicekitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        app = compose(kit, password=config.password, api_key=config.api_key, concurrency=config.concurrency,
                      notice=config.notice)
        if config.notice:
            log.warning("voicekit: %s", config.notice)
        info = kit.description
        shown_host = "127.0.0.1" if config.host == "0.0.0.0" else config.host
        log.info("voicekit: preset %s, chat %s, speech %s, %s", info.get("preset"), info.get("chat"),
                 info.get("tts"), info.get("device"))
        log.info("serving the page and the API on http://%s:%d (listening on %s); password %s, API key %s",
                 shown_host, config.port, config.host, "on" if config.password else "off",
                 "on" if config.api_key else "off")
        uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        kit.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
