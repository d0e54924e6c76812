// splitasr browser edge: microphone -> 16 kHz -> conditioning -> energy VAD endpointing -> Whisper
// log-mel -> int8 FEATURES frames (msgpack) over a websocket to a stage-0 shard; partials and finals
// shown live. The same recipe as the Python edge (docs/protocol.md); written without libraries.
"use strict";

// ---------------------------------------------------------------- msgpack (the subset in use)
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

function mpEncode(value) {
  const out = [];
  const u8 = (b) => out.push(b & 0xff);
  const be = (n, bytes) => { for (let i = bytes - 1; i >= 0; i--) u8(Math.floor(n / 2 ** (8 * i))); };
  const enc = (v) => {
    if (v === null || v === undefined) u8(0xc0);
    else if (v === true) u8(0xc3);
    else if (v === false) u8(0xc2);
    else if (typeof v === "number" && Number.isInteger(v)) {
      if (v >= 0 && v < 128) u8(v);
      else if (v < 0 && v >= -32) u8(0xe0 | (v + 32));
      else if (v >= 0 && v < 2 ** 32) { u8(0xce); be(v, 4); }
      else if (v < 0 && v >= -(2 ** 31)) { u8(0xd2); be(v >>> 0, 4); }
      else { u8(0xcb); const d = new DataView(new ArrayBuffer(8)); d.setFloat64(0, v); for (let i = 0; i < 8; i++) u8(d.getUint8(i)); }
    } else if (typeof v === "number") {
      u8(0xcb); const d = new DataView(new ArrayBuffer(8)); d.setFloat64(0, v); for (let i = 0; i < 8; i++) u8(d.getUint8(i));
    } else if (typeof v === "string") {
      const b = utf8.encode(v);
      if (b.length < 32) u8(0xa0 | b.length); else if (b.length < 256) { u8(0xd9); u8(b.length); } else { u8(0xda); be(b.length, 2); }
      for (const x of b) u8(x);
    } else if (v instanceof Uint8Array || v instanceof Int8Array) {
      const b = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
      if (b.length < 256) { u8(0xc4); u8(b.length); } else if (b.length < 65536) { u8(0xc5); be(b.length, 2); } else { u8(0xc6); be(b.length, 4); }
      for (const x of b) u8(x);
    } else if (Array.isArray(v)) {
      if (v.length < 16) u8(0x90 | v.length); else { u8(0xdc); be(v.length, 2); }
      v.forEach(enc);
    } else {
      const keys = Object.keys(v).filter((k) => v[k] !== undefined);
      if (keys.length < 16) u8(0x80 | keys.length); else { u8(0xde); be(keys.length, 2); }
      for (const k of keys) { enc(k); enc(v[k]); }
    }
  };
  enc(value);
  return Uint8Array.from(out);
}

function mpDecode(buffer) {
  const d = new DataView(buffer);
  let at = 0;
  const str = (n) => { const s = fromUtf8.decode(new Uint8Array(buffer, at, n)); at += n; return s; };
  const bin = (n) => { const b = new Uint8Array(buffer.slice(at, at + n)); at += n; return b; };
  const arr = (n) => { const a = []; for (let i = 0; i < n; i++) a.push(dec()); return a; };
  const map = (n) => { const m = {}; for (let i = 0; i < n; i++) { const k = dec(); m[k] = dec(); } return m; };
  const next = (bytes, fn) => { const v = fn(at); at += bytes; return v; };
  function dec() {
    const b = d.getUint8(at++);
    if (b < 0x80) return b;
    if (b >= 0xe0) return b - 256;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(next(1, (i) => d.getUint8(i)));
      case 0xc5: return bin(next(2, (i) => d.getUint16(i)));
      case 0xc6: return bin(next(4, (i) => d.getUint32(i)));
      case 0xca: return next(4, (i) => d.getFloat32(i));
      case 0xcb: return next(8, (i) => d.getFloat64(i));
      case 0xcc: return next(1, (i) => d.getUint8(i));
      case 0xcd: return next(2, (i) => d.getUint16(i));
      case 0xce: return next(4, (i) => d.getUint32(i));
      case 0xcf: return next(8, (i) => Number(d.getBigUint64(i)));
      case 0xd0: return next(1, (i) => d.getInt8(i));
      case 0xd1: return next(2, (i) => d.getInt16(i));
      case 0xd2: return next(4, (i) => d.getInt32(i));
      case 0xd3: return next(8, (i) => Number(d.getBigInt64(i)));
      case 0xd9: return str(next(1, (i) => d.getUint8(i)));
      case 0xda: return str(next(2, (i) => d.getUint16(i)));
      case 0xdb: return str(next(4, (i) => d.getUint32(i)));
      case 0xdc: return arr(next(2, (i) => d.getUint16(i)));
      case 0xdd: return arr(next(4, (i) => d.getUint32(i)));
      case 0xde: return map(next(2, (i) => d.getUint16(i)));
      case 0xdf: return map(next(4, (i) => d.getUint32(i)));
      default: throw new Error("msgpack type 0x" + b.toString(16) + " not supported");
    }
  }
  return dec();
}

// ---------------------------------------------------------------- features (shared/features.py)
const SR = 16000, N_FFT = 400, HOP = 160, N_MELS = 80, BINS = N_FFT / 2 + 1, PAD = N_FFT / 2;
const INT8_SCALE = 0.05, INT8_OFFSET = -2.0, FRAMES_PER_MESSAGE = 20;

const hzToMel = (hz) => (hz >= 1000 ? 15 + Math.log(hz / 1000) / (Math.log(6.4) / 27) : hz / (200 / 3));
const melToHz = (m) => (m >= 15 ? 1000 * Math.exp((Math.log(6.4) / 27) * (m - 15)) : m * (200 / 3));

const MEL = (() => { // Slaney filterbank, (N_MELS, BINS), as librosa.filters.mel
  const top = hzToMel(SR / 2), edges = [];
  for (let i = 0; i < N_MELS + 2; i++) edges.push(melToHz((top * i) / (N_MELS + 1)));
  const f = [];
  for (let m = 0; m < N_MELS; m++) {
    const row = new Float64Array(BINS), norm = 2 / (edges[m + 2] - edges[m]);
    for (let b = 0; b < BINS; b++) {
      const hz = (b * SR) / N_FFT;
      const rising = (hz - edges[m]) / (edges[m + 1] - edges[m]);
      const falling = (edges[m + 2] - hz) / (edges[m + 2] - edges[m + 1]);
      row[b] = Math.fround(Math.max(0, Math.min(rising, falling))) * norm;
    }
    f.push(row);
  }
  return f;
})();
const WINDOW = Float64Array.from({ length: N_FFT }, (_, n) => 0.5 - 0.5 * Math.cos((2 * Math.PI * n) / N_FFT)); // periodic Hann
const COS = new Float64Array(BINS * N_FFT), SIN = new Float64Array(BINS * N_FFT);
for (let b = 0; b < BINS; b++) for (let n = 0; n < N_FFT; n++) {
  COS[b * N_FFT + n] = Math.cos((2 * Math.PI * b * n) / N_FFT);
  SIN[b * N_FFT + n] = Math.sin((2 * Math.PI * b * n) / N_FFT);
}

// Raw log10 mel of one utterance, frame by frame as its samples arrive (LogMelStream): centred
// STFT with reflect padding at both ends, len // hop frames in all.
class LogMel {
  constructor() { this.s = new Float32Array(SR * 4); this.n = 0; this.next = 0; }
  sample(q) { return q < 0 ? this.s[-q] : q >= this.n ? this.s[2 * this.n - 2 - q] : this.s[q]; }
  frame(i) {
    const x = new Float64Array(N_FFT), power = new Float64Array(BINS), out = new Float32Array(N_MELS);
    for (let k = 0; k < N_FFT; k++) x[k] = this.sample(i * HOP - PAD + k) * WINDOW[k];
    for (let b = 0; b < BINS; b++) {
      let re = 0, im = 0;
      for (let k = 0; k < N_FFT; k++) { re += x[k] * COS[b * N_FFT + k]; im -= x[k] * SIN[b * N_FFT + k]; }
      power[b] = re * re + im * im;
    }
    for (let m = 0; m < N_MELS; m++) {
      let e = 0;
      for (let b = 0; b < BINS; b++) e += MEL[m][b] * power[b];
      out[m] = Math.log10(Math.max(e, 1e-10));
    }
    return out;
  }
  push(samples) {
    if (this.n + samples.length > this.s.length) {
      const grown = new Float32Array(Math.max(this.s.length * 2, this.n + samples.length));
      grown.set(this.s.subarray(0, this.n)); this.s = grown;
    }
    this.s.set(samples, this.n); this.n += samples.length;
    const out = [];
    while (this.n > PAD && this.next * HOP + PAD <= this.n - 1) out.push(this.frame(this.next++));
    return out;
  }
  flush() {
    const out = [], total = Math.floor(this.n / HOP);
    while (this.next < total && this.n > PAD) out.push(this.frame(this.next++));
    return out;
  }
}

// ---------------------------------------------------------------- conditioning (edge/conditioning.py)
class Conditioner {
  constructor() { this.r = Math.exp((-2 * Math.PI * 20) / SR); this.x1 = 0; this.y1 = 0; this.gainDb = 0; }
  process(samples) {
    const y = new Float64Array(samples.length);
    for (let i = 0; i < samples.length; i++) { // one-pole high-pass (DC blocker)
      this.y1 = samples[i] - this.x1 + this.r * this.y1; this.x1 = samples[i]; y[i] = this.y1;
    }
    for (let i = 0; i < y.length; i += SR / 100) { // speech-gated slow gain towards -20 dBFS
      const end = Math.min(y.length, i + SR / 100);
      let e = 0; for (let k = i; k < end; k++) e += y[k] * y[k];
      const level = 10 * Math.log10(e / (end - i) + 1e-12);
      if (level > -45) {
        const wanted = Math.min(12, Math.max(-12, -20 - level));
        this.gainDb += 0.02 * (wanted - this.gainDb);
      }
      const g = 10 ** (this.gainDb / 20);
      for (let k = i; k < end; k++) y[k] *= g;
    }
    return Float32Array.from(y, (v) => Math.min(1, Math.max(-1, v)));
  }
}

// ---------------------------------------------------------------- endpointing (edge/segmenter.py, energy VAD)
const BLOCK = SR / 100; // 10 ms
class Segmenter {
  constructor(o = {}) {
    this.o = { trailingSilenceS: 0.8, maxUtteranceS: 20, cutSearchS: 2, preRollS: 0.3, minSpeechS: 0.1, ...o };
    this.carry = new Float32Array(0); this.pos = 0; this.floorDb = -60; this.pre = []; this.onset = [];
    this.active = false; this.uttBlocks = 0; this.silenceBlocks = 0; this.speechEnd = 0; this.held = [];
  }
  blocks(s) { return Math.max(1, Math.round(s / 0.01)); }
  isSpeech(db, active) {
    const speech = db > Math.max(this.floorDb + 10, -50);
    if (!active && !speech) this.floorDb += (db < this.floorDb ? 0.1 : 0.01) * (db - this.floorDb);
    return speech;
  }
  push(samples) {
    const data = new Float32Array(this.carry.length + samples.length);
    data.set(this.carry); data.set(samples, this.carry.length);
    const n = Math.floor(data.length / BLOCK), events = [];
    this.carry = data.slice(n * BLOCK);
    for (let i = 0; i < n; i++) events.push(...this.step(data.slice(i * BLOCK, (i + 1) * BLOCK)));
    return events;
  }
  finish() {
    if (!this.active) return [];
    const events = this.held.map(([b]) => ({ audio: b }));
    this.held = [];
    return [...events, ...this.end(this.speechEnd)];
  }
  end(speechEnd) { this.active = false; this.uttBlocks = this.silenceBlocks = 0; return [{ end: speechEnd }]; }
  step(block) {
    let e = 0; for (const v of block) e += v * v;
    const db = 10 * Math.log10(e / block.length + 1e-12);
    const speech = this.isSpeech(db, this.active || this.onset.length > 0);
    this.pos += block.length;
    if (!this.active) {
      if (!speech) {
        this.pre.push(block); if (this.pre.length > Math.floor(this.o.preRollS / 0.01)) this.pre.shift();
        this.onset = []; return [];
      }
      this.onset.push(block);
      if (this.onset.length < this.blocks(this.o.minSpeechS)) return [];
      const parts = [...this.pre, ...this.onset], audio = new Float32Array(parts.length * BLOCK);
      parts.forEach((b, k) => audio.set(b, k * BLOCK));
      const pre = this.pre.length;
      this.pre = []; this.onset = []; this.active = true;
      this.uttBlocks = pre + this.blocks(this.o.minSpeechS); this.silenceBlocks = 0; this.speechEnd = this.pos;
      return [{ start: this.pos - audio.length }, { audio }];
    }
    this.uttBlocks += 1;
    if (speech) { this.silenceBlocks = 0; this.speechEnd = this.pos; } else this.silenceBlocks += 1;
    const holdFrom = this.blocks(this.o.maxUtteranceS - this.o.cutSearchS);
    if (this.uttBlocks > holdFrom) this.held.push([block, db]);
    if (this.silenceBlocks >= this.blocks(this.o.trailingSilenceS)) {
      const events = this.held.length ? this.held.map(([b]) => ({ audio: b })) : [{ audio: block }];
      this.held = [];
      return [...events, ...this.end(this.speechEnd)];
    }
    if (this.uttBlocks >= this.blocks(this.o.maxUtteranceS)) return this.cut();
    return this.uttBlocks > holdFrom ? [] : [{ audio: block }];
  }
  cut() { // max length: end at the quietest 100 ms of the held tail
    const energies = this.held.map(([, db]) => db), win = this.blocks(0.1);
    let best = 0, bestDb = Infinity;
    for (let i = 0; i + win <= energies.length; i++) {
      let s = 0; for (let k = i; k < i + win; k++) s += energies[k];
      if (s / win < bestDb) { bestDb = s / win; best = i; }
    }
    const cut = best + Math.floor(win / 2), head = this.held.slice(0, cut), tail = this.held.slice(cut);
    this.held = [];
    const cutSample = this.pos - tail.length * BLOCK;
    const events = [...head.map(([b]) => ({ audio: b })), ...this.end(cutSample)];
    if (tail.length) {
      this.active = true; this.uttBlocks = tail.length; this.silenceBlocks = 0; this.speechEnd = this.pos;
      const audio = new Float32Array(tail.length * BLOCK); tail.forEach(([b], k) => audio.set(b, k * BLOCK));
      events.push({ start: cutSample }, { audio });
    }
    return events;
  }
}

// ---------------------------------------------------------------- the session
function quantise(frames) { // (n frames of N_MELS) -> int8 bytes, mel-major: byte m * n + t
  const n = frames.length, out = new Int8Array(N_MELS * n);
  for (let t = 0; t < n; t++) for (let m = 0; m < N_MELS; m++) {
    out[m * n + t] = Math.max(-128, Math.min(127, Math.round((frames[t][m] - INT8_OFFSET) / INT8_SCALE)));
  }
  return out;
}

class BrowserEdge {
  constructor(params, ui) {
    this.p = params; this.ui = ui; this.cond = new Conditioner(); this.seg = new Segmenter();
    this.utt = -1; this.consumed = 0; this.finals = []; this.pending = new Set(); this.probe = null;
    this.captured = params.probe ? [] : null; // test hook: the samples as captured, to replay in Python
  }
  async connect() {
    const q = new URLSearchParams({ device: this.p.device, session: this.p.session });
    if (this.p.language) q.set("language", this.p.language);
    if (this.p.model) q.set("model", this.p.model);
    const r = await fetch("/v1/route?" + q, { headers: { Authorization: "Bearer " + this.p.token } });
    const answer = await r.json();
    if (!r.ok) throw new Error("route: " + (answer.error || r.status));
    const shard = answer.candidates[0];
    this.ws = new WebSocket(shard.url + "/v1/stream");
    this.ws.binaryType = "arraybuffer";
    await new Promise((ok, fail) => { this.ws.onopen = ok; this.ws.onerror = () => fail(new Error("websocket to " + shard.url)); });
    const welcome = new Promise((ok, fail) => { this.onWelcome = ok; this.onFail = fail; });
    this.ws.onmessage = (e) => this.receive(mpDecode(e.data));
    this.ws.onclose = () => this.closed();
    this.send({ t: "HELLO", device_id: this.p.device, token: this.p.token, session_id: this.p.session,
      ticket: shard.ticket || "", language: this.p.language || null, split: "features", qos: "interactive" });
    await welcome;
    this.ping = setInterval(() => this.send({ t: "PING", nonce: 0 }), 10000); // the shard's idle timeout
    this.ui.status("streaming to " + shard.url);
  }
  send(frame) { this.ws.send(mpEncode({ v: 1, ...frame })); }
  receive(f) {
    if (f.t === "WELCOME") this.onWelcome(f);
    else if (f.t === "PARTIAL") this.ui.partial(f.utt, f.text);
    else if (f.t === "FINAL") {
      if (f.text.trim()) { this.finals.push({ utt: f.utt, text: f.text.trim() }); this.ui.final(f.utt, f.text.trim()); }
      this.settle(f.utt);
    } else if (f.t === "ERROR") {
      this.ui.status("error: " + f.code + ": " + f.message);
      if (this.onFail) this.onFail(new Error(f.message));
      if (f.utt !== null && f.utt !== undefined) this.settle(f.utt); // that utterance gets no FINAL here
    } else if (f.t === "DRAIN") this.ui.status("the shard asks to move: reload the page to continue");
  }
  settle(utt) { this.pending.delete(utt); if (this.closing && !this.pending.size) this.closing(); }
  closed() { // no reconnect here (the Python edge replays elsewhere): say so, and let stop() finish
    this.ui.status("disconnected from the shard");
    this.pending.clear();
    if (this.closing) this.closing();
  }
  audio(samples) { // 16 kHz float32 chunks from the microphone
    if (this.captured) this.captured.push(samples);
    const x = this.cond.process(samples);
    this.consumed += x.length;
    for (const e of this.seg.push(x)) this.event(e);
  }
  event(e) {
    if (e.start !== undefined) {
      this.utt += 1; this.seq = 0; this.frameIndex = 0; this.mel = new LogMel(); this.buffered = []; this.uttStart = e.start;
      if (this.p.probe && this.probe === null) this.probe = { samples: [], raw: [] };
    } else if (e.audio !== undefined) {
      if (this.probe && this.probe.samples.length < SR * 3 && this.utt === 0) this.probe.samples.push(...e.audio);
      this.frames(this.mel.push(e.audio), false);
    } else {
      this.frames(this.mel.flush(), true);
      const speechEnd = Math.max(0, Math.ceil((e.end - this.uttStart) / HOP));
      this.pending.add(this.utt);
      this.send({ t: "EOU", utt: this.utt, last_seq: this.seq - 1, speech_end: speechEnd });
    }
  }
  frames(frames, final) {
    if (this.probe && this.utt === 0) this.probe.raw.push(...frames.map((f) => Array.from(f)));
    this.buffered.push(...frames);
    while (this.buffered.length >= FRAMES_PER_MESSAGE || (final && this.buffered.length)) {
      const take = this.buffered.splice(0, FRAMES_PER_MESSAGE);
      const hint = Math.max(0, Math.ceil((this.seg.speechEnd - this.uttStart) / HOP));
      this.send({ t: "FEATURES", utt: this.utt, seq: this.seq, start: this.frameIndex, dtype: "int8", scale: INT8_SCALE,
        offset: INT8_OFFSET, codec: "", shape: [N_MELS, take.length], payload: quantise(take), speech_end: hint });
      this.seq += 1; this.frameIndex += take.length;
    }
  }
  async stop() { // end of input: close the open utterance, wait for every FINAL
    for (const e of this.seg.finish()) this.event(e);
    if (this.pending.size) await new Promise((ok) => { this.closing = ok; });
    clearInterval(this.ping);
    this.ws.onclose = null;
    this.ws.close();
  }
}

// ---------------------------------------------------------------- the page
async function main() {
  const q = new URLSearchParams(location.search);
  const $ = (id) => document.getElementById(id);
  const token = q.get("token") || "";
  // test hook: report the results (and the first utterance's samples) to a loopback URL only
  const report = /^http:\/\/(127\.0\.0\.1|localhost)(:\d+)?\//.test(q.get("report") || "") ? q.get("report") : "";
  const params = { token, device: token.split(".")[0], session: crypto.randomUUID().replaceAll("-", ""),
    language: q.get("language") || "en", model: q.get("model") || "", probe: Boolean(report) };
  const ui = {
    status: (s) => { $("status").textContent = s; },
    partial: (utt, text) => { $("partial").textContent = text; },
    final: (utt, text) => { const li = document.createElement("li"); li.className = "final"; li.textContent = text; $("finals").append(li); $("partial").textContent = ""; },
  };
  if (!token) { ui.status("add ?token=DEVICE_TOKEN to the URL (splitasr token DEVICE)"); return; }
  const edge = new BrowserEdge(params, ui);
  try {
    await edge.connect();
    const media = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
    const ctx = new AudioContext({ sampleRate: SR }); // the browser resamples the microphone to 16 kHz
    const source = ctx.createMediaStreamSource(media);
    const tap = ctx.createScriptProcessor(4096, 1, 1);
    tap.onaudioprocess = (e) => edge.audio(e.inputBuffer.getChannelData(0).slice());
    source.connect(tap); tap.connect(ctx.destination);
    const seconds = Number(q.get("seconds") || 0);
    if (!seconds) return; // live: until the page closes
    await new Promise((ok) => setTimeout(ok, seconds * 1000));
    tap.disconnect(); source.disconnect(); media.getTracks().forEach((t) => t.stop());
    await edge.stop();
    ui.status("done: " + edge.finals.length + " finals");
    if (report) {
      const all = new Float32Array(edge.captured.reduce((n, c) => n + c.length, 0));
      edge.captured.reduce((at, c) => { all.set(c, at); return at + c.length; }, 0);
      let captured = "";
      const bytes = new Uint8Array(all.buffer);
      for (let i = 0; i < bytes.length; i += 0x8000) captured += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      const body = JSON.stringify({ finals: edge.finals, samples: edge.probe.samples, raw: edge.probe.raw,
        consumed: edge.consumed, captured: btoa(captured) });
      await fetch(report, { method: "POST", mode: "no-cors", body });
    }
  } catch (err) {
    ui.status("error: " + err.message);
    if (report) await fetch(report, { method: "POST", mode: "no-cors", body: JSON.stringify({ error: err.message }) });
  }
}
if (typeof window !== "undefined") main();
else module.exports = { mpEncode, mpDecode, LogMel, Conditioner, Segmenter, quantise, MEL }; // node: tests
