"""Models from the Hugging Face hub: access checks and downloads, with progress bars and errors that say what to do.

Every hub model voicekit loads goes through here (the gpu preset's vLLM models, SNAC, Orpheus GGUF files,
the RunPod scripts), so a gated repo, a wrong id, a refused token or a machine without network gives one
clear `ModelUnavailableError` naming the model, instead of a traceback from deep inside vLLM or torch.
Downloads honour HF_HOME (the cache; on a pod it lives on the /workspace volume) and HF_HUB_OFFLINE, and
huggingface_hub draws its progress bars. The token comes from the settings (HF_TOKEN) and is never logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from voicekit.errors import ModelUnavailableError, first_line

__all__ = ["IGNORE_PATTERNS", "ModelUnavailableError", "cached_file", "check_access", "explain", "fetch_file",
           "fetch_model", "is_local"]

log = logging.getLogger("voicekit.hub")

#: Files a snapshot leaves out: weight formats vLLM and SNAC do not read (a Llama repo's original/ folder
#: alone holds a second full copy of the weights).
IGNORE_PATTERNS = ["original/*", "*.gguf", "*.pth", "*.onnx", "*.msgpack", "*.h5", "*.ot"]


def is_local(spec: str) -> bool:
    """True when ``spec`` names an existing file or folder rather than a hub id."""
    return bool(spec) and Path(spec).expanduser().exists()


def explain(repo: str, error: BaseException) -> str:
    """One line telling the user why ``repo`` could not be read and what to do about it."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, GatedRepoError):  # before RepositoryNotFoundError, its parent class
        return (f"model {repo} is gated: accept its licence at https://huggingface.co/{repo} with your account, "
                "then set HF_TOKEN to a token of that account")
    if isinstance(error, RepositoryNotFoundError):
        return (f"model {repo} was not found on the hub: check the id (a private repo also needs HF_TOKEN, and an "
                "invalid HF_TOKEN hides every repo)")
    if isinstance(error, RevisionNotFoundError):
        return f"model {repo}: the requested revision does not exist"
    if isinstance(error, LocalEntryNotFoundError):
        return (f"model {repo} is not in the Hugging Face cache and the hub cannot be reached (no network, or "
                "HF_HUB_OFFLINE=1): connect once to download it, or point HF_HOME at a cache that has it")
    if isinstance(error, EntryNotFoundError):
        return f"model {repo}: {first_line(error)}"
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        if status == 401:
            return f"model {repo}: the hub refused the token (401): check HF_TOKEN"
        return f"model {repo}: the hub answered HTTP {status}: {first_line(error)}"
    return f"could not fetch model {repo}: {type(error).__name__}: {first_line(error)}"


def check_access(repo: str, token: str | None, *, endpoint: str | None = None) -> str | None:
    """None when ``token`` may download ``repo``; otherwise the reason, from `explain`.

    Uses the hub's auth check, which (unlike the model's metadata) fails for a gated repo whose licence the
    token's account has not accepted.
    """
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=endpoint).auth_check(repo, token=token or None)
    except Exception as error:  # every failure becomes a message; the caller decides whether it is fatal
        return explain(repo, error)
    return None


def fetch_model(spec: str, token: str | None, *, endpoint: str | None = None, cache_dir: str | None = None,
                allow_patterns: list[str] | None = None) -> str:
    """A local folder for ``spec``: a local path as it is, a hub id downloaded into the cache (cached files
    are not fetched again; `allow_patterns`: only the files that match). Raises `ModelUnavailableError` with
    `explain`'s message."""
    if is_local(spec):
        return str(Path(spec).expanduser())
    from huggingface_hub import snapshot_download

    log.info("fetching %s from the Hugging Face hub (cached files are reused)", spec)
    try:
        return str(snapshot_download(spec, token=token or None, ignore_patterns=IGNORE_PATTERNS, endpoint=endpoint,
                                     cache_dir=cache_dir, allow_patterns=allow_patterns))
    except Exception as error:
        raise ModelUnavailableError(explain(spec, error)) from error


def cached_file(repo: str, filename: str, cache_dir: str | None = None) -> str | None:
    """The local path of a hub file already in the cache, else None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return found if isinstance(found, str) else None


def fetch_file(repo: str, filename: str, token: str | None, *, endpoint: str | None = None,
               cache_dir: str | None = None) -> str:
    """Local path of one file of a hub repo, downloaded into the cache when missing (e.g. one GGUF of many)."""
    from huggingface_hub import hf_hub_download

    log.info("fetching %s from %s on the Hugging Face hub", filename, repo)
    try:
        return str(hf_hub_download(repo, filename, token=token or None, endpoint=endpoint, cache_dir=cache_dir))
    except Exception as error:
        raise ModelUnavailableError(f"{explain(repo, error)} (file {filename})") from error
