// voicekit Talk page: the reply player (an AudioWorkletProcessor).
//
// The page posts mono float32 chunks at `inputRate` (24 kHz) tagged with their response id, an `end` marker
// when a response has no more audio, and `flush` to drop everything at once (barge-in, Stop). The processor
// plays from a small jitter buffer: it starts once `startMs` are queued (or the response ended sooner), and when
// the queue runs dry before the end marker it counts an underrun, plays silence and waits for `resumeMs` again.
// It resamples to the context's rate by linear interpolation (a no-op when the context runs at 24 kHz).
//
// Messages to the page: `start` (first sample of a response leaves the buffer), `sound` (its first non-silent
// sample; contextTime = the context time at which that sample is rendered), `underrun`, `finished`, `flushed`
// (with playedMs: what of that response was output), and `tick` every ~50 ms while active.

const SILENT = 0.003;       // |sample| above this counts as sound (about -50 dBFS)
const FADE_S = 0.004;       // a flush ramps the last value to zero over this time: no click

class VoicekitPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.inputRate = o.inputRate || 24000;
    this.step = this.inputRate / sampleRate;              // source samples per output frame
    this.startSamples = Math.round((o.startMs ?? 80) * this.inputRate / 1000);
    this.resumeSamples = Math.round((o.resumeMs ?? 60) * this.inputRate / 1000);
    this.tickFrames = Math.round(sampleRate * 0.05);
    this.queue = [];          // {id, data: Float32Array} or {id, end: true}
    this.offset = 0;          // read position in queue[0].data
    this.queued = 0;          // source samples waiting
    this.state = "idle";      // idle | buffering | playing
    this.id = null;           // the response being played
    this.played = 0;          // its source samples output so far
    this.heard = false;       // its first non-silent sample was output
    this.a = 0; this.b = 0; this.frac = 0; this.need = 2;  // interpolation state (see frame)
    this.underruns = 0;       // since the page loaded, after a response had started
    this.gapFrames = 0;       // output frames of silence inside responses (underruns)
    this.fade = 0; this.fadeFrom = 0; this.last = 0;
    this.lastSound = -1;      // context time of the last non-silent sample output
    this.sinceTick = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "audio") {
      this.queue.push({id: message.id, data: message.samples});
      this.queued += message.samples.length;
      if (this.state === "idle") this.begin(message.id);
    } else if (message.type === "end") {
      // An end with no audio of that response waiting (a flushed one, or one without audio): nothing to play.
      if (message.id !== this.id && !this.queue.some((item) => item.id === message.id)) return;
      this.queue.push({id: message.id, end: true});
      if (this.state === "idle" && this.queue.length) this.begin(this.queue[0].id);
    } else if (message.type === "flush") {
      this.flush();
    }
  }

  begin(id) {
    this.state = "buffering";
    this.id = id;
    this.played = 0;
    this.heard = false;
    this.a = 0; this.b = 0; this.frac = 0; this.need = 2;
  }

  flush() {
    if (this.id !== null) {
      this.port.postMessage({type: "flushed", id: this.id, playedMs: this.ms(this.played),
                             droppedMs: this.ms(this.queued), time: currentTime});
    }
    this.startFade();
    this.queue = [];
    this.offset = 0;
    this.queued = 0;
    this.state = "idle";
    this.id = null;
    this.report();
  }

  ms(samples) {
    return Math.round(samples * 1000 / this.inputRate);
  }

  // The queue holds the end marker of the current response (so running dry there is the end, not an underrun).
  endQueued() {
    return this.queue.some((item) => item.end && item.id === this.id);
  }

  // Next source sample of the current response: a number, "end" (its end marker) or null (nothing queued yet).
  next() {
    while (this.queue.length) {
      const head = this.queue[0];
      if (head.id !== this.id) return "end";              // a later response: this one is over
      if (head.end) { this.queue.shift(); return "end"; }
      if (this.offset < head.data.length) {
        this.queued--;
        this.played++;
        return head.data[this.offset++];
      }
      this.queue.shift();
      this.offset = 0;
    }
    return null;
  }

  finish() {
    this.port.postMessage({type: "finished", id: this.id, playedMs: this.ms(this.played), time: currentTime});
    this.startFade();
    const done = this.id;
    this.queue = this.queue.filter((item) => item.id !== done);   // a repeated end marker
    this.state = "idle";
    this.id = null;
    if (this.queue.length) this.begin(this.queue[0].id);  // the next response is already waiting
    this.report();
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const frames = out.length;
    for (let i = 0; i < frames; i++) {
      out[i] = this.frame(i);
      if (Math.abs(out[i]) > SILENT) this.lastSound = currentTime + i / sampleRate;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.sinceTick += frames;
    if (this.sinceTick >= this.tickFrames && (this.state !== "idle" || this.fade > 0)) this.report();
    return true;
  }

  frame(i) {
    if (this.state === "buffering") {
      if (this.queued < (this.played ? this.resumeSamples : this.startSamples) && !this.endQueued()) {
        if (this.played) this.gapFrames++;
        return this.fadeOut();
      }
      if (!this.played) this.port.postMessage({type: "start", id: this.id, time: currentTime + i / sampleRate});
      this.state = "playing";
    }
    if (this.state !== "playing") return this.fadeOut();
    // Linear interpolation: a = source[k], b = source[k + 1], frac = position - k. `need` counts the source
    // samples to read before b is current (2 at the start of a response, then one per whole step).
    while (this.need > 0) {
      const value = this.next();
      if (value === null) {                               // ran dry before the end marker: an underrun
        this.underruns++;
        this.gapFrames++;
        this.port.postMessage({type: "underrun", id: this.id, playedMs: this.ms(this.played),
                               time: currentTime + i / sampleRate});
        this.state = "buffering";
        this.startFade();
        return this.fadeOut();
      }
      if (value === "end") { this.finish(); return this.fadeOut(); }
      this.a = this.b;
      this.b = value;
      this.need--;
    }
    const sample = this.a + (this.b - this.a) * this.frac;
    this.frac += this.step;
    while (this.frac >= 1) { this.frac -= 1; this.need++; }
    this.fade = 0;
    this.last = sample;
    if (!this.heard && Math.abs(sample) > SILENT) {
      this.heard = true;
      this.port.postMessage({type: "sound", id: this.id, time: currentTime + i / sampleRate,
                             playedMs: this.ms(this.played)});
    }
    return sample;
  }

  startFade() {
    this.fade = Math.round(FADE_S * sampleRate);
    this.fadeFrom = this.last;
  }

  // Silence, or the short ramp down from the last value after a flush or an underrun.
  fadeOut() {
    if (this.fade <= 0) { this.last = 0; return 0; }
    const total = Math.round(FADE_S * sampleRate);
    const value = this.fadeFrom * (this.fade / total);
    this.fade--;
    this.last = value;
    return value;
  }

  report() {
    this.sinceTick = 0;
    this.port.postMessage({type: "tick", state: this.state, id: this.id, playedMs: this.ms(this.played),
                           queuedMs: this.ms(this.queued), underruns: this.underruns,
                           gapMs: Math.round(this.gapFrames * 1000 / sampleRate), lastSound: this.lastSound,
                           time: currentTime});
  }
}

registerProcessor("voicekit-player", VoicekitPlayer);
