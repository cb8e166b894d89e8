// The ganforge demo page: plain JS, no build step, no third-party code.
// It talks only to the service that served it, through relative URLs ("../models"),
// so it also works when a proxy mounts the service under a path prefix.
"use strict";

const TOKEN_KEY = "ganforge.token";
const JOB_KEY = "ganforge.job";  // the running job (translate, upscale), found again after a reload
const JOB_POLL_MS = 400;
const MAX_SEED = (1n << 63n) - 1n;
const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  selected: {},     // endpoint -> model name last chosen
  file: null,       // the image to send to /translate or /upscale
  inputShown: false, // the browser could decode the input (garbage bytes are still sent)
  inputUrl: null,   // object URLs, revoked when replaced
  outputUrl: null,
  job: null,        // {id, endpoint, model, submitted, curl} while a job runs
};

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function setStatus(text) { $("status").textContent = text; }

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() {
  $("error").textContent = "";
  $("error").hidden = true;
}

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

// The service answers every error as {"error": "...", "status": N}.
async function errorMessage(resp) {
  const text = await resp.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string") return `Error ${resp.status}: ${body.error}`;
  } catch (_) { /* not JSON: show the raw text below */ }
  return `Error ${resp.status}: ${text.slice(0, 300) || resp.statusText}`;
}

// Seeds go up to 2^63-1, beyond JS's exact integers: they are BigInts here and
// written into the JSON as their digits.
function toJson(body) {
  return JSON.stringify(body, (_, v) => (typeof v === "bigint" ? `\u0000${v}` : v))
    .replace(/"\\u0000(-?\d+)"/g, "$1");
}

function parseSeed(text, what) {
  const s = text.trim();
  if (s === "") return null;
  if (!/^-?\d+$/.test(s)) throw new Error(`${what} must be a whole number (0 to ${MAX_SEED})`);
  return BigInt(s);
}

function randomSeed() {
  return String(crypto.getRandomValues(new Uint32Array(1))[0]);
}

function currentEndpoint() {
  return document.querySelector('input[name="endpoint"]:checked').value;
}

function currentModel() {
  return state.models.find((m) => m.name === $("model").value) || null;
}

function extensionOf(mediaType) {
  return { "image/jpeg": "jpg", "image/webp": "webp", "image/png": "png" }[mediaType] || "bin";
}

function formatBytes(n) {
  return n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(2)} MiB`;
}

function shellQuote(s) { return `'${String(s).replace(/'/g, "'\\''")}'`; }

// ------------------------------------------------------------------ models and the card

async function loadModels() {
  setStatus("Loading the models…");
  let resp;
  try {
    resp = await fetch("../models", { headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    showError(`Could not reach the service: ${err.message}`);
    return;
  }
  if (!resp.ok) {
    state.models = [];
    fillModels();
    showError(await errorMessage(resp));
    if (resp.status === 401) {
      setStatus("This service needs a bearer token: enter it at the top and press “Use token”.");
      $("token").focus();
    } else {
      setStatus("Could not list the models.");
    }
    return;
  }
  const data = await resp.json();
  state.models = Array.isArray(data.models) ? data.models : [];
  $("device").textContent = `device: ${data.device} · ${state.models.length} model(s)`;
  clearError();
  fillModels();
  setStatus(state.models.length ? "Pick a model and press Run." : "This service has no models (models/ is empty).");
}

function fillModels() {
  const endpoint = currentEndpoint();
  const select = $("model");
  const models = state.models.filter((m) => m.endpoint === endpoint);
  select.replaceChildren(...models.map((m) =>
    el("option", { value: m.name }, m.status === "ready" ? m.name : `${m.name} (${m.status})`)));
  if (!models.length) select.append(el("option", { value: "" }, `(no ${endpoint} model served)`));
  const keep = state.selected[endpoint];
  if (keep && models.some((m) => m.name === keep)) select.value = keep;
  $("run").disabled = !models.length;
  showEndpointFields(endpoint);
  modelChanged();
}

function showEndpointFields(endpoint) {
  $("generate-fields").hidden = endpoint !== "generate";
  $("image-fields").hidden = endpoint === "generate";
  $("match-field").hidden = endpoint !== "upscale";
  $("input-img").hidden = endpoint === "generate" || !state.inputShown;
  $("input-meta").hidden = endpoint === "generate";
  $("request").hidden = endpoint !== "generate" || !$("request").textContent;
  $("input-figure").querySelector("figcaption").firstChild.textContent =
    endpoint === "generate" ? "Request " : "Input ";
}

function modelChanged() {
  const model = currentModel();
  if (model) state.selected[model.endpoint] = model.name;
  renderCard(model);
  // class list (generate)
  const label = $("label");
  const classes = model && Array.isArray(model.classes) ? model.classes : [];
  label.replaceChildren(el("option", { value: "" }, classes.length ? "(a random class per image)" : "(unconditional)"),
    ...classes.map((name, i) => el("option", { value: String(i) }, `${i}: ${name}`)));
  label.disabled = !classes.length;
  // directions (translate)
  const directions = model && Array.isArray(model.directions) ? model.directions : [];
  const domains = (model && model.domains) || {};
  $("direction").replaceChildren(...directions.map((d) => {
    const [from, to] = d === "b2a" ? [domains.b, domains.a] : [domains.a, domains.b];
    return el("option", { value: d }, from && to ? `${d}: ${from} → ${to}` : d);
  }));
  $("direction-field").hidden = directions.length < 2 || currentEndpoint() !== "translate";
}

function renderCard(model) {
  const card = $("card");
  if (!model) {
    card.replaceChildren();
    return;
  }
  const rows = [];
  const add = (name, value) => {
    if (value !== undefined && value !== null && value !== "") rows.push(el("dt", {}, name), el("dd", {}, String(value)));
  };
  const status = el("dd", {}, el("span", { class: `badge ${model.status}` }, model.status),
    model.reason ? ` ${model.reason}` : "");
  rows.push(el("dt", {}, "status"), status);
  add("description", model.description);
  add("family", model.family);
  add("provider", model.provider);
  add("version", model.version);
  if (Array.isArray(model.classes)) add("classes", model.classes.join(", "));
  if (model.latent_dim) add("latent size", model.latent_dim);
  if (model.domains) add("domains", Object.entries(model.domains).map(([k, v]) => `${k}: ${v}`).join(", "));
  if (model.directions) add("directions", model.directions.join(", "));
  const input = model.input || {};
  const output = model.output || {};
  if (input.channels) add("input", `${input.channels} channel(s)` +
    (input.native_size ? `, runs at ${input.native_size.join("×")}` : "") +
    (input.multiple_of > 1 ? `, padded to a multiple of ${input.multiple_of}` : ""));
  if (output.size) add("output size", output.size.join("×"));
  if (output.scale && output.scale !== 1) add("scale", `×${output.scale}`);
  const metrics = model.metrics || {};
  if (metrics.heldout) add("held-out", figures(metrics.heldout));
  const parity = typeof metrics.parity_max_abs === "number" ? metrics.parity_max_abs : null;
  if (parity !== null) add("export parity", `max abs error ${parity.toPrecision(3)} (torch vs ONNX)`);
  else if (Object.keys(metrics).length) add("metrics", figures(metrics));
  const training = model.training || {};
  if (training.dataset) add("trained on", `${training.dataset.name || "?"}` +
    (training.steps ? `, ${training.steps} steps` : ""));
  card.replaceChildren(el("h2", {}, model.name), el("dl", {}, ...rows));
}

// The card's numbers, one level of nesting deep: {"psnr_y": 38.5, "anchors": {"espcn": {"psnr_y": 36.7}}}
// -> "psnr_y 38.53, espcn psnr_y 36.71".
const BOOKKEEPING = new Set(["seed", "border", "samples_per_class"]);

// The card's held-out figures, one short line: top-level numbers, a per-class table as its lowest
// entry ("class_match_per_class: lowest Shirt 0.8700"), peers (anchors) by their PSNR-Y.
function figures(values) {
  const shown = (v) => (Number.isInteger(v) ? String(v) : v.toPrecision(4));
  const parts = [];
  for (const [key, value] of Object.entries(values)) {
    if (BOOKKEEPING.has(key)) continue;
    if (typeof value === "number") parts.push(`${key} ${shown(value)}`);
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      const entries = Object.entries(value);
      if (entries.length && entries.every(([, v]) => typeof v === "number") && entries.length > 3) {
        const [name, low] = entries.reduce((a, b) => (b[1] < a[1] ? b : a));
        parts.push(`${key}: lowest ${name} ${shown(low)}`);
        continue;
      }
      for (const [inner, v] of entries) {
        if (v && typeof v === "object" && typeof v.psnr_y === "number") parts.push(`${inner} psnr_y ${shown(v.psnr_y)}`);
      }
    }
  }
  return parts.join(", ");
}

// ------------------------------------------------------------------ the input image

function setFile(file) {
  state.file = file;
  if (state.inputUrl) URL.revokeObjectURL(state.inputUrl);
  state.inputUrl = file ? URL.createObjectURL(file) : null;
  state.inputShown = false;
  const img = $("input-img");
  img.hidden = true;
  $("input-meta").textContent = file ? `${file.name}, ${formatBytes(file.size)}` : "";
  if (!file) return;
  img.onload = () => {
    state.inputShown = true;
    img.hidden = currentEndpoint() === "generate";
    $("input-meta").textContent = `${img.naturalWidth}×${img.naturalHeight}, ${file.name}, ${formatBytes(file.size)}`;
    applyZoom();
  };
  img.onerror = () => {
    $("input-meta").textContent = `${file.name}, ${formatBytes(file.size)} (the browser cannot show it)`;
  };
  img.src = state.inputUrl;
}

function setupDrop() {
  const zone = $("drop");
  zone.addEventListener("dragover", (ev) => {
    ev.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    const files = ev.dataTransfer && ev.dataTransfer.files;
    if (!files || !files.length) return;
    try { $("file").files = files; } catch (_) { /* read-only in some browsers: state.file is what is sent */ }
    setFile(files[0]);
  });
  $("file").addEventListener("change", () => setFile($("file").files[0] || null));
}

// ------------------------------------------------------------------ zoom

function applyZoom() {
  const zoom = Number($("zoom").value) || 1;
  const out = $("output-img");
  const inp = $("input-img");
  if (out.naturalWidth) out.style.width = `${out.naturalWidth * zoom}px`;
  if (inp.naturalWidth) {
    const match = currentEndpoint() === "upscale" && $("match").checked && out.naturalWidth;
    inp.style.width = `${(match ? out.naturalWidth : inp.naturalWidth) * zoom}px`;
  }
}

// ------------------------------------------------------------------ requests

function generateRequest(model) {
  const body = { model: model.name, format: $("format").value };
  if ($("label").value !== "") body.label = Number($("label").value);
  const seed = parseSeed($("seed").value, "seed");
  if ($("interpolate").checked) {
    const seedB = parseSeed($("seed-b").value, "seed B");
    if (seed === null || seedB === null) throw new Error("an interpolation strip needs both seeds");
    body.interpolate = { seeds: [seed, seedB], steps: Number($("steps").value) };
  } else {
    body.n = Number($("n").value);
    if (seed !== null) body.seed = seed;
  }
  const json = toJson(body);
  return {
    init: { method: "POST", headers: { "Content-Type": "application/json" }, body: json },
    shown: json,
    curl: ["-H 'Content-Type: application/json'", `-d ${shellQuote(json)}`],
  };
}

function imageRequest(endpoint, model) {
  if (!state.file) throw new Error("choose an image first (or drop one on the image field)");
  const form = new FormData();
  form.append("image", state.file, state.file.name || "image");
  form.append("model", model.name);
  form.append("format", $("format").value);
  const curl = [`-F image=@${shellQuote(state.file.name || "image")}`, `-F model=${shellQuote(model.name)}`];
  if (endpoint === "translate" && !$("direction-field").hidden) {
    form.append("direction", $("direction").value);
    curl.push(`-F direction=${$("direction").value}`);
  }
  curl.push(`-F format=${$("format").value}`);
  return { init: { method: "POST", body: form }, shown: null, curl };
}

async function run(ev) {
  ev.preventDefault();
  clearError();
  const endpoint = currentEndpoint();
  const model = currentModel();
  if (!model) {
    showError(`No ${endpoint} model is served.`);
    return;
  }
  let request;
  try {
    request = endpoint === "generate" ? generateRequest(model) : imageRequest(endpoint, model);
  } catch (err) {
    showError(err.message);
    return;
  }
  if (request.shown !== null) {
    $("request").textContent = `POST /${endpoint}\n${request.shown}`;
    $("request").hidden = false;
  }
  request.init.headers = { ...(request.init.headers || {}), ...authHeaders() };
  clearOutput();
  setBusy(true);
  setStatus(`Running /${endpoint} with ${model.name}…`);
  const started = performance.now();
  if (endpoint !== "generate") {
    await runAsJob(endpoint, model, request);
    return;
  }
  try {
    const resp = await fetch(`../${endpoint}`, request.init);
    if (!resp.ok) {
      showError(await errorMessage(resp));
      setStatus(`/${endpoint} refused the request after ${Math.round(performance.now() - started)} ms.`);
      return;
    }
    const blob = await resp.blob();
    const ms = performance.now() - started;
    await showOutput(endpoint, model, resp, blob, ms, request.curl);
  } catch (err) {
    showError(`The request failed: ${err.message}`);
    setStatus("");
  } finally {
    setBusy(false);
  }
}

// ------------------------------------------------------------------ jobs (translate, upscale)

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function runAsJob(endpoint, model, request) {
  request.init.headers = { ...request.init.headers, Prefer: "respond-async" };
  const submitted = Date.now();
  try {
    const resp = await fetch(`../${endpoint}`, request.init);
    if (resp.status !== 202) {
      showError(await errorMessage(resp));
      setStatus(`/${endpoint} refused the request after ${Date.now() - submitted} ms.`);
      setBusy(false);
      return;
    }
    const job = await resp.json();
    const saved = { id: job.id, endpoint, model: model.name, submitted, curl: request.curl };
    localStorage.setItem(JOB_KEY, JSON.stringify(saved));
    await followJob(saved, job);
  } catch (err) {
    showError(`The request failed: ${err.message}`);
    setStatus("");
    setBusy(false);
  }
}

function showJob(job) {
  $("job").hidden = false;
  $("job-progress").value = job.progress;
  const total = job.total === null ? "?" : job.total;
  const eta = job.eta_s === null || job.status !== "running" ? "" : ` · about ${Math.ceil(job.eta_s)} s left`;
  $("job-text").textContent = `${job.status} · ${Math.round(job.progress * 100)}% · ${job.done}/${total} ${job.unit}${eta}`;
  $("job-cancel").disabled = job.status !== "queued" && job.status !== "running";
}

function forgetJob() {
  state.job = null;
  localStorage.removeItem(JOB_KEY);
  $("job").hidden = true;
}

async function followJob(saved, first) {
  state.job = saved;
  setBusy(true);
  setStatus(`Running /${saved.endpoint} with ${saved.model} as job ${saved.id}…`);
  let job = first;
  while (!["succeeded", "failed", "canceled"].includes(job.status)) {
    showJob(job);
    await sleep(JOB_POLL_MS);
    const resp = await fetch(`../jobs/${encodeURIComponent(saved.id)}`, { headers: authHeaders(), cache: "no-store" });
    if (!resp.ok) {
      showError(await errorMessage(resp));
      setStatus(`Lost job ${saved.id}.`);
      if (resp.status === 404 || resp.status === 410) forgetJob();
      setBusy(false);
      return;
    }
    job = await resp.json();
  }
  showJob(job);
  forgetJob();
  setBusy(false);
  if (job.status === "failed") {
    showError(`Error ${job.error.status}: ${job.error.error}`);
    setStatus(`/${saved.endpoint} refused the request (job ${saved.id} failed).`);
    return;
  }
  if (job.status === "canceled") {
    setStatus(`Canceled job ${saved.id}.`);
    return;
  }
  const resp = await fetch(`../jobs/${encodeURIComponent(saved.id)}/result`, { headers: authHeaders() });
  if (!resp.ok) {
    showError(await errorMessage(resp));
    return;
  }
  const blob = await resp.blob();
  const model = state.models.find((m) => m.name === saved.model) || { name: saved.model };
  await showOutput(saved.endpoint, model, resp, blob, Date.now() - saved.submitted, saved.curl);
}

async function cancelJob() {
  if (!state.job) return;
  $("job-cancel").disabled = true;
  const resp = await fetch(`../jobs/${encodeURIComponent(state.job.id)}/cancel`,
    { method: "POST", headers: authHeaders() });
  if (!resp.ok) showError(await errorMessage(resp));
}

// After a reload: the job this page started, if it is still known.
async function resumeJob() {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(JOB_KEY) || "null"); } catch (_) { /* ignore */ }
  if (!saved || !saved.id || state.job) return;
  const resp = await fetch(`../jobs/${encodeURIComponent(saved.id)}`, { headers: authHeaders(), cache: "no-store" });
  if (!resp.ok) {
    if (resp.status === 404 || resp.status === 410) localStorage.removeItem(JOB_KEY);
    return;
  }
  const radio = document.querySelector(`input[name="endpoint"][value="${saved.endpoint}"]`);
  if (radio) {
    radio.checked = true;
    state.selected[saved.endpoint] = saved.model;
    fillModels();
  }
  clearOutput();
  try {
    await followJob(saved, await resp.json());
  } catch (err) {  // the service went away while we followed it: a later reload tries again
    showError(`Lost touch with job ${saved.id}: ${err.message}`);
    setBusy(false);
  }
}

function setBusy(busy) {
  $("run").disabled = busy;
  document.querySelector(".result").setAttribute("aria-busy", String(busy));
}

function clearOutput() {
  if (state.outputUrl) URL.revokeObjectURL(state.outputUrl);
  state.outputUrl = null;
  const img = $("output-img");
  img.removeAttribute("src");
  img.hidden = true;
  $("output-meta").textContent = "";
  $("meta").hidden = true;
  $("download").hidden = true;
}

async function showOutput(endpoint, model, resp, blob, ms, curlArgs) {
  clearOutput();
  state.outputUrl = URL.createObjectURL(blob);
  const img = $("output-img");
  img.src = state.outputUrl;
  await img.decode();
  img.hidden = false;
  const size = `${img.naturalWidth}×${img.naturalHeight}`;
  const mediaType = blob.type || resp.headers.get("Content-Type") || "";
  $("output-meta").textContent = `${size}, ${formatBytes(blob.size)}`;

  const seed = resp.headers.get("X-Seed");
  if (endpoint === "generate" && seed && !$("interpolate").checked && $("seed").value.trim() === "") {
    $("seed").value = seed;  // the service drew it: keep it, so Run again repeats the image
  }
  const rows = [];
  const add = (name, value) => { if (value) rows.push(el("dt", {}, name), el("dd", {}, value)); };
  add("X-Model", resp.headers.get("X-Model"));
  add("X-Seed", seed);
  const labels = resp.headers.get("X-Labels");
  if (labels) {
    const classes = Array.isArray(model.classes) ? model.classes : [];
    const names = [...new Set(labels.split(","))].map((i) => (classes[Number(i)] ? `${i} ${classes[Number(i)]}` : i));
    add("X-Labels", `${labels}  (${names.join(", ")})`);
  }
  add("output", `${size} ${mediaType}, ${formatBytes(blob.size)}`);
  add("time", `${Math.round(ms)} ms (request to last byte)`);
  const base = new URL("..", document.baseURI).href.replace(/\/$/, "");
  const auth = Object.keys(authHeaders()).length ? ' -H "Authorization: Bearer $GANFORGE_AUTH_TOKEN"' : "";
  add("curl", `curl -s -X POST ${base}/${endpoint}${auth} ${curlArgs.join(" ")} -o out.${extensionOf(mediaType)} -D -`);
  $("meta").replaceChildren(...rows);
  $("meta").hidden = false;

  const link = $("download");
  const seedPart = seed ? `-seed${seed.replace(",", "-")}` : "";
  link.href = state.outputUrl;
  link.download = `ganforge-${endpoint}-${model.name}${seedPart}.${extensionOf(mediaType)}`;
  link.hidden = false;
  applyZoom();
  setStatus(`Done: /${endpoint} in ${Math.round(ms)} ms.`);
}

// ------------------------------------------------------------------ wiring

function init() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  const applyToken = () => {
    const token = $("token").value.trim();
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    loadModels().then(resumeJob);
  };
  $("token-apply").addEventListener("click", applyToken);
  $("token").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") {
      ev.preventDefault();
      applyToken();
    }
  });
  for (const radio of document.querySelectorAll('input[name="endpoint"]')) {
    radio.addEventListener("change", () => {
      clearError();
      fillModels();
    });
  }
  $("model").addEventListener("change", modelChanged);
  $("seed").value = randomSeed();
  $("seed-b").value = randomSeed();
  $("seed-new").addEventListener("click", () => { $("seed").value = randomSeed(); });
  $("seed-b-new").addEventListener("click", () => { $("seed-b").value = randomSeed(); });
  $("interpolate").addEventListener("change", () => {
    $("interp-fields").hidden = !$("interpolate").checked;
    $("n").disabled = $("interpolate").checked;
  });
  $("zoom").addEventListener("change", applyZoom);
  $("match").addEventListener("change", applyZoom);
  $("controls").addEventListener("submit", run);
  $("job-cancel").addEventListener("click", cancelJob);
  setupDrop();
  loadModels().then(resumeJob);
}

init();
