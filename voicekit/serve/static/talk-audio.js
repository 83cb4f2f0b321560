// voicekit Talk page: the audio plumbing. The reply player (player-worklet.js in a 24 kHz AudioContext when the
// browser allows one, so nothing is resampled in script), the microphone (mic-worklet.js: 24 kHz pcm16 frames)
// and the pcm16 <-> base64 codecs of the realtime events.

export const RATE = 24000;

const asset = (name) => new URL(name, import.meta.url).href;

// The player: push(id, float32 samples), end(id), flush(); `onMessage` gets the worklet's reports.
export async function createPlayer({startMs, resumeMs, onMessage}) {
  let context;
  try {
    context = new AudioContext({sampleRate: RATE, latencyHint: "interactive"});
  } catch {
    context = new AudioContext({latencyHint: "interactive"});   // the worklet resamples
  }
  await context.audioWorklet.addModule(asset("player-worklet.js"));
  const node = new AudioWorkletNode(context, "voicekit-player", {
    numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
    processorOptions: {inputRate: RATE, startMs, resumeMs}});
  node.connect(context.destination);
  node.port.onmessage = (message) => onMessage(message.data);
  // Autoplay policy: a context made before any user gesture starts suspended; the first gesture resumes it.
  const resume = () => { if (context.state !== "running") context.resume(); };
  for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, resume, {capture: true});
  return {
    context,
    push(id, samples) { node.port.postMessage({type: "audio", id, samples}, [samples.buffer]); },
    end(id) { node.port.postMessage({type: "end", id}); },
    flush() { node.port.postMessage({type: "flush"}); },
    // Glitches at the output device (the audio thread late, whatever the stream): Chromium's playbackStats.
    output() {
      const stats = context.playbackStats;
      return stats ? {glitches: stats.underrunEvents, glitchMs: Math.round(stats.underrunDuration * 1000),
                      latencyMs: Math.round(stats.averageLatency * 1000)} : null;
    },
    // performance.now() time at which a sample rendered at `contextTime` reaches the output device.
    audibleAt(contextTime) {
      const stamp = context.getOutputTimestamp ? context.getOutputTimestamp() : null;
      if (stamp && stamp.performanceTime > 0) {
        return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
      }
      const latency = (context.outputLatency || 0) + (context.baseLatency || 0);
      return performance.now() + (contextTime - context.currentTime + latency) * 1000;
    },
  };
}

// The microphone, mono, captured in `context` (the player's) when it can take the device's stream, else in a
// context of its own; onFrame(ArrayBuffer of pcm16 LE at 24 kHz, peak level) every `frameMs`. Returns close().
export async function openMicrophone(context, {frameMs = 20, onFrame}) {
  if (context.state !== "running") await context.resume();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: {channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true}});
  let micContext = context;
  let source;
  try {
    source = context.createMediaStreamSource(stream);
  } catch {                   // a browser that cannot resample the microphone into a 24 kHz context
    micContext = new AudioContext();
    source = micContext.createMediaStreamSource(stream);
  }
  if (!micContext.voicekitMic) {
    await micContext.audioWorklet.addModule(asset("mic-worklet.js"));
    micContext.voicekitMic = true;
  }
  const node = new AudioWorkletNode(micContext, "voicekit-mic", {
    numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
    processorOptions: {outputRate: RATE, frameMs}});
  node.port.onmessage = (message) => onFrame(message.data.pcm, message.data.peak);
  source.connect(node);
  node.connect(micContext.destination);   // pulls the graph; the node only writes silence
  return {
    rate: micContext.sampleRate,
    close() {
      node.port.postMessage({type: "stop"});
      source.disconnect();
      node.disconnect();
      for (const track of stream.getTracks()) track.stop();
      if (micContext !== context) micContext.close();
    },
  };
}

export function decodePcm16(base64) {
  const bytes = atob(base64);
  const samples = new Float32Array(bytes.length >> 1);
  for (let i = 0; i < samples.length; i++) {
    const value = bytes.charCodeAt(2 * i) | (bytes.charCodeAt(2 * i + 1) << 8);
    samples[i] = (value >= 32768 ? value - 65536 : value) / 32768;
  }
  return samples;
}

export function encodeBase64(buffer) {
  return btoa(String.fromCharCode(...new Uint8Array(buffer)));   // a 20 ms frame: 960 bytes
}
