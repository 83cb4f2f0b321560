"""`GET /health`: whether the kit can serve (503 with the reason once an engine is dead), what is loaded where,
the server's counts, what it can still take (`capacity`, for a load balancer: docs/ENGINES.md) and its machine (as
bench capacity records it). It never asks for credentials (load balancers and supervisors probe it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from voicekit.build import resources
from voicekit.serve.admission import machine_identity
from voicekit.serve.deps import State

log = logging.getLogger("voicekit.server")

router = APIRouter()


@router.get("/health")
async def health(state: State) -> JSONResponse:
    # A dead engine (vLLM core crashed, model server gone) shows here without a request that would fail. The probe
    # runs on the kit's loop, from a worker thread. `recognizer`, `vllm_engines` (share, KV-cache tokens) and `gpu`
    # (memory in use): what is loaded where.
    kit = state.kit
    failure, warnings, loaded, machine = await anyio.to_thread.run_sync(
        lambda: (kit.health(), kit.warnings(), resources(kit), machine_identity()))
    engine = kit.chat_model.engine if kit.chat_model is not None else None
    body = {"status": "error" if failure else "ok", **({"reason": failure} if failure else {}),
            "warnings": warnings,
            "preset": kit.description.get("preset", kit.settings.preset),
            "active_requests": len(state.active),
            "engine_requests": len(engine.active_requests()) if engine is not None else 0,
            "served": state.served, "admission": state.admission.as_dict(),
            "capacity": state.admission.remaining(len(state.sessions)), "machine": machine,
            "rss_mb": _rss_mb(), **loaded}
    if failure:
        log.warning("health check failed: %s", failure)
    if warnings != state.warnings:  # logged when they change, not at every probe
        state.warnings = warnings
        log.warning("health: %s", "; ".join(warnings) or "no warnings any more")
    return JSONResponse(body, status_code=503 if failure else 200)


def _rss_mb() -> float | None:
    """This process's resident memory in MB (Linux /proc; None elsewhere)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 1e6, 1)
