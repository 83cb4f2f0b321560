"""Where a GGUF model comes from: a local `.gguf` file, or `owner/repo/file.gguf` on the Hugging Face hub.

A spec that does not end in `.gguf` is not a GGUF (for example a hub repo id that vLLM loads). Downloads go
through `voicekit.hub` (progress bars, the HF_HOME cache, HF_TOKEN, HF_HUB_OFFLINE, one clear error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voicekit.errors import ModelUnavailableError


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face hub repository."""

    repo_id: str
    filename: str


def is_gguf_spec(spec: str) -> bool:
    """True when `spec` names a GGUF file (local or on the hub)."""
    return spec.strip().lower().endswith(".gguf")


def parse_gguf_spec(spec: str) -> Path | HubFile | None:
    """A local path, a hub file, or None when `spec` is not a GGUF.

    Local: an existing file, an absolute or `.`/`~` path, or fewer than three `/`-parts. Otherwise the first
    two parts are the repo and the rest the file in it (`owner/repo/sub/file.gguf` works).
    """
    spec = spec.strip()
    if not is_gguf_spec(spec):
        return None
    path = Path(spec).expanduser()
    parts = spec.split("/")
    if path.exists() or path.is_absolute() or spec.startswith((".", "~")) or "\\" in spec or len(parts) < 3:
        return path
    if any(part in ("", ".", "..") for part in parts):  # no hub spec: report it as the missing file it names
        return path
    return HubFile(f"{parts[0]}/{parts[1]}", "/".join(parts[2:]))


def resolve_gguf(spec: str, token: str | None = None, cache_dir: str | None = None) -> Path:
    """The local path of the GGUF `spec` names: a hub file from the cache, or downloaded first when it is not there.

    Raises `ModelUnavailableError` (one clear line) when the file is missing or cannot be fetched.
    """
    where = parse_gguf_spec(spec)
    if where is None:
        raise ModelUnavailableError(f"{spec!r} is not a GGUF model: give a .gguf path or owner/repo/file.gguf")
    if isinstance(where, Path):
        if not where.is_file():
            raise ModelUnavailableError(f"GGUF model not found: {where} (give a local .gguf file, or "
                                        "owner/repo/file.gguf to download it from the Hugging Face hub)")
        return where
    return _download(where, spec, token, cache_dir)


def _download(hub_file: HubFile, spec: str, token: str | None, cache_dir: str | None) -> Path:
    from voicekit.hub import cached_file, fetch_file

    cached = cached_file(hub_file.repo_id, hub_file.filename, cache_dir)
    if cached:  # no network when the file is here: a start offline must not wait on the hub's retries
        return Path(cached)
    try:
        return Path(fetch_file(hub_file.repo_id, hub_file.filename, token, cache_dir=cache_dir))
    except ModelUnavailableError as error:
        raise ModelUnavailableError(f"{error}; {spec!r} is not a local file either") from error
