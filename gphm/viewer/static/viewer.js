// gphm viewer page: controls <-> URL query <-> GET /render.png.
//
// The whole view lives in the query string (identity, expression, their blends, yaw,
// pitch, zoom, size), so a link reproduces it. At most one render request is in flight;
// changes made meanwhile collapse into one follow-up request (the server also drops a
// stream's stale requests), so dragging never queues a backlog of renders.
//
// For tests and benchmarks the page records on <body>: data-state (loading | ready |
// error), data-renders (pictures shown), data-first-picture-ms (time from navigation
// start to the first picture) and data-query (the query of the picture shown).
//
// While the camera is dragged the page draws the Gaussians itself (splat.js, WebGL2;
// "splat preview" on, the default where WebGL2 works) or, without the preview, asks for
// half the output size (still the full model output, splat + upsampler, at a quarter of
// the pixels); the full-size picture follows when the drag ends. data-preview on <body>:
// off | loading | ready | unavailable; data-preview-draws counts preview frames.
"use strict";

const KEYS = ["identity", "identity_b", "identity_mix", "expression", "expression_b",
              "expression_mix", "yaw", "pitch", "zoom", "size"];
const $ = (id) => document.getElementById(id);
const stream = Math.random().toString(36).slice(2, 12);
let options = null;
let state = {};
let inFlight = false;
let pending = false;
let shownUrl = null;
let renders = 0;
let dragging = false;
let preview = null;  // SplatPreview, when WebGL2 works and the model has Gaussians
let previewKey = null;  // codes query of the Gaussians loaded into it
let previewWanted = null;  // codes query last asked for
let previewDraws = 0;
const CODE_KEYS = ["identity", "identity_b", "identity_mix", "expression", "expression_b",
                   "expression_mix"];

function option(select, value, text, group) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  (group || select).appendChild(o);
}

function fillNames(select, subjects, avatars, none) {
  if (none) option(select, "", "—");
  for (const [label, names] of [["training subjects", subjects], ["fitted avatars", avatars]]) {
    if (!names.length) continue;
    const g = document.createElement("optgroup");
    g.label = label;
    names.forEach((n) => option(select, n, n, g));
    select.appendChild(g);
  }
}

function sizes(opt) {
  const out = new Set([opt.size]);
  for (const s of [128, 256, 512, 1024]) {
    if (s % opt.factor === 0 && s >= 8 * opt.factor && s <= opt.max_size) out.add(s);
  }
  return [...out].sort((a, b) => a - b);
}

function wrapYaw(y) {
  return ((((y + 180) % 360) + 360) % 360) - 180;
}

function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

// Half the output size, a multiple of the upsampling factor, not below the minimum.
function previewSize(size) {
  const f = options.factor;
  return Math.max(8 * f, Math.round(size / 2 / f) * f);
}

// The query of the current state, defaults left out (short links); `preview`: the
// reduced size used while dragging.
function query(preview) {
  const q = new URLSearchParams();
  for (const k of KEYS) {
    let v = state[k];
    if (k === "size" && preview) v = previewSize(Number(v));
    if (v === undefined || v === null || v === "") continue;
    if (k.endsWith("_mix") && Number(v) === 0) continue;
    if (k.endsWith("_b") && !Number(state[k.replace("_b", "_mix")])) continue;
    if ((k === "yaw" || k === "pitch") && Number(v) === 0) continue;
    if (k === "zoom" && Number(v) === 1) continue;
    if (k === "size" && Number(v) === options.size && !preview) continue;
    q.set(k, typeof v === "number" ? String(Math.round(v * 1000) / 1000) : v);
  }
  return q.toString();
}

// The part of the query the Gaussians depend on (not the camera or the size).
function codesQuery() {
  const q = new URLSearchParams(query(false));
  for (const k of [...q.keys()]) if (!CODE_KEYS.includes(k)) q.delete(k);
  return q.toString();
}

function previewOn() {
  return preview !== null && $("splat").checked;
}

async function loadGaussians() {
  const key = codesQuery();
  if (!previewOn() || key === previewKey || key === previewWanted) return;
  previewWanted = key;
  document.body.dataset.preview = "loading";
  try {
    const resp = await fetch("/gaussians.bin?" + key);
    if (resp.status !== 200) throw new Error(`HTTP ${resp.status}`);
    const rows = new Float32Array(await resp.arrayBuffer());
    if (previewWanted !== key) return;  // the codes changed meanwhile: a newer load runs
    preview.setGaussians(rows, Number(resp.headers.get("X-Gaussians")));
    previewKey = key;
    document.body.dataset.preview = "ready";
  } catch (err) {
    previewWanted = null;
    document.body.dataset.preview = "off";
    showStatus(`splat preview: ${err}`);
  }
}

function drawPreview() {
  if (!previewOn() || previewKey !== codesQuery()) return false;
  const c = $("preview");
  preview.draw(window.gphmSplat.orbitCamera(state.yaw, state.pitch, state.zoom, c.width,
                                            options.distance));
  c.hidden = false;
  previewDraws += 1;
  document.body.dataset.previewDraws = String(previewDraws);
  return true;
}

function toControls() {
  for (const k of KEYS) {
    const el = $(k);
    if (el && state[k] !== undefined && document.activeElement !== el) el.value = state[k];
  }
  $("identity_mix_out").textContent = Number(state.identity_mix).toFixed(2);
  $("expression_mix_out").textContent = Number(state.expression_mix).toFixed(2);
}

function fromControls() {
  for (const k of KEYS) {
    const el = $(k);
    if (!el) continue;
    state[k] = el.type === "range" || el.type === "number" ? Number(el.value) : el.value;
  }
  state.size = Number(state.size);
  // Moving a blend slider with no B chosen blends towards the next name in the list.
  for (const k of ["identity", "expression"]) {
    if (state[k + "_mix"] && !state[k + "_b"]) {
      const names = [...$(k).options].map((o) => o.value);
      state[k + "_b"] = names[(names.indexOf(state[k]) + 1) % names.length];
    }
  }
}

function showStatus(text) {
  $("status").textContent = text || "";
}

async function render() {
  if (dragging && drawPreview()) return;  // the server's picture follows the drag
  if (inFlight) {
    pending = true;
    return;
  }
  inFlight = true;
  const q = query(false);
  const sent = dragging ? query(true) : q;
  history.replaceState(null, "", q ? "?" + q : location.pathname);
  $("png").href = "/render.png" + (q ? "?" + q : "");
  $("busy").hidden = false;
  try {
    const resp = await fetch("/render.png?" + sent + (sent ? "&" : "") + "stream=" + stream);
    if (resp.status === 200) {
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      await new Promise((resolve) => {
        const img = $("view");
        img.onload = img.onerror = resolve;
        img.src = url;
      });
      if (shownUrl) URL.revokeObjectURL(shownUrl);
      shownUrl = url;
      renders += 1;
      const b = document.body.dataset;
      if (!b.firstPictureMs) b.firstPictureMs = String(Math.round(performance.now()));
      b.renders = String(renders);
      b.query = sent;
      b.state = "ready";
      if (!dragging) $("preview").hidden = true;
      loadGaussians();
      // the server's render time (page clocks are virtual in headless screenshots)
      $("timing").textContent = `server render ${resp.headers.get("X-Render-Ms") || "?"} ms`;
      showStatus("");
    } else if (resp.status !== 204) {  // 204: superseded by a newer request
      let msg = `HTTP ${resp.status}`;
      try {
        msg = (await resp.json()).error || msg;
      } catch (e) { /* not JSON */ }
      showStatus(msg);
      document.body.dataset.state = "error";
    }
  } catch (err) {
    showStatus(`server unreachable: ${err}`);
    document.body.dataset.state = "error";
  } finally {
    inFlight = false;
    $("busy").hidden = true;
  }
  if (pending) {
    pending = false;
    render();
  }
}

function changed() {
  fromControls();
  toControls();
  render();
}

function setupCamera() {
  const stage = $("stage");
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    drag = { x: e.clientX, y: e.clientY, yaw: state.yaw, pitch: state.pitch };
    dragging = true;
    stage.setPointerCapture(e.pointerId);
    stage.classList.add("dragging");
  });
  stage.addEventListener("pointermove", (e) => {
    if (!drag) return;
    // Half a degree per pixel; dragging right turns the head to its left (camera yaw +).
    state.yaw = wrapYaw(drag.yaw - 0.5 * (e.clientX - drag.x));
    state.pitch = clamp(drag.pitch + 0.5 * (e.clientY - drag.y), -options.pitch_limit,
                        options.pitch_limit);
    toControls();
    render();
  });
  const end = () => {
    if (!drag) return;
    drag = null;
    dragging = false;
    stage.classList.remove("dragging");
    render();  // the full size at the final position
  };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [lo, hi] = options.zoom_range;
    state.zoom = clamp(state.zoom * Math.exp(-0.001 * e.deltaY), lo, hi);
    toControls();
    render();
  }, { passive: false });
  const reset = () => {
    Object.assign(state, { yaw: 0, pitch: 0, zoom: 1 });
    toControls();
    render();
  };
  stage.addEventListener("dblclick", reset);
  // Keyboard, with the stage focused: arrows orbit 5°, +/- zoom, 0 resets.
  stage.tabIndex = 0;
  stage.addEventListener("keydown", (e) => {
    const [lo, hi] = options.zoom_range;
    const lim = options.pitch_limit;
    const moves = {
      ArrowLeft: () => { state.yaw = wrapYaw(state.yaw + 5); },
      ArrowRight: () => { state.yaw = wrapYaw(state.yaw - 5); },
      ArrowUp: () => { state.pitch = clamp(state.pitch - 5, -lim, lim); },
      ArrowDown: () => { state.pitch = clamp(state.pitch + 5, -lim, lim); },
      "+": () => { state.zoom = clamp(state.zoom * 1.1, lo, hi); },
      "=": () => { state.zoom = clamp(state.zoom * 1.1, lo, hi); },
      "-": () => { state.zoom = clamp(state.zoom / 1.1, lo, hi); },
      0: () => Object.assign(state, { yaw: 0, pitch: 0, zoom: 1 }),
    };
    if (!(e.key in moves)) return;
    e.preventDefault();
    moves[e.key]();
    toControls();
    render();
  });
  $("reset").addEventListener("click", reset);
}

async function main() {
  try {
    options = await (await fetch("/api/options")).json();
  } catch (err) {
    showStatus(`cannot read /api/options: ${err}`);
    document.body.dataset.state = "error";
    return;
  }
  $("model").textContent = `${options.model} · ${options.subjects.length} subjects · ` +
    `${options.labels.length} expressions`;
  fillNames($("identity"), options.subjects, options.avatars, false);
  fillNames($("identity_b"), options.subjects, options.avatars, true);
  for (const id of ["expression", "expression_b"]) {
    fillNames($(id), options.labels, options.avatars, id.endsWith("_b"));
  }
  sizes(options).forEach((s) => option($("size"), s, `${s}²`));
  $("pitch").min = -options.pitch_limit;
  $("pitch").max = options.pitch_limit;
  [$("zoom").min, $("zoom").max] = options.zoom_range;

  const d = options.default;
  state = { identity: d.identity, identity_b: "", identity_mix: 0, expression: d.expression,
            expression_b: "", expression_mix: 0, yaw: 0, pitch: 0, zoom: 1,
            size: options.size };
  // The URL wins over the defaults, verbatim: a bad value is reported by the server.
  const url = new URLSearchParams(location.search);
  for (const k of KEYS) {
    if (!url.has(k)) continue;
    const v = url.get(k);
    state[k] = ["identity", "identity_b", "expression", "expression_b"].includes(k) ? v
      : Number(v);
    if (Number.isNaN(state[k])) state[k] = v;  // sent as typed; the server names the field
  }
  // a size from the URL that the list lacks (any valid multiple of the factor) joins it
  const sizeSelect = $("size");
  const listed = [...sizeSelect.options].some((o) => Number(o.value) === state.size);
  if (Number.isInteger(state.size) && !listed) {
    option(sizeSelect, state.size, `${state.size}²`);
  }
  toControls();
  for (const k of KEYS) {
    const el = $(k);
    if (el) el.addEventListener(el.type === "range" ? "input" : "change", changed);
  }
  setupCamera();
  try {
    if (options.gaussians && window.gphmSplat) {
      preview = new window.gphmSplat.SplatPreview($("preview"));
      $("splat").checked = true;
    }
  } catch (err) {
    preview = null;
  }
  $("splat").disabled = preview === null;
  if (preview === null) $("splat").parentElement.title = "unavailable (no WebGL2 or no Gaussians)";
  document.body.dataset.preview = preview === null ? "unavailable" : "off";
  $("splat").addEventListener("change", () => {
    if (!previewOn()) document.body.dataset.preview = "off";
    else if (previewKey === codesQuery()) document.body.dataset.preview = "ready";
    else loadGaussians();
  });
  render();
}

main();
