"""voicekit.hub against a stand-in hub: exact requests (token as a bearer header), downloads that skip
duplicate weight formats, and one clear error per failure (gated, missing, offline, missing file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stand_in_hub import COMMIT, StandInHub

from voicekit.errors import ModelUnavailableError
from voicekit.hub import check_access, fetch_file, fetch_model, is_local

REPOS = {
    "acme/speech": {"config.json": b'{"a": 1}', "model.safetensors": b"w" * 4096, "tokenizer.json": b"{}",
                    "original/consolidated.pth": b"duplicate weights", "model.gguf": b"GGUF"},
    "gate/keeper": {"config.json": b"{}"},
}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandInHub]:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # a fresh cache for each test
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    stand_in = StandInHub(repos=REPOS, gated={"gate/keeper": "hf_accepted"})
    yield stand_in
    stand_in.close()


def test_download_sends_the_token_and_skips_duplicate_weights(hub: StandInHub) -> None:
    folder = Path(fetch_model("acme/speech", "hf_secret", endpoint=hub.url))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "model.safetensors").read_bytes() == b"w" * 4096
    assert folder.name == COMMIT
    assert {r.authorization for r in hub.requests} == {"Bearer hf_secret"}
    fetched = {r.path.rsplit("/", 1)[-1] for r in hub.requests if r.method == "GET" and "/resolve/" in r.path}
    assert fetched == {"config.json", "model.safetensors", "tokenizer.json"}


def test_cached_model_is_not_downloaded_again(hub: StandInHub) -> None:
    first = fetch_model("acme/speech", None, endpoint=hub.url)
    downloads = sum(r.method == "GET" and "/resolve/" in r.path for r in hub.requests)
    assert fetch_model("acme/speech", None, endpoint=hub.url) == first
    assert sum(r.method == "GET" and "/resolve/" in r.path for r in hub.requests) == downloads


def test_local_folder_is_used_as_it_is(hub: StandInHub, tmp_path: Path) -> None:
    assert is_local(str(tmp_path)) and not is_local("acme/speech") and not is_local("")
    assert fetch_model(str(tmp_path), "hf_x", endpoint=hub.url) == str(tmp_path)
    assert hub.requests == []


def test_gated_repo_says_accept_the_licence(hub: StandInHub) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        fetch_model("gate/keeper", "hf_not_accepted", endpoint=hub.url)
    message = str(caught.value)
    assert message.startswith("model gate/keeper is gated: accept its licence at https://huggingface.co/gate/keeper")
    assert "HF_TOKEN" in message and "hf_not_accepted" not in message
    assert check_access("gate/keeper", "hf_not_accepted", endpoint=hub.url) == message
    assert check_access("gate/keeper", "", endpoint=hub.url) == message  # no token at all
    assert check_access("gate/keeper", "hf_accepted", endpoint=hub.url) is None
    assert hub.requests[-1].path == "/api/models/gate/keeper/auth-check"
    assert hub.requests[-1].authorization == "Bearer hf_accepted"


def test_missing_repo_says_check_the_id(hub: StandInHub) -> None:
    with pytest.raises(ModelUnavailableError, match="model acme/nope was not found on the hub: check the id"):
        fetch_model("acme/nope", None, endpoint=hub.url)
    assert "was not found" in (check_access("acme/nope", None, endpoint=hub.url) or "")


def test_single_file_and_missing_file(hub: StandInHub) -> None:
    path = Path(fetch_file("acme/speech", "model.gguf", "hf_x", endpoint=hub.url))
    assert path.read_bytes() == b"GGUF" and path.name == "model.gguf"
    with pytest.raises(ModelUnavailableError, match=r"model acme/speech: .*\(file other.gguf\)"):
        fetch_file("acme/speech", "other.gguf", "hf_x", endpoint=hub.url)


def test_offline_without_a_cache_says_so(hub: StandInHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelUnavailableError, match="not in the Hugging Face cache and the hub cannot be reached"):
        fetch_model("acme/speech", None, endpoint=hub.url)
    assert hub.requests == [], "offline mode must not touch the network"


def test_unreachable_hub_is_a_clear_error(hub: StandInHub) -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(ModelUnavailableError, match="model acme/speech is not in the Hugging Face cache and the hub"):
        fetch_model("acme/speech", None, endpoint=dead)


def test_gpu_preset_names_a_gated_model_in_one_line(hub: StandInHub, tmp_path: Path, repo_root: Path) -> None:
    """The user's path: `python -m voicekit say` on the gpu preset with a licence not accepted."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": "hf_secret_value",
           "VOICEKIT_TTS_MODEL": "gate/keeper"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "voicekit", "say", "Hello.", "--preset", "gpu", "--out",
                           str(tmp_path / "hello.wav")], env=env, cwd=repo_root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: model gate/keeper is gated: accept its licence at "
                                   "https://huggingface.co/gate/keeper with your account, then set HF_TOKEN to a "
                                   "token of that account")
    assert "hf_secret_value" not in done.stdout + done.stderr
    asked = [r for r in hub.requests if r.path.startswith("/api/models/")]
    assert [(r.path, r.authorization) for r in asked] == [
        ("/api/models/gate/keeper/revision/main", "Bearer hf_secret_value")]
