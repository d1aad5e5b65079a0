// app.js: the voxgate demo page.
//
// One AudioContext for the page; every session ("channel") gets its own VoxgateClient (its own
// WebSocket), its own AudioWorkletNode running `voxgate-player` (ring buffer, gapless), its own
// gain/pan and its own figures. Audio arrives at the session's sample rate and is resampled to the
// AudioContext rate in this thread with voxgate.js' streaming windowed-sinc resampler (state kept
// per context, so frame boundaries are seamless), then posted to the worklet.
//
// Query parameters: ?ws=ws://host:port/v1/stream (default: this page's host), ?sessions=N (open the
// multi-session panel with N sessions on load), ?prebuffer=MS (worklet start-up buffer, default 40),
// ?token=T (the server's auth_token: the page itself is public, its sessions need the token).
//
// State for tests and curious people: window.voxgateDemo (see `snapshot()` below).

import { VoxgateClient, StreamResampler } from './voxgate.js';

const params = new URLSearchParams(location.search);
const WS_URL = params.get('ws') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/stream`;
const PREBUFFER_MS = Number(params.get('prebuffer') ?? 40);
const TOKEN = params.get('token');

/** The WebSocket URL with the page's ?token= (browsers cannot set an Authorization header). */
function sessionUrl() {
  if (!TOKEN) return WS_URL;
  const url = new URL(WS_URL);
  url.searchParams.set('token', TOKEN);
  return url.toString();
}

const MULTI_TEXTS = [
  'The quick brown fox jumps over the lazy dog.',
  'Seven silver swans swam silently past the old stone bridge this morning.',
  'Please remember to water the plants on Tuesday.',
  'Real-time voice needs low latency, steady frames, and no gaps at all.',
  'A cup of tea in the afternoon makes the whole day better.',
  'Numbers like one, two, three and four are easy to hear.',
  'The train to the coast leaves from platform nine at half past ten.',
  'Good software is honest about its errors and quick to recover.',
];

/** WebSocket close codes the gateway uses (docs/protocol.md), in words. */
const CLOSE_CODES = {
  1000: 'normal', 1001: 'going away', 1006: 'connection lost', 1008: 'policy (auth or slow consumer)',
  1009: 'message too big', 1011: 'internal error', 1012: 'server restart', 1013: 'server busy',
};

const $ = (sel, root = document) => root.querySelector(sel);

// -------------------------------------------------------------------------------------------
// Log panel
// -------------------------------------------------------------------------------------------

const logEl = $('#log');
const logEntries = [];
const LOG_MAX = 400;

/**
 * Append a line to the event log.
 * @param {string} source  session name
 * @param {string} text
 * @param {'info'|'in'|'out'|'warn'|'error'} [level]
 */
function log(source, text, level = 'info') {
  const t = new Date();
  const stamp = `${t.toLocaleTimeString([], { hour12: false })}.${String(t.getMilliseconds()).padStart(3, '0')}`;
  logEntries.push({ t: t.getTime(), source, text, level });
  if (logEntries.length > LOG_MAX) logEntries.shift();
  const li = document.createElement('li');
  li.className = `log-${level}`;
  li.innerHTML = '<time></time><span class="src"></span><span class="msg"></span>';
  li.children[0].textContent = stamp;
  li.children[1].textContent = source;
  li.children[2].textContent = text;
  const atBottom = logEl.scrollHeight - logEl.scrollTop - logEl.clientHeight < 40;
  logEl.append(li);
  while (logEl.childElementCount > LOG_MAX) logEl.firstElementChild.remove();
  if (atBottom) logEl.scrollTop = logEl.scrollHeight;
}

// -------------------------------------------------------------------------------------------
// Audio engine (one AudioContext, one worklet module)
// -------------------------------------------------------------------------------------------

const audio = {
  /** @type {AudioContext|null} */ ctx: null,
  /** @type {Promise<void>|null} */ ready: null,
  init() {
    if (!this.ready) {
      this.ctx = new AudioContext({ latencyHint: 'interactive' });
      this.ready = this.ctx.audioWorklet.addModule(new URL('./player-worklet.js', import.meta.url));
    }
    return this.ready;
  },
  /** Resume on a user gesture (autoplay policy). */
  async resume() {
    await this.init();
    if (this.ctx.state !== 'running') await this.ctx.resume();
  },
};

// -------------------------------------------------------------------------------------------
// Channel: one session + one player
// -------------------------------------------------------------------------------------------

/**
 * One voxgate session with its own player channel and figures.
 */
class Channel extends EventTarget {
  /**
   * @param {string} name label used in the log
   * @param {{pan?: number}} [options]
   */
  constructor(name, { pan = 0 } = {}) {
    super();
    this.name = name;
    this.pan = pan;
    /** @type {VoxgateClient|null} */ this.client = null;
    /** @type {AudioWorkletNode|null} */ this.node = null;
    this.status = 'idle';
    this.streamAbort = null;
    this.reset();
  }

  /** Forget everything about the previous connection (context ids restart at c1). */
  reset() {
    this.currentContext = null;
    /** Per-context figures, by context id. */
    this.contexts = new Map();
    this.resamplers = new Map();
    this.words = new Map(); // contextId -> [{word, start_ms, end_ms}]
    this.player = { samplesPlayed: 0, buffered: 0, underruns: 0, underrunSamples: 0, state: 'idle', contextId: null, contextPlayed: 0, time: 0, at: 0 };
    this.samplesReceived = 0;
    this.receivedMs = 0;
    this.samplesPushed = 0;
    this.stopInfo = null; // see stop()
    this.errors = [];
    this.doneIds = [];
    this.cancelledIds = [];
  }

  /** Disconnect the audio graph of this channel. */
  teardown() {
    this.node?.port.postMessage({ type: 'clear' });
    this.node?.disconnect();
    this.analyser?.disconnect();
    this.node = null;
    this.analyser = null;
  }

  get rate() {
    return audio.ctx?.sampleRate ?? 48000;
  }

  /** Connect the session and build the audio graph. */
  async open() {
    await audio.init();
    this.stopStreaming();
    this.client?.close();
    this.teardown();
    this.reset();
    this.setStatus('connecting');
    const node = new AudioWorkletNode(audio.ctx, 'voxgate-player', {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { prebufferMs: PREBUFFER_MS, reportIntervalMs: 50 },
    });
    node.port.onmessage = (e) => this.onPlayer(e.data);
    this.gain = new GainNode(audio.ctx, { gain: 1 });
    this.panner = new StereoPannerNode(audio.ctx, { pan: this.pan });
    this.analyser = new AnalyserNode(audio.ctx, { fftSize: 512 });
    node.connect(this.gain).connect(this.panner).connect(this.analyser).connect(audio.ctx.destination);
    this.node = node;

    const client = new VoxgateClient(sessionUrl());
    this.client = client;
    client.addEventListener('message', (e) => this.onMessage(e.detail));
    client.addEventListener('audio', (e) => this.onAudio(e.detail));
    client.addEventListener('contextDone', (e) => this.onDone(e.detail));
    client.addEventListener('cancelled', (e) => this.onCancelled(e.detail));
    client.addEventListener('gap', (e) => log(this.name, `seq gap: expected ${e.detail.expected}, got ${e.detail.got}`, 'warn'));
    client.addEventListener('error', (e) => this.onError(e.detail));
    client.addEventListener('close', (e) => {
      if (this.client !== client) return; // a replaced connection
      const what = CLOSE_CODES[e.detail.code] ?? `code ${e.detail.code}`;
      this.setStatus('closed', `closed: ${what}`);
      log(this.name, `connection closed: ${e.detail.code} ${what}${e.detail.reason ? ` (${e.detail.reason})` : ''}`, e.detail.code === 1000 ? 'info' : 'error');
      this.stopStreaming();
    });
    let created;
    try {
      created = await client.connect();
    } catch (err) {
      this.setStatus('error', 'offline');
      log(this.name, `cannot connect to ${WS_URL}: ${err.message}`, 'error');
      throw err;
    }
    this.setStatus('connected');
    log(this.name, `session.created ${created.session_id} · ${created.voices?.length ?? 0} voices · ${created.audio?.format} @ ${created.audio?.sample_rate} Hz`, 'in');
    // Word timings are what the highlighting runs on. (A refusal is already in the log.)
    await client.update({ alignment: true }).catch(() => {});
    return created;
  }

  close() {
    this.stop({ quiet: true });
    this.client?.close();
    this.teardown();
  }

  setStatus(status, text) {
    this.status = status;
    this.dispatchEvent(new CustomEvent('status', { detail: { status, text: text ?? status } }));
  }

  context(id) {
    let c = this.contexts.get(id);
    if (!c) {
      c = {
        id, frames: 0, samples: 0, sampleRate: null, checksum: null, pushed: 0, played: 0,
        ttfaMs: null, ttfpMs: null, t0: null, done: false, cancelled: false, audioMs: null, lastSeq: null,
      };
      this.contexts.set(id, c);
    }
    return c;
  }

  /**
   * Speak `text` in a new context (text + flush final). Interrupts what this channel is saying.
   * @param {string} text
   * @returns {Promise<string>} context id
   */
  async speak(text) {
    text = text.trim();
    if (!text) return null;
    await audio.resume();
    if (this.isBusy()) this.stop({ quiet: true });
    const id = this.client.newContextId();
    this.beginContext(id);
    this.client.text(id, text);
    this.client.flush(id, true);
    log(this.name, `→ text ${id} (${text.length} chars) + flush final`, 'out');
    return id;
  }

  /**
   * Send `text` word by word at `wordsPerSecond`, like a chat model's token stream, then flush.
   * @param {string} text
   * @param {number} wordsPerSecond
   */
  async stream(text, wordsPerSecond) {
    const tokens = text.trim().match(/\S+\s*/g) ?? [];
    if (!tokens.length) return null;
    await audio.resume();
    if (this.isBusy()) this.stop({ quiet: true });
    const id = this.client.newContextId();
    this.beginContext(id);
    log(this.name, `→ streaming ${tokens.length} words to ${id} at ${wordsPerSecond} words/s`, 'out');
    const abort = { aborted: false };
    this.streamAbort = abort;
    const start = performance.now();
    const interval = 1000 / wordsPerSecond;
    for (let i = 0; i < tokens.length; i++) {
      if (abort.aborted || !this.client.connected) return id;
      this.client.text(id, tokens[i]);
      // Schedule against the start time so timer jitter does not accumulate.
      const wait = start + (i + 1) * interval - performance.now();
      if (i < tokens.length - 1 && wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
    if (!abort.aborted && this.client.connected) {
      this.client.flush(id, true);
      log(this.name, `→ flush final ${id}`, 'out');
    }
    if (this.streamAbort === abort) this.streamAbort = null;
    return id;
  }

  stopStreaming() {
    if (this.streamAbort) this.streamAbort.aborted = true;
    this.streamAbort = null;
  }

  beginContext(id) {
    this.currentContext = id;
    const c = this.context(id);
    c.t0 = performance.now();
    this.words.set(id, []);
    this.dispatchEvent(new CustomEvent('contextBegin', { detail: { id } }));
  }

  isBusy() {
    const c = this.currentContext && this.contexts.get(this.currentContext);
    return !!c && !c.cancelled && (!c.done || c.played < c.pushed);
  }

  /**
   * Barge-in: cancel every open context of the session and silence the player at once.
   * @param {{quiet?: boolean}} [options]
   */
  stop({ quiet = false } = {}) {
    if (this.isBusy()) this.dispatchEvent(new CustomEvent('stopped', { detail: { id: this.currentContext } }));
    this.stopStreaming();
    this.node?.port.postMessage({ type: 'clear' });
    for (const [id, rs] of this.resamplers) {
      rs.ended = true;
      this.resamplers.delete(id);
    }
    if (this.client?.connected) {
      const open = [...this.client.contexts.values()].filter((c) => c.state === 'open' || c.state === 'started');
      if (open.length) this.client.cancel();
      if (!quiet) log(this.name, `→ cancel (${open.length ? open.map((c) => c.contextId).join(', ') : 'nothing open'}) + clear player`, 'out');
    }
    // Measured for the "Stop silences at once" figure: audio time of the click, and (from the
    // worklet's `cleared` reply) when the clear took effect and how much was still played after.
    this.stopInfo = { clickTime: audio.ctx?.currentTime ?? null, clearTime: null, samplesPlayedAtClear: null, faded: null, dropped: null };
  }

  // --- incoming ----------------------------------------------------------------------------

  onMessage(msg) {
    switch (msg.type) {
      case 'session.updated': {
        const s = msg.settings;
        log(this.name, `session.updated voice=${s.voice} speed=${s.speed} format=${s.format} rate=${s.sample_rate} alignment=${s.alignment}`, 'in');
        break;
      }
      case 'context.started':
        log(this.name, `context.started ${msg.context_id} → index ${msg.index}`, 'in');
        break;
      case 'alignment': {
        const list = this.words.get(msg.context_id) ?? [];
        list.push(...(msg.words ?? []));
        this.words.set(msg.context_id, list);
        log(this.name, `alignment ${msg.context_id}: ${msg.words?.length ?? 0} words`, 'in');
        this.dispatchEvent(new CustomEvent('alignment', { detail: msg }));
        break;
      }
      case 'context.done':
        log(this.name, `context.done ${msg.context_id} · last_seq ${msg.last_seq} · ${Math.round(msg.audio_ms ?? 0)} ms audio`, 'in');
        break;
      case 'cancelled':
        log(this.name, `cancelled ${msg.context_id ?? '(all)'} · last_seq ${msg.last_seq}`, 'in');
        break;
      case 'context.dropped':
        log(this.name, `context.dropped ${msg.context_id}: ${msg.reason} (${msg.text_chars} chars)`, 'warn');
        break;
      default:
        break;
    }
  }

  onAudio(f) {
    const c = this.context(f.contextId);
    if (c.cancelled) return;
    if (c.frames === 0) {
      const state = this.client.context(f.contextId);
      const t0 = state?.firstTextAt ?? c.t0;
      c.ttfaMs = (state?.firstAudioAt ?? performance.now()) - t0;
      c.sampleRate = f.sampleRate;
    }
    c.frames++;
    c.samples += f.samples.length;
    c.lastSeq = f.seq;
    c.checksum = (this.client.context(f.contextId)?.checksum ?? 0).toString(16).padStart(8, '0');
    this.samplesReceived += f.samples.length;
    this.receivedMs += (f.samples.length / f.sampleRate) * 1000;

    let rs = this.resamplers.get(f.contextId);
    if (!rs) {
      rs = new StreamResampler(f.sampleRate, this.rate);
      this.resamplers.set(f.contextId, rs);
    }
    const out = rs.push(f.samples);
    this.post(f.contextId, out, out !== f.samples);
  }

  post(contextId, samples, transfer) {
    if (!samples.length) return;
    this.context(contextId).pushed += samples.length;
    this.samplesPushed += samples.length;
    this.node.port.postMessage({ type: 'push', contextId, samples }, transfer ? [samples.buffer] : []);
  }

  onDone(d) {
    const c = this.context(d.context_id);
    c.done = true;
    c.audioMs = d.audio_ms;
    c.checksum = d.checksum === null ? null : d.checksum.toString(16).padStart(8, '0');
    this.doneIds.push(d.context_id);
    const rs = this.resamplers.get(d.context_id);
    if (rs) {
      this.post(d.context_id, rs.end(), true);
      this.resamplers.delete(d.context_id);
    }
    this.node.port.postMessage({ type: 'end', contextId: d.context_id });
  }

  onCancelled(d) {
    const ids = d.context_id ? [d.context_id] : [...this.contexts.keys()].filter((id) => !this.contexts.get(id).done);
    for (const id of ids) {
      const c = this.context(id);
      if (c.done) continue;
      c.cancelled = true;
      this.cancelledIds.push(id);
      this.resamplers.delete(id);
    }
  }

  onError(e) {
    this.errors.push(e);
    const where = e.context_id ? ` (${e.context_id})` : '';
    log(this.name, `error ${e.code}${where}: ${e.message}`, 'error');
    if (e.context_id && ['engine_failed', 'empty_text', 'text_too_long'].includes(e.code)) {
      const c = this.contexts.get(e.context_id);
      if (c) c.done = true;
    }
  }

  onPlayer(m) {
    if (m.type === 'stats') {
      Object.assign(this.player, m, { at: performance.now() });
    } else if (m.type === 'started') {
      const c = this.context(m.contextId);
      // The sample was rendered at audio time m.time; convert to the page clock.
      const lag = Math.max(0, ((audio.ctx?.currentTime ?? m.time) - m.time) * 1000);
      if (c.ttfpMs === null && c.t0 !== null) {
        const t0 = this.client.context(m.contextId)?.firstTextAt ?? c.t0;
        c.ttfpMs = Math.max(c.ttfaMs ?? 0, performance.now() - lag - t0);
      }
    } else if (m.type === 'ended') {
      this.context(m.contextId).played = m.played;
    } else if (m.type === 'cleared') {
      if (this.stopInfo && this.stopInfo.clearTime === null) {
        Object.assign(this.stopInfo, { clearTime: m.time, samplesPlayedAtClear: m.samplesPlayed, faded: m.faded, dropped: m.dropped });
      }
      if (m.dropped > 0) log(this.name, `player cleared: ${Math.round((m.dropped / this.rate) * 1000)} ms of buffered audio dropped`);
    }
  }

  /** Play position (ms from the start of the current context's audio), extrapolated. */
  positionMs() {
    const p = this.player;
    const id = this.currentContext;
    if (!id) return 0;
    const c = this.contexts.get(id);
    if (c && c.played > 0 && p.contextId !== id) return (c.played / this.rate) * 1000;
    if (p.contextId !== id) return 0;
    let samples = p.contextPlayed;
    if (p.state === 'playing' && audio.ctx) {
      const ahead = (audio.ctx.currentTime - p.time) * this.rate;
      samples += Math.max(0, Math.min(ahead, p.buffered));
    }
    return (samples / this.rate) * 1000;
  }

  /** Plain-object figures for window.voxgateDemo. */
  snapshot() {
    const stats = this.client?.stats ?? {};
    const cur = this.currentContext ? this.contexts.get(this.currentContext) : null;
    const contexts = {};
    for (const [id, c] of this.contexts) {
      contexts[id] = {
        frames: c.frames, samples: c.samples, sampleRate: c.sampleRate, checksum: c.checksum,
        pushed: c.pushed, played: c.played, ttfaMs: c.ttfaMs, ttfpMs: c.ttfpMs, done: c.done,
        cancelled: c.cancelled, audioMs: c.audioMs, lastSeq: c.lastSeq, words: this.words.get(id)?.length ?? 0,
      };
    }
    return {
      name: this.name,
      status: this.status,
      sessionId: this.client?.session?.session_id ?? null,
      settings: this.client?.settings ?? null,
      framesReceived: stats.frames ?? 0,
      seqGaps: stats.seqGaps ?? 0,
      missingFrames: stats.missingFrames ?? 0,
      discardedFrames: stats.discardedFrames ?? 0,
      lastSeq: stats.lastSeq ?? null,
      samplesReceived: this.samplesReceived,
      receivedMs: this.receivedMs,
      samplesPushed: this.samplesPushed,
      samplesPlayed: this.player.samplesPlayed,
      playedMs: (this.player.samplesPlayed / this.rate) * 1000,
      bufferedSamples: this.player.buffered,
      bufferMs: (this.player.buffered / this.rate) * 1000,
      underruns: this.player.underruns,
      playerState: this.player.state,
      stop: this.stopInfo ? { ...this.stopInfo } : null,
      currentContext: this.currentContext,
      ttfaMs: cur?.ttfaMs ?? null,
      ttfpMs: cur?.ttfpMs ?? null,
      contextsDone: this.doneIds.length,
      contextsCancelled: this.cancelledIds.length,
      doneIds: [...this.doneIds],
      cancelledIds: [...this.cancelledIds],
      contexts,
      errors: this.errors.map((e) => ({ code: e.code, message: e.message, context_id: e.context_id ?? null })),
    };
  }
}

// -------------------------------------------------------------------------------------------
// Transcript with word highlighting
// -------------------------------------------------------------------------------------------

/** Renders a context's aligned words and highlights them as the playhead passes. */
class Transcript {
  constructor(el) {
    this.el = el;
    this.spans = [];
    this.words = [];
    this.next = 0; // first word not yet fully spoken
    this.highlighted = 0;
    this.done = false; // stopped: ignore further updates
  }

  reset(placeholder = '') {
    this.el.textContent = '';
    if (placeholder) {
      const s = document.createElement('span');
      s.className = 'placeholder';
      s.textContent = placeholder;
      this.el.append(s);
    }
    this.spans = [];
    this.words = [];
    this.next = 0;
    this.highlighted = 0;
    this.done = false;
  }

  add(words) {
    if (this.done) return;
    if (!this.words.length) this.el.textContent = '';
    for (const w of words) {
      const s = document.createElement('span');
      s.className = 'w';
      s.textContent = w.word;
      this.el.append(s, ' ');
      this.spans.push(s);
      this.words.push(w);
    }
  }

  /** @param {number} ms play position within the context */
  update(ms) {
    if (this.done) return;
    for (let i = this.next; i < this.words.length; i++) {
      const w = this.words[i];
      if (w.start_ms > ms) break;
      const span = this.spans[i];
      if (w.end_ms <= ms) {
        span.className = 'w spoken';
        if (i === this.next) this.next++;
      } else {
        span.className = 'w current';
      }
      this.highlighted = Math.max(this.highlighted, i + 1);
    }
  }

  finish() {
    for (let i = this.next; i < this.spans.length; i++) this.spans[i].className = 'w spoken';
    this.next = this.spans.length;
  }

  /** Barge-in: the words not yet heard are struck out, and the transcript stops following. */
  stopped() {
    if (this.done) return;
    for (let i = this.next; i < this.spans.length; i++) {
      if (this.spans[i].className !== 'w spoken') this.spans[i].className = 'w unspoken';
    }
    this.next = this.spans.length;
    const badge = document.createElement('span');
    badge.className = 'stopped-badge';
    badge.textContent = 'stopped';
    this.el.append(badge);
    this.done = true;
  }
}

// -------------------------------------------------------------------------------------------
// Page wiring
// -------------------------------------------------------------------------------------------

const ui = {
  conn: $('#conn'), connText: $('#conn-text'), reconnect: $('#reconnect'), sessionId: $('#session-id'),
  text: $('#text'), voice: $('#voice'), speed: $('#speed'), speedOut: $('#speed-out'),
  format: $('#format'), rate: $('#rate'), speak: $('#speak'), stream: $('#stream'), stop: $('#stop'),
  wps: $('#wps'), wpsOut: $('#wps-out'), transcript: $('#transcript'), progress: $('#progress-bar'),
  m: {
    ttfa: $('#m-ttfa'), ttfp: $('#m-ttfp'), frames: $('#m-frames'), gaps: $('#m-gaps'),
    buffer: $('#m-buffer'), underruns: $('#m-underruns'), received: $('#m-received'), played: $('#m-played'),
  },
};

const main = new Channel('main');
const transcript = new Transcript(ui.transcript);
/** @type {{channel: Channel, el: HTMLElement, transcript: Transcript}[]} */
let multi = [];

function setPill(pill, textEl, status, text) {
  pill.dataset.state = status;
  textEl.textContent = text;
}

main.addEventListener('status', (e) => {
  const { status, text } = e.detail;
  setPill(ui.conn, ui.connText, status, status === 'connected' ? 'connected' : text);
  const on = status === 'connected';
  for (const el of [ui.speak, ui.stream, ui.stop, ui.voice, ui.speed, ui.format, ui.rate]) el.disabled = !on;
  ui.reconnect.hidden = !(status === 'closed' || status === 'error');
});
ui.reconnect.addEventListener('click', () => connectMain());
main.addEventListener('contextBegin', () => transcript.reset());
main.addEventListener('stopped', () => transcript.stopped());
main.addEventListener('alignment', (e) => {
  if (e.detail.context_id === main.currentContext) transcript.add(e.detail.words ?? []);
});

function fillSelect(select, values, selected) {
  select.textContent = '';
  for (const v of values) {
    const o = document.createElement('option');
    o.value = v;
    o.textContent = v;
    select.append(o);
  }
  if (selected !== undefined) select.value = selected;
}

function applySettingsToUi(s) {
  if (s.voice) ui.voice.value = s.voice;
  if (s.speed !== undefined) {
    ui.speed.value = s.speed;
    ui.speedOut.textContent = `${Number(s.speed).toFixed(2)}×`;
  }
  if (s.format) ui.format.value = s.format;
  if (s.sample_rate) {
    if (![...ui.rate.options].some((o) => Number(o.value) === s.sample_rate)) {
      const o = document.createElement('option');
      o.value = s.sample_rate;
      o.textContent = `${s.sample_rate / 1000} kHz`;
      ui.rate.append(o);
    }
    ui.rate.value = String(s.sample_rate);
  }
}

async function sendSettings(partial) {
  try {
    const s = await main.client.update(partial);
    applySettingsToUi(s);
  } catch (err) {
    // The server's error is already in the log; put the pickers back to the effective settings.
    applySettingsToUi(main.client.settings);
  }
}

ui.voice.addEventListener('change', () => sendSettings({ voice: ui.voice.value }));
ui.speed.addEventListener('input', () => { ui.speedOut.textContent = `${Number(ui.speed.value).toFixed(2)}×`; });
ui.speed.addEventListener('change', () => sendSettings({ speed: Number(ui.speed.value) }));
ui.format.addEventListener('change', () => sendSettings({ format: ui.format.value }));
ui.rate.addEventListener('change', () => sendSettings({ sample_rate: Number(ui.rate.value) }));
ui.wps.addEventListener('input', () => { ui.wpsOut.textContent = `${ui.wps.value} words/s`; });
ui.speak.addEventListener('click', () => main.speak(ui.text.value).catch(reportError));
ui.stream.addEventListener('click', () => main.stream(ui.text.value, Number(ui.wps.value)).catch(reportError));
ui.stop.addEventListener('click', () => main.stop());
ui.text.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) ui.speak.click();
});

function reportError(err) {
  log('page', err?.message ?? String(err), 'error');
}

// Theme: follows the system unless toggled (remembered).
const themeKey = 'voxgate-theme';
const savedTheme = localStorage.getItem(themeKey);
if (savedTheme) document.documentElement.dataset.theme = savedTheme;
$('#theme').addEventListener('click', () => {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === 'dark'
    : matchMedia('(prefers-color-scheme: dark)').matches;
  document.documentElement.dataset.theme = dark ? 'light' : 'dark';
  localStorage.setItem(themeKey, document.documentElement.dataset.theme);
});
$('#log-clear').addEventListener('click', () => { logEl.textContent = ''; });

// --- multi-session panel ----------------------------------------------------------------------

const multiUi = {
  count: $('#multi-count'), open: $('#multi-open'), speak: $('#multi-speak'), stop: $('#multi-stop'),
  close: $('#multi-close'), grid: $('#multi-grid'), tpl: $('#session-tpl'),
};

/**
 * Open `n` extra sessions, each with its own text, player channel (panned across the stereo
 * field) and figures.
 * @param {number} n
 */
async function openSessions(n) {
  closeSessions();
  multiUi.open.disabled = true;
  const made = [];
  for (let i = 0; i < n; i++) {
    const pan = n === 1 ? 0 : -0.8 + (1.6 * i) / (n - 1);
    const channel = new Channel(`s${i + 1}`, { pan });
    const el = multiUi.tpl.content.firstElementChild.cloneNode(true);
    $('.mini-name', el).textContent = `Session ${i + 1}`;
    $('.mini-text', el).value = MULTI_TEXTS[i % MULTI_TEXTS.length];
    const tr = new Transcript($('.mini-transcript', el));
    const pill = $('.pill', el);
    channel.addEventListener('status', (e) => setPill(pill, $('.pill-text', el), e.detail.status, e.detail.text));
    channel.addEventListener('contextBegin', () => tr.reset());
    channel.addEventListener('stopped', () => tr.stopped());
    channel.addEventListener('alignment', (e) => {
      if (e.detail.context_id === channel.currentContext) tr.add(e.detail.words ?? []);
    });
    $('.f-speak', el).addEventListener('click', () => channel.speak($('.mini-text', el).value).catch(reportError));
    $('.f-stop', el).addEventListener('click', () => channel.stop());
    multiUi.grid.append(el);
    made.push({ channel, el, transcript: tr });
  }
  multi = made;
  multiUi.open.disabled = false;
  multiUi.close.disabled = false;
  const results = await Promise.allSettled(made.map((m) => m.channel.open()));
  const ok = results.filter((r) => r.status === 'fulfilled').length;
  log('page', `opened ${ok}/${n} sessions`, ok === n ? 'info' : 'error');
  multiUi.speak.disabled = ok === 0;
  multiUi.stop.disabled = ok === 0;
  return ok;
}

function closeSessions() {
  for (const m of multi) m.channel.close();
  multi = [];
  multiUi.grid.textContent = '';
  multiUi.speak.disabled = true;
  multiUi.stop.disabled = true;
  multiUi.close.disabled = true;
}

async function speakAll() {
  await audio.resume();
  return Promise.all(multi.filter((m) => m.channel.client?.connected).map((m) => m.channel.speak($('.mini-text', m.el).value)));
}

function stopAll() {
  for (const m of multi) m.channel.stop();
}

multiUi.open.addEventListener('click', () => openSessions(Number(multiUi.count.value)).catch(reportError));
multiUi.speak.addEventListener('click', () => speakAll().catch(reportError));
multiUi.stop.addEventListener('click', stopAll);
multiUi.close.addEventListener('click', closeSessions);

// --- live figures -------------------------------------------------------------------------------

const fmtMs = (v) => (v === null || v === undefined ? '–' : Math.round(v).toString());

function renderFigures() {
  const s = main.snapshot();
  ui.m.ttfa.textContent = fmtMs(s.ttfaMs);
  ui.m.ttfp.textContent = fmtMs(s.ttfpMs);
  ui.m.frames.textContent = s.framesReceived;
  ui.m.gaps.textContent = s.seqGaps;
  ui.m.gaps.parentElement.parentElement.classList.toggle('bad', s.seqGaps > 0);
  ui.m.buffer.textContent = Math.round(s.bufferMs);
  ui.m.underruns.textContent = s.underruns;
  ui.m.underruns.parentElement.parentElement.classList.toggle('warn', s.underruns > 0);
  ui.m.received.textContent = (s.receivedMs / 1000).toFixed(1);
  ui.m.played.textContent = (s.playedMs / 1000).toFixed(1);
  if (main.client?.session) ui.sessionId.textContent = `session ${main.client.session.session_id.slice(0, 8)}`;

  for (const { channel, el } of multi) {
    const m = channel.snapshot();
    $('.f-ttfa', el).textContent = m.ttfaMs === null ? '–' : `${Math.round(m.ttfaMs)} ms`;
    $('.f-frames', el).textContent = m.framesReceived;
    $('.f-gaps', el).textContent = m.seqGaps;
    $('.f-gaps', el).classList.toggle('bad', m.seqGaps > 0);
    $('.f-played', el).textContent = `${(m.playedMs / 1000).toFixed(1)} s`;
    $('.f-buffer', el).textContent = `${Math.round(m.bufferMs)} ms`;
    $('.f-underruns', el).textContent = m.underruns;
    const cur = m.currentContext ? m.contexts[m.currentContext] : null;
    $('.f-sum', el).textContent = cur?.checksum ? `${cur.checksum} · ${cur.samples} smp` : '–';
  }
}

const meterBuf = new Float32Array(512);
function level(channel) {
  if (!channel.analyser) return 0;
  channel.analyser.getFloatTimeDomainData(meterBuf);
  let sum = 0;
  for (let i = 0; i < meterBuf.length; i++) sum += meterBuf[i] * meterBuf[i];
  return Math.min(1, Math.sqrt(sum / meterBuf.length) * 4);
}

function animate() {
  // Highlight words as the playhead passes them.
  const pos = main.positionMs();
  transcript.update(pos);
  const cur = main.currentContext && main.contexts.get(main.currentContext);
  if (cur?.done && cur.played > 0 && cur.played >= cur.pushed) transcript.finish();
  const total = cur?.pushed ? (cur.pushed / main.rate) * 1000 : 0;
  ui.progress.style.width = total ? `${Math.min(100, (pos / total) * 100).toFixed(1)}%` : '0%';
  for (const m of multi) {
    m.transcript.update(m.channel.positionMs());
    $('.meter-bar', m.el).style.transform = `scaleX(${level(m.channel).toFixed(3)})`;
  }
  requestAnimationFrame(animate);
}

setInterval(renderFigures, 150);
requestAnimationFrame(animate);

// --- test / debugging hook ----------------------------------------------------------------------

/**
 * Read-only view of the demo for tests and the console.
 * `voxgateDemo.main` and `voxgateDemo.sessions[i]` are fresh snapshots on every read.
 */
window.voxgateDemo = {
  wsUrl: WS_URL,
  get ready() { return main.status === 'connected'; },
  get audioState() { return audio.ctx?.state ?? 'none'; },
  get audioSampleRate() { return audio.ctx?.sampleRate ?? null; },
  /** The main session's VoxgateClient (for the console). */
  get client() { return main.client; },
  get main() { return main.snapshot(); },
  get sessions() { return multi.map((m) => m.channel.snapshot()); },
  get wordsHighlighted() { return transcript.highlighted; },
  get log() { return logEntries.map((e) => ({ ...e })); },
  speak: (text) => main.speak(text ?? ui.text.value),
  stream: (text, wps = 12) => main.stream(text ?? ui.text.value, wps),
  stop: () => main.stop(),
  openSessions,
  speakAll,
  stopAll,
  closeSessions,
};

// --- start --------------------------------------------------------------------------------------

/** Connect (or reconnect) the main session and fill the pickers from `session.created`. */
async function connectMain() {
  try {
    const created = await main.open();
    fillSelect(ui.voice, created.voices ?? [], created.settings?.voice);
    // mp3 frames only make sense as one stream (not playable frame by frame); opus needs WebCodecs.
    const playable = (created.formats ?? ['pcm_s16le']).filter((f) => f !== 'mp3' && (f !== 'opus' || typeof AudioDecoder !== 'undefined'));
    fillSelect(ui.format, playable, created.settings?.format);
    applySettingsToUi(main.client.settings);
    transcript.reset('Press Speak to hear the text above.');
  } catch {
    // Already logged and shown in the status pill.
  }
}

(async () => {
  await connectMain();
  const n = Number(params.get('sessions'));
  if (n > 0) {
    multiUi.count.value = String(n);
    if (multiUi.count.value !== String(n)) {
      const o = document.createElement('option');
      o.textContent = String(n);
      multiUi.count.append(o);
      multiUi.count.value = String(n);
    }
    openSessions(n).catch(reportError);
  }
})();
