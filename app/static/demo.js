// The try-it page (app/static/index.html). Plain script, no build step, no dependencies, nothing
// fetched from anywhere but this service. It talks to the service as any client does:
//   GET  v1/models                         the model picker
//   WS   v1/realtime?intent=transcription  the microphone, 16 kHz PCM16, deltas + embeddings
//   POST v1/audio/transcriptions           uploads (verbose_json, word timestamps)
//   POST v1/audio/embeddings               every layer of an upload, for the layers picture
// The API key (when the service asks for one) stays in this tab: memory and sessionStorage.
"use strict";

(() => {
  const RATE = 16000; // what the page streams (GA audio/pcm at 16 kHz: the model's own rate)
  const CHUNK = 1600; // samples per input_audio_buffer.append (100 ms)
  const KEY_STORE = "hlstm-api-key";
  const MIB = 1024 * 1024;
  const DELTA = "conversation.item.input_audio_transcription.delta";
  const COMPLETED = "conversation.item.input_audio_transcription.completed";

  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"),
    caps: $("model-caps"),
    keyForm: $("key-form"),
    key: $("api-key"),
    keyForget: $("key-forget"),
    message: $("message"),
    record: $("record"),
    recordState: $("record-state"),
    file: $("file"),
    status: $("status"),
    transcript: $("transcript"),
    final: $("final"),
    partial: $("partial"),
    words: $("words"),
    player: $("player"),
    download: $("download"),
    wave: $("wave"),
    layers: $("layers"),
    layersState: $("layers-state"),
  };

  const state = {
    config: null,
    models: [],
    key: sessionStorage.getItem(KEY_STORE) || "",
    audio: null, // {samples: Float32Array, rate} of the current clip
    words: [], // [{word, start, end}] of the current clip
    current: -1, // index of the highlighted word
    rec: null, // the recording in progress
    urls: [], // object URLs to revoke when the clip changes
  };

  // ------------------------------------------------------------------ messages and errors

  class ServiceError extends Error {
    constructor(status, message, retryAfter) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  function setState(name) {
    document.body.dataset.state = name;
  }

  function showMessage(text, kind = "error") {
    el.message.textContent = text;
    el.message.className = kind === "error" ? "message" : "message info";
    el.message.hidden = false;
  }

  function clearMessage() {
    el.message.hidden = true;
    el.message.textContent = "";
  }

  function megabytes(bytes) {
    return `${(bytes / MIB).toFixed(bytes < MIB ? 2 : 1)} MB`;
  }

  /** A sentence a person can act on, for an error of `what` (e.g. "transcription"). */
  function describe(err, what) {
    const c = state.config;
    const said = err.message ? ` The service said: ${err.message}` : "";
    switch (err.status) {
      case 401:
        showKeyForm();
        return state.key
          ? `401 Unauthorized (${what}): the API key was refused. Check it and press "use".${said}`
          : `401 Unauthorized (${what}): this service needs an API key; type it above.${said}`;
      case 413: {
        const limits = c
          ? ` Limits here: ${c.max_upload_mb} MB per upload, ${c.max_audio_seconds} s of audio.`
          : "";
        return `413 Too large (${what}).${said}${limits}`;
      }
      case 429: {
        const wait = err.retryAfter ? `retry in ${err.retryAfter} s` : "retry in a moment";
        return `429 Busy (${what}): the service is at capacity; ${wait}.${said}`;
      }
      case 0:
        return `The ${what} request did not complete: ${err.message}`;
      default:
        return `${err.status} (${what}):${said || " no details"}`;
    }
  }

  function reportError(err, what) {
    if (!(err instanceof ServiceError)) {
      console.error(err);
      err = new ServiceError(0, String(err && err.message ? err.message : err));
    }
    showMessage(describe(err, what));
    return err;
  }

  // ------------------------------------------------------------------ the service

  function authHeaders() {
    return state.key ? { Authorization: `Bearer ${state.key}` } : {};
  }

  async function call(path, options = {}) {
    let response;
    try {
      response = await fetch(path, { ...options, headers: { ...authHeaders(), ...options.headers } });
    } catch (err) {
      const limit = state.config ? ` (uploads over ${state.config.max_upload_mb} MB are cut off)` : "";
      throw new ServiceError(0, `the connection failed${limit}: ${err.message}`);
    }
    if (response.ok) return response;
    let message = response.statusText;
    try {
      const body = await response.json();
      message = (body.error && body.error.message) || body.detail || message;
    } catch (_) {
      // not JSON: keep the status text
    }
    throw new ServiceError(response.status, message, response.headers.get("Retry-After"));
  }

  function selectedModel() {
    return state.models.find((m) => m.id === el.model.value) || null;
  }

  /** The model the microphone streams to: the selected one if it can, else the first that can. */
  function realtimeModel() {
    const chosen = selectedModel();
    if (chosen && chosen.capabilities.includes("realtime")) return chosen;
    return state.models.find((m) => m.capabilities.includes("realtime")) || null;
  }

  function updateControls() {
    const chosen = selectedModel();
    const live = realtimeModel();
    const recording = state.rec !== null;
    el.record.disabled = !live || (recording && state.rec.stopping);
    el.file.disabled = recording || !chosen || !chosen.capabilities.includes("transcriptions");
    if (!chosen) {
      el.caps.textContent = "";
    } else {
      let hint = chosen.capabilities.join(", ");
      if (live && live !== chosen) hint += ` · the microphone streams to ${live.id}`;
      if (!live) hint += " · no streaming model: recording is off";
      el.caps.textContent = hint;
    }
  }

  async function loadConfig() {
    try {
      state.config = await (await call("demo/config.json")).json();
    } catch (err) {
      reportError(err, "page settings");
    }
    if (state.config && state.config.api_key_required) showKeyForm();
  }

  async function loadModels() {
    el.model.disabled = true;
    try {
      const body = await (await call("v1/models")).json();
      state.models = body.data;
    } catch (err) {
      state.models = [];
      el.model.replaceChildren(new Option("(no models)", ""));
      updateControls();
      reportError(err, "model list");
      setState("error");
      return;
    }
    const previous = el.model.value;
    el.model.replaceChildren(
      ...state.models.map((m) => new Option(`${m.id} (${m.role})`, m.id)),
    );
    if (state.models.some((m) => m.id === previous)) el.model.value = previous;
    el.model.disabled = false;
    clearMessage();
    updateControls();
    setState("ready");
  }

  function showKeyForm() {
    el.keyForm.hidden = false;
    el.key.value = state.key;
  }

  // ------------------------------------------------------------------ the current clip

  function resetClip() {
    clearMessage();
    state.urls.forEach((u) => URL.revokeObjectURL(u));
    state.urls = [];
    state.audio = null;
    state.words = [];
    state.current = -1;
    el.final.textContent = "";
    el.partial.textContent = "";
    el.transcript.dataset.deltas = "0";
    el.words.replaceChildren();
    el.words.dataset.current = "-1";
    el.transcript.hidden = false;
    el.player.hidden = true;
    el.player.removeAttribute("src");
    el.download.hidden = true;
    el.status.textContent = "";
    layers.reset();
    el.layersState.textContent = "";
    drawWave();
  }

  function setPlayback(blob) {
    const url = URL.createObjectURL(blob);
    state.urls.push(url);
    el.player.src = url;
    el.player.hidden = false;
    return url;
  }

  /** The transcript as words with their timings; they replace the plain text when they say
   *  the same thing (click one to play from it). */
  function showWords(words) {
    state.words = words;
    state.current = -1;
    const nodes = [];
    words.forEach((w, i) => {
      const span = document.createElement("span");
      span.textContent = w.word;
      span.dataset.index = String(i);
      span.title = `${w.start.toFixed(2)}-${w.end.toFixed(2)} s`;
      if (i > 0) nodes.push(document.createTextNode(" "));
      nodes.push(span);
    });
    el.words.replaceChildren(...nodes);
    const same = words.map((w) => w.word).join(" ") === el.final.textContent.trim();
    el.transcript.hidden = words.length > 0 && same && el.partial.textContent === "";
    drawWave();
  }

  function highlight() {
    const t = el.player.currentTime;
    const index = state.words.findIndex((w) => t >= w.start && t < w.end);
    if (index !== state.current) {
      const spans = el.words.children;
      if (state.current >= 0 && spans[state.current]) spans[state.current].classList.remove("current");
      if (index >= 0 && spans[index]) spans[index].classList.add("current");
      state.current = index;
      el.words.dataset.current = String(index);
    }
    drawWave();
  }

  function followPlayback() {
    highlight();
    if (!el.player.paused) requestAnimationFrame(followPlayback);
  }

  // ------------------------------------------------------------------ waveform with words

  function fitCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    return { ctx: canvas.getContext("2d"), width, height, ratio };
  }

  function drawWave() {
    const { ctx, width, height, ratio } = fitCanvas(el.wave);
    ctx.clearRect(0, 0, width, height);
    const audio = state.audio;
    if (!audio || audio.samples.length === 0) return;
    const labels = 22 * ratio;
    const waveHeight = height - labels;
    const mid = waveHeight / 2;
    const duration = audio.samples.length / audio.rate;
    const x = (seconds) => (seconds / duration) * width;
    // word spans, shaded, with their boundaries and labels under the waveform
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    state.words.forEach((w, i) => {
      const x0 = x(w.start);
      const x1 = Math.max(x(w.end), x0 + 1);
      ctx.fillStyle = i === state.current ? "rgba(255, 200, 0, 0.35)" : "rgba(35, 87, 198, 0.08)";
      ctx.fillRect(x0, 0, x1 - x0, waveHeight);
      ctx.fillStyle = "rgba(35, 87, 198, 0.7)";
      ctx.fillRect(x0, 0, ratio, height);
      ctx.save();
      ctx.beginPath();
      ctx.rect(x0, waveHeight, x1 - x0, labels);
      ctx.clip();
      ctx.fillStyle = "#1d1d1f";
      ctx.fillText(w.word, x0 + 2 * ratio, waveHeight + labels / 2);
      ctx.restore();
    });
    // min/max of the samples under each pixel column
    ctx.fillStyle = "#2357c6";
    const samples = audio.samples;
    const per = samples.length / width;
    for (let px = 0; px < width; px++) {
      const a = Math.floor(px * per);
      const b = Math.max(a + 1, Math.floor((px + 1) * per));
      let lo = 1;
      let hi = -1;
      for (let i = a; i < b && i < samples.length; i++) {
        const v = samples[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      if (hi < lo) continue;
      const top = mid - hi * mid;
      ctx.fillRect(px, top, 1, Math.max(1, (hi - lo) * mid));
    }
    ctx.fillStyle = "#deded9";
    ctx.fillRect(0, waveHeight, width, 1);
    if (!el.player.hidden && el.player.currentTime > 0) {
      ctx.fillStyle = "#b3261e";
      ctx.fillRect(x(el.player.currentTime), 0, Math.max(1, ratio), height);
    }
  }

  // ------------------------------------------------------------------ the layers picture

  /** Colours from dark blue through teal to yellow (a viridis-like ramp), 256 entries. */
  const RAMP = (() => {
    const stops = [
      [68, 1, 84],
      [59, 82, 139],
      [33, 145, 140],
      [94, 201, 98],
      [253, 231, 37],
    ];
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const t = (i / 255) * (stops.length - 1);
      const k = Math.min(stops.length - 2, Math.floor(t));
      const f = t - k;
      for (let c = 0; c < 3; c++) lut[i * 3 + c] = stops[k][c] + f * (stops[k + 1][c] - stops[k][c]);
    }
    return lut;
  })();

  /** Every layer's frames (T x D, growing), drawn as stacked bands: dimensions by frames. Each
   *  layer is normalised on its own: each dimension's mean over time removed, divided by the
   *  layer's standard deviation, clipped at 2.5 sigma. */
  class Layers {
    constructor(canvas) {
      this.canvas = canvas;
      this.reset();
    }

    reset() {
      this.layers = new Map();
      this.pending = false;
      this.draw();
    }

    /** Append `rows` (Float32Array, n x dim) to layer `index` from frame `start`. */
    add(index, name, dim, start, rows) {
      let layer = this.layers.get(index);
      if (!layer) {
        layer = { name, dim, frames: 0, data: new Float32Array(dim * 256), sum: new Float64Array(dim), sq: new Float64Array(dim) };
        this.layers.set(index, layer);
      }
      const n = rows.length / dim;
      const needed = (start + n) * dim;
      if (needed > layer.data.length) {
        const grown = new Float32Array(Math.max(needed, layer.data.length * 2));
        grown.set(layer.data.subarray(0, layer.frames * dim));
        layer.data = grown;
      }
      layer.data.set(rows, start * dim);
      for (let i = 0; i < rows.length; i++) {
        const d = i % dim;
        layer.sum[d] += rows[i];
        layer.sq[d] += rows[i] * rows[i];
      }
      layer.frames = Math.max(layer.frames, start + n);
      this.schedule();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.draw();
      });
    }

    frames() {
      let frames = 0;
      for (const layer of this.layers.values()) frames = Math.max(frames, layer.frames);
      return frames;
    }

    draw() {
      const { ctx, width, height, ratio } = fitCanvas(this.canvas);
      const order = [...this.layers.keys()].sort((a, b) => a - b);
      this.canvas.dataset.layers = String(order.length);
      this.canvas.dataset.frames = String(this.frames());
      ctx.fillStyle = "#111";
      ctx.fillRect(0, 0, width, height);
      const frames = this.frames();
      if (order.length === 0 || frames === 0) return;
      const gap = Math.round(2 * ratio);
      const band = Math.max(1, Math.floor((height - gap * (order.length - 1)) / order.length));
      const image = ctx.createImageData(width, height);
      const px = image.data;
      order.forEach((index, b) => {
        const layer = this.layers.get(index);
        const { dim, data } = layer;
        const n = layer.frames;
        const mean = new Float32Array(dim);
        let variance = 0;
        for (let d = 0; d < dim; d++) {
          mean[d] = layer.sum[d] / n;
          variance += Math.max(0, layer.sq[d] / n - mean[d] * mean[d]);
        }
        const scale = 1 / (Math.sqrt(variance / dim) || 1);
        const top = b * (band + gap);
        for (let y = 0; y < band; y++) {
          // high dimensions at the top of the band
          const d = Math.min(dim - 1, Math.floor(((band - 1 - y) * dim) / band));
          const row = (top + y) * width;
          for (let x = 0; x < width; x++) {
            const t = Math.floor((x * frames) / width);
            const o = (row + x) * 4;
            if (t >= n) {
              px[o + 3] = 255;
              continue;
            }
            const z = (data[t * dim + d] - mean[d]) * scale;
            const k = Math.max(0, Math.min(255, Math.round(((z + 2.5) / 5) * 255))) * 3;
            px[o] = RAMP[k];
            px[o + 1] = RAMP[k + 1];
            px[o + 2] = RAMP[k + 2];
            px[o + 3] = 255;
          }
        }
      });
      ctx.putImageData(image, 0, 0);
      ctx.font = `${11 * ratio}px system-ui, sans-serif`;
      ctx.textBaseline = "top";
      order.forEach((index, b) => {
        const layer = this.layers.get(index);
        const label = `${index}: ${layer.name} (${layer.dim})`;
        const top = b * (band + gap) + 2 * ratio;
        ctx.fillStyle = "rgba(0, 0, 0, 0.6)";
        ctx.fillRect(2 * ratio, top, ctx.measureText(label).width + 6 * ratio, 14 * ratio);
        ctx.fillStyle = "#fff";
        ctx.fillText(label, 5 * ratio, top + 1.5 * ratio);
      });
    }
  }

  const layers = new Layers(el.layers);

  function base64ToBytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function bytesToBase64(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  function float32(text) {
    const bytes = base64ToBytes(text);
    const view = new DataView(bytes.buffer);
    const out = new Float32Array(bytes.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true);
    return out;
  }

  // ------------------------------------------------------------------ upload

  async function decodeForDisplay(file) {
    try {
      const context = new OfflineAudioContext(1, 1, 44100);
      const buffer = await context.decodeAudioData(await file.arrayBuffer());
      const samples = new Float32Array(buffer.length);
      for (let c = 0; c < buffer.numberOfChannels; c++) {
        const channel = buffer.getChannelData(c);
        for (let i = 0; i < samples.length; i++) samples[i] += channel[i] / buffer.numberOfChannels;
      }
      state.audio = { samples, rate: buffer.sampleRate };
    } catch (_) {
      state.audio = null; // the browser cannot decode it; the service may still
    }
    drawWave();
  }

  async function uploadFile(file) {
    if (!file) return;
    resetClip();
    const model = selectedModel();
    const limit = state.config ? state.config.max_upload_mb * MIB : Infinity;
    if (file.size > limit) {
      showMessage(
        `413 Too large (not sent): ${file.name} is ${megabytes(file.size)}; this service takes ` +
          `uploads up to ${state.config.max_upload_mb} MB.`,
      );
      setState("error");
      return;
    }
    setState("transcribing");
    el.status.textContent = `transcribing ${file.name} with ${model.id}…`;
    setPlayback(file);
    const display = decodeForDisplay(file);
    const ok = await transcribe(file, file.name, model.id);
    await display;
    if (ok) await embed(file, file.name, model.id);
    setState(ok ? "done" : "error");
  }

  /** Transcript and word timings of `blob` from the HTTP route; false on an error. */
  async function transcribe(blob, name, modelId, keepText = false) {
    const form = new FormData();
    form.append("file", blob, name);
    form.append("model", modelId);
    form.append("response_format", "verbose_json");
    form.append("timestamp_granularities[]", "word");
    try {
      const body = await (await call("v1/audio/transcriptions", { method: "POST", body: form })).json();
      if (!keepText) el.final.textContent = body.text;
      el.transcript.dataset.offline = body.text;
      showWords(body.words || []);
      el.status.textContent = `${modelId} · ${body.duration.toFixed(2)} s of audio`;
      return true;
    } catch (err) {
      el.status.textContent = "";
      reportError(err, "transcription");
      return false;
    }
  }

  async function embed(blob, name, modelId) {
    const form = new FormData();
    form.append("file", blob, name);
    form.append("model", modelId);
    form.append("layers", "all");
    form.append("encoding_format", "base64");
    el.layersState.textContent = "computing the layers…";
    try {
      const body = await (await call("v1/audio/embeddings", { method: "POST", body: form })).json();
      layers.reset();
      for (const entry of body.data[0].layers) {
        const [, dim] = entry.shape;
        layers.add(entry.layer, entry.name, dim, 0, float32(entry.embedding));
      }
      layers.draw();
      el.layersState.textContent = `${body.data[0].num_frames} frames at ${body.data[0].frame_rate} per second`;
    } catch (err) {
      const e = err instanceof ServiceError ? err : new ServiceError(0, String(err));
      el.layersState.textContent = describe(e, "embeddings");
    }
  }

  // ------------------------------------------------------------------ microphone

  /** Linear resampler with state, for browsers that will not run the context at 16 kHz. */
  class Resampler {
    constructor(from, to) {
      this.step = from / to;
      this.pos = 0;
      this.last = 0;
    }

    push(input) {
      if (this.step === 1) return input;
      const out = [];
      while (this.pos < input.length) {
        const i = Math.floor(this.pos);
        const f = this.pos - i;
        const a = i === 0 ? this.last : input[i - 1];
        const b = input[i];
        out.push(a + (b - a) * f);
        this.pos += this.step;
      }
      this.pos -= input.length;
      this.last = input[input.length - 1];
      return Float32Array.from(out);
    }
  }

  function realtimeUrl(modelId) {
    const url = new URL("v1/realtime", document.baseURI);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("intent", "transcription");
    url.searchParams.set("model", modelId);
    return url.href;
  }

  async function openContext(stream) {
    // A 16 kHz context lets the browser resample the microphone; some browsers refuse a
    // source at another rate than the device's, and then the page resamples itself.
    try {
      const ctx = new AudioContext({ sampleRate: RATE });
      const source = ctx.createMediaStreamSource(stream);
      return { ctx, source };
    } catch (_) {
      const ctx = new AudioContext();
      return { ctx, source: ctx.createMediaStreamSource(stream) };
    }
  }

  async function startRecording() {
    const model = realtimeModel();
    if (!model) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showMessage("This browser gives no microphone to this page: it needs https (or localhost).");
      return;
    }
    resetClip();
    el.record.dataset.seconds = "0";
    const rec = {
      model: model.id,
      chunks: [],
      pending: [],
      pendingLength: 0,
      samples: 0,
      sent: 0,
      deltas: 0,
      opened: false,
      stopping: false,
      failed: null,
      transcript: null,
    };
    rec.done = new Promise((resolve) => {
      rec.finish = resolve;
    });
    state.rec = rec;
    setState("starting");
    updateControls();
    try {
      rec.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      const { ctx, source } = await openContext(rec.stream);
      rec.ctx = ctx;
      rec.resampler = new Resampler(ctx.sampleRate, RATE);
      await ctx.audioWorklet.addModule("demo/pcm-worklet.js");
      const node = new AudioWorkletNode(ctx, "pcm-capture");
      node.port.onmessage = (event) => onSamples(rec, event.data);
      source.connect(node);
      node.connect(ctx.destination); // silent: the worklet writes no output
      const protocols = ["realtime"];
      if (state.key) protocols.push(`openai-insecure-api-key.${state.key}`);
      rec.ws = new WebSocket(realtimeUrl(model.id), protocols);
    } catch (err) {
      await teardown(rec);
      state.rec = null;
      updateControls();
      setState("error");
      showMessage(`Could not start recording: ${err.message}`);
      return;
    }
    rec.ws.onopen = () => onOpen(rec);
    rec.ws.onmessage = (event) => onEvent(rec, event.data);
    rec.ws.onclose = (event) => onClose(rec, event);
    el.record.textContent = "■ stop";
    el.record.classList.add("on");
    el.recordState.textContent = `connecting to ${model.id}…`;
    setState("recording");
    updateControls();
  }

  function onOpen(rec) {
    rec.opened = true;
    const session = {
      type: "transcription",
      audio: { input: { format: { type: "audio/pcm", rate: RATE }, turn_detection: null } },
      hubert_lstm: { embedding_layers: "all" },
    };
    rec.ws.send(JSON.stringify({ type: "session.update", session }));
    el.recordState.textContent = `live: ${rec.model}`;
    flush(rec, false);
  }

  function onSamples(rec, floats) {
    if (rec.stopping) return;
    const seconds = state.config ? state.config.max_audio_seconds : 600;
    const limit = Math.floor(seconds * RATE); // the offline pass must take the recording too
    const resampled = rec.resampler.push(floats).subarray(0, limit - rec.samples);
    const pcm = new Int16Array(resampled.length);
    for (let i = 0; i < resampled.length; i++) {
      const v = Math.max(-1, Math.min(1, resampled[i]));
      pcm[i] = Math.round(v * 32767);
    }
    rec.chunks.push(pcm);
    rec.pending.push(pcm);
    rec.pendingLength += pcm.length;
    rec.samples += pcm.length;
    el.record.dataset.seconds = (rec.samples / RATE).toFixed(2);
    flush(rec, false);
    if (rec.samples >= limit) {
      showMessage(`Recording stopped at ${seconds} s, the longest clip this service takes.`, "info");
      stopRecording();
    }
    scheduleLiveWave(rec);
  }

  /** Send the waiting samples in 100 ms appends (all of them when `all`). */
  function flush(rec, all) {
    if (!rec.opened || rec.ws.readyState !== WebSocket.OPEN) return;
    while (rec.pendingLength >= CHUNK || (all && rec.pendingLength > 0)) {
      const take = Math.min(rec.pendingLength, all ? rec.pendingLength : CHUNK);
      const out = new Int16Array(take);
      let filled = 0;
      while (filled < take) {
        const head = rec.pending[0];
        const n = Math.min(head.length, take - filled);
        out.set(head.subarray(0, n), filled);
        filled += n;
        if (n === head.length) rec.pending.shift();
        else rec.pending[0] = head.subarray(n);
      }
      rec.pendingLength -= take;
      rec.sent += take;
      const audio = bytesToBase64(new Uint8Array(out.buffer));
      rec.ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio }));
    }
  }

  function onEvent(rec, text) {
    let event;
    try {
      event = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (event.type === DELTA) {
      rec.deltas += 1;
      el.partial.textContent += event.delta;
      el.transcript.dataset.deltas = String(rec.deltas);
    } else if (event.type === COMPLETED) {
      rec.transcript = event.transcript;
      el.final.textContent = event.transcript;
      el.partial.textContent = "";
      rec.finish(true);
    } else if (event.type === "hubert_lstm.embeddings") {
      const [, dim] = event.shape;
      layers.add(event.layer, event.name, dim, event.start_frame, float32(event.data));
    } else if (event.type === "error") {
      const error = event.error || {};
      if (error.code === "server_busy") {
        rec.failed = "every live stream slot is taken: try again in a little while";
      } else {
        rec.failed = `${error.code || "error"}: ${error.message || ""}`;
      }
      showMessage(`Realtime session: ${rec.failed}`);
    }
  }

  async function onClose(rec, event) {
    rec.finish(false);
    if (state.rec !== rec || rec.stopping) return;
    // closed by the service while recording
    await teardown(rec);
    state.rec = null;
    resetRecordButton();
    setState("error");
    if (!rec.opened) {
      // The upgrade was refused; the browser does not say why. Ask an HTTP route.
      try {
        await call("v1/models");
        showMessage(`The realtime session could not be opened (model ${rec.model}, close code ${event.code}).`);
      } catch (err) {
        reportError(err, "realtime session");
      }
    } else if (!rec.failed) {
      showMessage(`The realtime session ended (close code ${event.code}${event.reason ? `: ${event.reason}` : ""}).`);
    }
  }

  async function teardown(rec) {
    if (rec.stream) rec.stream.getTracks().forEach((t) => t.stop());
    if (rec.ctx && rec.ctx.state !== "closed") await rec.ctx.close();
  }

  function resetRecordButton() {
    el.record.textContent = "● record";
    el.record.classList.remove("on");
    el.recordState.textContent = "";
    updateControls();
  }

  async function stopRecording() {
    const rec = state.rec;
    if (!rec || rec.stopping) return;
    rec.stopping = true;
    updateControls();
    setState("finishing");
    el.recordState.textContent = "finishing…";
    await teardown(rec);
    flush(rec, true);
    let completed = false;
    if (rec.sent > 0 && rec.ws.readyState === WebSocket.OPEN) {
      rec.ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
      const timeout = new Promise((resolve) => setTimeout(() => resolve(false), 30000));
      completed = await Promise.race([rec.done, timeout]);
    }
    if (rec.ws.readyState === WebSocket.OPEN) rec.ws.close(1000);
    state.rec = null;
    resetRecordButton();
    const wav = toWav(rec.chunks, RATE);
    const url = setPlayback(wav);
    el.download.href = url;
    el.download.hidden = false;
    state.audio = { samples: int16ToFloat(rec.chunks), rate: RATE };
    drawWave();
    if (!completed) {
      if (!rec.failed) showMessage("The realtime session gave no final transcript.");
      setState("error");
      return;
    }
    el.status.textContent = `live transcript from ${rec.model}; word timings from an offline pass…`;
    setState("aligning");
    // Word timings: the same audio, offline, through the HTTP route (the same model).
    await transcribe(wav, "recording.wav", rec.model, true);
    setState("done");
  }

  let liveWavePending = false;
  function scheduleLiveWave(rec) {
    if (liveWavePending) return;
    liveWavePending = true;
    setTimeout(() => {
      liveWavePending = false;
      if (state.rec !== rec) return;
      state.audio = { samples: int16ToFloat(rec.chunks), rate: RATE };
      if (rec.opened) el.recordState.textContent = `live: ${rec.model} · ${el.record.dataset.seconds} s`;
      drawWave();
    }, 200);
  }

  function int16ToFloat(chunks) {
    const length = chunks.reduce((n, c) => n + c.length, 0);
    const out = new Float32Array(length);
    let offset = 0;
    for (const chunk of chunks) {
      for (let i = 0; i < chunk.length; i++) out[offset + i] = chunk[i] / 32768;
      offset += chunk.length;
    }
    return out;
  }

  /** The exact PCM16 the page streamed, as a WAV file. */
  function toWav(chunks, rate) {
    const length = chunks.reduce((n, c) => n + c.length, 0);
    const buffer = new ArrayBuffer(44 + length * 2);
    const view = new DataView(buffer);
    const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
    text(0, "RIFF");
    view.setUint32(4, 36 + length * 2, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true);
    view.setUint16(20, 1, true); // PCM
    view.setUint16(22, 1, true); // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true);
    view.setUint16(32, 2, true);
    view.setUint16(34, 16, true);
    text(36, "data");
    view.setUint32(40, length * 2, true);
    let offset = 44;
    for (const chunk of chunks) {
      for (let i = 0; i < chunk.length; i++, offset += 2) view.setInt16(offset, chunk[i], true);
    }
    return new Blob([buffer], { type: "audio/wav" });
  }

  // ------------------------------------------------------------------ wiring

  el.model.addEventListener("change", updateControls);
  el.record.addEventListener("click", () => (state.rec ? stopRecording() : startRecording()));
  el.file.addEventListener("change", () => uploadFile(el.file.files[0]));
  el.player.addEventListener("play", followPlayback);
  el.player.addEventListener("timeupdate", highlight);
  el.player.addEventListener("seeked", highlight);
  el.words.addEventListener("click", (event) => {
    const index = event.target.dataset && event.target.dataset.index;
    if (index === undefined) return;
    el.player.currentTime = state.words[Number(index)].start;
    el.player.play().catch(() => {});
  });
  el.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = el.key.value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORE, state.key);
    else sessionStorage.removeItem(KEY_STORE);
    loadModels();
  });
  el.keyForget.addEventListener("click", () => {
    state.key = "";
    el.key.value = "";
    sessionStorage.removeItem(KEY_STORE);
  });
  window.addEventListener("resize", () => {
    drawWave();
    layers.draw();
  });

  setState("loading");
  resetClip();
  loadConfig().then(loadModels);
})();
