// overlay.js: the `voxgate danmaku` OBS browser source (overlay.html).
//
// Connects to /overlay/ws of the page's own host. Per utterance the server sends
//   {type: 'utterance.started', context_index, id, name, text, said, kind, count, lang, sample_rate}
//   binary frames (protocol v1 header + pcm_s16le, decoded with voxgate.js' decodeFrame)
//   {type: 'utterance.done', context_index, id}
// The audio is resampled to the AudioContext rate (voxgate.js' StreamResampler) and played by the
// gapless `voxgate-player` worklet (player-worklet.js); the caption shows when the worklet starts
// rendering that utterance and hides `hold` ms after its last sample. Reconnects on its own.
//
// Query: ?hold=MS (caption after the voice ends, default 1500), ?ws=URL (another server).
// State for tests and debugging: window.voxgateOverlay.

import { decodeFrame, StreamResampler } from './voxgate.js';

const params = new URLSearchParams(location.search);
const HOLD_MS = Number(params.get('hold') ?? 1500);
const WS_URL = params.get('ws') ?? `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/overlay/ws`;

const captionEl = document.getElementById('caption');
const statusEl = document.getElementById('status');

const state = {
  ready: false,
  connected: false,
  connections: 0,
  audioState: null,
  audioSampleRate: null,
  /** Per context index: what was announced and what happened to its audio. */
  utterances: {},
  /** Captions in the order they were shown: {index, name, text, at}. */
  captions: [],
  caption: '',
  errors: [],
};
window.voxgateOverlay = state;

let ctx = null;
let node = null;
let hideTimer = null;
const resamplers = new Map();

async function initAudio() {
  ctx = new AudioContext({ latencyHint: 'playback' });
  await ctx.audioWorklet.addModule(new URL('./player-worklet.js', import.meta.url));
  node = new AudioWorkletNode(ctx, 'voxgate-player', { outputChannelCount: [2], processorOptions: { prebufferMs: 60 } });
  node.connect(ctx.destination);
  node.port.onmessage = (e) => onPlayer(e.data);
  if (ctx.state !== 'running') await ctx.resume().catch(() => {});
  state.audioState = ctx.state;
  state.audioSampleRate = ctx.sampleRate;
  // OBS lets a browser source play at once; a normal browser tab may need a click first.
  document.addEventListener('click', () => ctx.resume().then(() => { state.audioState = ctx.state; }));
}

function onPlayer(m) {
  const u = state.utterances[m.contextId];
  if (m.type === 'started' && u) {
    u.startedAt = performance.now();
    showCaption(m.contextId, u);
  } else if (m.type === 'ended' && u) {
    u.played = m.played;
    u.ended = true;
    clearTimeout(hideTimer);
    hideTimer = setTimeout(() => { captionEl.classList.remove('shown'); state.caption = ''; }, HOLD_MS);
  }
}

function showCaption(index, u) {
  clearTimeout(hideTimer);
  captionEl.className = `shown ${u.kind}`;
  captionEl.querySelector('.name').textContent = u.name ? `${u.name}:` : '';
  captionEl.querySelector('.text').textContent = u.text;
  captionEl.querySelector('.count').textContent = u.count > 1 ? `×${u.count}` : '';
  state.caption = captionEl.textContent;
  state.captions.push({ index: Number(index), name: u.name, text: u.text, at: performance.now() });
}

function push(index, samples) {
  if (!samples.length) return;
  state.utterances[index].pushed += samples.length;
  node.port.postMessage({ type: 'push', contextId: index, samples }, [samples.buffer]);
}

function onMessage(data) {
  if (typeof data !== 'string') {
    const f = decodeFrame(data, 'pcm_s16le');
    const u = state.utterances[f.contextIndex];
    if (!u) return; // joined mid-utterance: wait for the next one
    u.frames++;
    u.samples += f.samples.length;
    push(f.contextIndex, resamplers.get(f.contextIndex).push(f.samples));
    return;
  }
  const m = JSON.parse(data);
  if (m.type === 'utterance.started') {
    state.utterances[m.context_index] = {
      id: m.id, name: m.name, text: m.text, said: m.said, kind: m.kind, count: m.count, lang: m.lang,
      sampleRate: m.sample_rate, frames: 0, samples: 0, pushed: 0, played: 0, done: false, ended: false, startedAt: null,
    };
    resamplers.set(m.context_index, new StreamResampler(m.sample_rate, ctx.sampleRate));
  } else if (m.type === 'utterance.done') {
    const u = state.utterances[m.context_index];
    if (!u) return;
    u.done = true;
    const rs = resamplers.get(m.context_index);
    if (rs) push(m.context_index, rs.end());
    resamplers.delete(m.context_index);
    node.port.postMessage({ type: 'end', contextId: m.context_index });
  }
}

function connect() {
  const ws = new WebSocket(WS_URL);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => {
    state.connected = true;
    state.connections++;
    statusEl.textContent = 'connected';
    statusEl.className = 'ok';
  };
  ws.onmessage = (e) => {
    try {
      onMessage(e.data);
    } catch (err) {
      state.errors.push(String(err));
    }
  };
  ws.onclose = () => {
    state.connected = false;
    statusEl.textContent = 'reconnecting';
    statusEl.className = '';
    setTimeout(connect, 1000);
  };
}

initAudio()
  .then(() => {
    state.ready = true;
    connect();
  })
  .catch((err) => {
    state.errors.push(String(err));
    statusEl.textContent = `audio failed: ${err}`;
  });
