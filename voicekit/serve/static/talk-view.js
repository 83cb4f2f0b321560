// voicekit Talk page: what the page shows of the conversation (its bubbles), of a reply's timing, and the voices.

const $ = (id) => document.getElementById(id);
const MAX_BUBBLES = 60;

// The bubble keyed `key` (an item or response id), made when missing, showing `text`.
export function addBubble(role, text, key) {
  const box = $("vk-conversation");
  box.querySelector(".vk-hint")?.remove();
  let bubble = key ? box.querySelector(`[data-key="${CSS.escape(key)}"]`) : null;
  if (!bubble) {
    bubble = document.createElement("div");
    bubble.className = `vk-turn vk-${role}`;
    if (key) bubble.dataset.key = key;
    const who = document.createElement("span");
    who.className = "vk-who";
    who.textContent = role === "user" ? "you" : "voicekit";
    bubble.append(who, document.createElement("p"));
    box.append(bubble);
    while (box.children.length > MAX_BUBBLES) box.firstElementChild.remove();
  }
  bubble.querySelector("p").textContent = text || "…";
  box.scrollTop = box.scrollHeight;
}

export function removeBubble(key) {
  $("vk-conversation").querySelector(`[data-key="${CSS.escape(key)}"]`)?.remove();
}

export function markBubble(turn, mark) {
  $("vk-conversation").querySelector(`[data-key="${CSS.escape(turn.id)}"]`)?.classList.add("vk-" + mark);
}

// A reply's timing line: first sound, first audio, gaps, what was played.
export function timingText(turn) {
  const parts = [];
  const after = turn.kind === "speech" ? "after you stopped" : "after Enter";
  if (turn.firstSoundMs !== null) parts.push(`first sound ${(turn.firstSoundMs / 1000).toFixed(2)} s ${after}`);
  if (turn.firstAudioMs !== null) parts.push(`first audio in ${(turn.firstAudioMs / 1000).toFixed(2)} s`);
  parts.push(`${turn.underruns} gap${turn.underruns === 1 ? "" : "s"}`);
  if (turn.playedMs) parts.push(`played ${(turn.playedMs / 1000).toFixed(1)} s`);
  if (turn.status && turn.status !== "completed") parts.push(turn.status);
  return parts.join(" · ");
}

// The voice menu: the session's voices, grouped by family, the session's voice selected; the voice picked is
// remembered for the next visit. `onChoose(voice)` tells the server.
export class VoiceMenu {
  constructor(select, onChoose) {
    this.select = select;
    this.onChoose = onChoose;
    this.ids = [];
    try { this.stored = localStorage.getItem("voicekit.voice"); } catch { this.stored = null; }   // storage off
    select.addEventListener("change", (event) => this.choose(event.target.value));
  }

  // Show the session's voices; their ids.
  show(session) {
    fillVoices(this.select, session);
    this.ids = (session.voices || []).map((voice) => voice.id);
    return this.ids;
  }

  choose(voice) {
    this.stored = voice;
    try { localStorage.setItem("voicekit.voice", voice); } catch { /* storage off in this frame */ }
    this.select.value = voice;
    return this.onChoose(voice);
  }

  // The voice picked on an earlier visit, when the session has it and speaks another; else null.
  earlier(session) {
    return this.stored && this.stored !== session.voice && this.ids.includes(this.stored) ? this.stored : null;
  }
}

function fillVoices(select, session) {
  const voices = session.voices || [];
  select.replaceChildren();
  const families = new Map();
  for (const voice of voices) {
    if (!families.has(voice.family)) families.set(voice.family, []);
    families.get(voice.family).push(voice);
  }
  for (const [family, members] of families) {
    const group = families.size > 1 ? document.createElement("optgroup") : select;
    if (group !== select) { group.label = family || "voices"; select.append(group); }
    for (const voice of members) {
      const option = new Option(voice.description ? `${voice.id} — ${voice.description}` : voice.id, voice.id);
      group.append(option);
    }
  }
  select.value = session.voice;
  select.disabled = voices.length === 0;
}

// The Talk button: pressed while the microphone is on; its glow follows the level.
export function showMic(on) {
  const button = $("vk-mic");
  button.setAttribute("aria-pressed", on ? "true" : "false");
  button.textContent = on ? "Listening… (click to stop)" : "Talk";
  if (!on) showLevel(0);
}

export function showLevel(peak) {
  $("vk-mic").style.setProperty("--level", Math.min(1, peak * 3).toFixed(2));
}
