"""Notebook widgets (ipywidgets): `better_models(kit)`, the page's "Get better models" in a notebook.

    from voicekit.widgets import better_models
    display(better_models(kit))     # nothing downloads until its button is pressed

The button downloads Qwen2.5-0.5B-Instruct and Kokoro's English voices (voicekit.upgrade) in a worker thread, with a
progress bar and a line (bytes, speed, time left) and Cancel, then switches `kit` to them: the next `kit.chat()`
comes from the new chat model.
"""

from __future__ import annotations

import threading
from typing import Any

from voicekit import upgrade
from voicekit.progress import Progress


def better_models(kit: Any, *, endpoint: str | None = None) -> Any:
    """A box with the button, Cancel, a progress bar and its line; `.job` is the `UpgradeJob` behind it."""
    import ipywidgets as widgets

    label = (f"Use better models (already downloaded): {upgrade.BUNDLE}" if upgrade.status().ready
             else upgrade.OFFER)
    button = widgets.Button(description=label, button_style="primary", layout=widgets.Layout(width="auto"),
                            disabled=not upgrade.offered(kit))
    cancel = widgets.Button(description="Cancel", button_style="danger", layout=widgets.Layout(display="none"))
    bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(display="none", width="100%"))
    line = widgets.Label(value="" if upgrade.offered(kit) else f"chat model: {kit.description.get('chat', '?')}")
    job = upgrade.UpgradeJob(kit, endpoint)

    def show(event: Progress) -> None:
        busy = not event.finished
        bar.value = event.fraction
        bar.layout.display = "" if busy and event.total_bytes else "none"
        cancel.layout.display = "" if busy else "none"
        button.disabled = busy or not upgrade.offered(kit)
        line.value = event.line()

    def run() -> None:
        for event in job.run():
            show(event)

    def start(_: Any) -> None:
        button.disabled = True
        threading.Thread(target=run, name="voicekit-better-models", daemon=True).start()

    button.on_click(start)
    cancel.on_click(lambda _: job.cancel.set())
    box = widgets.VBox([widgets.HBox([button, cancel]), bar, line])
    box.job = job  # type: ignore[attr-defined]
    return box
