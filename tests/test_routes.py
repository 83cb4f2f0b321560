"""The server's routes come from the faces' routers (voicekit/serve/api.py's ROUTERS), with the `/v1` catch-all
included last by construction: a router passed to `create_app` answers before it. No model runs here: a stand-in
kit answers the routes that only read it."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi import APIRouter
from fastapi.testclient import TestClient

from voicekit.serve.api import ROUTERS, create_app
from voicekit.serve.deps import Authorized, State
from voicekit.tts.catalogue import Voice

KEY = {"Authorization": "Bearer sk-routes"}
STAND_IN = SimpleNamespace(settings=SimpleNamespace(preset="cpu"), default_voice="joe", sample_rate=22050, tags=[],
                           voices=[Voice("joe", "piper", "en_US", "a voice")])

extra = APIRouter()


@extra.get("/v1/extra")
async def extra_route(state: State, rid: Authorized) -> dict[str, str]:
    return {"rid": rid, "preset": state.kit.settings.preset}


def test_the_catch_all_comes_after_every_router() -> None:
    app = create_app(STAND_IN, api_key="sk-routes", routers=[extra])  # type: ignore[arg-type]
    paths = [getattr(route, "path", "") for route in app.routes]
    assert paths[-1] == "/v1/{rest:path}" and paths.count("/v1/{rest:path}") == 1
    for router in (*ROUTERS, extra):
        for route in router.routes:
            assert paths.index(getattr(route, "path", "")) < len(paths) - 1
    with TestClient(app) as client:
        answer = client.get("/v1/extra", headers=KEY)
        assert answer.status_code == 200 and answer.json()["preset"] == "cpu"
        refused = client.get("/v1/extra")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        voices = client.get("/v1/audio/voices", headers=KEY).json()
        assert voices["default"] == "joe" and voices["data"][0]["family"] == "piper"
        unknown = client.post("/v1/no/such/route", headers=KEY)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
        assert unknown.headers["x-request-id"]
