"""`voicekit doctor`: what this machine can run, and why `auto` picks the preset it picks.

The case users hit most on rented GPUs: `nvidia-smi` lists a GPU but torch sees none (a CPU-only torch
wheel, or a CUDA build newer than the driver). The report names that case and what to do. The rules are
pure functions of the facts (`cuda_driver_problem`, `_advice`), so tests feed them any machine.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import astuple, dataclass, field

from voicekit import device
from voicekit.device import parse_cuda_version  # noqa: F401 (part of doctor's rules, re-exported)

# requirements-gpu.txt: vllm 0.32.0 pins torch 2.13.0, whose PyPI Linux wheel is a CUDA 13.0 build.
GPU_TORCH_CUDA = "13.0"
# The oldest NVIDIA driver series per CUDA major version (a CUDA 13 runtime needs R580 or newer).
MIN_DRIVER = {13: "R580"}

# What a CPU can afford, from `bench llm` (docs/bench/llm-shapes-cpu.json, docs/BENCHMARKS.md): Q4_K_M decode speed
# on 1 llama.cpp thread of a 2-core machine, tokens/s, with the GGUF each name stands for (largest first).
CHAT_MODELS_1_THREAD = {
    "Qwen2.5-1.5B-Instruct": (6.0, "Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf"),
    "Qwen2.5-0.5B-Instruct": (13.4, "the laptop preset's"),
}
SPEECH_TOKENS_PER_S = 3.5  # speech: ~2.6 words, ~3.5 tokens, a second
AHEAD_OF_SPEECH = 2.5  # "faster than speech" with room for the prompt and a first sentence within about a second
# The rule: llama.cpp runs on half the cores, 1 to 4 threads (engines/llamacpp.py, default_threads), and decoding
# a small model is memory-bound, so each thread past the first is counted at 0.8 of the first (an estimate: 2
# cores could not measure it). A model is affordable when its estimate is AHEAD_OF_SPEECH times speech or more.
ADDED_THREAD_SHARE = 0.8


@dataclass
class Report:
    """Facts gathered by `diagnose()`; `advice` holds the lines a user should act on."""

    python: str
    torch: str | None
    torch_cuda_build: str | None
    torch_sees_cuda: bool
    nvidia_smi: list[str] | None  # one line per GPU, None when nvidia-smi is missing or fails
    driver_cuda: str | None  # highest CUDA the driver supports ("CUDA Version" in nvidia-smi's header)
    vllm: str | None
    llama_cpp: tuple[str, bool] | None  # (version, can offload layers to a GPU), None when not installed
    preset: str
    reason: str
    advice: list[str] = field(default_factory=list)
    chat: str = ""  # which chat model the auto preset (or VOICEKIT_PRESET) would run, on which engine
    voices: str = ""  # its voice families, and how many voices each has on this machine
    recognizer: str = ""  # where its speech recognizer would run (the GPU: can CTranslate2 load cuBLAS 12?)
    memory: str = ""  # the GPU's memory, and how the kit would split it between its engines and Whisper
    server: str = ""  # a voicekit server answering on this machine: its engines' KV cache, its recognizer
    better: str = ""  # the bundle of better models (voicekit.upgrade): in the cache, or the command that fetches it
    cores: str = ""  # the largest chat model these cores write faster than speech


def _major_minor(version: str) -> tuple[int, int]:
    parts = re.findall(r"\d+", version)
    return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0


def cuda_driver_problem(driver_cuda: str | None, torch_cuda: str | None, torch_sees_cuda: bool) -> str | None:
    """One advice line when the driver's CUDA (from nvidia-smi) is older than torch's CUDA build, else None.

    A CPU-only or missing torch is checked against the torch that requirements-gpu.txt installs. Once torch
    sees the GPU nothing is wrong (a datacenter driver may run newer CUDA through NVIDIA's compat package).
    """
    if driver_cuda is None or torch_sees_cuda:
        return None
    needed = torch_cuda or GPU_TORCH_CUDA
    if _major_minor(driver_cuda) >= _major_minor(needed):
        return None
    series = MIN_DRIVER.get(_major_minor(needed)[0])
    newer = f"nvidia-smi showing CUDA Version {needed} or higher" + (f", driver {series} or newer" if series else "")
    where = (f"use a host or pod with a newer driver ({newer}; on RunPod filter GPUs by CUDA version {needed}, "
             "see runpod/README.md)")
    if torch_cuda:
        return (f"the NVIDIA driver is too old for this torch: it supports CUDA {driver_cuda} at most, torch is built "
                f"for CUDA {needed}, so torch cannot use the GPU; {where}, or install a torch built for CUDA "
                f"{driver_cuda} (cpu preset only: vLLM 0.32 needs CUDA {GPU_TORCH_CUDA})")
    return (f"the NVIDIA driver is too old for the gpu preset: it supports CUDA {driver_cuda} at most, and "
            f"requirements-gpu.txt installs a torch built for CUDA {needed}; {where}")


def diagnose(gpus: list[str] | bool | None = False,
             torch_facts: tuple[str | None, str | None, bool] | None = None) -> Report:
    """Collect the facts; `gpus` stands in for nvidia-smi's GPU list, `torch_facts` for (version, CUDA build,
    sees CUDA), so tests can describe machines this one is not."""
    torch_version, cuda_build, sees_cuda = torch_facts or astuple(device.torch_facts())
    smi = device.nvidia_smi_gpus() if gpus is False else gpus
    vllm_version = device.vllm_version()
    report = Report(
        python=f"{platform.python_version()} ({sys.executable})", torch=torch_version,
        torch_cuda_build=cuda_build, torch_sees_cuda=sees_cuda, nvidia_smi=smi or None,  # type: ignore[arg-type]
        driver_cuda=device.nvidia_smi_cuda_version() if smi else None,
        vllm=vllm_version, llama_cpp=device.llama_cpp_facts(), preset="cpu", reason="",
    )
    from voicekit.upgrade import prefer_laptop

    report.preset, report.reason = prefer_laptop(*device.choose_preset(torch_version, sees_cuda,
                                                                       vllm_version is not None))
    if report.nvidia_smi and torch_version is not None and not sees_cuda:
        report.reason += ", although nvidia-smi lists a GPU" + (
            f" (its driver supports CUDA {report.driver_cuda} at most, torch is built for CUDA {cuda_build})"
            if cuda_build and cuda_driver_problem(report.driver_cuda, cuda_build, sees_cuda) else " (see advice)")
    report.advice = _advice(report)
    report.chat, report.voices = _kit_lines(report.preset)
    _gpu_lines(report)
    report.server = _server_line()
    report.better = _better_line(report.preset)
    report.cores, advice = cores_line(os.cpu_count() or 1)
    report.advice += [advice] if advice else []
    return report


def chat_speed(tokens_per_s_1_thread: float, cores: int) -> tuple[float, int]:
    """(estimated decode tokens/s, llama.cpp threads) of a model on `cores` cores, by the rule above."""
    threads = max(1, min(4, cores // 2))
    return tokens_per_s_1_thread * (1 + ADDED_THREAD_SHARE * (threads - 1)), threads


def cores_line(cores: int) -> tuple[str, str | None]:
    """"4 cores: Qwen2.5-1.5B-Instruct would write faster than speech (...)", and an advice line when the cores
    afford more than the laptop preset's model."""
    machine = f"{cores} core{'s' if cores != 1 else ''}"
    for name, (measured, spec) in CHAT_MODELS_1_THREAD.items():
        speed, threads = chat_speed(measured, cores)
        if speed >= AHEAD_OF_SPEECH * SPEECH_TOKENS_PER_S:
            pace = (f"~{speed:.1f} tokens/s on {threads} llama.cpp thread{'s' if threads > 1 else ''}, "
                    f"{speed / SPEECH_TOKENS_PER_S:.1f}x speech")
            if "/" not in spec:
                return f"{machine}: {name}, {spec} chat model, writes faster than speech ({pace}); a larger " \
                       "one would not", None
            line = f"{machine}: {name} would write faster than speech ({pace})"
            return line, f"{line}: VOICEKIT_CHAT_MODEL={spec} (downloaded once)"
    return f"{machine}: even Qwen2.5-0.5B-Instruct writes barely faster than speech here", None


def _better_line(preset: str) -> str:
    """The better models' bundle, while the bundled chat model would talk: in the cache, or how to get it."""
    from voicekit import upgrade
    from voicekit.errors import VoicekitError
    from voicekit.settings import Settings

    try:
        settings = Settings.resolve(None if os.environ.get("VOICEKIT_PRESET") else preset)
    except VoicekitError:
        return ""
    if settings.preset == "gpu" or not upgrade.bundled_chat_in_use(settings):
        return ""
    found = upgrade.status()
    return found.line() if found.ready or found.problem else f"{upgrade.OFFER}: {upgrade.COMMAND}"


def _gpu_lines(report: Report) -> None:
    """The recognizer's line and the GPU memory line (with their advice), for the settings `load()` would use."""
    from voicekit import build, placement
    from voicekit.errors import VoicekitError

    try:
        settings = build.resolve_settings(None if os.environ.get("VOICEKIT_PRESET") else report.preset)
    except VoicekitError:
        return  # the chat line says why
    facts = build.planned_recognizer(settings)
    model = facts["model"]
    line = f"{model} on {facts['device']} ({facts['compute_type']})"
    fallback = ""
    if facts["device"] == "cuda":
        blas = device.load_cuda12_blas()
        ct2 = device.ctranslate2_facts()
        seen = "CTranslate2 is not installed" if ct2 is None else f"CTranslate2 {ct2[0]} sees {ct2[1]} CUDA device(s)"
        line += f"; {seen}; cuBLAS 12: {blas.reason if blas.path else 'missing'}"
        if blas.path is None or ct2 is None or ct2[1] == 0:
            fallback = f"it would run on the CPU instead ({blas.reason if blas.path is None else seen})"
            report.advice.append(f"speech recognition would fall back to the CPU: {device.CUBLAS12_HINT} gives "
                                 "CTranslate2 the cuBLAS 12 it loads on CUDA")
    elif settings.preset == "gpu" and settings.asr_device == "auto" and placement.gpu_sized(model):
        fallback = "torch sees no CUDA device: Whisper base on the CPU instead"
    report.recognizer = line + (f"; {fallback}" if fallback else "")
    memory = device.gpu_memory() if report.torch_sees_cuda else None
    if memory is None:
        report.memory = "no CUDA device torch can use"
        return
    report.memory = (f"{memory.name}: {memory.total / 1e9:.1f} GB, {memory.free / 1e9:.1f} GB free, "
                     f"{memory.torch_allocated / 1e9:.1f} GB held by torch here")
    try:
        plan = placement.memory_plan(settings, memory.total)
    except VoicekitError as error:
        report.advice.append(str(error))
        return
    if plan is not None:
        split = " + ".join(f"{name} {share:g} ({share * plan.total_bytes / 1e9:.1f} GB)"
                           for name, share in plan.shares.items())
        whisper = f" + Whisper ~{plan.asr_bytes / 1e9:.1f} GB" if plan.asr_bytes else ""
        report.memory += f"; the kit would take {split}{whisper}" + (f" ({plan.note})" if plan.note else "")


def _server_line(timeout: float = 0.5) -> str:
    """What a voicekit server on this machine (VOICEKIT_PORT, else 7860) runs: its recognizer, its vLLM engines'
    memory share and KV-cache tokens and the GPU's memory in use, from its /health; empty when none answers."""
    import httpx

    from voicekit.client import find_server

    url = find_server(timeout)
    if url is None:
        return ""
    try:
        health = httpx.get(f"{url}/health", timeout=5).json()
    except (httpx.HTTPError, ValueError) as error:
        return f"{url}: its /health did not answer ({type(error).__name__})"
    parts = [f"{url}: preset {health.get('preset')}"]
    recognizer = health.get("recognizer") or {}
    if recognizer:
        parts.append(f"recognizer {recognizer.get('model')} on {recognizer.get('device')}"
                     + (f" ({recognizer['fallback_reason']})" if recognizer.get("fallback_reason") else ""))
    for engine in health.get("vllm_engines") or []:
        share = engine.get("gpu_memory_utilization")
        size = f", {engine['memory_bytes'] / 1e9:.1f} GB" if engine.get("memory_bytes") else ""
        parts.append(f"{engine.get('role')} engine {engine.get('model')}: share {share}{size}, KV cache "
                     f"{engine.get('kv_cache_tokens')} tokens")
    gpu = health.get("gpu") or {}
    if gpu:
        parts.append(f"GPU {gpu.get('used_bytes', 0) / 1e9:.1f} of {gpu.get('total_bytes', 0) / 1e9:.1f} GB in use")
    return "; ".join(parts)


def _kit_lines(auto: str) -> tuple[str, str]:
    """What `voicekit.load()` would run here (VOICEKIT_PRESET, else the auto preset), loading nothing."""
    from voicekit.build import resolve_settings
    from voicekit.errors import VoicekitError
    from voicekit.placement import chat_engine_choice
    from voicekit.registry import VOICE_FAMILIES

    try:
        settings = resolve_settings(None if os.environ.get("VOICEKIT_PRESET") else auto)
        chat = f"{chat_engine_choice(settings)} (preset {settings.preset}; VOICEKIT_CHAT_MODEL changes it)"
        families = [VOICE_FAMILIES[name] for name in (settings.tts, *settings.extra_voices)]
    except VoicekitError as error:
        return f"cannot load: {error}", ""
    shown = [family.probe(settings) if family.probe else family.name
             for family in dict.fromkeys(families)]  # each family once, the kit's own first
    return chat, ", ".join(shown)


def _advice(report: Report) -> list[str]:
    advice: list[str] = []
    driver_problem = cuda_driver_problem(report.driver_cuda, report.torch_cuda_build, report.torch_sees_cuda)
    if report.nvidia_smi and not report.torch_sees_cuda:
        if report.torch is None:
            advice.append("nvidia-smi sees a GPU but torch is not installed: pip install -r requirements-gpu.txt")
        elif not report.torch_cuda_build:
            advice.append(
                f"nvidia-smi sees a GPU but torch {report.torch} is a CPU-only build: install a CUDA build "
                "(pip install -r requirements-gpu.txt)"
            )
        elif not driver_problem:
            supports = (f" (the driver supports CUDA {report.driver_cuda})" if report.driver_cuda else
                        f" (nvidia-smi's header must show CUDA Version {report.torch_cuda_build} or higher)")
            advice.append(
                f"nvidia-smi sees a GPU but torch (built for CUDA {report.torch_cuda_build}) cannot use it{supports}: "
                "CUDA_VISIBLE_DEVICES may hide the GPU; python -c 'import torch; torch.cuda.init()' prints "
                "the error torch gets"
            )
    if driver_problem:
        advice.append(driver_problem)
    if report.torch_sees_cuda and report.vllm is None:
        advice.append("the GPU works but vLLM is missing: pip install -r requirements-gpu.txt for the gpu preset")
    if report.nvidia_smi and report.llama_cpp and not report.llama_cpp[1]:
        advice.append(
            "llama-cpp-python is a CPU-only build, so GGUF models (the cpu preset's chat model, Orpheus GGUF) "
            "ignore the GPU: CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-cache-dir "
            "llama-cpp-python builds one with CUDA"
        )
    if not report.nvidia_smi and report.preset == "cpu":
        advice.append("no NVIDIA GPU found: the cpu preset (SmolLM2 + Piper) runs everything on this machine")
    return advice


def _llama_cpp_line(facts: tuple[str, bool] | None) -> str:
    if facts is None:
        return "not installed"
    version, offload = facts
    return f"{version} (GPU offload: {'yes, Metal or CUDA build' if offload else 'no, CPU build'})"


def format_report(report: Report) -> str:
    """Human-readable report."""
    gpus = "; ".join(report.nvidia_smi) if report.nvidia_smi else "not found (no nvidia-smi or no GPU)"
    if report.driver_cuda:
        gpus += f" (driver supports CUDA {report.driver_cuda})"
    torch_line = "not installed" if report.torch is None else (
        f"{report.torch} (CUDA build: {report.torch_cuda_build or 'none, CPU only'}; "
        f"sees CUDA: {'yes' if report.torch_sees_cuda else 'no'})"
    )
    lines = [
        f"python      {report.python}",
        f"torch       {torch_line}",
        f"nvidia-smi  {gpus}",
        f"vllm        {report.vllm or 'not installed'}",
        f"llama.cpp   {_llama_cpp_line(report.llama_cpp)}",
        f"auto preset {report.preset}: {report.reason}",
        f"chat model  {report.chat}",
        f"voices      {report.voices}",
    ]
    if report.recognizer:
        lines.append(f"recognizer  {report.recognizer}")
    if report.memory:
        lines.append(f"gpu memory  {report.memory}")
    if report.server:
        lines.append(f"server      {report.server}")
    if report.better:
        lines.append(f"better      {report.better}")
    if report.cores:
        lines.append(f"cores       {report.cores}")
    lines += [f"advice      {line}" for line in report.advice]
    return "\n".join(lines)
