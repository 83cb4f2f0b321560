"""Imports flow one way, from the faces down: nothing lower imports anything higher, lazily or not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "voicekit"
# what each module may not import (anywhere in it, inside functions too)
FACES = ("voicekit.serve", "voicekit.cli", "voicekit.bench", "voicekit.doctor", "voicekit.client")
WIRING = ("voicekit.build", "voicekit.builtin", "voicekit.placement", "voicekit.config_doc", *FACES)
LOWER = ["kit.py", "pipeline.py", "chat.py", "text.py", "audio.py", "hub.py", "device.py", "errors.py",
         "registry.py", "engines", "tts", "listening"]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def files(entry: str) -> list[Path]:
    path = PACKAGE / entry
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


@pytest.mark.parametrize("entry", LOWER)
def test_lower_modules_import_no_wiring_and_no_face(entry: str) -> None:
    for path in files(entry):
        upward = {name for name in imported_modules(path) if name.startswith(WIRING)}
        assert not upward, f"{path.relative_to(PACKAGE.parent)} imports {sorted(upward)}"


def test_settings_import_nothing_of_voicekit_but_errors() -> None:
    ours = {name for name in imported_modules(PACKAGE / "settings.py") if name.startswith("voicekit")}
    assert ours == {"voicekit.errors"}
