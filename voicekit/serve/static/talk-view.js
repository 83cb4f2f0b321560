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

// The voice menu: the session's voices, grouped by family, the session's voice selected.
export function fillVoices(select, session) {
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
