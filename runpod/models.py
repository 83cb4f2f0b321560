"""The gpu preset's Hugging Face models on a pod: `check` access (gated repos), `download` with progress.

    python runpod/models.py check      # the hub's auth check on each repo: says which one is not accessible and why
    python runpod/models.py download   # snapshot_download() into HF_HOME (on the volume), with progress bars

The repos are the gpu preset's chat, speech and SNAC models and its speech recognizer (Whisper large-v3-turbo,
~1.6 GB, fetched here so that the first spoken turn does not wait for it); VOICEKIT_CHAT_MODEL, VOICEKIT_TTS_MODEL,
VOICEKIT_SNAC_MODEL and VOICEKIT_ASR_MODEL override them; local paths and the recognizers voicekit installs as
packages (tiny.en, base) are skipped. The token comes from HF_TOKEN and is never printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voicekit import hub  # noqa: E402  (the repo root first: this script runs from a checkout)
from voicekit.settings import Settings  # noqa: E402


def gpu_models(env: Mapping[str, str] | None = None) -> list[str]:
    """Hub repos the gpu preset loads (local paths left out), the speech recognizer's last."""
    settings = Settings.resolve("gpu", env=os.environ if env is None else env)
    repos = [settings.chat_model, settings.tts_model]
    if settings.tts == "orpheus":
        repos.append(settings.snac_model)
    asr = asr_repo(settings.asr_model)
    return [repo for repo in dict.fromkeys([*repos, asr]) if repo and not hub.is_local(repo)]


def asr_repo(model: str) -> str | None:
    """The hub repo of a speech recognizer setting (a faster-whisper name or owner/name), None for the packaged ones
    and local folders."""
    from voicekit.listening.whisper_models import BASE_MODEL, DEFAULT_MODEL, hub_repo

    if not model or model in (DEFAULT_MODEL, BASE_MODEL) or hub.is_local(model) or _path_like(model):
        return None
    return hub_repo(model)


def _path_like(spec: str) -> bool:
    """A folder the recognizer loads from disk (absent here: it may be on a volume not mounted yet), never a hub id
    (`owner/name`, one slash)."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1


def patterns(repo: str, env: Mapping[str, str] | None = None) -> list[str] | None:
    """The files to fetch from `repo`: the recognizer's model files only (what voicekit loads), else all."""
    from voicekit.listening.whisper_models import MODEL_FILES

    settings = Settings.resolve("gpu", env=os.environ if env is None else env)
    return MODEL_FILES if repo == asr_repo(settings.asr_model) else None


def check(repos: Sequence[str], token: str, endpoint: str | None = None) -> list[str]:
    """One message per repo the token cannot download (empty: all accessible)."""
    return [problem for repo in repos if (problem := hub.check_access(repo, token, endpoint=endpoint))]


def download(repos: Sequence[str], token: str, endpoint: str | None = None) -> None:
    """Fetch each repo into the HF cache (already cached files are skipped)."""
    for repo in repos:
        print(f"downloading {repo} ...", flush=True)
        print(f"  {repo}: {hub.fetch_model(repo, token, endpoint=endpoint, allow_patterns=patterns(repo))}",
              flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in (["check"], ["download"], ["list"]):
        print("usage: models.py check|download|list", file=sys.stderr)
        return 2
    try:
        repos = gpu_models()
    except hub.ModelUnavailableError as error:  # an unknown VOICEKIT_ASR_MODEL name
        print(f"error: {error}", file=sys.stderr)
        return 1
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
    try:
        download(repos, token)
    except hub.ModelUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
