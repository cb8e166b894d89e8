// The ganforge demo page: plain JS, no build step, no third-party code.
// It talks only to the service that served it, through relative URLs ("../models"),
// so it also works when a proxy mounts the service under a path prefix.
"use strict";

const TOKEN_KEY = "ganforge.token";
const MAX_SEED = (1n << 63n) - 1n;
const $ = (id) => document.getElementById(id);

const state = {
  models: [],
  selected: {},     // endpoint -> model name last chosen
  file: null,       // the image to send to /translate or /upscale
  inputShown: false, // the browser could decode the input (garbage bytes are still sent)
  inputUrl: null,   // object URLs, revoked when replaced
  outputUrl: null,
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
  if (model.metrics) {
    add("metrics", Object.entries(model.metrics)
      .filter(([, v]) => typeof v === "number")
      .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toPrecision(4)}`).join(", "));
  }
  const training = model.training || {};
  if (training.dataset) add("trained on", `${training.dataset.name || "?"}` +
    (training.steps ? `, ${training.steps} steps` : ""));
  card.replaceChildren(el("h2", {}, model.name), el("dl", {}, ...rows));
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
    loadModels();
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
  setupDrop();
  loadModels();
}

init();
