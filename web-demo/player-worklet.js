// player-worklet.js: AudioWorkletProcessor `voxgate-player`, a gapless PCM player.
//
// The main thread posts mono Float32 chunks that are already at the AudioContext's sample rate;
// the processor copies them into a ring buffer and plays them back-to-back, so consecutive frames
// join sample-exactly (no per-chunk <audio> elements, no clicks at frame boundaries).
//
// Messages in (node.port.postMessage):
//   {type: 'push',  contextId, samples: Float32Array}  append audio of a context (transfer the buffer)
//   {type: 'end',   contextId}   the context has no more audio: when it drains, going quiet is "idle",
//                                not an underrun
//   {type: 'clear'}              Stop / barge-in: drop everything buffered now; the block that is
//                                playing fades out over `fadeMs` (a few ms) to avoid a click
//   {type: 'config', prebufferMs?, reportIntervalMs?}
//   {type: 'report'}             ask for a `stats` message now
//
// Messages out (node.port.onmessage):
//   {type: 'started', contextId, time}     the first sample of a context was rendered at `time`
//                                          (AudioContext time, seconds)
//   {type: 'ended',   contextId, played}   the last sample of an ended context was rendered
//   {type: 'cleared', dropped, faded, contexts, samplesPlayed, time}
//                                          after `clear`: samples dropped, samples left to fade
//                                          out, contexts affected, counters when it took effect
//   {type: 'stats', samplesPlayed, buffered, underruns, underrunSamples, state, contextId,
//    contextPlayed, time}                  every `reportIntervalMs` (and on state changes)
//
// States: 'idle' (nothing to play), 'priming' (a context's first audio is being buffered up to
// `prebufferMs` before starting), 'playing', 'starved' (the buffer ran dry while a context that has
// not ended was playing: one underrun is counted per such episode, and playback resumes after
// `prebufferMs` more audio, or at once if the context ends).

const DEFAULTS = { prebufferMs: 40, reportIntervalMs: 50, fadeMs: 3, initialSeconds: 8, maxSeconds: 600 };

class VoxgatePlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = { ...DEFAULTS, ...(options?.processorOptions ?? {}) };
    this.prebuffer = Math.round((o.prebufferMs * sampleRate) / 1000);
    this.reportEvery = Math.max(1, Math.round((o.reportIntervalMs * sampleRate) / 1000 / 128));
    this.fadeLen = Math.max(1, Math.round((o.fadeMs * sampleRate) / 1000));
    this.maxSize = Math.round(o.maxSeconds * sampleRate);
    this.ring = new Float32Array(Math.round(o.initialSeconds * sampleRate));
    this.read = 0;
    this.size = 0;
    /** Runs of consecutive samples of one context, in ring order: {id, remaining}. */
    this.segments = [];
    /** Contexts with audio pushed and no `end` yet. */
    this.open = new Set();
    /** Samples rendered so far, per context still known. */
    this.played = new Map();
    this.ended = new Set();
    this.state = 'idle';
    this.fade = 0; // samples left in a Stop fade-out (0: none)
    this.samplesPlayed = 0;
    this.underruns = 0;
    this.underrunSamples = 0;
    this.overflowSamples = 0;
    this.blocks = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(m) {
    switch (m.type) {
      case 'push':
        this.push(m.contextId, m.samples);
        break;
      case 'end':
        this.open.delete(m.contextId);
        this.ended.add(m.contextId);
        // A context that ends with nothing left buffered is finished now.
        if (!this.segments.some((s) => s.id === m.contextId)) this.finish(m.contextId);
        break;
      case 'clear':
        this.clear();
        break;
      case 'config':
        if (m.prebufferMs !== undefined) this.prebuffer = Math.round((m.prebufferMs * sampleRate) / 1000);
        if (m.reportIntervalMs !== undefined) {
          this.reportEvery = Math.max(1, Math.round((m.reportIntervalMs * sampleRate) / 1000 / 128));
        }
        break;
      case 'report':
        this.report();
        break;
      default:
        break;
    }
  }

  push(id, samples) {
    let n = samples.length;
    if (n === 0) return;
    if (this.size + n > this.ring.length) this.grow(this.size + n);
    if (this.size + n > this.ring.length) {
      // Over maxSeconds buffered: keep what fits and count the rest.
      this.overflowSamples += this.size + n - this.ring.length;
      n = this.ring.length - this.size;
      samples = samples.subarray(0, n);
      if (n === 0) return;
    }
    const cap = this.ring.length;
    const w = (this.read + this.size) % cap;
    const first = Math.min(n, cap - w);
    this.ring.set(samples.subarray(0, first), w);
    if (first < n) this.ring.set(samples.subarray(first), 0);
    this.size += n;
    const last = this.segments[this.segments.length - 1];
    if (last && last.id === id) last.remaining += n;
    else this.segments.push({ id, remaining: n });
    if (!this.ended.has(id)) this.open.add(id);
    if (!this.played.has(id)) this.played.set(id, 0);
    if (this.state === 'idle') this.state = 'priming';
  }

  grow(needed) {
    let cap = this.ring.length;
    while (cap < needed && cap < this.maxSize) cap *= 2;
    cap = Math.min(cap, this.maxSize);
    if (cap <= this.ring.length) return;
    const next = new Float32Array(cap);
    const first = Math.min(this.size, this.ring.length - this.read);
    next.set(this.ring.subarray(this.read, this.read + first), 0);
    if (first < this.size) next.set(this.ring.subarray(0, this.size - first), first);
    this.ring = next;
    this.read = 0;
  }

  clear() {
    const keep = this.state === 'playing' ? Math.min(this.size, this.fadeLen) : 0;
    const dropped = this.size - keep;
    const contexts = [...new Set(this.segments.map((s) => s.id)), ...this.open];
    // Keep only the first `keep` samples (the fade-out tail), in their segments.
    let left = keep;
    const kept = [];
    for (const s of this.segments) {
      if (left <= 0) break;
      const r = Math.min(left, s.remaining);
      kept.push({ id: s.id, remaining: r });
      left -= r;
    }
    this.segments = kept;
    this.size = keep;
    this.fade = keep;
    this.open.clear();
    // Contexts still in the fade-out tail finish when it drains; the others are forgotten now.
    for (const id of contexts) {
      if (kept.some((s) => s.id === id)) {
        this.ended.add(id);
      } else {
        this.ended.delete(id);
        this.played.delete(id);
      }
    }
    if (keep === 0) this.state = 'idle';
    this.port.postMessage({
      type: 'cleared', dropped, faded: keep, contexts: [...new Set(contexts)],
      samplesPlayed: this.samplesPlayed, time: currentTime,
    });
    this.report();
  }

  finish(id) {
    this.port.postMessage({ type: 'ended', contextId: id, played: this.played.get(id) ?? 0 });
    this.played.delete(id);
    this.ended.delete(id);
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const ch = out[0];
    const N = ch.length;
    let n = 0;

    if (this.state === 'priming' || this.state === 'starved') {
      // Start (or resume) once enough is buffered, or when everything buffered belongs to
      // contexts that have ended (a short utterance shorter than the prebuffer).
      if (this.size >= this.prebuffer || this.open.size === 0) this.state = this.size > 0 ? 'playing' : 'idle';
    }

    if (this.state === 'playing') {
      n = Math.min(N, this.size);
      const cap = this.ring.length;
      const first = Math.min(n, cap - this.read);
      ch.set(this.ring.subarray(this.read, this.read + first), 0);
      if (first < n) ch.set(this.ring.subarray(0, n - first), first);
      if (this.fade > 0) {
        for (let i = 0; i < n; i++) ch[i] *= (this.fade - i) / (this.fadeLen + 1);
        this.fade = Math.max(0, this.fade - n);
      }
      this.read = (this.read + n) % cap;
      this.size -= n;
      this.samplesPlayed += n;
      this.consumeSegments(n);
    }
    if (n < N) ch.fill(0, n);

    if (this.state === 'playing' && this.size === 0) {
      if (this.open.size > 0) {
        this.state = 'starved';
        this.underruns++;
        this.underrunSamples += N - n;
        this.report();
      } else {
        this.state = 'idle';
        this.fade = 0;
        this.report();
      }
    } else if (this.state === 'starved') {
      this.underrunSamples += N - n;
    }

    for (let c = 1; c < out.length; c++) out[c].set(ch);
    if (++this.blocks % this.reportEvery === 0) this.report();
    return true;
  }

  consumeSegments(n) {
    let pos = 0;
    while (n > 0 && this.segments.length) {
      const s = this.segments[0];
      const before = this.played.get(s.id) ?? 0;
      if (before === 0) {
        this.port.postMessage({ type: 'started', contextId: s.id, time: currentTime + pos / sampleRate });
      }
      const k = Math.min(n, s.remaining);
      s.remaining -= k;
      this.played.set(s.id, before + k);
      n -= k;
      pos += k;
      if (s.remaining === 0) {
        this.segments.shift();
        if (this.ended.has(s.id) && !this.segments.some((x) => x.id === s.id)) this.finish(s.id);
      }
    }
  }

  report() {
    const head = this.segments[0];
    const id = head ? head.id : null;
    this.port.postMessage({
      type: 'stats',
      samplesPlayed: this.samplesPlayed,
      buffered: this.size,
      underruns: this.underruns,
      underrunSamples: this.underrunSamples,
      overflowSamples: this.overflowSamples,
      state: this.state,
      contextId: id,
      contextPlayed: id === null ? 0 : this.played.get(id) ?? 0,
      time: currentTime,
    });
  }
}

registerProcessor('voxgate-player', VoxgatePlayer);
