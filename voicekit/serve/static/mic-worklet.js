// voicekit Talk page: microphone capture (an AudioWorkletProcessor).
//
// Takes the first channel of its input at the context's rate, resamples it to `outputRate` (24 kHz) and posts
// pcm16 little-endian frames of `frameMs` (an ArrayBuffer, transferred) to the page, which base64-encodes them
// into `input_audio_buffer.append`. Resampling: a one-pole low-pass against aliasing when downsampling, then
// linear interpolation; when the context already runs at 24 kHz the samples pass straight through.
// It also posts the frame's peak level, for the page's level meter.

class VoicekitMic extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.outputRate = o.outputRate || 24000;
    this.step = sampleRate / this.outputRate;             // input samples per output sample
    this.frame = new Int16Array(Math.round((o.frameMs || 20) * this.outputRate / 1000));
    this.filled = 0;
    this.peak = 0;
    this.pos = 0;             // input position of the next output sample, in this block's indices
    this.smooth = 0;          // the low-passed input
    this.before = 0;          // the low-passed sample before the current one (across blocks too)
    // A one-pole low-pass at about 0.45 of the output rate (only when downsampling).
    this.alpha = this.step > 1 ? 1 - Math.exp(-2 * Math.PI * 0.45 * this.outputRate / sampleRate) : 1;
    this.port.onmessage = (event) => { if (event.data && event.data.type === "stop") this.stopped = true; };
  }

  push(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.peak = Math.max(this.peak, Math.abs(clipped));
    this.frame[this.filled++] = clipped < 0 ? Math.round(clipped * 32768) : Math.round(clipped * 32767);
    if (this.filled === this.frame.length) {
      // DataView: little-endian whatever the platform's byte order.
      const bytes = new Uint8Array(this.frame.length * 2);
      const view = new DataView(bytes.buffer);
      for (let i = 0; i < this.frame.length; i++) view.setInt16(i * 2, this.frame[i], true);
      this.port.postMessage({type: "audio", pcm: bytes.buffer, peak: this.peak, time: currentTime},
                            [bytes.buffer]);
      this.filled = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;                              // not connected yet
    if (this.step === 1) {
      for (let i = 0; i < input.length; i++) this.push(input[i]);
      return true;
    }
    // Output samples sit at input positions pos, pos + step, ...; each lies between input i - 1 and i.
    for (let i = 0; i < input.length; i++) {
      this.smooth += this.alpha * (input[i] - this.smooth);
      while (this.pos <= i) {
        this.push(this.before + (this.smooth - this.before) * (this.pos - (i - 1)));
        this.pos += this.step;
      }
      this.before = this.smooth;
    }
    this.pos -= input.length;
    return true;
  }
}

registerProcessor("voicekit-mic", VoicekitMic);
