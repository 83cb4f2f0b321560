"""Every requirements file resolves in a fresh environment: pip's resolver runs on each (`--dry-run
--ignore-installed`, so what this venv holds does not matter) and a conflict fails the test with pip's own words.

requirements-gpu.txt is checked here too, on a machine without a GPU: resolving needs only package metadata.
The pod start script and the pod image install from these files; a test checks that they name no other.
Needs the package registry (PyPI), as the README's test command does anyway.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT_FILES = sorted(ROOT.glob("requirements*.txt"))
# Files that install the kit on a pod or into the pod image.
POD_INSTALLERS = [path for path in (ROOT / "runpod").iterdir() if path.name == "Dockerfile" or path.suffix == ".sh"]


def resolve(requirements: Path, report_dir: Path) -> dict[str, str]:
    """Run pip's resolver on a requirements file; return {distribution: version}, or fail with pip's reason."""
    report = report_dir / f"{requirements.name}.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--report", str(report), "-r", str(requirements)],
        capture_output=True, text=True, timeout=900, cwd=requirements.parent)
    if done.returncode != 0:
        pytest.fail(f"{requirements.name} does not resolve:\n{conflict_lines(done.stderr)}", pytrace=False)
    installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them: 'llama_cpp_python' -> 'llama-cpp-python'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def conflict_lines(stderr: str) -> str:
    """pip's explanation of a failed resolution, without the local index's per-package warnings."""
    lines = [line for line in stderr.splitlines() if "is neither a file nor a directory" not in line]
    return "\n".join(lines[-40:])


def base_version(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def test_the_project_has_the_three_requirements_files() -> None:
    assert [path.name for path in REQUIREMENT_FILES] == ["requirements-dev.txt", "requirements-gpu.txt",
                                                         "requirements.txt"]


@pytest.mark.parametrize("requirements", REQUIREMENT_FILES, ids=lambda path: path.name)
def test_requirements_file_resolves(requirements: Path, tmp_path: Path) -> None:
    versions = resolve(requirements, tmp_path)
    assert "numpy" in versions and "gradio" in versions  # every file includes the kit's own requirements


def test_gpu_requirements_put_vllm_and_the_page_in_one_env(tmp_path: Path) -> None:
    """The layout docs/ENGINES.md describes: vLLM, Gradio and FastAPI resolve together, with vLLM's torch."""
    versions = resolve(ROOT / "requirements-gpu.txt", tmp_path)
    assert versions["vllm"] == "0.32.0"
    assert base_version(versions["torch"]) == (2, 13, 0)  # what vllm 0.32.0 pins: a CUDA 13.0 build on PyPI
    assert base_version(versions["fastapi"]) < (0, 137)  # vllm 0.32's fastapi[standard] range
    assert base_version(versions["pillow"]) < (13,)  # gradio 6.31's range
    assert "snac" in versions and "llama-cpp-python" in versions


def test_a_conflict_fails_with_pips_reason(tmp_path: Path) -> None:
    """The check is not a formality: two pins that cannot meet fail, and the message says which."""
    broken = tmp_path / "requirements-broken.txt"
    broken.write_text("fastapi==0.136.1\nstarlette==0.27.0\n")  # fastapi 0.136 needs a newer starlette
    with pytest.raises(pytest.fail.Exception, match=r"(?s)requirements-broken.txt does not resolve.*starlette"):
        resolve(broken, tmp_path)


def test_pod_installs_only_from_checked_files() -> None:
    """The pod scripts and image install from requirements files that the checks above resolve."""
    checked = {path.name for path in REQUIREMENT_FILES}
    named: set[str] = set()
    for installer in POD_INSTALLERS:
        named.update(re.findall(r"(requirements[\w.-]*\.txt)", installer.read_text()))
    assert named, "the pod installs from no requirements file"
    assert named <= checked, f"pod installs from unchecked files: {sorted(named - checked)}"
