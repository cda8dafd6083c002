// Live steering from the Prompt Timeline node while the Echo-Forcing Sampler runs: the run's messages
// (echo_forcing.progress after each chunk, echo_forcing.timeline_final at the end) and the steering panel whose
// requests go to POST /echo_forcing/steer. The server validates every edit with the timeline parser; its answer
// (accepted at chunk N, or an error naming the field) is shown in the panel and the run goes on.
// No extension is registered here: echo_timeline.js wires this to its nodes.
import { el } from "./echo_dom.js";
import { EditError, checkPrompt, checkSeconds } from "./echo_timeline_text.js";

export const STEER_ROUTE = "/echo_forcing/steer";
const ENDED = ["execution_success", "execution_error", "execution_interrupted"];

// handlers: progress(detail), final(detail), executing(node id, prompt id), ended(prompt id). The prompt id
// comes with every progress message; before the first one, from execution_start.
export function installRunListeners(api, handlers) {
  let started = null;
  api.addEventListener("echo_forcing.progress", (e) => handlers.progress(e.detail));
  api.addEventListener("echo_forcing.timeline_final", (e) => handlers.final(e.detail));
  api.addEventListener("execution_start", (e) => { started = e.detail?.prompt_id ?? null; });
  api.addEventListener("executing", (e) => {
    const id = e.detail && typeof e.detail === "object" ? e.detail.node : e.detail;
    if (id != null) handlers.executing(id, started);
  });
  for (const type of ENDED) api.addEventListener(type, (e) => handlers.ended(e.detail?.prompt_id));
}

// POST one steering request; always resolves to {accepted, applies_at_chunk, timeline} or {error: {message,
// field}}, so the caller only draws.
export async function postSteer(api, promptId, action, fields) {
  let r, body;
  try {
    r = await api.fetchApi(STEER_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt_id: promptId, action, ...fields }) });
    body = await r.json().catch(() => null);
  } catch (e) {
    return { error: { message: `steering unavailable: ${e}`, field: null } };
  }
  if (body?.error) return body;
  if (r.status === 404) return { error: { message: "no steerable run with this prompt id (it has finished?)",
    field: "prompt_id" } };
  if (!r.ok || !body) return { error: { message: `steering failed: HTTP ${r.status}`, field: null } };
  return body;
}

function input(cls, placeholder, size) {
  const e = el("input", cls);
  e.type = "text";
  e.placeholder = placeholder;
  if (size) e.size = size;
  return e;
}

function button(action, label) {
  const b = el("button", "echo-tl-btn", label);
  b.dataset.action = action;
  return b;
}

// Keep the user's choice when the options are rebuilt (the scene count grows during a run).
function setOptions(select, options) {
  const keep = select.value;
  select.replaceChildren(...options.map(([value, label]) => {
    const o = el("option", null, label);
    o.value = value;
    return o;
  }));
  if (options.some(([v]) => v === keep)) select.value = keep;
}

// The panel: built once per run (typing survives progress messages), updated by `update(run, sceneCount)`.
// `send(action, fields)` returns the server's answer.
export function buildSteerPanel(send) {
  const root = el("div", "echo-tl-steer");
  const status = el("span", "echo-tl-steer-status", "waiting for the first chunk");
  const msg = el("div", "echo-tl-steer-msg");
  const row = (label, ...items) => {
    const r = el("div", "echo-tl-steer-row");
    r.append(el("span", "echo-tl-steer-label", label), ...items);
    return r;
  };
  const now = { how: el("select", "echo-tl-steer-now"), prompt: input("echo-tl-steer-now-prompt", "new prompt", 24),
    seconds: input("echo-tl-steer-now-seconds", "s", 3) };
  const app = { prompt: input("echo-tl-steer-append-prompt", "prompt of a new last scene", 24),
    seconds: input("echo-tl-steer-append-seconds", "s", 3), how: el("select", "echo-tl-steer-append-transition") };
  setOptions(app.how, [["smooth", "smooth"], ["cut", "hard cut"], ["recall", "recall (auto)"]]);
  const edit = { scene: el("select", "echo-tl-steer-edit-scene"), prompt: input("echo-tl-steer-edit-prompt",
    "new prompt (empty: keep)", 24), seconds: input("echo-tl-steer-edit-seconds", "s", 3) };
  // The forms fold away, so a running node grows by one line unless someone steers.
  const forms = el("div", "echo-tl-steer-forms");
  forms.hidden = true;
  forms.append(
    row("end scene now", now.how, now.prompt, now.seconds, button("now", "go")),
    row("append", app.prompt, app.seconds, app.how, button("append", "add")),
    row("edit", edit.scene, edit.prompt, edit.seconds, button("edit", "apply")));
  const toggle = el("button", "echo-tl-btn echo-tl-steer-toggle", "steer \u25be");
  toggle.addEventListener("click", (e) => {
    e.stopPropagation();
    forms.hidden = !forms.hidden;
    root.dispatchEvent(new CustomEvent("echo-steer-resize"));
  });
  root.append(row("run", status, button("stop", "stop"), toggle), forms, msg);

  const show = (answer) => {
    msg.className = "echo-tl-steer-msg " + (answer.error ? "error" : "ok");
    msg.textContent = answer.error
      ? (answer.error.field ? `${answer.error.field}: ` : "") + answer.error.message
      : `accepted: applies at chunk ${answer.applies_at_chunk}`;
    if (answer.error?.field) msg.dataset.field = answer.error.field;
    else delete msg.dataset.field;
  };
  // Fields checked here are the ones a typo breaks; the server's parser checks the rest.
  const request = () => {
    const a = root.dataset.pending;
    if (a === "stop") return ["stop", {}];
    if (a === "now") {
      const how = now.how.value;
      if (how.startsWith("recall")) {
        // Automatic routing finds the earlier scene by the prompt of the scene to come, so it needs one.
        const fields = how === "recall:auto" ? { scene: "auto", prompt: checkPrompt(now.prompt.value) }
          : { scene: Number(how.split(":")[1]) };
        if (now.seconds.value.trim()) fields.seconds = +checkSeconds(now.seconds.value);
        return ["recall", fields];
      }
      return [how, { prompt: checkPrompt(now.prompt.value), seconds: +checkSeconds(now.seconds.value) }];
    }
    if (a === "append") {
      return ["append", { prompt: checkPrompt(app.prompt.value), seconds: +checkSeconds(app.seconds.value),
        transition: app.how.value }];
    }
    const fields = { scene: Number(edit.scene.value) };
    if (!edit.scene.value) throw new EditError("scene", "every scene has started: nothing left to edit");
    if (edit.prompt.value.trim()) fields.prompt = checkPrompt(edit.prompt.value);
    if (edit.seconds.value.trim()) fields.seconds = +checkSeconds(edit.seconds.value);
    if (!("prompt" in fields || "seconds" in fields)) throw new EditError("prompt", "give a prompt or seconds");
    return ["edit", fields];
  };
  root.addEventListener("click", async (e) => {
    const action = e.target?.dataset?.action;
    if (!action || !e.target.classList.contains("echo-tl-btn")) return;
    e.stopPropagation();
    root.dataset.pending = action;
    let answer;
    try {
      answer = await send(...request());
    } catch (err) {
      if (!(err instanceof EditError)) throw err;
      answer = { error: { message: err.message, field: err.field } };
    }
    show(answer);
    root.dispatchEvent(new CustomEvent("echo-steer-answer", { detail: answer }));
  });

  const update = (run, sceneCount) => {
    const started = (run.scene_index ?? 0) + 1; // scenes 1..started have begun
    // `chunk` counts the chunks finished, so the one being generated is chunk + 1
    status.textContent = run.chunk == null ? "waiting for the first chunk"
      : `scene ${started} of ${sceneCount} \u00b7 chunk ${Math.min(run.chunk + 1, run.total_chunks)} / ` +
        `${run.total_chunks}`;
    const recall = [["recall:auto", "recall (auto)"]];
    for (let k = 1; k <= started; k++) recall.push([`recall:${k}`, `recall scene ${k}`]);
    setOptions(now.how, [["smooth", "smooth"], ["cut", "hard cut"], ...recall]);
    const open = [];
    for (let k = started + 1; k <= sceneCount; k++) open.push([String(k), `scene ${k}`]);
    setOptions(edit.scene, open.length ? open : [["", "none left"]]);
  };
  const pick = (scene) => { // a click on a scene that has not started picks it for editing
    if ([...edit.scene.options].some((o) => o.value === String(scene))) edit.scene.value = String(scene);
  };
  const reset = () => { // a new run: no answer of the last one, forms folded
    msg.textContent = "";
    msg.className = "echo-tl-steer-msg";
    delete msg.dataset.field;
    forms.hidden = true;
  };
  return { root, update, pick, show, reset, expanded: () => !forms.hidden };
}
