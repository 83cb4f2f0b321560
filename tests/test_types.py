"""Types: mypy is clean on the server and the client (voicekit/serve, voicekit/client*), and `Kit` and `RemoteKit`
meet the Protocols of voicekit/kitlike.py: statically (mypy checks this file too) and at run time.

    python -m mypy --ignore-missing-imports --follow-imports=silent --warn-unused-ignores <MYPY_PATHS>
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest

import voicekit
from voicekit.client import RemoteKit
from voicekit.kit import Kit
from voicekit.kitlike import KitLike, ServedKit
from voicekit.serve import BackgroundServer
from voicekit.serve.api import create_app

MYPY_PATHS = ("voicekit/serve", "voicekit/client.py", "voicekit/client_stream.py", "voicekit/client_realtime.py",
              "voicekit/kitlike.py", "tests/test_types.py")
MYPY = (sys.executable, "-m", "mypy", "--ignore-missing-imports", "--follow-imports=silent", "--warn-unused-ignores",
        *MYPY_PATHS)


def _protocols_met(kit: Kit, remote: RemoteKit) -> tuple[KitLike, KitLike, ServedKit]:
    """Never called: mypy checks these assignments (a member that drifts apart fails test_mypy_is_clean)."""
    return kit, remote, kit


def _remote_is_not_served() -> ServedKit:
    # The server needs more than a RemoteKit has (time limits, health probes, the recognizer). Should that change,
    # the ignore goes unused and --warn-unused-ignores says so.
    return cast(RemoteKit, None)  # type: ignore[return-value]


def test_mypy_is_clean(repo_root: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (requirements-dev.txt)")
    done = subprocess.run(MYPY, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kitlike_imports_nothing_of_voicekit_at_run_time(repo_root: Path) -> None:
    tree = ast.parse((repo_root / "voicekit" / "kitlike.py").read_text(encoding="utf-8"))
    imported = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    imported += [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert imported and not [name for name in imported if name.startswith("voicekit")]  # only under TYPE_CHECKING


@pytest.mark.slow
def test_kit_and_remote_kit_are_kitlike(kit: Kit) -> None:
    assert isinstance(kit, KitLike)
    with BackgroundServer(create_app(kit)) as server, voicekit.connect(server.url) as remote:
        assert isinstance(remote, KitLike)
        assert remote.settings.preset == kit.settings.preset and remote.voices == kit.voices
    assert not isinstance(object(), KitLike)
