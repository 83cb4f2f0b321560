"""The notebooks: each runs top to bottom (quick mode) and is stored clean.

Each runs through `voicekit.connect()` against a live voicekit server (`python app.py`, the cpu preset, an API
key), as on a pod where the page's server holds the GPU; the quickstart also runs once with no server, through
`voicekit.load()`.

Execution uses nbclient with a python3 kernel started in notebooks/, as `jupyter lab notebooks/` would. A cell
that raises fails the test; so does a cell that runs past its timeout, or a notebook (or the whole suite) that
runs past its time limit. Limits can be raised for slow machines or the gpu preset:
VOICEKIT_NOTEBOOK_CELL_TIMEOUT, VOICEKIT_NOTEBOOK_TIME_LIMIT (per notebook), VOICEKIT_NOTEBOOK_SUITE_LIMIT (seconds).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = ("01_quickstart.ipynb", "02_voice_gallery.ipynb", "03_conversation.ipynb", "04_benchmark.ipynb")

CELL_TIMEOUT_S = float(os.environ.get("VOICEKIT_NOTEBOOK_CELL_TIMEOUT", "180"))
NOTEBOOK_LIMIT_S = float(os.environ.get("VOICEKIT_NOTEBOOK_TIME_LIMIT", "300"))
SUITE_LIMIT_S = float(os.environ.get("VOICEKIT_NOTEBOOK_SUITE_LIMIT", "600"))
_suite_deadline: list[float] = []  # set when the first notebook starts
# voicekit settings for the kernels unless the environment sets them: short chat replies, and one llama.cpp
# thread, which on a small, busy CI machine runs about twice as fast as spinning threads fighting for cores.
QUICK_SETTINGS = {"VOICEKIT_MAX_REPLY_TOKENS": "32", "VOICEKIT_N_THREADS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def ids(path: Path) -> str:
    return path.name


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def output_texts(notebook: nbformat.NotebookNode, mime: str) -> list[str]:
    """Every `mime` payload among the outputs of an executed notebook."""
    return [str(output["data"][mime]) for cell in code_cells(notebook) for output in cell.outputs
            if mime in output.get("data", {})]


def plain(error: BaseException) -> str:
    """An nbclient error message without the terminal colour codes of the kernel's traceback."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVER_KEY = "sk-notebooks"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py` on the cpu preset behind an API key, in its own process, as a pod runs it."""
    port = free_port()
    log = (tmp_path_factory.mktemp("server") / "app.log").open("w")
    env = {**QUICK_SETTINGS, **os.environ, "VOICEKIT_API_KEY": SERVER_KEY}
    kokoro = Path.home() / ".cache" / "voicekit-tests" / "kokoro-voices"  # tests/fetch_kokoro_voices.sh
    if (kokoro / "af_heart.bin").is_file():
        env.setdefault("VOICEKIT_KOKORO_VOICES", str(kokoro))  # the gallery then shows two voice families
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                "--preset", "cpu"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"app.py did not start: see {log.name}", pytrace=False)
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def execute(path: Path, out_dir: Path, **env: str) -> nbformat.NotebookNode:
    """Run a copy of the notebook in a fresh kernel (the file on disk is never rewritten); return it executed.

    `env` adds variables for the kernel (e.g. VOICEKIT_URL)."""
    if not _suite_deadline:
        _suite_deadline.append(time.monotonic() + SUITE_LIMIT_S)
    deadline = min(time.monotonic() + NOTEBOOK_LIMIT_S, _suite_deadline[0])

    def cell_timeout(_cell: nbformat.NotebookNode) -> int:
        # Each cell gets its own timeout, cut short by what is left of the notebook's and the suite's time.
        return max(1, int(min(CELL_TIMEOUT_S, deadline - time.monotonic())))

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout_func=cell_timeout, startup_timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    env = {**QUICK_SETTINGS, **os.environ, "VOICEKIT_NOTEBOOK_QUICK": "1", "VOICEKIT_NOTEBOOK_OUT_DIR": str(out_dir),
           **env}
    try:
        client.execute(env=env)
    except CellTimeoutError as error:
        pytest.fail(f"{path.name}: a cell ran past its timeout\n{plain(error)}", pytrace=False)
    except (CellExecutionError, DeadKernelError) as error:
        pytest.fail(f"{path.name}: a cell failed\n{plain(error)}", pytrace=False)
    if time.monotonic() > deadline + 1:
        pytest.fail(f"{path.name}: ran past its time limit ({NOTEBOOK_LIMIT_S:.0f} s per notebook, "
                    f"{SUITE_LIMIT_S:.0f} s for the suite)", pytrace=False)
    return notebook


# --- stored notebooks ------------------------------------------------------------------------------


def test_the_notebooks_of_issue_5_exist() -> None:
    assert {path.name for path in NOTEBOOKS} >= set(EXPECTED)
    assert (NOTEBOOKS_DIR / "README.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name}: cell {index} has stored outputs; clear them before committing"
        assert cell.execution_count is None, f"{path.name}: cell {index} has an execution count"
    assert "widgets" not in notebook.metadata, f"{path.name}: saved widget state; clear it before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_first_code_cell_holds_the_parameters(path: Path) -> None:
    first = code_cells(nbformat.read(path, as_version=4))[0]
    assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell is not tagged parameters"
    for needle in ('PRESET = os.environ.get("VOICEKIT_PRESET", "auto")',
                   'QUICK = os.environ.get("VOICEKIT_NOTEBOOK_QUICK") == "1"'):
        assert needle in first.source, f"{path.name}: parameters cell lacks {needle}"


# --- execution ---------------------------------------------------------------------------------------


def check_ran(path: Path, notebook: nbformat.NotebookNode, out_dir: Path) -> None:
    for index, cell in enumerate(code_cells(notebook)):
        assert cell.execution_count is not None, f"{path.name}: code cell {index} did not run"
    assert any("<audio" in html for html in output_texts(notebook, "text/html")), f"{path.name}: no audio player"
    if path.name == "01_quickstart.ipynb":
        assert (out_dir / "voicekit_hello.wav").stat().st_size > 1000
    if path.name == "04_benchmark.ipynb":
        assert len(output_texts(notebook, "image/png")) >= 2, "the benchmark notebook drew fewer than two figures"


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in code_cells(notebook) for output in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs_top_to_bottom_through_a_running_server(path: Path, tmp_path: Path, live_server: str) -> None:
    started = time.monotonic()
    notebook = execute(path, tmp_path, VOICEKIT_URL=live_server, VOICEKIT_API_KEY=SERVER_KEY)
    check_ran(path, notebook, tmp_path)
    assert f"server: {live_server}" in printed(notebook), f"{path.name} did not use voicekit.connect()"
    print(f"{path.name} through {live_server}: {time.monotonic() - started:.1f} s")


@pytest.mark.slow
def test_quickstart_loads_the_models_itself_without_a_server(tmp_path: Path) -> None:
    path = NOTEBOOKS_DIR / "01_quickstart.ipynb"
    # no VOICEKIT_URL, and nothing on the port it would look at: voicekit.open_kit() falls back to load()
    notebook = execute(path, tmp_path, VOICEKIT_URL="", VOICEKIT_PORT=str(free_port()))
    check_ran(path, notebook, tmp_path)
    assert "server:" not in printed(notebook) and "preset: cpu" in printed(notebook)
    assert "better models: " in printed(notebook)  # section 7 says what is cached, and downloads nothing here
