// Echo-Forcing panels drawn on the nodes, where people look:
//  - Echo-Forcing Sampler: after a run, the memory report's summary (per scene: transition, recalled scene, RoPE
//    jump; peak cache on the device and the host; seconds per chunk). The node's `memory_report` output keeps the
//    full machine-readable JSON.
//  - Scene Memory Cache: the cache budget, live as the settings change, from the core formula through
//    /echo_forcing/budget (nodes/budget.py) - for the model linked to budget_model when it is a Load AR Video Model.
//  - Decay Settings: picking a transition loads that mode's official values (/echo_forcing/decay_defaults), unless
//    the values on the node were already changed by hand.
//  - width / height / steps (and budget_width / budget_height) at 0 read "auto".
// Everything computed comes from the server; this file only draws.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { chainCallback, el as element, injectCss, inputSource, widget } from "./echo_dom.js";

const SAMPLER = "EchoForcingSampler";
const MEMORY = "EchoSceneMemoryCache";
const DECAY = "EchoDecaySettings";
const LOADER = "EchoLoadARVideoModel";
const AUTO_WIDGETS = { [SAMPLER]: ["width", "height", "steps"], [MEMORY]: ["budget_width", "budget_height"] };
const MEMORY_FIELDS = ["policy", "anchor_frames", "compressed_frames", "recent_frames", "recall_pool_size",
  "compression_mode", "rope_position_mode", "keep_origin_positions", "hardcut_rope_jump", "recall_rope_jump_max",
  "budget_width", "budget_height", "kv_dtype"];
const DEBOUNCE_MS = 250;
const TRANSITION_TEXT = { smooth: "smooth", hardcut: "hard cut", recall: "recall" };

const CSS = `
.echo-panel { font: 11px sans-serif; color: #ddd; padding: 4px 6px; box-sizing: border-box; overflow: hidden;
  line-height: 16px; }
.echo-panel > div { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.echo-panel .echo-muted { opacity: 0.65; }
.echo-panel .echo-how { color: #b8f; }
.echo-panel .echo-how.hardcut { color: #e88; }
.echo-panel .echo-how.smooth { color: #8c9; }
.echo-panel .echo-totals { margin-top: 3px; }
.echo-panel .echo-error { color: #fbb; background: #522; border-radius: 3px; padding: 2px 4px; }
`;

function el(tag, cls, text) {
  const e = element(tag, cls, text);
  if (text !== undefined) e.title = text; // the whole line when the node is too narrow for it
  return e;
}

function addPanel(node, name, lines, placeholder) {
  injectCss("echo-panels-css", CSS);
  const view = el("div", "echo-panel");
  view.appendChild(el("div", "echo-muted", placeholder));
  // A fixed height (min = max) for the lines shown: the layout must not squeeze the panel for an image preview.
  const height = () => 26 + 16 * lines();  // the DOM widget keeps a 10 px margin above and below
  node.addDOMWidget(name, "echo_panel", view, { serialize: false, getMinHeight: height, getMaxHeight: height });
  return view;
}

function fitHeight(node) {
  const need = node.computeSize?.()[1];
  if (need && node.size[1] < need) node.setSize([node.size[0], need]);
  node.setDirtyCanvas?.(true, true);
}

// ------------------------------------------------------------------------------------------ "auto" widgets
function showAuto(node) {
  for (const name of AUTO_WIDGETS[node.type] ?? []) {
    const w = widget(node, name);
    if (!w) continue;
    try {
      // The canvas draws a number widget's `_displayValue`; 0 means "what the model was made for".
      const proto = Object.getPrototypeOf(w);
      const base = Object.getOwnPropertyDescriptor(proto, "_displayValue")
        ?? Object.getOwnPropertyDescriptor(Object.getPrototypeOf(proto), "_displayValue");
      if (!base?.get) continue;
      Object.defineProperty(w, "_displayValue", {
        configurable: true,
        get() { return this.value === 0 ? "auto" : base.get.call(this); },
      });
    } catch (e) {
      console.warn("echo_forcing: cannot label auto widget", name, e);
    }
  }
}

// ------------------------------------------------------------------------------------------ sampler report
function drawReport(node, s) {
  const view = node.echoReport.view;
  const rows = [];
  for (const sc of s.scenes) {
    // What happened at the switch comes first, so a narrow node cuts the prompt, not the report.
    const row = el("div", "echo-scene");
    row.append(`${sc.scene}. `);
    if (sc.transition) {
      let how = `${TRANSITION_TEXT[sc.transition] ?? sc.transition}`;
      if (sc.recall_source != null) how += ` of scene ${sc.recall_source}`;
      if (sc.rope_jump != null) how += `, RoPE +${sc.rope_jump}`;
      row.appendChild(el("span", `echo-how ${sc.transition}`, `[${how}] `));
    }
    row.append(`${sc.prompt} (${sc.chunks} chunks)`);
    row.title = row.textContent;
    rows.push(row);
  }
  const where = String(s.device).startsWith("cuda") ? "GPU" : s.device;
  const start = s.start_frames ? ` (+${s.start_frames} given)` : "";
  rows.push(el("div", "echo-totals", `peak cache: ${s.peak_device_mb} MB on ${where} \u00b7 ` +
    `${s.peak_host_mb} MB host (recall pool)`));
  rows.push(el("div", null, `${s.chunks} chunks${start} \u00b7 ${s.size[0]}x${s.size[1]} \u00b7 ${s.steps} steps ` +
    `\u00b7 ${s.seconds_per_chunk} s per chunk`));
  view.replaceChildren(...rows);
  node.echoReport.lines = rows.length;
  node.echoReport.summary = s;
  fitHeight(node);
}

function setUpSampler(node) {
  node.echoReport = { lines: 1, summary: null };
  node.setSize([Math.max(node.size[0], 420), node.size[1]]); // room for the report's lines
  node.echoReport.view = addPanel(node, "echo_report_view", () => node.echoReport.lines,
    "memory report: shown here after a run");
}

// ------------------------------------------------------------------------------------------ cache budget
function linkedLoader(node) {
  const source = inputSource(node, "budget_model");
  return source?.type === LOADER ? source : null;
}

async function refreshBudget(node) {
  const state = node.echoBudget;
  const seq = ++state.seq;
  const body = {};
  for (const name of MEMORY_FIELDS) {
    const w = widget(node, name);
    if (w) body[name] = w.value;
  }
  const loader = linkedLoader(node);
  if (loader) {
    body.model_name = widget(loader, "model_name")?.value;
    body.frames_per_chunk = widget(loader, "frames_per_chunk")?.value;
  }
  let result;
  try {
    const r = await api.fetchApi("/echo_forcing/budget", { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" } });
    result = await r.json();
  } catch (e) {
    result = { error: { message: `budget unavailable: ${e}` } };
  }
  if (seq !== state.seq) return; // a newer change has been sent meanwhile
  state.data = result;
  const b = result.budget;
  if (result.error) {
    state.view.replaceChildren(el("div", "echo-error", result.error.message));
  } else if (b.cache_tokens == null) {
    state.view.replaceChildren(
      el("div", null, `${result.model} at ${result.width}x${result.height}: keeps every frame`),
      el("div", "echo-muted", `${b.mb_per_frame} MB K/V per latent frame; grows with the video`));
  } else {
    const rows = [
      el("div", null, `budget: ${b.cache_mb} MB K/V (${b.window_frames} frames x ${b.tokens_per_frame} tokens)`),
      el("div", "echo-muted", `${result.model}, ${result.width}x${result.height}, bf16, on the device`),
    ];
    if (b.pool_max_scenes != null) {
      rows.splice(1, 0, el("div", null, `recall pool: ${b.pool_mb_per_scene} MB per scene on the host ` +
        `(up to ${b.pool_max_scenes})`));
    }
    state.view.replaceChildren(...rows);
  }
  state.lines = Math.max(3, state.view.childElementCount);  // a steady height: the layout stays put
  state.done += 1; // lets tests wait for the view to settle
  fitHeight(node);
}

function scheduleBudget(node) {
  const state = node.echoBudget;
  if (!state) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => refreshBudget(node), DEBOUNCE_MS);
}

function setUpMemory(node) {
  node.echoBudget = { seq: 0, done: 0, lines: 3, timer: null, data: null };
  node.echoBudget.view = addPanel(node, "echo_budget_view", () => node.echoBudget.lines, "budget: computing...");
  for (const w of node.widgets ?? []) {
    if (MEMORY_FIELDS.includes(w.name)) chainCallback(w, "callback", () => scheduleBudget(node));
  }
  scheduleBudget(node);
}

// The loader's model or frames per chunk changes the budget of every memory node it feeds.
function setUpLoader(node) {
  for (const name of ["model_name", "frames_per_chunk"]) {
    const w = widget(node, name);
    if (!w) continue;
    chainCallback(w, "callback", () => {
      for (const n of node.graph?._nodes ?? []) if (n.type === MEMORY && linkedLoader(n) === node) scheduleBudget(n);
    });
  }
}

// ------------------------------------------------------------------------------------------ decay defaults
let decayDefaults = null;

function setUpDecay(node) {
  const transition = widget(node, "transition");
  if (!transition) return;
  let previous = transition.value;
  chainCallback(transition, "callback", () => {
    const from = decayDefaults?.[previous], to = decayDefaults?.[transition.value];
    previous = transition.value;
    if (!from || !to) return;
    // Only values still at the previous mode's official settings follow the new mode; hand-set ones stay.
    const untouched = Object.entries(from).every(([k, v]) => widget(node, k) == null || widget(node, k).value === v);
    if (!untouched) return;
    for (const [k, v] of Object.entries(to)) {
      const w = widget(node, k);
      if (w) w.value = v;
    }
    node.setDirtyCanvas?.(true, true);
  });
  // Loading a saved workflow sets values without callbacks: the mode it was saved with is the starting point.
  chainCallback(node, "onConfigure", () => { previous = transition.value; });
}

app.registerExtension({
  name: "echo_forcing.panels",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const type = nodeData.name;
    if (type === DECAY && decayDefaults == null) {
      try {
        decayDefaults = await (await api.fetchApi("/echo_forcing/decay_defaults")).json();
      } catch (e) {
        console.warn("echo_forcing: no official decay values", e);
        decayDefaults = {};
      }
    }
    if (![SAMPLER, MEMORY, DECAY, LOADER].includes(type)) return;
    chainCallback(nodeType.prototype, "onNodeCreated", function () {
      if (type === SAMPLER) setUpSampler(this);
      if (type === MEMORY) setUpMemory(this);
      if (type === DECAY) setUpDecay(this);
      if (type === LOADER) setUpLoader(this);
      if (AUTO_WIDGETS[type]) showAuto(this);
    });
    if (type === SAMPLER) {
      chainCallback(nodeType.prototype, "onExecuted", function (output) {
        const summary = output?.echo_report?.[0];
        if (summary && this.echoReport) drawReport(this, summary);
      });
    }
    if (type === MEMORY) {
      // Loading a workflow sets widget values without their callbacks; links change the budget model.
      chainCallback(nodeType.prototype, "onConfigure", function () {
        // A workflow saved before kv_dtype existed has one widget value fewer: the panel's empty value lands on
        // kv_dtype. Back to the default, as ComfyUI does for an API prompt without the input.
        const kv = widget(this, "kv_dtype");
        if (kv && !(kv.options?.values ?? []).includes(kv.value)) kv.value = "model";
        scheduleBudget(this);
      });
      chainCallback(nodeType.prototype, "onConnectionsChange", function () { scheduleBudget(this); });
    }
  },
});
