// voicekit Talk page: the conversation as the page keeps it, so that a new session (after a dropped socket or a
// restarted server) picks it up where it was. The page follows what the server's history holds: the user's typed
// messages and non-echo transcripts, and each reply as the user heard it (the server's text once the reply is done,
// cut to what was played when the page truncated it or the socket dropped mid-reply). On a new session the page
// re-sends its session settings and the messages as `conversation.item.create` events (user: input_text, assistant:
// output_text, status "incomplete" when cut); it asks for no reply, so nothing is answered or spoken again.

// The words of a reply up to `playedMs` of its audio: whole pieces, then the share of the next one's words (as the
// server's SpokenReply.heard_text tells it). `pieces`: [{text, endMs}], endMs the audio received up to its end.
export function heardText(pieces, playedMs) {
  const heard = [];
  let start = 0;
  for (const {text, endMs} of pieces) {
    if (endMs <= playedMs) {
      heard.push(text);
    } else if (playedMs > start) {
      const words = text.split(/\s+/).filter(Boolean);
      heard.push(words.slice(0, Math.floor(words.length * (playedMs - start) / Math.max(endMs - start, 1e-3)))
        .join(" "));
      break;
    }
    start = endMs;
  }
  return heard.filter(Boolean).join(" ");
}

const cut = (text) => (text ? text + "…" : "");

// A reply as the history keeps it: {content, interrupted}.
export function replyMessage(turn) {
  if (turn.truncatedMs !== undefined) {
    return {content: cut(heardText(turn.pieces, turn.truncatedMs)), interrupted: true};
  }
  if (turn.serverText !== undefined) return {content: turn.serverText, interrupted: turn.status !== "completed"};
  return {content: cut(heardText(turn.pieces, turn.playedMs)), interrupted: true};   // not yet told: as it stands
}

export class Conversation {
  constructor() { this.entries = []; }

  user(text) { this.entries.push({role: "user", text}); }

  // A reply: its text is read when needed, from the turn as it is then.
  reply(turn) { this.entries.push({role: "assistant", turn}); }

  // The history, as `session.history` shows it: [{role, content, interrupted?}], messages with no text left out.
  messages() {
    const messages = [];
    for (const entry of this.entries) {
      const message = entry.role === "user" ? {content: entry.text} : replyMessage(entry.turn);
      if (!message.content.trim()) continue;
      messages.push({role: entry.role, content: message.content, ...(message.interrupted ? {interrupted: true} : {})});
    }
    return messages;
  }
}

// The events that restore `messages` and the page's `settings` (the session.update fields it sent) on a new
// session described by `session` (its session.created): a voice the new server lacks is left out.
export function restoreEvents(messages, settings, session) {
  const update = {...settings};
  if (update.voice && !(session.voices || []).some((voice) => voice.id === update.voice)) delete update.voice;
  const events = Object.keys(update).length ? [{type: "session.update", session: update}] : [];
  for (const {role, content, interrupted} of messages) {
    const part = role === "user" ? "input_text" : "output_text";
    events.push({type: "conversation.item.create", item: {type: "message", role, content: [{type: part, text: content}],
                                                          ...(interrupted ? {status: "incomplete"} : {})}});
  }
  return events;
}
