"""The gpu preset's Hugging Face models on a pod: `check` access (gated repos), `download` with progress.

    python runpod/models.py check      # model_info() on each repo: says which one is not accessible and why
    python runpod/models.py download   # snapshot_download() into HF_HOME (on the volume), with progress bars

The repos are the gpu preset's chat, speech and SNAC models (VOICEKIT_CHAT_MODEL, VOICEKIT_TTS_MODEL and
VOICEKIT_SNAC_MODEL override them; local paths are skipped). The token comes from HF_TOKEN and is never printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IGNORE = ["original/*", "*.gguf", "*.pth", "*.onnx"]  # duplicate weight formats vLLM / SNAC do not read


def gpu_models(env: Mapping[str, str] | None = None) -> list[str]:
    """Hub repos the gpu preset loads (local paths left out)."""
    sys.path.insert(0, str(ROOT))
    from voicekit.settings import Settings

    settings = Settings.resolve("gpu", env=os.environ if env is None else env)
    repos = [settings.chat_model, settings.tts_model]
    if settings.tts == "orpheus":
        repos.append(settings.snac_model)
    return [repo for repo in dict.fromkeys(repos) if repo and not Path(repo).exists()]


def check(repos: Sequence[str], token: str, model_info: Callable[..., Any] | None = None) -> list[str]:
    """One message per repo the token cannot read (empty: all accessible)."""
    if model_info is None:
        from huggingface_hub import model_info
    problems = []
    for repo in repos:
        try:
            model_info(repo, token=token)
        except Exception as error:  # GatedRepoError, RepositoryNotFoundError, HTTP 401/403, network
            name = type(error).__name__
            if "Gated" in name or "403" in str(error):
                why = f"gated: accept its licence at https://huggingface.co/{repo} with the token's account"
            elif "NotFound" in name or "401" in str(error):
                why = "not found or the token is invalid (check HF_TOKEN and the repo id)"
            else:
                why = f"{name}: {str(error).splitlines()[0] if str(error) else ''}"
            problems.append(f"model {repo} is not accessible: {why}")
    return problems


def download(repos: Sequence[str], token: str, snapshot_download: Callable[..., Any] | None = None) -> None:
    """Fetch each repo into the HF cache (already cached files are skipped)."""
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
    for repo in repos:
        print(f"downloading {repo} ...", flush=True)
        path = snapshot_download(repo, token=token, ignore_patterns=IGNORE)
        print(f"  {repo}: {path}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["check"], ["download"], ["list"]):
        print("usage: models.py check|download|list", file=sys.stderr)
        return 2
    repos = gpu_models()
    if args == ["list"]:
        print("\n".join(repos))
        return 0
    token = os.environ.get("HF_TOKEN", "")
    if args == ["check"]:
        problems = check(repos, token)
        for line in problems:
            print(line, file=sys.stderr)
        if not problems:
            print(f"all models accessible: {', '.join(repos)}")
        return 1 if problems else 0
    download(repos, token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
