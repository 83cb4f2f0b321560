"""The notebooks: each runs top to bottom (quick mode, on the preset the environment picks) and is stored clean.

Execution uses nbclient with a python3 kernel started in notebooks/, as `jupyter lab notebooks/` would. A cell
that raises fails the test; so does a cell that runs past its timeout, or a notebook (or the whole suite) that
runs past its time limit. Limits can be raised for slow machines or the gpu preset:
VOICEKIT_NOTEBOOK_CELL_TIMEOUT, VOICEKIT_NOTEBOOK_TIME_LIMIT (per notebook), VOICEKIT_NOTEBOOK_SUITE_LIMIT (seconds).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

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


def execute(path: Path, out_dir: Path) -> nbformat.NotebookNode:
    """Run a copy of the notebook in a fresh kernel (the file on disk is never rewritten); return it executed."""
    if not _suite_deadline:
        _suite_deadline.append(time.monotonic() + SUITE_LIMIT_S)
    deadline = min(time.monotonic() + NOTEBOOK_LIMIT_S, _suite_deadline[0])

    def cell_timeout(_cell: nbformat.NotebookNode) -> int:
        # Each cell gets its own timeout, cut short by what is left of the notebook's and the suite's time.
        return max(1, int(min(CELL_TIMEOUT_S, deadline - time.monotonic())))

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout_func=cell_timeout, startup_timeout=120,
                            resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    env = {**QUICK_SETTINGS, **os.environ, "VOICEKIT_NOTEBOOK_QUICK": "1", "VOICEKIT_NOTEBOOK_OUT_DIR": str(out_dir)}
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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    notebook = execute(path, tmp_path)
    for index, cell in enumerate(code_cells(notebook)):
        assert cell.execution_count is not None, f"{path.name}: code cell {index} did not run"
    assert any("<audio" in html for html in output_texts(notebook, "text/html")), f"{path.name}: no audio player"
    if path.name == "01_quickstart.ipynb":
        assert (tmp_path / "voicekit_hello.wav").stat().st_size > 1000
    if path.name == "04_benchmark.ipynb":
        assert len(output_texts(notebook, "image/png")) >= 2, "the benchmark notebook drew fewer than two figures"
    print(f"{path.name}: {time.monotonic() - started:.1f} s")
