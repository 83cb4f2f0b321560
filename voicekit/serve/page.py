"""The web page: a Gradio 6 `gr.Blocks` with Chat, Talk, Speak and Settings tabs, built on a loaded kit.

The page only calls the kit (`kit.achat`, `kit.asay`) and shows what it returns; `voicekit.serve.app` mounts it
beside the HTTP API (`voicekit.serve.api`); the Talk tab frames the Talk page (`voicekit.serve.talk`). Streamed
audio: Gradio re-encodes every streamed chunk with ffmpeg and chunks shorter than about a second stutter, so
sentence chunks are grouped to at least `MIN_CHUNK_S` before they are sent (the first group goes out as soon as
it is that long, the rest of the reply follows).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np

from voicekit.errors import VoicekitError
from voicekit.pipeline import MODES, Timings
from voicekit.serve.admission import Admission, Busy, Limits
from voicekit.serve.audio import pcm16_array
from voicekit.serve.page_upgrade import hint, upgrade_controls, wire_upgrade
from voicekit.upgrade import offered

if TYPE_CHECKING:
    from voicekit.kit import AsyncReply
    from voicekit.kitlike import KitLike, ServedKit

log = logging.getLogger("voicekit.web")

MIN_CHUNK_S = 1.0
MAX_TURNS_SHOWN = 8
POD_STATUS_REFRESH_S = 3.0


# -- helpers the page uses (plain functions, tested without a browser) ------------------------------


class ChunkGrouper:
    """Collect float chunks and release them as int16 blocks of at least `min_seconds`."""

    def __init__(self, sample_rate: int, min_seconds: float = MIN_CHUNK_S) -> None:
        self.sample_rate = sample_rate
        self.min_samples = max(1, int(min_seconds * sample_rate))
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, samples: np.ndarray) -> np.ndarray | None:
        """Add a chunk; return a block once enough audio is collected."""
        if len(samples):
            self._parts.append(np.asarray(samples, dtype=np.float32).ravel())
            self._count += len(samples)
        return self.flush() if self._count >= self.min_samples else None

    def flush(self) -> np.ndarray | None:
        """Whatever is collected (None when nothing is)."""
        if not self._count:
            return None
        block = pcm16_array(np.concatenate(self._parts))
        self._parts, self._count = [], 0
        return block


def insert_tag(text: str | None, tag: str) -> str:
    """The message with an emotion tag appended (the tag buttons of the Chat tab)."""
    return f"{(text or '').rstrip()} {tag}".strip()


def plain_history(messages: Iterable[Any] | None) -> list[dict[str, str]]:
    """Gradio chat messages (content may be a list of blocks) as `{"role", "content": str}` dicts for the kit."""
    plain: list[dict[str, str]] = []
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        text = _text_of(message.get("content"))
        if message.get("role") in ("user", "assistant") and text.strip():
            plain.append({"role": message["role"], "content": text})
    return plain


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return " ".join(part for part in (_text_of(item) for item in content) if part)
    return ""


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def format_timings(timings: dict[str, Any]) -> str:
    """`Timings.line()` of a timings dict (a turn of the table)."""
    return Timings.from_dict(timings).line()


def turns_table(turns: list[dict[str, Any]]) -> str:
    """Markdown table of the timings of the last turns, newest first."""
    if not turns:
        return "*Timings of each turn appear here.*"
    rows = ["| turn | first audio | LLM | TTS | audio | RTF |", "|---|---|---|---|---|---|"]
    for turn in reversed(turns[-MAX_TURNS_SHOWN:]):
        rtf = turn.get("rtf")
        rows.append(f"| {turn['turn']} | {_seconds(turn.get('ttfa_s'))} | {_seconds(turn.get('llm_s'))} | "
                    f"{_seconds(turn.get('tts_s'))} | {_seconds(turn.get('audio_s'))} | "
                    f"{'–' if rtf is None else f'{rtf:.2f}'} |")
    return "\n".join(rows)


def status_line(kit: ServedKit) -> str:
    """Which preset, models and device are in use (no secrets), the speech recognizer included."""
    info = kit.description or {}
    return (f"**preset** {info.get('preset', kit.settings.preset)} · **chat** {info.get('chat', '?')} · "
            f"**voice** {info.get('tts', '?')} · **device** {info.get('device', '?')} · "
            f"**speech recognition** {recognizer_line(kit.recognizer_facts())}")


def recognizer_line(facts: dict[str, Any]) -> str:
    """"large-v3-turbo on cuda (float16)", "base on cpu (int8; large-v3-turbo could not run on the GPU: ...)", or
    before its first use "large-v3-turbo on cuda (loaded on first use)"."""
    model = Path(str(facts.get("model", "?"))).name or str(facts.get("model"))
    detail = facts.get("compute_type") if facts.get("loaded") else "loaded on first use"
    reason = facts.get("fallback_reason")
    return f"{model} on {facts.get('device', '?')} ({detail}{f'; {reason}' if reason else ''})"


def recognizer_notice(kit: ServedKit) -> str:
    """A line for the top of the page when speech recognition fell back to the CPU, else empty."""
    reason = kit.recognizer_facts().get("fallback_reason")
    return f"**Note:** speech recognition is slower than it should be: {reason}" if reason else ""


def load_examples(assets_dir: Path | None) -> list[str]:
    """Example prompts from `examples.json` in `assets_dir` (voicekit/serve/assets/: a list of strings), or none."""
    path = assets_dir / "examples.json" if assets_dir else None
    if path is None or not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("could not read %s", path)
        return []
    return [item for item in data if isinstance(item, str) and item.strip()] if isinstance(data, list) else []


def _session(request: gr.Request | None) -> str:
    return (getattr(request, "session_hash", None) or "-")[:8]


def _header(assets_dir: Path | None) -> str:
    logo = assets_dir / "logo.svg" if assets_dir else None
    svg = logo.read_text(encoding="utf-8") if logo is not None and logo.is_file() else ""
    return (f'<div class="vk-header">{svg}<div><h1>voicekit</h1>'
            f"<p>{html.escape('Speak or type, pick a voice, and hear the reply as it is spoken.')}</p></div></div>")


# -- the page ---------------------------------------------------------------------------------------


PREVIEW_TEXT = "Hello! This is how I sound. Pick me for your next reply."
# The Talk page (voicekit.serve.talk), relative so that it follows the page under a path prefix. Gradio renders a
# tab's children only once it is selected, so the page (and its realtime session) starts when Talk is opened.
TALK_FRAME = ('<iframe src="talk" title="Talk" allow="microphone; autoplay" '
              'style="width: 100%; height: 640px; border: 0;"></iframe>')


@contextlib.asynccontextmanager
async def _admitted(admission: Admission) -> AsyncIterator[None]:
    """A running slot of the server's admission for a page request; a busy server is one clear line on the page."""
    try:
        async with admission.slot():
            yield
    except Busy as busy:
        raise gr.Error(f"Busy, try again in {busy.retry_after} s: {busy}") from None


def _check_time_limit(reply: AsyncReply, admission: Admission) -> None:
    """One clear line when the turn was stopped at the server's time limit."""
    if reply.turn.timed_out:
        raise gr.Error(f"This took longer than the server's limit ({admission.limits.timeout_s:g} s) and was "
                       "stopped; try a shorter text")


def voice_choices(kit: KitLike) -> list[tuple[str, str]]:
    """(label, id) for the voice dropdowns, grouped by family (the kit lists them so); labels say what each is."""
    voices = kit.voices
    several = len({getattr(voice, "family", "") for voice in voices}) > 1
    choices = []
    for voice in voices:
        family, description = getattr(voice, "family", ""), getattr(voice, "description", "")
        label = f"{family} · {voice}" if several else str(voice)
        choices.append((f"{label} — {description}" if description else label, str(voice)))
    return choices


def _note(line: str | None) -> str:
    return f"**Note:** {line}" if line else ""


def build_blocks(kit: ServedKit, *, assets_dir: str | Path | None = None, title: str = "voicekit",
                 notice: str | None = None, admission: Admission | None = None,
                 pod_status: Callable[[], str] | None = None) -> gr.Blocks:
    """The page for `kit`; `notice` is one line above the tabs (e.g. why a pod runs the cpu preset); `pod_status`
    gives a line that replaces it while not empty, refreshed every POD_STATUS_REFRESH_S (a pod preparing its GPU).
    Queue settings and auth are applied by the caller (see app.py)."""
    assets = Path(assets_dir) if assets_dir else None
    admission = admission or Admission(Limits.for_preset(kit.settings.preset))
    with gr.Blocks(title=title) as blocks:
        turns = gr.State([])
        gr.HTML(_header(assets))
        if pod_status is not None:
            pod_line = gr.Markdown(_note(pod_status() or notice), elem_id="vk-notice")
            gr.Timer(POD_STATUS_REFRESH_S).tick(lambda: _note(pod_status() or notice), None, pod_line, queue=False,
                                                show_progress="hidden", api_visibility="private")
        elif notice:
            gr.Markdown(_note(notice), elem_id="vk-notice")
        # the recognizer loads on first use (the gpu preset's server loads it at start): shown as each page loads
        asr_notice = gr.Markdown(recognizer_notice(kit), elem_id="vk-asr-notice")
        with gr.Tabs():
            # Talk first: typed or spoken, its AudioWorklet player sounds within ~0.6 s of Enter here, where the
            # Chat tab's streamed gr.Audio takes ~3.7 s (docs/BENCHMARKS.md, "Talking out loud").
            with gr.Tab("Talk", id="talk"):
                gr.Markdown("Press **Talk** and speak, or type; it answers in the chosen voice, "
                            "and you can interrupt it by speaking.", elem_id="vk-talk-intro")
                talk_hint = gr.Markdown(hint(kit), elem_id="vk-upgrade-hint")
                gr.HTML(TALK_FRAME, elem_id="vk-talk-frame")
            with gr.Tab("Chat", id="chat"):
                chatbot = gr.Chatbot(label="Conversation", height=320, elem_id="vk-chatbot")
                audio = gr.Audio(label="Reply audio", streaming=True, autoplay=True, interactive=False,
                                 elem_id="vk-audio")
                with gr.Row():
                    message = gr.Textbox(label="Message", placeholder="Say something and press Enter",
                                         scale=5, elem_id="vk-message", max_lines=6)
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="vk-send")
                with gr.Row():
                    voice = gr.Dropdown(voice_choices(kit), value=kit.default_voice, label="Voice", scale=2,
                                        elem_id="vk-voice")
                    stop = gr.Button("Stop", variant="stop", scale=1)
                    clear = gr.Button("Clear conversation", scale=1)
                if kit.tags:
                    with gr.Row(elem_classes="vk-tags"):
                        for tag in kit.tags:
                            gr.Button(tag, size="sm", min_width=60).click(
                                lambda text, t=tag: insert_tag(text, t), message, message,
                                queue=False, api_visibility="private")
                examples = load_examples(assets)
                if examples:
                    gr.Examples([[item] for item in examples], inputs=[message], label="Try")
                reply_text = gr.Textbox(label="Reply", interactive=False, lines=2, elem_id="vk-reply")
                timings = gr.Markdown(turns_table([]), elem_id="vk-timings")
            with gr.Tab("Speak", id="speak"):
                speak_text = gr.Textbox(label="Text to speak", lines=4, elem_id="vk-speak-text",
                                        placeholder="Type any text to hear it in the chosen voice")
                with gr.Row():
                    speak_voice = gr.Dropdown(voice_choices(kit), value=kit.default_voice, label="Voice", scale=3)
                    preview = gr.Button("Preview voice", scale=1, elem_id="vk-preview")
                    speak_button = gr.Button("Speak", variant="primary", scale=1, elem_id="vk-speak")
                speak_audio = gr.Audio(label="Speech", interactive=False, buttons=["download"],
                                       elem_id="vk-speak-audio")
                speak_timings = gr.Markdown("")
            with gr.Tab("Settings", id="settings"):
                status = gr.Markdown(status_line(kit), elem_id="vk-status")
                upgrade_panel = upgrade_controls(kit)
                system_prompt = gr.Textbox(kit.settings.system_prompt, label="System prompt", lines=4)
                temperature = gr.Slider(0.0, 2.0, value=kit.settings.temperature, step=0.05, label="Temperature")
                mode = gr.Radio(list(MODES), value=kit.settings.mode, label="Mode",
                                info="sequential: write the whole reply, then speak it; "
                                     "overlap: speak the first sentence while the model writes")
                with gr.Accordion("All settings (secrets hidden)", open=False):
                    gr.JSON(kit.settings.public_dict())

        async def respond(text: str, history: list[Any], voice_name: str, prompt: str, temp: float,
                          chosen_mode: str, past_turns: list[dict[str, Any]],
                          request: gr.Request) -> AsyncIterator[tuple[Any, ...]]:
            past = plain_history(history)
            try:
                reply = kit.achat(text, voice=voice_name or None, history=past, mode=chosen_mode or None,
                                  system_prompt=prompt, temperature=temp, time_limit_s=admission.limits.timeout_s)
            except VoicekitError as error:
                raise gr.Error(str(error)) from None
            shown = [*past, {"role": "user", "content": text.strip()}, {"role": "assistant", "content": "…"}]
            yield "", shown, None, "", gr.skip(), past_turns
            rate = reply.sample_rate  # the kit's, when the turn was made (a switch of models may change it)
            grouper = ChunkGrouper(rate)
            try:
                async with _admitted(admission):
                    async for chunk in reply:
                        block = grouper.add(chunk.samples)
                        if block is not None:
                            shown[-1]["content"] = reply.text or "…"
                            yield gr.skip(), shown, (rate, block), reply.text, gr.skip(), past_turns
                _check_time_limit(reply, admission)
                tail = grouper.flush()
                turn = {"turn": len(past_turns) + 1, **reply.timings.as_dict()}
                all_turns = [*past_turns, turn]
                log.info("web session %s turn %d: %s", _session(request), turn["turn"], reply.timings.line())
                yield ("", reply.history, (rate, tail) if tail is not None else None, reply.text,
                       turns_table(all_turns), all_turns)
            finally:
                await reply.aclose()

        async def speak(text: str, voice_name: str, request: gr.Request) -> tuple[tuple[int, np.ndarray], str]:
            try:
                reply = kit.asay(text, voice=voice_name or None, time_limit_s=admission.limits.timeout_s)
            except VoicekitError as error:
                raise gr.Error(str(error)) from None
            try:
                async with _admitted(admission):
                    samples = await reply.audio()
                _check_time_limit(reply, admission)
            finally:
                await reply.aclose()
            readout = reply.timings.line()
            log.info("web session %s speak: %s", _session(request), readout)
            return (reply.sample_rate, pcm16_array(samples)), readout

        async def preview_voice(voice_name: str, request: gr.Request) -> tuple[tuple[int, np.ndarray], str]:
            """A short sentence in the chosen voice (the Speak tab's Preview button)."""
            return await speak(PREVIEW_TEXT, voice_name, request)

        chat_inputs = [message, chatbot, voice, system_prompt, temperature, mode, turns]
        chat_outputs = [message, chatbot, audio, reply_text, timings, turns]
        submitted = message.submit(respond, chat_inputs, chat_outputs, api_name="chat")
        clicked = send.click(respond, chat_inputs, chat_outputs, api_visibility="private")
        stop.click(None, cancels=[submitted, clicked], api_visibility="private")
        clear.click(lambda: ([], None, "", turns_table([]), []), None, [chatbot, audio, reply_text, timings, turns],
                    queue=False, api_visibility="private")
        speak_button.click(speak, [speak_text, speak_voice], [speak_audio, speak_timings], api_name="speak")
        preview.click(preview_voice, [speak_voice], [speak_audio, speak_timings], api_name="preview")
        speak_text.submit(speak, [speak_text, speak_voice], [speak_audio, speak_timings],
                          api_visibility="private")

        def refreshed() -> tuple[Any, ...]:
            """What a switch of models changes on the page: status line, Talk tab hint, voice menus."""
            menu = gr.update(choices=voice_choices(kit), value=kit.default_voice)
            return status_line(kit), hint(kit), menu, menu

        changing = [status, talk_hint, voice, speak_voice]
        wire_upgrade(kit, upgrade_panel, changing, refreshed)
        blocks.load(lambda: (*refreshed(), recognizer_notice(kit), gr.update(visible=offered(kit))), None,
                    [*changing, asr_notice, upgrade_panel.panel], queue=False, api_visibility="private")
    return blocks
