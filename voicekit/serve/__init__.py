"""The faces of a kit that serve it: the HTTP API (api.py includes one router per face: speech.py, chat.py,
voices.py, transcriptions.py, realtime.py, health.py, talk.py; deps.py, schema.py, auth.py, audio.py), the Gradio
page (page.py) and the app that mounts both on one port (app.py; `python -m voicekit serve`, `python app.py`).

Heavy imports (FastAPI, Gradio, uvicorn) happen when these modules' functions run, never by `import voicekit`.
"""

from voicekit.serve.app import ASSETS, BackgroundServer, compose, compose_for, serve, serve_settings

__all__ = ["ASSETS", "BackgroundServer", "compose", "compose_for", "serve", "serve_settings"]
