// Echo-Forcing timeline view: draws the parsed prompt timeline under the Prompt Timeline node's text.
// Parsing is done by the plugin's Python parser through /echo_forcing/timeline (nodes/timeline_route.py),
// so this file only draws: one bar per scene (width ~ chunks), the transition at each boundary, totals,
// and the parser's error message when the text does not parse.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

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
.echo-tl { font: 11px sans-serif; color: #ddd; display: flex; flex-direction: column; gap: 4px;
  padding: 4px; box-sizing: border-box; overflow: hidden; }
.echo-tl-bar { display: flex; align-items: stretch; height: 46px; }
.echo-tl-bar.stale { opacity: 0.35; }
.echo-tl-scene { flex-basis: 0; min-width: 18px; overflow: hidden; border-radius: 3px; padding: 2px 4px;
  box-sizing: border-box; display: flex; flex-direction: column; justify-content: space-between; }
.echo-tl-scene b { font-size: 12px; }
.echo-tl-prompt, .echo-tl-secs { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-tl-secs { opacity: 0.8; }
.echo-tl-boundary { flex: 0 0 16px; display: flex; align-items: center; justify-content: center;
  font-size: 13px; font-weight: bold; }
.echo-tl-transitions, .echo-tl-totals { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-tl-totals { opacity: 0.8; }
.echo-tl-error { color: #fbb; background: #522; border-radius: 3px; padding: 3px 5px; white-space: normal; }
`;

function injectCss() {
  if (document.getElementById("echo-tl-css")) return;
  const style = document.createElement("style");
  style.id = "echo-tl-css";
  style.textContent = CSS;
  document.head.appendChild(style);
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

const truncate = (s, n) => (s.length > n ? s.slice(0, n - 1) + "\u2026" : s);
const fmt = (x) => String(Math.round(x * 100) / 100);

// Seconds of video a scene really gets: chunks * latent frames per chunk * VAE time stride / fps.
function sceneSeconds(tl, scene) {
  return (scene.num_chunks * tl.frames_per_chunk * tl.temporal_compression) / tl.fps;
}

// "recall scene 1" for a hand-picked recall, "recall (auto)" when routing picks the scene.
function transitionText(t) {
  const m = MODES[t.mode] ?? { label: t.mode };
  if (t.mode !== "recall") return m.label;
  return t.recall_source == null ? `${m.label} (auto)` : `${m.label} scene ${t.recall_source + 1}`;
}

function drawTimeline(view, tl) {
  const bar = el("div", "echo-tl-bar");
  tl.scenes.forEach((s, i) => {
    if (i > 0) {
      const t = tl.transitions[i - 1];
      const m = MODES[t.mode] ?? { glyph: "?", color: "#fff" };
      const b = el("div", "echo-tl-boundary", m.glyph);
      b.dataset.mode = t.mode;
      b.dataset.atChunk = t.at_chunk;
      if (t.recall_source != null) b.dataset.recallSource = t.recall_source + 1;
      b.style.color = m.color;
      b.title = `chunk ${t.at_chunk}: scene ${t.from_scene + 1} \u2192 ${t.to_scene + 1}, ${transitionText(t)}`;
      bar.appendChild(b);
    }
    const d = el("div", "echo-tl-scene");
    d.dataset.scene = i + 1;
    d.dataset.chunks = s.num_chunks;
    d.style.flexGrow = s.num_chunks;
    d.style.background = SCENE_COLORS[i % SCENE_COLORS.length];
    const secs = s.seconds ?? sceneSeconds(tl, s);
    d.title = `scene ${i + 1}: ${s.prompt}\n${s.num_chunks} chunks from chunk ${s.start_chunk}, ` +
      `${fmt(sceneSeconds(tl, s))} s of video` + (s.seconds == null ? " (no duration given)" : "");
    d.append(el("b", null, String(i + 1)), el("span", "echo-tl-prompt", truncate(s.prompt, PROMPT_CHARS)),
      el("span", "echo-tl-secs", `${fmt(secs)} s${s.seconds == null ? "*" : ""}`));
    bar.appendChild(d);
  });
  const steps = tl.transitions.map((t) => `${t.from_scene + 1}\u2192${t.to_scene + 1} ${transitionText(t)}`);
  const totalSecs = tl.video_frames / tl.fps;
  view.replaceChildren(
    bar,
    el("div", "echo-tl-transitions", steps.length ? steps.join("  \u00b7  ") : "one scene, no transitions"),
    el("div", "echo-tl-totals", `${fmt(totalSecs)} s \u00b7 ${tl.latent_frames} latent frames \u00b7 ` +
      `${tl.total_chunks} chunks \u00b7 ${tl.scenes.length} scenes`),
  );
}

function drawError(view, err) {
  view.querySelector(".echo-tl-bar")?.classList.add("stale"); // keep the last good timeline, dimmed
  view.querySelector(".echo-tl-error")?.remove();
  const e = el("div", "echo-tl-error", err.message);
  if (err.scene_index != null) e.dataset.scene = err.scene_index + 1;
  if (err.column != null) e.dataset.column = err.column;
  view.appendChild(e);
}

function widgetValue(node, name) {
  return node.widgets?.find((w) => w.name === name)?.value;
}

async function refresh(node) {
  const state = node.echoTimeline;
  const seq = ++state.seq;
  const body = { text: String(widgetValue(node, state.textWidget.name) ?? "") };
  for (const [name, param] of Object.entries(OPTION_WIDGETS)) {
    const v = widgetValue(node, name);
    if (v !== undefined) body[param] = v;
  }
  let result;
  try {
    const r = await api.fetchApi("/echo_forcing/timeline", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    result = await r.json();
  } catch (e) {
    result = { error: { message: `timeline preview unavailable: ${e}` } };
  }
  if (seq !== state.seq) return; // a newer edit has been sent meanwhile
  state.data = result.error ? null : result;
  state.error = result.error ?? null;
  if (state.error) drawError(state.view, state.error);
  else drawTimeline(state.view, result);
  state.done += 1; // lets tests wait for the view to settle
  node.setDirtyCanvas?.(true, false);
}

function scheduleRefresh(node) {
  const state = node.echoTimeline;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => refresh(node), DEBOUNCE_MS);
}

function chainCallback(obj, name, after) {
  const orig = obj[name];
  obj[name] = function (...args) {
    const r = orig?.apply(this, args);
    after.apply(this, args);
    return r;
  };
}

function setUp(node) {
  const textWidget = TEXT_WIDGETS.map((n) => node.widgets?.find((w) => w.name === n)).find(Boolean)
    ?? node.widgets?.find((w) => w.type === "customtext");
  if (!textWidget) return;
  injectCss();
  const view = el("div", "echo-tl");
  node.echoTimeline = { view, textWidget, seq: 0, done: 0, timer: null, data: null, error: null };
  node.addDOMWidget("echo_timeline_view", "echo_timeline", view, { serialize: false, getMinHeight: () => 110 });
  for (const w of node.widgets) {
    if (w === textWidget || w.name in OPTION_WIDGETS) chainCallback(w, "callback", () => scheduleRefresh(node));
  }
  scheduleRefresh(node);
}

app.registerExtension({
  name: "echo_forcing.timeline",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODE_TYPES.has(nodeData.name)) return;
    chainCallback(nodeType.prototype, "onNodeCreated", function () { setUp(this); });
    // Loading a workflow sets widget values without calling their callbacks.
    chainCallback(nodeType.prototype, "onConfigure", function () {
      if (this.echoTimeline) scheduleRefresh(this);
    });
  },
});
