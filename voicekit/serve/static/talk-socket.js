// voicekit Talk page: the /v1/realtime socket, opened again with backoff whenever it drops (a proxy cut, a laptop
// waking, a restarted server). The page learns of each drop (`onDrop`) and of each new session from its events.

const OPEN_TIMEOUT_MS = 5000; // a handshake that hangs (a network not yet back) is dropped and tried again
const FIRST_TRIES = 6;        // a page that never had a session gives up after these (~5 s): credentials?
const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 1500;  // with the jitter at most 1.8 s: a page is back within ~2 s of its server

// How long to wait before connection attempt `attempt` (1, 2, ...): doubling from 250 ms to 1.5 s, +-20% jitter so
// that the pages of a restarted server do not all come back at the same instant.
export function backoffMs(attempt) {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.8 + 0.4 * Math.random()));
}

function socketUrl() {
  const url = new URL("v1/realtime", document.baseURI);   // relative: works under a path prefix
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

// onEvent(event): a server event; onDrop(closed, next): the socket closed, `next` says what happens now:
// "reconnecting" (a session was open before), "connecting" (none yet), "gave up", or "leaving" (the page is).
export class RealtimeSocket {
  constructor({token, onEvent, onDrop}) {
    this.protocols = token ? ["realtime", "voicekit.token." + token] : ["realtime"];
    this.onEvent = onEvent;
    this.onDrop = onDrop;
    this.ws = null;
    this.attempts = 0;        // failed connections since the last session began
    this.opened = false;      // a session was ever created on this page
    this.retry = null;        // the timer of the next attempt
    this.leaving = false;
    const now = () => this.retryNow();
    window.addEventListener("online", now);
    document.addEventListener("visibilitychange", now);
    window.addEventListener("pagehide", () => { this.leaving = true; this.ws?.close(); });
  }

  open() {
    clearTimeout(this.retry);
    this.retry = null;
    const ws = new WebSocket(socketUrl(), this.protocols);
    this.ws = ws;
    const hung = setTimeout(() => { if (ws.readyState === WebSocket.CONNECTING) ws.close(); }, OPEN_TIMEOUT_MS);
    ws.onmessage = (message) => { if (this.ws === ws) this.onEvent(JSON.parse(message.data)); };
    ws.onclose = (closed) => { clearTimeout(hung); if (this.ws === ws) this.dropped(closed); };
  }

  // The server created a session on this socket: the backoff starts afresh at the next drop.
  began() {
    const first = !this.opened;
    this.attempts = 0;
    this.opened = true;
    return first;
  }

  send(event) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  dropped(closed) {
    this.ws = null;
    this.attempts++;
    let next = this.opened ? "reconnecting" : "connecting";
    if (this.leaving) next = "leaving";
    else if (!this.opened && this.attempts >= FIRST_TRIES) next = "gave up";
    else this.retry = setTimeout(() => this.open(), backoffMs(this.attempts));
    this.onDrop(closed, next);
  }

  // Back online, or the page shown again (a laptop waking): try now rather than at the next backoff.
  retryNow() {
    if (this.retry !== null && !this.leaving && document.visibilityState !== "hidden") this.open();
  }
}
