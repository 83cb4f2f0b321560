// voicekit Talk page: talk with the kit out loud over the server's /v1/realtime WebSocket
// (OpenAI-Realtime-style JSON events; audio is base64 pcm16 little-endian, mono, 24 kHz, both ways).
//
// Microphone -> mic-worklet.js (24 kHz pcm16 frames of 20 ms) -> input_audio_buffer.append; the server's VAD
// finds the turns. Reply audio -> player-worklet.js (jitter buffer, gapless, flushed at once on barge-in).
// Measurements for tests and benchmarks are on window.voicekitTalk (times: performance.now() milliseconds).
// A dropped socket (a proxy cut, a laptop waking, a restarted server) is reopened with backoff, and the new session
// is given the conversation so far and the page's settings (talk-conversation.js); meanwhile it says "reconnecting…".

import {RATE, createPlayer, decodePcm16, encodeBase64, openMicrophone} from "./talk-audio.js";
import {Conversation, restoreEvents} from "./talk-conversation.js";
import {RealtimeSocket} from "./talk-socket.js";
import {VoiceMenu, addBubble, markBubble, removeBubble, showLevel, showMic, timingText} from "./talk-view.js";

const START_MS = 80;          // the player starts once this much of a reply is buffered
const RESUME_MS = 60;         // ...and after an underrun, once this much is buffered again
const MAX_EVENTS = 4000;

const $ = (id) => document.getElementById(id);
const token = document.querySelector('meta[name="voicekit-token"]')?.content || "";
const now = () => performance.now();

// window.voicekitTalk: the page's state and measurements. `turns`: one per reply, {id, itemId, kind (text |
// speech), t0 (Enter, or the speech_stopped event), firstAudioMs (first delta received), firstRenderMs (first
// non-silent sample out of the worklet), firstSoundMs (that plus the output latency), underruns (the player ran
// dry mid-reply: the audio came late), outputGlitches (the device ran dry: the browser was late), receivedMs,
// playedMs, playback (what the page told the server of its playback: null, "started", "stopped"), status, timings
// (the server's)}; firstSoundMs/firstRenderMs: the last reply's; underruns, gapMs: all replies'; lastSoundAt: when
// the last non-silent sample was heard; events: what came and went, with times; reconnects: sessions opened
// after a drop; restored: the messages given to the last of them; history(): the conversation as the page keeps it.
const talk = {
  ready: false, connected: false, state: "connecting", session: null, voices: [], micOn: false, reconnects: 0,
  restored: 0,
  firstSoundMs: null, firstRenderMs: null, underruns: 0, gapMs: 0, lastSoundAt: null,
  lastTranscript: "", lastReply: "", events: [], turns: [], errors: [],
  player: {state: "idle", queuedMs: 0, playedMs: 0}, output: null, sampleRate: null, sentMs: 0,
  send: (text) => sendText(text), stop: () => interrupt("stop"), setVoice: (voice) => voices.choose(voice),
  startMic: () => startMic(), stopMic: () => stopMic(), history: () => conversation.messages(),
  update: (fields) => updateSession(fields),
};
window.voicekitTalk = talk;

// -- the socket ----------------------------------------------------------------------------------------

const conversation = new Conversation();
const settings = {};          // what the page set with session.update (voice, instructions, turn_detection, ...)
const socket = new RealtimeSocket({token, onEvent: (event) => handle(event),
                                   onDrop: (closed, next) => dropped(closed, next)});
const voices = new VoiceMenu($("vk-voice"), (voice) => updateSession({voice}));

function send(event) {
  if (!socket.send(event)) return false;
  if (event.type !== "input_audio_buffer.append") {
    log({type: "sent:" + event.type, response_id: event.response_id, item_id: event.item_id,
         audio_end_ms: event.audio_end_ms});
  }
  return true;
}

// The socket closed, and tries again, sooner at first; the page says "reconnecting…" meanwhile. A reply still being
// made is cut here too, as if the server had stopped it: the history keeps what was heard (the player's flush makes
// it exact). One the server completed plays on.
function dropped(closed, next) {
  talk.connected = talk.ready = false;
  log({type: "socket.closed", code: closed.code, reason: closed.reason, next});
  const cut = talk.turns.filter((turn) => !turn.done);
  for (const turn of cut) { turn.done = true; turn.truncatedMs = turn.playedMs; }
  if (cut.length) interrupt("dropped");
  pendingStart = speechStop = null;
  hearing = false;
  for (const item of unheard) removeBubble(item);   // the new session never heard them: say it again
  unheard.clear();
  updateStatus();
  const lasting = socket.attempts > 10 ? " (reload the page if it lasts)" : "";   // ~15 s: a lost login?
  if (next === "gave up") setStatus("error", "cannot connect: reload the page (and log in)");
  else if (next !== "leaving") setStatus(next, next + "…" + lasting);
}

// A new session: the first, or one after a drop, which is given the page's settings and the conversation so far
// (and asked for no reply: nothing is spoken twice).
function sessionCreated(previous) {
  talk.connected = talk.ready = true;
  if (socket.began()) {
    const earlier = voices.earlier(talk.session);
    if (earlier) voices.choose(earlier);
    return;
  }
  const messages = conversation.messages();
  const wanted = {voice: previous?.voice, ...settings};
  for (const event of restoreEvents(messages, wanted, talk.session)) send(event);
  talk.reconnects++;
  talk.restored = messages.length;
  log({type: "page.restored", messages: messages.length, reconnects: talk.reconnects});
}

function updateSession(fields) {
  Object.assign(settings, fields);
  return send({type: "session.update", session: fields});
}

function log(entry) {
  talk.events.push({t: Math.round(now()), ...entry});
  if (talk.events.length > MAX_EVENTS) talk.events.splice(0, talk.events.length - MAX_EVENTS);
}

// -- audio out: the player --------------------------------------------------------------------------

let player = {push() {}, end() {}, flush() {}, output: () => null, audibleAt: () => now(), context: null};
const glitches = () => player.output()?.glitches ?? 0;

function fromPlayer(message) {
  const turn = turnOf(message.id);
  if (message.type === "sound" && turn) {
    turn.firstSoundAt = player.audibleAt(message.time);
    turn.firstRenderAt = now();
    turn.firstSoundMs = Math.round(turn.firstSoundAt - turn.t0);
    turn.firstRenderMs = Math.round(turn.firstRenderAt - turn.t0);
    talk.firstSoundMs = turn.firstSoundMs;
    talk.firstRenderMs = turn.firstRenderMs;
    turn.glitchesBefore = glitches();
    log({type: "player.sound", id: message.id, firstSoundMs: turn.firstSoundMs});
    showTiming(turn);
  } else if (message.type === "underrun" && turn) {
    turn.underruns++;
    log({type: "player.underrun", id: message.id, playedMs: message.playedMs});
  } else if ((message.type === "finished" || message.type === "flushed") && turn) {
    turn.playedMs = message.playedMs;
    turn.playing = false;
    turn.finished = message.type === "finished";
    if (turn.glitchesBefore !== undefined) turn.outputGlitches = glitches() - turn.glitchesBefore;
    log({type: "player." + message.type, id: message.id, playedMs: message.playedMs});
    // Keep in the history only what was heard. A reply of an earlier session stays as the new one was given it.
    const cut = !turn.done || turn.receivedMs > turn.playedMs;
    if (message.type === "flushed" && turn.itemId && !turn.truncated && cut) {
      turn.truncated = true;
      if (sameSession(turn)) {
        turn.truncatedMs = message.playedMs;
        send({type: "conversation.item.truncate", item_id: turn.itemId, content_index: 0,
              audio_end_ms: message.playedMs});
      }
    }
    reportStopped(turn, message.playedMs);
    showTiming(turn);
  } else if (message.type === "tick") {
    talk.player = {state: message.state, queuedMs: message.queuedMs, playedMs: message.playedMs};
    talk.underruns = message.underruns;
    talk.gapMs = message.gapMs;
    talk.output = player.output();
    if (message.lastSound >= 0) talk.lastSoundAt = player.audibleAt(message.lastSound);
    if (turn) turn.playedMs = message.playedMs;
  }
  if (message.type === "start" && turn) { turn.playing = true; reportStarted(turn); }
  updateStatus();
}

// What the page played, told to the server (a voicekit extension). The server's echo canceller takes the reply
// audio as its reference, laid as if the page played each reply from when it was sent; the page knows better. The
// player's ids are the turns' ids, which are the server's response ids (response.created, the audio deltas). Only
// the session that made a reply hears of it: after a reconnect, the new one never knew it.
const sameSession = (turn) => turn.sessionId === talk.session?.id;

// The first sample of the reply leaves the player now (its `start`): output_audio_buffer.started, sent at once
// rather than after the output latency, because the canceller can use a reference that comes a little early but
// not one that comes late.
function reportStarted(turn) {
  if (turn.playback || !sameSession(turn)) return;
  if (send({type: "output_audio_buffer.started", response_id: turn.id})) turn.playback = "started";
}

// The player is done with the reply (played to its end, or flushed): output_audio_buffer.stopped with what was
// played. Only for a reply the server was told had started: one flushed before its first sample says nothing.
function reportStopped(turn, playedMs) {
  if (turn.playback !== "started" || !sameSession(turn)) return;
  turn.playback = "stopped";
  send({type: "output_audio_buffer.stopped", response_id: turn.id, audio_end_ms: playedMs});
}

// -- audio in: the microphone ----------------------------------------------------------------------

let mic = null;               // {close(), rate}
let micOpening = false;

async function startMic() {
  if (mic || micOpening) return;
  if (!player.context) throw new Error("audio is not available on this page");
  micOpening = true;
  try {
    mic = await openMicrophone(player.context, {frameMs: 20, onFrame: (pcm, peak) => {
      const sent = send({type: "input_audio_buffer.append", audio: encodeBase64(pcm)});
      if (sent) talk.sentMs += pcm.byteLength / 2 / RATE * 1000;
      showLevel(peak);
    }});
  } finally {
    micOpening = false;
  }
  talk.micOn = true;
  log({type: "mic.started", rate: mic.rate});
  showMic(true);
  updateStatus();
}

function stopMic() {
  if (!mic) return;
  mic.close();
  mic = null;
  talk.micOn = false;
  if (hearing) send({type: "input_audio_buffer.commit"});   // the user ended their turn with the button
  hearing = false;
  log({type: "mic.stopped"});
  showMic(false);
  updateStatus();
}

// -- turns -------------------------------------------------------------------------------------------

let pendingStart = null;      // {kind, t0, itemId?}: the next response.created answers this
let speechStop = null;        // the last speech_stopped: {t0, itemId}, a turn once committed
let hearing = false;          // between speech_started and speech_stopped
const unheard = new Set();    // user turns begun and not yet transcribed: a drop loses them
// Error codes that only mean the page and the server crossed (a cancel or truncate just after the reply ended).
const QUIET_ERRORS = new Set(["response_cancel_not_active", "item_not_found"]);

function turnOf(id) {
  return id ? talk.turns.find((turn) => turn.id === id) : undefined;
}

// A reply that is still being made, or whose audio is still queued or playing.
function live(turn) {
  return !turn.interrupted && !turn.finished && (!turn.done || turn.receivedMs > 0);
}

function sendText(text) {
  text = (text || "").trim();
  if (!text || !talk.ready) return false;
  interrupt("text");
  addBubble("user", text);
  conversation.user(text);
  pendingStart = {kind: "text", t0: now()};
  send({type: "conversation.item.create",
        item: {type: "message", role: "user", content: [{type: "input_text", text}]}});
  send({type: "response.create"});
  updateStatus();
  return true;
}

// Stop what is playing or being made: barge-in (the server's VAD heard speech), Stop, a new typed message, or
// the server cancelled the response. The player's `flushed` report sends the truncate with what was heard.
function interrupt(reason) {
  let active = false;
  for (const turn of talk.turns) {
    if (!live(turn)) continue;
    turn.interrupted = true;
    markBubble(turn, "interrupted");
    if (!turn.done) active = true;
  }
  if (active && (reason === "stop" || reason === "text")) send({type: "response.cancel"});
  player.flush();
  log({type: "interrupt", reason});
}

function handle(event) {
  const type = event.type;
  log(type === "response.output_audio.delta"
    ? {type, id: event.response_id, bytes: Math.round(event.delta.length * 3 / 4)}
    : {type, item_id: event.item_id, response_id: event.response_id, status: event.response?.status});
  if (type === "session.created" || type === "session.updated") {
    const previous = talk.session;
    talk.session = event.session;
    talk.voices = voices.show(event.session);
    if (type === "session.created") sessionCreated(previous);
  } else if (type === "input_audio_buffer.speech_started") {
    hearing = true;
    // Barge-in: the server takes the first barge_in_grace_ms of a reply's sound for echo and cuts the reply
    // after that; a reply it finished making but that still plays here is cut here alone.
    const grace = talk.session?.barge_in_grace_ms ?? 300;
    if (talk.turns.some((turn) => live(turn) && turn.firstRenderAt && now() - turn.firstRenderAt >= grace)) {
      interrupt("speech");
    }
    addBubble("user", "…", event.item_id);
    unheard.add(event.item_id);
  } else if (type === "input_audio_buffer.speech_stopped") {
    hearing = false;
    speechStop = {t0: now(), itemId: event.item_id};
  } else if (type === "input_audio_buffer.committed") {
    if (speechStop && speechStop.itemId === event.item_id) {
      pendingStart = {kind: "speech", t0: speechStop.t0, itemId: event.item_id};
    }
  } else if (type === "conversation.item.input_audio_transcription.completed" && event.echo) {
    // The reply's own voice came back through the microphone: the server drops the turn and answers nothing. It
    // was not the user: no bubble, no waiting for an answer, and the reply that is playing goes on.
    log({type: "page.echo", item_id: event.item_id});
    removeBubble(event.item_id);
    unheard.delete(event.item_id);
    if (pendingStart?.itemId === event.item_id) pendingStart = null;
  } else if (type === "conversation.item.input_audio_transcription.completed"
             || type === "conversation.item.input_audio_transcription.failed") {
    talk.lastTranscript = event.transcript || "";
    addBubble("user", talk.lastTranscript || "(nothing heard)", event.item_id);
    unheard.delete(event.item_id);
    if (talk.lastTranscript.trim()) conversation.user(talk.lastTranscript.trim());
    if (!talk.lastTranscript && pendingStart?.kind === "speech") pendingStart = null;   // nothing to answer
    else if (talk.turns.some(live)) interrupt("speech");                // the user spoke over the reply
  } else if (type === "response.created") {
    const start = pendingStart || {kind: "other", t0: now()};
    pendingStart = null;
    if (talk.turns.some(live)) interrupt("new reply");
    talk.turns.push({id: event.response.id, kind: start.kind, t0: start.t0, itemId: null, text: "",
                     firstAudioMs: null, firstSoundMs: null, firstRenderMs: null, underruns: 0,
                     receivedMs: 0, playedMs: 0, playing: false, finished: false, done: false, interrupted: false,
                     playback: null, sessionId: talk.session?.id, status: null, pieces: []});
    conversation.reply(talk.turns.at(-1));
    if (talk.turns.length > 50) talk.turns.shift();
  } else if (type === "response.output_item.added") {
    const turn = turnOf(event.response_id);
    if (turn) { turn.itemId = event.item?.id || null; addBubble("assistant", "", turn.id); }
  } else if (type === "response.output_audio_transcript.delta") {
    const turn = turnOf(event.response_id);
    if (turn && !turn.interrupted) {
      turn.text += event.delta || "";
      turn.pieces.push({text: (event.delta || "").trim(), endMs: turn.receivedMs});
      talk.lastReply = turn.text;
      addBubble("assistant", turn.text, turn.id);
    }
  } else if (type === "response.output_audio_transcript.done") {
    const turn = turnOf(event.response_id);
    if (turn) turn.serverText = event.transcript || "";   // what the server's history keeps of the reply
    if (turn && !turn.interrupted && event.transcript) {
      turn.text = talk.lastReply = event.transcript;
      addBubble("assistant", turn.text, turn.id);
    }
  } else if (type === "response.output_audio.delta") {
    const turn = turnOf(event.response_id);
    if (turn && !turn.interrupted && !turn.done) {
      const samples = decodePcm16(event.delta);
      if (turn.firstAudioMs === null) turn.firstAudioMs = Math.round(now() - turn.t0);
      turn.receivedMs += samples.length * 1000 / RATE;
      if (turn.pieces.length) turn.pieces.at(-1).endMs = turn.receivedMs;
      player.push(turn.id, samples);
    }
  } else if (type === "response.output_audio.done") {
    endAudio(turnOf(event.response_id));
  } else if (type === "response.done") {
    const turn = turnOf(event.response.id);
    if (turn) {
      turn.status = event.response.status;
      turn.timings = event.response.timings || null;
      if (turn.status === "cancelled" && !turn.interrupted) interrupt("cancelled");
      turn.done = true;
      if (!turn.interrupted) endAudio(turn);
      if (turn.status === "failed") showError(event.response.status_details?.error?.message || "the reply failed");
      showTiming(turn);
    }
  } else if (type === "error") {
    if (QUIET_ERRORS.has(event.error?.code)) log({type: "page.quiet-error", code: event.error.code});
    else showError(event.error?.message || "error");
  }
  updateStatus();
}

// Tell the player a reply has no more audio (once): it plays out what it holds, with no underrun at the end.
function endAudio(turn) {
  if (!turn || turn.ended) return;
  turn.ended = true;
  player.end(turn.id);
}

// -- what the page shows -----------------------------------------------------------------------------

function setStatus(state, text) {
  talk.state = state;
  const line = $("vk-status");
  line.dataset.state = state;
  line.textContent = text || state;
}

function updateStatus() {
  const ready = talk.ready;
  $("vk-mic").disabled = $("vk-send").disabled = !ready && !mic;
  if (!ready) return;
  const thinking = pendingStart || talk.turns.some((turn) => !turn.done && !turn.interrupted && !turn.playing);
  if (talk.player.state === "playing" || talk.turns.some((turn) => turn.playing)) setStatus("speaking");
  else if (hearing) setStatus("hearing you", "hearing you…");
  else if (thinking) setStatus("thinking", "thinking…");
  else if (mic) setStatus("listening", "listening: speak any time");
  else if (player.context?.state === "suspended") setStatus("connected", "connected (click to enable sound)");
  else setStatus("connected");
}

function showError(message) {
  talk.errors.push(message);
  log({type: "page.error", message});
  $("vk-timing").textContent = "error: " + message;
}

function showTiming(turn) {
  $("vk-timing").textContent = timingText(turn);
}

// -- wiring ------------------------------------------------------------------------------------------

$("vk-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (sendText($("vk-text").value)) $("vk-text").value = "";
});
$("vk-stop").addEventListener("click", () => interrupt("stop"));
$("vk-mic").addEventListener("click", () => {
  if (mic) return stopMic();
  startMic().catch((error) => showError(`microphone: ${error.message || error} (the page needs https or localhost)`));
});

createPlayer({startMs: START_MS, resumeMs: RESUME_MS, onMessage: fromPlayer})
  .then((made) => { player = made; talk.sampleRate = made.context.sampleRate; })
  .catch((error) => showError(`audio: ${error.message || error} (the page needs https or localhost)`))
  .finally(() => socket.open());
