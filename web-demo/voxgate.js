// voxgate.js: browser client for the voxgate v1 streaming TTS protocol (docs/protocol.md).
//
// A plain ES module (no build step, no dependencies). It:
//   * opens one WebSocket session and waits for `session.created`,
//   * sends `session.update`, `text`, `flush` and `cancel`,
//   * decodes binary audio frames (16-byte little-endian header + pcm_s16le / pcm_f32le / ulaw),
//   * checks `seq` continuity and maps the frame's context index to its `context_id`,
//   * emits events on an EventTarget.
//
// Usage:
//   import { VoxgateClient } from './voxgate.js';
//   const client = new VoxgateClient('ws://localhost:8080/v1/stream');
//   client.addEventListener('audio', (e) => play(e.detail.samples, e.detail.sampleRate));
//   await client.connect();
//   await client.update({ voice: 'af_heart', alignment: true });
//   client.speak('Hello there!');            // text + flush(final)
//
// The module also exports `decodeFrame` (header + payload), `decodeHeader`, `ulawToFloat` and
// `StreamResampler` (a streaming windowed-sinc resampler used by the demo page).

/** Size of the binary frame header, in bytes. */
export const HEADER_BYTES = 16;
/** Frame flag: first frame of its context. */
export const FLAG_FIRST = 1;
/** Frame flag: last frame of its context (`context.done` follows). */
export const FLAG_LAST = 2;

/** Bytes per sample for each wire format. */
export const BYTES_PER_SAMPLE = Object.freeze({ pcm_s16le: 2, pcm_f32le: 4, ulaw: 1 });

// ---------------------------------------------------------------------------------------------
// Frame decoding
// ---------------------------------------------------------------------------------------------

/**
 * G.711 µ-law byte → linear float in [-1, 1). Lookup table built once (ITU-T G.711, as in
 * Python's audioop / soxr: 14-bit magnitude, bias 0x84).
 * @type {Float32Array}
 */
export const ULAW_TABLE = (() => {
  const t = new Float32Array(256);
  for (let i = 0; i < 256; i++) {
    const u = ~i & 0xff;
    const sign = u & 0x80;
    const exponent = (u >> 4) & 0x07;
    const mantissa = u & 0x0f;
    let magnitude = ((mantissa << 3) + 0x84) << exponent;
    magnitude -= 0x84;
    t[i] = (sign ? -magnitude : magnitude) / 32768;
  }
  return t;
})();

/**
 * Decode µ-law bytes to float samples.
 * @param {Uint8Array} bytes
 * @returns {Float32Array}
 */
export function ulawToFloat(bytes) {
  const out = new Float32Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = ULAW_TABLE[bytes[i]];
  return out;
}

/**
 * @typedef {Object} FrameHeader
 * @property {number} seq          Per-session frame counter (starts at 0, +1 per audio frame).
 * @property {number} contextIndex Context index, as announced by `context.started`.
 * @property {number} offset       First sample of this frame within its context (output rate).
 * @property {number} flags        Bit 0: first frame of the context, bit 1: last frame.
 * @property {boolean} first       `flags & FLAG_FIRST`.
 * @property {boolean} last        `flags & FLAG_LAST`.
 * @property {number} reserved     Reserved u16 (0 in protocol v1).
 */

/**
 * Decode the 16-byte little-endian frame header.
 * @param {ArrayBuffer|ArrayBufferView} buffer A whole binary WebSocket message.
 * @returns {FrameHeader}
 * @throws {RangeError} when the message is shorter than the header.
 */
export function decodeHeader(buffer) {
  const view = toDataView(buffer);
  if (view.byteLength < HEADER_BYTES) {
    throw new RangeError(`audio frame too short: ${view.byteLength} bytes < ${HEADER_BYTES}`);
  }
  const flags = view.getUint16(12, true);
  return {
    seq: view.getUint32(0, true),
    contextIndex: view.getUint32(4, true),
    offset: view.getUint32(8, true),
    flags,
    first: (flags & FLAG_FIRST) !== 0,
    last: (flags & FLAG_LAST) !== 0,
    reserved: view.getUint16(14, true),
  };
}

/**
 * @typedef {FrameHeader & {samples: Float32Array, payload: Uint8Array, format: string}} Frame
 * `samples` are mono floats in [-1, 1]; `payload` is a view of the raw audio bytes.
 * Scaling matches the Python reference (`gateway.audio.decode_samples`): s16 / 32767,
 * µ-law magnitude / 32768, f32 as is.
 */

/**
 * Decode one binary audio frame: header plus payload converted to Float32 samples.
 * @param {ArrayBuffer|ArrayBufferView} buffer The binary message.
 * @param {'pcm_s16le'|'pcm_f32le'|'ulaw'} [format='pcm_s16le'] The context's audio format.
 * @returns {Frame}
 * @throws {RangeError|TypeError} on a truncated frame, an odd payload length or an unknown format.
 */
export function decodeFrame(buffer, format = 'pcm_s16le') {
  const header = decodeHeader(buffer);
  const view = toDataView(buffer);
  const payload = new Uint8Array(view.buffer, view.byteOffset + HEADER_BYTES, view.byteLength - HEADER_BYTES);
  const width = BYTES_PER_SAMPLE[format];
  if (width === undefined) throw new TypeError(`unknown audio format: ${format}`);
  if (payload.length % width !== 0) {
    throw new RangeError(`${format} payload of ${payload.length} bytes is not a whole number of samples`);
  }
  const n = payload.length / width;
  const pv = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  let samples;
  if (format === 'pcm_s16le') {
    samples = new Float32Array(n);
    for (let i = 0; i < n; i++) samples[i] = pv.getInt16(2 * i, true) / 32767;
  } else if (format === 'pcm_f32le') {
    samples = new Float32Array(n);
    for (let i = 0; i < n; i++) samples[i] = pv.getFloat32(4 * i, true);
  } else {
    samples = ulawToFloat(payload);
  }
  return { ...header, samples, payload, format };
}

function toDataView(buffer) {
  if (buffer instanceof ArrayBuffer) return new DataView(buffer);
  if (ArrayBuffer.isView(buffer)) return new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  throw new TypeError('expected an ArrayBuffer or a typed array');
}

/**
 * FNV-1a 32-bit hash, continued from `hash` (use it to checksum a stream chunk by chunk).
 * @param {Uint8Array} bytes
 * @param {number} [hash=0x811c9dc5]
 * @returns {number} unsigned 32-bit hash
 */
export function fnv1a(bytes, hash = 0x811c9dc5) {
  let h = hash >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    h ^= bytes[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Resampling
// ---------------------------------------------------------------------------------------------

/**
 * Streaming windowed-sinc resampler (mono, Float32).
 *
 * Each output sample n sits at input position t = n·inRate/outRate and is
 *   y[n] = Σ_k x[k] · fc · sinc(fc·(t − k)) · w((t − k)/H),   |t − k| < H,
 * with cutoff fc = min(1, outRate/inRate) (so downsampling is low-passed first), a Blackman
 * window w of half-width H = `halfTaps` input samples (scaled by 1/fc when downsampling), and the
 * kernel tabulated at `PHASES` sub-sample steps with linear interpolation between them. Samples
 * before the stream start are zeros; `end()` pads H zeros to flush the tail. State carries across
 * `push()` calls, so chunk boundaries are seamless (no clicks between frames). Latency: H input
 * samples (16 samples = 0.67 ms at 24 kHz). Equal rates pass through untouched.
 */
export class StreamResampler {
  static PHASES = 512;

  /**
   * @param {number} inRate  input sample rate (Hz)
   * @param {number} outRate output sample rate (Hz)
   * @param {{halfTaps?: number}} [options] kernel half-width in input samples (default 16)
   */
  constructor(inRate, outRate, { halfTaps = 16 } = {}) {
    if (!(inRate > 0 && outRate > 0)) throw new RangeError('sample rates must be positive');
    this.inRate = inRate;
    this.outRate = outRate;
    this.passthrough = inRate === outRate;
    this.step = inRate / outRate;
    this.fc = Math.min(1, outRate / inRate);
    this.half = Math.ceil(halfTaps / this.fc);
    this.kernel = StreamResampler.#makeKernel(this.half, this.fc);
    this.buf = new Float32Array(this.half); // starts with H zeros of history
    this.bufStart = -this.half; // absolute input index of buf[0]
    this.bufLen = this.half;
    this.inCount = 0; // input samples received
    this.outCount = 0; // output samples produced
    this.ended = false;
  }

  static #makeKernel(half, fc) {
    const P = StreamResampler.PHASES;
    const k = new Float32Array(half * P + 2);
    for (let i = 0; i < k.length; i++) {
      const x = i / P;
      if (x >= half) continue;
      const px = Math.PI * fc * x;
      const sinc = x === 0 ? 1 : Math.sin(px) / px;
      const r = x / half; // 0..1 from the centre
      const w = 0.42 + 0.5 * Math.cos(Math.PI * r) + 0.08 * Math.cos(2 * Math.PI * r);
      k[i] = fc * sinc * w;
    }
    return k;
  }

  /**
   * Feed input samples; returns the output samples that are now computable.
   * @param {Float32Array} input
   * @returns {Float32Array}
   */
  push(input) {
    if (this.ended) throw new Error('StreamResampler: push() after end()');
    if (this.passthrough) {
      this.inCount += input.length;
      this.outCount += input.length;
      return input;
    }
    this.#append(input);
    this.inCount += input.length;
    return this.#produce(false);
  }

  /**
   * Flush the tail (the last H input samples) and close the stream.
   * @returns {Float32Array}
   */
  end() {
    if (this.ended) return new Float32Array(0);
    this.ended = true;
    if (this.passthrough) return new Float32Array(0);
    this.#append(new Float32Array(this.half + 1));
    return this.#produce(true);
  }

  #append(input) {
    if (this.bufLen + input.length > this.buf.length) {
      const grown = new Float32Array(Math.max(this.buf.length * 2, this.bufLen + input.length));
      grown.set(this.buf.subarray(0, this.bufLen));
      this.buf = grown;
    }
    this.buf.set(input, this.bufLen);
    this.bufLen += input.length;
  }

  #produce(final) {
    const { half, kernel, step } = this;
    const P = StreamResampler.PHASES;
    const scale = P; // kernel table entries per input sample of distance
    const available = this.bufStart + this.bufLen; // absolute end (exclusive)
    // Output n needs input up to floor(t) + half; at the end only outputs with t < inCount.
    const total = final ? Math.round((this.inCount * this.outRate) / this.inRate) : Infinity;
    // Upper bound on the outputs computable now (t = n·step with floor(t) + half < available).
    const bound = Math.max(0, Math.min(total, Math.ceil((available - half) / step) + 1) - this.outCount);
    const out = new Float32Array(bound);
    let n = this.outCount;
    for (;;) {
      if (n >= total) break;
      const t = n * step;
      const ti = Math.floor(t);
      if (ti + half >= available) break;
      let acc = 0;
      const lo = ti - half + 1;
      for (let k = lo; k <= ti + half; k++) {
        const d = Math.abs(t - k) * scale;
        const di = d | 0;
        if (di >= kernel.length - 1) continue;
        const frac = d - di;
        const h = kernel[di] + (kernel[di + 1] - kernel[di]) * frac;
        acc += this.buf[k - this.bufStart] * h;
      }
      out[n - this.outCount] = acc;
      n++;
    }
    const produced = n - this.outCount;
    this.outCount = n;
    // Drop the input no future output needs (keep from floor(t_next) - half + 1).
    const keepFrom = Math.floor(n * step) - half + 1;
    const drop = Math.max(0, Math.min(this.bufLen, keepFrom - this.bufStart));
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.bufLen);
      this.bufLen -= drop;
      this.bufStart += drop;
    }
    return produced === bound ? out : out.subarray(0, produced);
  }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/**
 * @typedef {Object} SessionSettings
 * @property {string} [voice]
 * @property {number} [speed]        0.5–2.0
 * @property {string} [lang]
 * @property {'pcm_s16le'|'pcm_f32le'|'ulaw'} [format]
 * @property {number} [sample_rate]  8000–48000 (ulaw is always 8000)
 * @property {number} [frame_ms]     10–1000
 * @property {boolean} [alignment]
 */

/**
 * @typedef {Object} ContextState  What the client knows about one context.
 * @property {string} contextId
 * @property {number|null} index        Context index from `context.started` (null before).
 * @property {SessionSettings|null} settings Effective settings the context started with.
 * @property {'open'|'started'|'done'|'cancelled'|'dropped'} state
 * @property {number} frames            Audio frames received.
 * @property {number} samples           Samples received (at the context's sample rate).
 * @property {number} checksum          FNV-1a 32 of the raw payload bytes, in order.
 * @property {number|null} firstTextAt  performance.now() when its first `text` was sent.
 * @property {number|null} firstAudioAt performance.now() when its first frame arrived.
 * @property {number|null} lastSeq
 * @property {boolean} localCancel      The client sent `cancel`; its late frames are discarded.
 */

/**
 * Events (all `CustomEvent`s; the payload is in `event.detail`):
 *  - `created`        the `session.created` message.
 *  - `updated`        `{settings}` from `session.updated`.
 *  - `contextStarted` `{contextId, index}`.
 *  - `audio`          `{seq, contextId, contextIndex, offset, flags, first, last, samples, sampleRate,
 *                      format, payload}` — samples is a Float32Array at `sampleRate`.
 *  - `gap`            `{expected, got}` when `seq` is not the next one.
 *  - `alignment`      the `alignment` message.
 *  - `contextDone`    the `context.done` message plus `{samples, checksum}`.
 *  - `cancelled`      the `cancelled` message.
 *  - `dropped`        the `context.dropped` message.
 *  - `error`          a server `error` message, or `{code:'client', message}` for local failures.
 *  - `close`          `{code, reason, wasClean}`.
 *  - `message`        every JSON message, unfiltered (handy for logs).
 */
export class VoxgateClient extends EventTarget {
  /**
   * @param {string} url WebSocket URL, e.g. `ws://host:port/v1/stream`.
   * @param {{connectTimeoutMs?: number, WebSocket?: typeof WebSocket}} [options]
   */
  constructor(url, { connectTimeoutMs = 10000, WebSocket: WS = globalThis.WebSocket } = {}) {
    super();
    /** @readonly */ this.url = url;
    this.connectTimeoutMs = connectTimeoutMs;
    this._WS = WS;
    /** @type {WebSocket|null} */ this.ws = null;
    /** `session.created` message, once connected. */ this.session = null;
    /** Effective session settings (from `session.created` / `session.updated`). @type {SessionSettings} */
    this.settings = {};
    /** @type {Map<string, ContextState>} */ this.contexts = new Map();
    /** @type {Map<number, ContextState>} */ this._byIndex = new Map();
    /** Next expected `seq`. */ this.expectedSeq = 0;
    /** Figures (read-only from outside). */
    this.stats = { frames: 0, bytes: 0, seqGaps: 0, missingFrames: 0, discardedFrames: 0, badFrames: 0, lastSeq: null };
    // session.update bookkeeping: the server answers updates in order, so context k created after
    // the n-th update was sent starts with the settings of the n-th answer.
    this._updatesSent = 0;
    this._settingsByGen = [];
    this._pendingUpdates = []; // [{resolve, reject}]
    this._ctxCounter = 0;
  }

  /** True while the WebSocket is open. */
  get connected() {
    return !!this.ws && this.ws.readyState === 1;
  }

  /**
   * Open the WebSocket and wait for `session.created`.
   * @returns {Promise<Object>} the `session.created` message.
   */
  connect() {
    if (this.ws) return Promise.reject(new Error('already connected'));
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new this._WS(this.url);
      ws.binaryType = 'arraybuffer';
      this.ws = ws;
      const timer = setTimeout(() => fail(new Error(`no session.created within ${this.connectTimeoutMs} ms`)), this.connectTimeoutMs);
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        try { ws.close(); } catch { /* ignore */ }
        reject(err);
      };
      this._onCreated = (msg) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(msg);
      };
      ws.onmessage = (ev) => this._onMessage(ev.data);
      ws.onerror = () => fail(new Error(`WebSocket error (${this.url})`));
      ws.onclose = (ev) => {
        fail(new Error(`connection closed before session.created (code ${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`));
        for (const p of this._pendingUpdates.splice(0)) p.reject(new Error('connection closed'));
        this._emit('close', { code: ev.code, reason: ev.reason, wasClean: ev.wasClean });
      };
    });
  }

  /**
   * Close the session.
   * @param {number} [code=1000]
   * @param {string} [reason]
   */
  close(code = 1000, reason = '') {
    if (this.ws && this.ws.readyState <= 1) this.ws.close(code, reason);
  }

  /**
   * Send `session.update`. Resolves with the effective settings from `session.updated`, or
   * rejects with the server's `error` (e.g. `unknown_voice`).
   * @param {SessionSettings} settings
   * @returns {Promise<SessionSettings>}
   */
  update(settings) {
    return new Promise((resolve, reject) => {
      this._send({ type: 'session.update', ...settings });
      this._updatesSent++;
      this._pendingUpdates.push({ resolve, reject });
    });
  }

  /**
   * Append text to a context (created on first use; ids cannot be reused once a context ended,
   * use `newContextId()`).
   * @param {string} contextId
   * @param {string} text
   * @param {{voice?: string, speed?: number, lang?: string, priority?: number, ttl_ms?: number}} [options]
   *   Per-context overrides; only honoured on the message that creates the context.
   */
  text(contextId, text, options = {}) {
    if (!this.connected) throw new Error('not connected');
    // Context ids are single-use: text for a context that was ended is answered with an error.
    let ctx = this.contexts.get(contextId);
    if (!ctx) {
      ctx = this._newContext(contextId);
      this._send({ type: 'text', context_id: contextId, text, ...options });
    } else {
      this._send({ type: 'text', context_id: contextId, text });
    }
    if (ctx.firstTextAt === null) ctx.firstTextAt = performance.now();
  }

  /**
   * Speak what is buffered in a context now.
   * @param {string} contextId
   * @param {boolean} [final=true] also end the context (`context.done` follows its last frame).
   */
  flush(contextId, final = true) {
    this._send({ type: 'flush', context_id: contextId, final });
  }

  /**
   * Barge-in: cancel one context (or every open context when `contextId` is omitted). Frames of the
   * cancelled context(s) that are still in flight are discarded by the client from now on.
   * @param {string} [contextId]
   */
  cancel(contextId) {
    const targets = contextId === undefined ? [...this.contexts.values()] : [this.contexts.get(contextId)];
    for (const ctx of targets) {
      if (ctx && ctx.state !== 'done' && ctx.state !== 'cancelled') ctx.localCancel = true;
    }
    this._send(contextId === undefined ? { type: 'cancel' } : { type: 'cancel', context_id: contextId });
  }

  /**
   * Convenience: `text` + `flush(final)` in one call.
   * @param {string} text
   * @param {{contextId?: string} & Object} [options] per-context overrides (see `text`).
   * @returns {string} the context id.
   */
  speak(text, { contextId = this.newContextId(), ...options } = {}) {
    this.text(contextId, text, options);
    this.flush(contextId, true);
    return contextId;
  }

  /** A fresh context id, unique within this client (`c1`, `c2`, …). */
  newContextId() {
    let id;
    do id = `c${++this._ctxCounter}`; while (this.contexts.has(id));
    return id;
  }

  /**
   * Context state by id.
   * @param {string} contextId
   * @returns {ContextState|undefined}
   */
  context(contextId) {
    return this.contexts.get(contextId);
  }

  // --- internals ------------------------------------------------------------------------------

  _newContext(contextId) {
    const ctx = {
      contextId, index: null, settings: null, state: 'open', gen: this._updatesSent,
      frames: 0, samples: 0, checksum: 0x811c9dc5, firstTextAt: null, firstAudioAt: null,
      lastSeq: null, localCancel: false, sampleRate: null, format: null,
    };
    this.contexts.set(contextId, ctx);
    return ctx;
  }

  _send(obj) {
    if (!this.connected) throw new Error('not connected');
    this.ws.send(JSON.stringify(obj));
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _settingsForGen(gen) {
    return this._settingsByGen[gen] ?? this.settings;
  }

  _onMessage(data) {
    if (typeof data !== 'string') {
      this._onFrame(data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      this._emit('error', { code: 'client', message: 'server sent a text frame that is not JSON' });
      return;
    }
    this._emit('message', msg);
    switch (msg.type) {
      case 'session.created':
        this.session = msg;
        this.settings = { ...msg.settings };
        this._settingsByGen[0] = this.settings;
        this._emit('created', msg);
        this._onCreated?.(msg);
        break;
      case 'session.updated': {
        this.settings = { ...msg.settings };
        this._settingsByGen.push(this.settings);
        this._pendingUpdates.shift()?.resolve(this.settings);
        this._emit('updated', { settings: this.settings });
        break;
      }
      case 'context.started': {
        const ctx = this.contexts.get(msg.context_id) ?? this._newContext(msg.context_id);
        ctx.index = msg.index;
        ctx.settings = this._settingsForGen(ctx.gen);
        ctx.format = ctx.settings.format ?? 'pcm_s16le';
        ctx.sampleRate = ctx.format === 'ulaw' ? 8000 : ctx.settings.sample_rate ?? 24000;
        if (ctx.state === 'open') ctx.state = 'started';
        this._byIndex.set(msg.index, ctx);
        this._emit('contextStarted', { contextId: msg.context_id, index: msg.index });
        break;
      }
      case 'alignment':
        this._emit('alignment', msg);
        break;
      case 'context.done': {
        const ctx = this.contexts.get(msg.context_id);
        if (ctx && ctx.state !== 'cancelled') ctx.state = 'done';
        const emitDone = () => this._emit('contextDone', { ...msg, samples: ctx?.samples ?? 0, checksum: ctx?.checksum ?? null });
        // Opus samples come out of WebCodecs asynchronously: "done" only after the last of them.
        if (ctx?.opus) ctx.opus.drained.then(emitDone);
        else emitDone();
        break;
      }
      case 'cancelled': {
        const ctx = this.contexts.get(msg.context_id);
        if (ctx && ctx.state !== 'done') ctx.state = 'cancelled';
        if (!msg.context_id) {
          for (const c of this.contexts.values()) if (c.localCancel && c.state !== 'done') c.state = 'cancelled';
        }
        this._emit('cancelled', msg);
        break;
      }
      case 'context.dropped':
        this._emit('dropped', msg);
        break;
      case 'error': {
        // An error while an update is pending and not tied to a context answers that update.
        const settingCodes = ['bad_field', 'unknown_voice', 'unknown_lang'];
        if (this._pendingUpdates.length && !msg.context_id && settingCodes.includes(msg.code)) {
          this._settingsByGen.push(this.settings);
          const err = Object.assign(new Error(`${msg.code}: ${msg.message}`), { code: msg.code, server: msg });
          this._pendingUpdates.shift().reject(err);
        }
        this._emit('error', msg);
        break;
      }
      default:
        // Unknown message types are ignored (forward compatibility); `message` already saw it.
        break;
    }
  }

  _onFrame(buffer) {
    let header;
    try {
      header = decodeHeader(buffer);
    } catch (err) {
      this.stats.badFrames++;
      this._emit('error', { code: 'client', message: err.message });
      return;
    }
    // seq continuity is a property of the session, checked before anything else.
    if (header.seq !== this.expectedSeq) {
      this.stats.seqGaps++;
      if (header.seq > this.expectedSeq) this.stats.missingFrames += header.seq - this.expectedSeq;
      this._emit('gap', { expected: this.expectedSeq, got: header.seq });
    }
    this.expectedSeq = header.seq + 1;
    this.stats.lastSeq = header.seq;
    this.stats.frames++;
    this.stats.bytes += buffer.byteLength;

    const ctx = this._byIndex.get(header.contextIndex);
    if (!ctx) {
      this.stats.badFrames++;
      this._emit('error', { code: 'client', message: `frame seq=${header.seq} for unknown context index ${header.contextIndex}` });
      return;
    }
    if (ctx.localCancel || ctx.state === 'cancelled') {
      this.stats.discardedFrames++;
      return;
    }
    if (ctx.format === 'opus') {
      this._onOpusFrame(ctx, header, buffer);
      return;
    }
    let frame;
    try {
      frame = decodeFrame(buffer, ctx.format);
    } catch (err) {
      this.stats.badFrames++;
      this._emit('error', { code: 'client', message: `frame seq=${header.seq}: ${err.message}` });
      return;
    }
    if (ctx.firstAudioAt === null) ctx.firstAudioAt = performance.now();
    ctx.frames++;
    ctx.samples += frame.samples.length;
    ctx.checksum = fnv1a(frame.payload, ctx.checksum);
    ctx.lastSeq = header.seq;
    this._emit('audio', {
      seq: frame.seq, contextId: ctx.contextId, contextIndex: frame.contextIndex, offset: frame.offset,
      flags: frame.flags, first: frame.first, last: frame.last, samples: frame.samples,
      sampleRate: ctx.sampleRate, format: ctx.format, payload: frame.payload,
    });
  }

  /** An Opus frame: bookkeeping now, samples when WebCodecs has decoded the packet (in order). */
  _onOpusFrame(ctx, header, buffer) {
    const view = toDataView(buffer);
    const payload = new Uint8Array(view.buffer, view.byteOffset + HEADER_BYTES, view.byteLength - HEADER_BYTES);
    if (ctx.firstAudioAt === null) ctx.firstAudioAt = performance.now();
    ctx.frames++;
    ctx.checksum = fnv1a(payload, ctx.checksum);
    ctx.lastSeq = header.seq;
    if (!ctx.opus) {
      try {
        ctx.opus = new OpusFrameDecoder(
          (samples, sampleRate, h) => {
            if (ctx.localCancel || ctx.state === 'cancelled') return;
            ctx.samples += samples.length;
            this._emit('audio', {
              seq: h.seq, contextId: ctx.contextId, contextIndex: h.contextIndex, offset: h.offset,
              flags: h.flags, first: h.first, last: h.last, samples, sampleRate, format: 'opus', payload: null,
            });
          },
          (err) => this._emit('error', { code: 'client', message: `opus: ${err.message ?? err}` }),
        );
      } catch (err) {
        this.stats.badFrames++;
        this._emit('error', { code: 'client', message: err.message });
        return;
      }
    }
    ctx.opus.decode(payload, header, ((ctx.settings?.frame_ms ?? 20) * 1000));
  }
}

/**
 * Decodes protocol v1 `opus` frames (one Opus packet each) with WebCodecs' `AudioDecoder`, in
 * order; `onSamples(Float32Array, sampleRate, header)` gets mono samples (48 kHz: Opus decodes there).
 */
export class OpusFrameDecoder {
  constructor(onSamples, onError) {
    if (typeof AudioDecoder === 'undefined') throw new TypeError('this browser has no WebCodecs AudioDecoder; opus needs it');
    this._headers = [];
    this._timestamp = 0;
    /** Resolves once the context's last packet (flag bit1) is decoded and delivered. */
    this.drained = new Promise((resolve) => { this._resolveDrained = resolve; });
    this.decoder = new AudioDecoder({
      output: (data) => {
        const out = new Float32Array(data.numberOfFrames);
        data.copyTo(out, { planeIndex: 0, format: 'f32-planar' });
        const rate = data.sampleRate;
        data.close();
        onSamples(out, rate, this._headers.shift());
      },
      error: onError,
    });
    this.decoder.configure({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
  }

  /** Queue one packet (`header`: its frame header; `durationUs`: the frame's length). */
  decode(payload, header, durationUs) {
    this._headers.push({ ...header, first: (header.flags & FLAG_FIRST) !== 0, last: (header.flags & FLAG_LAST) !== 0 });
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: this._timestamp, duration: durationUs, data: payload }));
    this._timestamp += durationUs;
    if ((header.flags & FLAG_LAST) !== 0) {
      this.decoder.flush().then(() => this.close(), () => {}).finally(() => this._resolveDrained());
    }
  }

  close() {
    if (this.decoder.state !== 'closed') this.decoder.close();
  }
}
