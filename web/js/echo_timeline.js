// Echo-Forcing timeline editor on the Prompt Timeline node. The text widget stays the one source of truth:
// the Python parser (/echo_forcing/timeline, nodes/timeline_route.py) reads it and reports where each scene's
// pieces stand; every edit here (drag a boundary, edit a prompt, pick a transition, add / delete / move a
// scene) splices those ranges only (echo_timeline_text.js) and the parser draws the result. During a run the
// scene being generated is highlighted and the steering panel (echo_steer.js) is shown; at the end the text
// the run generated is written back. User text is only ever set as textContent.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ASSUMED_FPC, LOADER, SAMPLER, chunkSize, timelineFeeding } from "./echo_chunk_size.js";
import { chainCallback, el, injectCss, widget } from "./echo_dom.js";
import { buildSteerPanel, installRunListeners, postSteer } from "./echo_steer.js";
import * as T from "./echo_timeline_text.js";

const NODE_TYPES = new Set(["EchoPromptTimeline"]);
const TEXT_WIDGETS = ["timeline", "text"];
// Widgets that change how the text is read -> the route's parameter; sent when the node has the widget.
const OPTION_WIDGETS = { fps: "fps", frames_per_chunk: "frames_per_chunk", marker_semantics: "marker_semantics",
  default_transition: "default_mode" };
const DEBOUNCE_MS = 300;
const PROMPT_CHARS = 40;

const MODES = {
  smooth: { glyph: "~", label: "smooth", color: "#6c9" },
  hardcut: { glyph: "\u2702", label: "hard cut", color: "#e66" },
  recall: { glyph: "\u21ba", label: "recall", color: "#b8f" },
};
const SCENE_COLORS = ["#3a5f8a", "#5a7f3a", "#8a5a3a", "#6a3a8a", "#3a8a7f", "#8a3a5a"];

const CSS = `
.echo-tl { font: 11px sans-serif; color: #ddd; display: flex; flex-direction: column; gap: 3px;
  padding: 4px; box-sizing: border-box; overflow: hidden; }
.echo-tl-links { height: 14px; width: 100%; overflow: visible; }
.echo-tl-links path { fill: none; stroke: #b8f; stroke-width: 1.5; }
.echo-tl-bar { display: flex; align-items: stretch; height: 46px; }
.echo-tl-bar.stale { opacity: 0.35; }
.echo-tl-scene { flex-basis: 0; min-width: 18px; overflow: hidden; border-radius: 3px; padding: 2px 4px;
  box-sizing: border-box; display: flex; flex-direction: column; justify-content: space-between; cursor: pointer;
  border: 2px solid transparent; }
.echo-tl-scene.selected { border-color: #fff; }
.echo-tl-scene.echo-tl-done { opacity: 0.55; }
.echo-tl-scene.echo-tl-running { border-color: #fd4; box-shadow: 0 0 6px #fd4; }
.echo-tl-scene b { font-size: 12px; }
.echo-tl-prompt, .echo-tl-secs { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-tl-secs { opacity: 0.8; }
.echo-tl-boundary { flex: 0 0 16px; display: flex; align-items: center; justify-content: center;
  font-size: 13px; font-weight: bold; cursor: col-resize; user-select: none; touch-action: none; }
.echo-tl-transitions, .echo-tl-totals { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-tl-totals { opacity: 0.8; }
.echo-tl-steer-status { color: #fd4; }
.echo-tl-steer-forms { display: flex; flex-direction: column; gap: 3px; }
.echo-tl-steer-forms[hidden] { display: none; }
.echo-tl-edit, .echo-tl-steer-row { display: flex; gap: 4px; align-items: center; white-space: nowrap; }
.echo-tl-edit input, .echo-tl-steer input, .echo-tl-edit select, .echo-tl-steer select { font: 11px sans-serif;
  background: #222; color: #ddd; border: 1px solid #555; border-radius: 2px; min-width: 0; }
.echo-tl-prompt-input { flex: 1; }
.echo-tl-btn { font: 11px sans-serif; background: #333; color: #ddd; border: 1px solid #555; border-radius: 2px;
  padding: 0 5px; cursor: pointer; }
.echo-tl-steer { border-top: 1px solid #555; padding-top: 3px; display: flex; flex-direction: column; gap: 3px; }
.echo-tl-steer-label { width: 82px; opacity: 0.8; }
.echo-tl-steer-msg.error, .echo-tl-error { color: #fbb; background: #522; border-radius: 3px; padding: 2px 5px;
  white-space: normal; }
.echo-tl-steer-msg.ok { color: #8c9; }
`;

const fmt = (x) => String(Math.round(x * 100) / 100);
const truncate = (s, n) => (s.length > n ? s.slice(0, n - 1) + "\u2026" : s);

// Seconds of video a scene really gets: chunks * latent frames per chunk * VAE time stride / fps.
const sceneSeconds = (tl, s) => (s.num_chunks * tl.frames_per_chunk * tl.temporal_compression) / tl.fps;

// "recall scene 1" by hand, "recall of saved 'name'" from the scene library, "recall (auto)" for routing.
function transitionText(t) {
  const m = MODES[t.mode] ?? { label: t.mode };
  if (t.mode !== "recall") return m.label;
  if (t.recall_name != null) return `${m.label} of saved '${t.recall_name}'`;
  return t.recall_source == null ? `${m.label} (auto)` : `${m.label} scene ${t.recall_source + 1}`;
}

// ------------------------------------------------------------------------------------------ drawing
function sceneBlock(state, tl, s, i) {
  const d = el("div", "echo-tl-scene");
  d.dataset.scene = i + 1;
  d.dataset.chunks = s.num_chunks;
  d.style.flexGrow = s.num_chunks;
  d.style.background = SCENE_COLORS[i % SCENE_COLORS.length];
  if (state.selected === i) d.classList.add("selected");
  const secs = s.seconds ?? sceneSeconds(tl, s);
  d.title = `scene ${i + 1}: ${s.prompt}\n${s.num_chunks} chunks from chunk ${s.start_chunk}, ` +
    `${fmt(sceneSeconds(tl, s))} s of video` + (s.seconds == null ? " (no duration given)" : "");
  d.append(el("b", null, String(i + 1)), el("span", "echo-tl-prompt", truncate(s.prompt, PROMPT_CHARS)),
    el("span", "echo-tl-secs", `${fmt(secs)} s${s.seconds == null ? "*" : ""}`));
  return d;
}

function boundaryHandle(t) {
  const m = MODES[t.mode] ?? { glyph: "?", color: "#fff" };
  const b = el("div", "echo-tl-boundary", m.glyph);
  b.dataset.mode = t.mode;
  b.dataset.atChunk = t.at_chunk;
  b.dataset.scene = t.from_scene + 1; // the scene whose duration a drag changes
  if (t.recall_source != null) b.dataset.recallSource = t.recall_source + 1;
  if (t.recall_name != null) b.dataset.recallName = t.recall_name;
  b.style.color = m.color;
  b.title = `chunk ${t.at_chunk}: scene ${t.from_scene + 1} \u2192 ${t.to_scene + 1}, ${transitionText(t)}` +
    "\ndrag to change the length of the scene on the left";
  return b;
}

// A recall by hand is drawn as an arc from its boundary back to the scene it returns to.
function drawLinks(svg, bar, tl) {
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const base = bar.getBoundingClientRect();
  if (!bar.isConnected || !base.width || !bar.offsetWidth) return; // not laid out (node hidden or off screen)
  const scale = base.width / bar.offsetWidth; // the canvas may be zoomed
  const x = (e) => (e.getBoundingClientRect().left + e.getBoundingClientRect().width / 2 - base.left) / scale;
  const scenes = bar.querySelectorAll(".echo-tl-scene"), bounds = bar.querySelectorAll(".echo-tl-boundary");
  tl.transitions.forEach((t, k) => {
    if (t.mode !== "recall" || t.recall_source == null || !scenes[t.recall_source] || !bounds[k]) return;
    const [x0, x1] = [x(scenes[t.recall_source]), x(bounds[k])];
    const p = document.createElementNS(ns, "path");
    p.setAttribute("d", `M ${x1} 14 C ${x1} 0, ${x0} 0, ${x0} 14`);
    p.setAttribute("class", "echo-tl-link");
    p.dataset.toScene = t.to_scene + 1;
    p.dataset.source = t.recall_source + 1;
    svg.appendChild(p);
  });
}

function totalsText(tl, chunk) {
  const size = `chunks of ${tl.frames_per_chunk} latent frame${tl.frames_per_chunk === 1 ? "" : "s"}`;
  const why = chunk.fpc == null ? `auto: ${chunk.why}; ${ASSUMED_FPC} assumed` : chunk.why;
  return `${fmt(tl.video_frames / tl.fps)} s \u00b7 ${tl.latent_frames} latent frames \u00b7 ${tl.total_chunks} ` +
    `${size} (${why}) \u00b7 ${tl.scenes.length} scenes`;
}

function draw(node) {
  const state = node.echoTimeline, run = state.run;
  const tl = run?.parsed ?? state.data;
  if (!tl) return;
  const bar = el("div", "echo-tl-bar");
  tl.scenes.forEach((s, i) => {
    if (i > 0) bar.appendChild(boundaryHandle(tl.transitions[i - 1]));
    const block = sceneBlock(state, tl, s, i);
    if (run?.scene_index != null) {
      if (i < run.scene_index) block.classList.add("echo-tl-done");
      if (i === run.scene_index) block.classList.add("echo-tl-running");
    }
    bar.appendChild(block);
  });
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "echo-tl-links");
  const steps = tl.transitions.map((t) => `${t.from_scene + 1}\u2192${t.to_scene + 1} ${transitionText(t)}`);
  if (tl.opening) steps.unshift(`opens with a ${transitionText(tl.opening)}`);
  const rows = [svg, bar,
    el("div", "echo-tl-transitions", steps.length ? steps.join("  \u00b7  ") : "one scene, no transitions"),
    el("div", "echo-tl-totals", totalsText(tl, state.chunk))];
  if (run) {
    rows.push(state.steer.root);
    state.steer.update(run, tl.scenes.length);
  } else if (!state.error) {
    rows.push(editRow(node, tl)); // editing splices the ranges of the text the parser last accepted
  }
  if (state.editError) rows.push(errorBox(state.editError));
  if (state.error) rows.push(errorBox(state.error));
  if (state.error) bar.classList.add("stale"); // the last good timeline stays, dimmed
  state.view.replaceChildren(...rows);
  requestAnimationFrame(() => drawLinks(svg, bar, tl));
  fitHeight(node);
}

function errorBox(err) {
  const e = el("div", "echo-tl-error", (err.field && err.field !== "timeline" ? `${err.field}: ` : "") + err.message);
  if (err.scene_index != null) e.dataset.scene = err.scene_index + 1;
  if (err.column != null) e.dataset.column = err.column;
  if (err.field) e.dataset.field = err.field;
  return e;
}

function fitHeight(node) {
  const need = node.computeSize?.()[1];
  if (need && node.size[1] < need) node.setSize([node.size[0], need]);
  node.setDirtyCanvas?.(true, true);
}

// ------------------------------------------------------------------------------------------ editing
function option(value, label) {
  const o = el("option", null, label);
  o.value = value;
  return o;
}

// The transition out of scene i: the marker of the scene that carries it (see markerScene).
function transitionSelect(node, tl, i, text) {
  const state = node.echoTimeline, sel = el("select", "echo-tl-transition");
  const semantics = state.options.marker_semantics ?? "outgoing";
  const j = T.markerScene(i, semantics);
  if (i >= tl.scenes.length - 1) {
    sel.append(option("", "\u2014 last scene"));
    sel.disabled = true;
    return sel;
  }
  const dflt = MODES[state.options.default_mode ?? "smooth"]?.label ?? "default";
  sel.append(option("", `${dflt} (no marker)`), option("#", "hard cut"), option("@", "recall (auto)"));
  for (let k = 1; k <= i + 1; k++) sel.append(option(`@${k}`, `recall scene ${k}`));
  const m = tl.source[j].marker;
  const now = m ? text.slice(m[0], m[1]).replace(/\s+/g, "") : "";
  if (![...sel.options].some((o) => o.value === now)) {
    const name = tl.scenes[j].recall_name;
    sel.append(option(now, name != null ? `recall of saved '${name}'` : now));
  }
  sel.value = now;
  sel.addEventListener("change", () => edit(node, (t) => T.setMarker(t, tl, j, sel.value)));
  return sel;
}

function editRow(node, tl) {
  const state = node.echoTimeline, row = el("div", "echo-tl-edit");
  const add = el("button", "echo-tl-btn", "+ scene");
  add.dataset.action = "add";
  add.addEventListener("click", () => {
    const last = tl.scenes[tl.scenes.length - 1];
    const secs = last.seconds != null ? String(last.seconds) : "5";
    state.selectAfter = tl.scenes.length;
    edit(node, (t) => T.addScene(t, tl, "new scene", secs));
  });
  const i = state.selected;
  if (i == null || i >= tl.scenes.length || !tl.source) {
    row.append(el("span", "echo-tl-hint", "click a scene to edit it; drag a boundary to change a length"), add);
    return row;
  }
  const text = currentText(node), s = tl.scenes[i];
  const prompt = el("input", "echo-tl-prompt-input");
  prompt.value = s.prompt;
  prompt.addEventListener("change", () => {
    if (prompt.value.trim() !== s.prompt) edit(node, (t) => T.setPrompt(t, tl, i, T.checkPrompt(prompt.value)));
  });
  const secs = el("input", "echo-tl-seconds-input");
  secs.size = 4;
  secs.value = s.seconds ?? "";
  secs.placeholder = fmt(sceneSeconds(tl, s));
  secs.addEventListener("change", () => {
    if (secs.value.trim() !== String(s.seconds ?? "")) {
      edit(node, (t) => T.setSeconds(t, tl, i, T.checkSeconds(secs.value)));
    }
  });
  const btn = (action, label, fn, enabled) => {
    const b = el("button", "echo-tl-btn", label);
    b.dataset.action = action;
    b.disabled = !enabled;
    b.addEventListener("click", fn);
    return b;
  };
  const n = tl.scenes.length;
  row.append(el("b", null, `scene ${i + 1}`), prompt, secs, el("span", null, "s \u2192"),
    transitionSelect(node, tl, i, text),
    btn("left", "\u25c0", () => { state.selected = i - 1; edit(node, (t) => T.swapScenes(t, tl, i - 1)); }, i > 0),
    btn("right", "\u25b6", () => { state.selected = i + 1; edit(node, (t) => T.swapScenes(t, tl, i)); }, i < n - 1),
    btn("delete", "\u2715", () => { state.selected = null; edit(node, (t) => T.deleteScene(t, tl, i)); }, n > 1),
    add);
  return row;
}

const currentText = (node) => String(node.echoTimeline.textWidget.value ?? "");

// Apply one splice to the widget's text; an EditError is shown inline and the text stays as it was.
function edit(node, fn) {
  const state = node.echoTimeline;
  if (state.stale || state.error || state.run) return; // the ranges are those of an older text
  try {
    writeText(node, fn(currentText(node)));
    state.editError = null;
  } catch (e) {
    if (!(e instanceof T.EditError)) throw e;
    state.editError = { message: e.message, field: e.field };
    draw(node);
  }
}

function writeText(node, text) {
  const state = node.echoTimeline, w = state.textWidget;
  if (text === currentText(node)) return;
  state.stale = true;
  w.value = text;
  if (w.inputEl && w.inputEl.value !== text) w.inputEl.value = text;
  w.callback?.(text); // schedules the parse and redraw
  node.graph?.change?.();
  const workflow = app.extensionManager?.workflow?.activeWorkflow ?? app.workflowManager?.activeWorkflow;
  workflow?.changeTracker?.checkState?.();
  node.setDirtyCanvas?.(true, true);
}

// Drag a boundary: the scene on its left grows or shrinks by whole chunks; released, its tag is rewritten.
function startDrag(node, handle, e) {
  const state = node.echoTimeline, tl = state.data;
  if (!tl || state.run || state.error || state.stale) return;
  const i = Number(handle.dataset.scene) - 1;
  const block = handle.previousElementSibling, orig = tl.scenes[i].num_chunks;
  const px = block.getBoundingClientRect().width / orig, x0 = e.clientX;
  let chunks = orig;
  handle.setPointerCapture?.(e.pointerId);
  e.preventDefault();
  e.stopPropagation();
  const move = (ev) => {
    chunks = Math.max(1, Math.round(orig + (ev.clientX - x0) / px));
    block.style.flexGrow = chunks;
    block.querySelector(".echo-tl-secs").textContent = `${T.secondsForChunks(tl, chunks)} s (${chunks} chunks)`;
  };
  const up = () => {
    handle.removeEventListener("pointermove", move);
    handle.removeEventListener("pointerup", up);
    handle.removeEventListener("pointercancel", up);
    if (chunks !== orig) edit(node, (t) => T.setSeconds(t, tl, i, T.secondsForChunks(tl, chunks)));
    else draw(node);
  };
  handle.addEventListener("pointermove", move);
  handle.addEventListener("pointerup", up);
  handle.addEventListener("pointercancel", up);
}

// ------------------------------------------------------------------------------------------ parsing
async function parse(body) {
  try {
    const r = await api.fetchApi("/echo_forcing/timeline", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    return await r.json();
  } catch (e) {
    return { error: { message: `timeline preview unavailable: ${e}` } };
  }
}

function options(node) {
  const out = {};
  for (const [name, param] of Object.entries(OPTION_WIDGETS)) {
    const v = widget(node, name)?.value;
    if (v !== undefined) out[param] = v;
  }
  return out;
}

async function refresh(node) {
  const state = node.echoTimeline;
  const seq = ++state.seq;
  state.chunk = chunkSize(node);
  state.options = options(node);
  const body = { text: currentText(node), frames_per_chunk: state.chunk.fpc ?? ASSUMED_FPC, ...state.options };
  const result = await parse(body);
  if (seq !== state.seq) return; // a newer edit has been sent meanwhile
  state.stale = false;
  state.error = result.error ?? null;
  if (!result.error) state.data = result;
  if (state.selectAfter != null && !result.error) state.selected = state.selectAfter;
  state.selectAfter = null;
  draw(node);
  if (!state.data) state.view.replaceChildren(errorBox(state.error));
  state.done += 1; // lets tests wait for the view to settle
}

function scheduleRefresh(node) {
  const state = node.echoTimeline;
  if (!state) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => refresh(node), DEBOUNCE_MS);
}

const refreshAll = (graph) => graph?._nodes?.forEach((n) => n.echoTimeline && scheduleRefresh(n));

// ------------------------------------------------------------------------------------------ runs
function findTimelineNode(id) {
  if (id == null) return null;
  const n = app.graph?._nodes?.find((x) => String(x.id) === String(id));
  return n?.echoTimeline ? n : null;
}

async function onProgress(d) {
  const node = findTimelineNode(d?.timeline_node);
  if (!node) return;
  const state = node.echoTimeline;
  if (state.run?.prompt_id !== d.prompt_id) startRun(node, d.prompt_id);
  Object.assign(state.run, { chunk: d.chunk, total_chunks: d.total_chunks, scene_index: d.scene_index });
  const tl = d.timeline;
  if (tl && typeof tl === "object" && tl.scenes) state.run.parsed = tl;
  else if (typeof tl === "string" && tl !== state.run.text) { // the run's text: drawn as the parser reads it
    state.run.text = tl;
    const parsed = await parse({ text: tl, frames_per_chunk: state.chunk?.fpc ?? ASSUMED_FPC, ...state.options });
    if (!parsed.error && state.run?.text === tl) state.run.parsed = parsed;
  }
  draw(node);
  state.runMessages = (state.runMessages ?? 0) + 1;
}

// The sampler fed by a Prompt Timeline starts: steering is open before its first chunk is done.
function onExecuting(nodeId, promptId) {
  const sampler = app.graph?._nodes?.find((x) => String(x.id) === String(nodeId));
  const node = sampler?.type === SAMPLER ? timelineFeeding(sampler) : null;
  if (!node?.echoTimeline || node.echoTimeline.run || promptId == null) return;
  startRun(node, promptId);
  draw(node);
}

function startRun(node, promptId) {
  const state = node.echoTimeline;
  state.run = { prompt_id: promptId, chunk: null, total_chunks: null, scene_index: 0 };
  state.msgShown = false;
  state.steer.reset();
}

function onFinal(d) {
  const node = findTimelineNode(d?.timeline_node);
  if (!node) return;
  const state = node.echoTimeline;
  state.run = null;
  const text = typeof d.timeline === "string" ? d.timeline : d.timeline?.text;
  if (typeof text === "string") writeText(node, text); // what was actually generated
  draw(node);
  state.runMessages = (state.runMessages ?? 0) + 1;
}

function onEnded(promptId) {
  for (const n of app.graph?._nodes ?? []) {
    if (n.echoTimeline?.run && n.echoTimeline.run.prompt_id === promptId) {
      n.echoTimeline.run = null;
      draw(n);
    }
  }
}

// ------------------------------------------------------------------------------------------ set-up
function setUp(node) {
  const textWidget = TEXT_WIDGETS.map((n) => widget(node, n)).find(Boolean)
    ?? node.widgets?.find((w) => w.type === "customtext");
  if (!textWidget) return;
  injectCss("echo-tl-css", CSS);
  const view = el("div", "echo-tl");
  const state = { view, textWidget, seq: 0, done: 0, timer: null, data: null, error: null, selected: null,
    run: null, chunk: { fpc: null, why: "not resolved yet" }, options: {}, editError: null };
  node.echoTimeline = state;
  state.steer = buildSteerPanel((action, fields) => postSteer(api, state.run?.prompt_id, action, fields));
  state.steer.root.addEventListener("echo-steer-answer", (e) => {
    const tl = e.detail?.timeline;
    state.msgShown = true;
    if (state.run && tl && typeof tl === "object" && tl.scenes) state.run.parsed = tl;
    draw(node);
  });
  state.steer.root.addEventListener("echo-steer-resize", () => fitHeight(node));
  view.addEventListener("pointerdown", (e) => {
    const handle = e.target.closest?.(".echo-tl-boundary");
    if (handle) startDrag(node, handle, e);
  });
  view.addEventListener("click", (e) => {
    const block = e.target.closest?.(".echo-tl-scene");
    if (!block) return;
    const i = Number(block.dataset.scene) - 1;
    if (state.run) return state.steer.pick(i + 1);
    state.selected = state.selected === i ? null : i;
    draw(node);
  });
  const height = () => 150 + (state.run && state.steer.expanded() ? 80 : 0) + (state.msgShown ? 20 : 0) +
    (state.error || state.editError ? 30 : 0);
  node.addDOMWidget("echo_timeline_view", "echo_timeline", view, { serialize: false, getMinHeight: height });
  for (const w of node.widgets) {
    if (w !== textWidget && !(w.name in OPTION_WIDGETS)) continue;
    chainCallback(w, "callback", () => { state.stale = true; state.editError = null; scheduleRefresh(node); });
  }
  chainCallback(node, "onConnectionsChange", () => scheduleRefresh(node));
  scheduleRefresh(node);
}

// Samplers and loaders decide the chunk size: a change there redraws every timeline of the graph.
function watchChunkSize(node) {
  const w = widget(node, "frames_per_chunk");
  if (w) chainCallback(w, "callback", () => refreshAll(node.graph));
  chainCallback(node, "onConnectionsChange", () => refreshAll(node.graph));
}

app.registerExtension({
  name: "echo_forcing.timeline",
  setup() {
    installRunListeners(api, { progress: onProgress, final: onFinal, executing: onExecuting, ended: onEnded });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === SAMPLER || nodeData.name === LOADER) {
      chainCallback(nodeType.prototype, "onNodeCreated", function () { watchChunkSize(this); });
    }
    if (!NODE_TYPES.has(nodeData.name)) return;
    chainCallback(nodeType.prototype, "onNodeCreated", function () { setUp(this); });
    // Loading a workflow sets widget values without calling their callbacks.
    chainCallback(nodeType.prototype, "onConfigure", function () {
      if (this.echoTimeline) scheduleRefresh(this);
    });
  },
});
