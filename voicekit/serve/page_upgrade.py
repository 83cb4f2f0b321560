"""The page's way to better models: a hint on the Talk tab while the bundled SmolLM2-135M talks, and in Settings
"Get better models" (voicekit.upgrade) with a progress bar and Cancel, then the running kit switches to them.

One download serves the whole server: every open page shares the kit, so a second click (another tab) is told
that one is running, and Cancel stops it for all. The page keeps answering on the bundled models meanwhile.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from voicekit import upgrade
from voicekit.progress import Progress
from voicekit.upgrade import UpgradeJob, offered

HINT = ("Replies come from SmolLM2-135M, a toy model bundled for offline use. **Settings → Get better models**: "
        "Qwen2.5-0.5B-Instruct (0.4 GB) and Kokoro's 28 English voices (15 MB), downloaded once.")


def hint(kit: Any) -> str:
    """The Talk tab's line while the bundled chat model is in use, else empty."""
    return HINT if offered(kit) else ""


def button_label(ready: bool) -> str:
    """The button's text (the files may be in the cache already: then it only switches)."""
    return f"Use better models (already downloaded): {upgrade.BUNDLE}" if ready else upgrade.OFFER


def progress_html(event: Progress) -> str:
    """A progress bar and its line (bytes, speed, time left), or the line alone once the download has ended."""
    line = f'<div class="vk-upgrade-line">{html.escape(event.line())}</div>'
    if event.finished or event.stage in ("listing", "switching"):
        return line
    return f'<progress value="{int(event.fraction * 1000)}" max="1000" style="width: 100%"></progress>{line}'


@dataclass
class UpgradeControls:
    """The Settings tab's panel: the button, Cancel and the progress display."""

    panel: Any
    button: Any
    cancel: Any
    progress: Any


def upgrade_controls(kit: Any) -> UpgradeControls:
    """The panel, made inside the Settings tab (hidden when the bundle is not offered)."""
    with gr.Column(visible=offered(kit), elem_id="vk-upgrade") as panel:
        button = gr.Button(button_label(upgrade.status().ready), variant="primary", elem_id="vk-upgrade-button")
        cancel = gr.Button("Cancel", variant="stop", visible=False, elem_id="vk-upgrade-cancel")
        progress = gr.HTML("", elem_id="vk-upgrade-progress")
    return UpgradeControls(panel, button, cancel, progress)


def wire_upgrade(kit: Any, controls: UpgradeControls, outputs: Sequence[Any], refreshed: Callable[[], tuple[Any, ...]],
                 endpoint: str | None = None) -> UpgradeJob:
    """Button and Cancel; after a switch `outputs` get `refreshed()` (status line, hint, voice menus)."""
    job = UpgradeJob(kit, endpoint)
    unchanged = tuple(gr.skip() for _ in outputs)

    def run() -> Iterator[tuple[Any, ...]]:
        for event in job.run():
            busy = not event.finished
            after = refreshed() if event.stage == "done" else unchanged
            yield (progress_html(event), gr.update(visible=busy),
                   gr.update(interactive=not busy, visible=offered(kit)), *after)

    controls.button.click(run, None, [controls.progress, controls.cancel, controls.button, *outputs],
                          api_visibility="private", concurrency_id="vk-upgrade", concurrency_limit=1,
                          show_progress="hidden")
    controls.cancel.click(lambda: job.cancel.set(), None, None, queue=False, api_visibility="private")
    return job
