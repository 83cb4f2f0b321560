"""docs/CONFIGURATION.md, written from the settings' schema (`python -m voicekit config --markdown`).

The choices of `tts`, `extra_voices` and `chat_engine` come from the registry of parts (voicekit/registry.py), so a
registered voice family shows up here without an edit.
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, SecretStr

import voicekit.builtin  # noqa: F401 (registers the built-in parts, listed as choices)
from voicekit.registry import ENGINES, VOICE_FAMILIES
from voicekit.settings import ENV_PREFIX, PRESET_DEFAULTS, ServeSettings, Settings

_DOC_HEAD = """# Configuration

<!-- Generated from voicekit/settings.py by `python -m voicekit config --markdown > docs/CONFIGURATION.md`;
     tests/test_settings.py fails when this file is stale. Edit the field descriptions, not this file. -->

Every setting of a kit is a field of `voicekit.Settings` (voicekit/settings.py, on pydantic-settings). Values
come from, lowest first:

1. the field's **default**, then the **preset**'s (`cpu`, `gpu` or `laptop`; `auto`, the default, picks `gpu`
   when torch sees CUDA and vLLM is installed, else `laptop` when its models are already in the Hugging Face cache
   (`python -m voicekit upgrade` downloads them once), otherwise `cpu`; it never needs the network;
   `python -m voicekit doctor` says which and why);
2. **environment variables** `VOICEKIT_<NAME>` (an empty one counts as unset);
3. **keyword arguments**: `voicekit.load("cpu", mode="overlap", temperature=0.4)`.

The preset itself is the first argument of `voicekit.load()`, the `--preset` flag of the CLI, or `VOICEKIT_PRESET`.
A bad value (unknown preset or mode, a number that is not a number, shares that do not fit) is a one-line
`SettingsError`. `python -m voicekit config` prints what this machine resolves to, secrets masked.

"""

_DOC_SERVE = """
## Serving (`python -m voicekit serve`, `python app.py`)

`voicekit.ServeSettings`: flags (`--host`, `--port`, `--concurrency`) win over these variables.

"""

_DOC_TAIL = """
Secrets (`hf_token`, `password`, `api_key`) are `SecretStr`: hidden from `repr()`, masked in
`settings.public_dict()` (what logs and the web page show), and never printed.
"""


def _shown(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value in ("", (), None):
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return f"`{','.join(value)}`"
    if isinstance(value, str) and len(value) > 40:
        return "see meaning"
    return f"`{value:.2f}`" if isinstance(value, float) and 0.0 < value < 1.0 else f"`{value}`"


def _variable(name: str, field: Any) -> str:
    names = f"`{ENV_PREFIX}{name.upper()}`"
    if isinstance(field.validation_alias, AliasChoices):  # e.g. hf_token: HF_TOKEN too
        names += "".join(f", `{alias}`" for alias in field.validation_alias.choices[1:-1] if isinstance(alias, str))
    return names


def _kit_rows() -> list[str]:
    rows = []
    for name, field in Settings.model_fields.items():
        cpu = PRESET_DEFAULTS["cpu"].get(name, field.default)
        others = [PRESET_DEFAULTS[preset].get(name, field.default) for preset in ("gpu", "laptop")]
        cells = [_variable(name, field), f"`{name}`", "`auto`" if name == "preset" else _shown(cpu),
                 *("" if name == "preset" or value == cpu else _shown(value) for value in others),
                 str(field.description or "") + _choices(name)]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return rows


_SERVE_FLAGS = {"host": "--host", "port": "--port", "concurrency": "--concurrency"}


def _serve_rows() -> list[str]:
    rows = []
    for name, field in ServeSettings.model_fields.items():
        flag = f"`{_SERVE_FLAGS[name]}`" if name in _SERVE_FLAGS else ""
        cells = [_variable(name, field), flag, _shown(field.default), str(field.description or "")]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return rows


def configuration_markdown() -> str:
    """docs/CONFIGURATION.md: every field of `Settings` and `ServeSettings`, from the schema."""
    kit_table = ["| variable | keyword | cpu preset | gpu (when different) | laptop (when different) | meaning |",
                 "|---|---|---|---|---|---|", *_kit_rows()]
    serve_table = ["| variable | flag | default | meaning |", "|---|---|---|---|", *_serve_rows()]
    return _DOC_HEAD + "\n".join(kit_table) + "\n" + _DOC_SERVE + "\n".join(serve_table) + "\n" + _DOC_TAIL


def _choices(name: str) -> str:
    """The registered choices of a setting that names parts, as a sentence for its meaning cell."""
    if name == "tts":
        names = VOICE_FAMILIES.names()
    elif name == "extra_voices":
        names = tuple(family.name for family in VOICE_FAMILIES if family.extra_ok)
    elif name == "chat_engine":
        names = ENGINES.names()
    else:
        return ""
    return ". Registered: " + ", ".join(f"`{choice}`" for choice in names)
