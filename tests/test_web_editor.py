"""The editable timeline on the Prompt Timeline node (web/js/echo_timeline.js, echo_timeline_text.js, echo_steer.js)
in real Chromium on a real server, once per host (0.3.75 and 0.8.0).

One browser session per host runs the whole editing story, because each page start costs tens of seconds: drag a
boundary (real mouse events) and the scene's tag changes by whole chunks; edit a prompt; pick a transition; add,
move and delete scenes; an untouched text survives the editor and a save/load of the workflow byte for byte; a
prompt that looks like HTML is shown as text; the chunk size follows the sampler / loader the timeline feeds.

Live steering: the server side (POST /echo_forcing/steer and the sampler's messages) is built on another branch,
so `test_steering_panel_against_a_stub` stands in for the server inside the page: it dispatches the contract's
messages on ComfyUI's api object and answers the steering route from a stub of api.fetchApi. The end-to-end run
with the real route belongs after that merge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import browser as B

NODE_TYPE = "EchoPromptTimeline"
REPO_ROOT = Path(__file__).resolve().parents[1]
CAUSAL_WORKFLOW = REPO_ROOT / "example_workflows" / "Wan2.1 Causal Forcing.json"

# Odd spacing, an empty part, a manual recall and subtitles: all of it must survive edits elsewhere.
TEXT = "  a beach at dawn [3s#] |  a forest  [3s@1]||the beach again [3s] ; one | two | three"
XSS = "<img src=x onerror=window.__echoXss=1> [3s] | <b>bold</b> [3s]"

ADD_NODE_JS = """
app.graph.clear();
const node = LiteGraph.createNode(arguments[0]);
node.pos = [90, 150];
app.graph.add(node);
node.setSize([900, node.computeSize()[1]]);
app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
app.graph.setDirtyCanvas(true, true);
window.__echoNode = node;
"""

# Run `code` (body of a function of node, st) and resolve, once the next parse has been drawn, with the text
# and what the view shows. `code` may return false: nothing is expected to change, resolve after the debounce.
ACT_JS = """
const [code, done] = [arguments[0], arguments[arguments.length - 1]];
const node = window.__echoNode, st = node.echoTimeline, before = st.done;
const changed = new Function('node', 'st', code)(node, st);
const t0 = Date.now();
(function poll() {
  if (st.done === before && (changed !== false || Date.now() - t0 < 700)) return setTimeout(poll, 25);
  setTimeout(report, 150);
})();
function report() {
  const v = st.view, q = (s) => Array.from(v.querySelectorAll(s));
  done({
    text: st.textWidget.value, refreshes: st.done - before,
    scenes: q('.echo-tl-scene').map(e => ({chunks: +e.dataset.chunks, text: e.textContent,
        running: e.classList.contains('echo-tl-running'), done: e.classList.contains('echo-tl-done')})),
    prompts: q('.echo-tl-scene .echo-tl-prompt').map(e => e.textContent),
    links: q('.echo-tl-link').map(e => [+e.dataset.source, +e.dataset.toScene]),
    transitions: v.querySelector('.echo-tl-transitions')?.textContent ?? null,
    totals: v.querySelector('.echo-tl-totals')?.textContent ?? null,
    error: v.querySelector('.echo-tl-error')?.textContent ?? null,
    promptInput: v.querySelector('.echo-tl-prompt-input')?.value ?? null,
    steer: !!v.querySelector('.echo-tl-steer'),
    steerMsg: v.querySelector('.echo-tl-steer-msg')?.textContent ?? null,
    steerField: v.querySelector('.echo-tl-steer-msg')?.dataset.field ?? null,
    imgs: v.querySelectorAll('img').length, data: st.data,
  });
}
"""


def act(page, code: str) -> dict:
    return page.execute_async_script(ACT_JS, code)


def set_text(page, text: str) -> dict:
    return act(page, f"const i = st.textWidget.inputEl; i.value = {json.dumps(text)};"
                     "i.dispatchEvent(new Event('input', {bubbles: true}));")


def click_scene(page, n: int) -> dict:
    return act(page, f"st.view.querySelector('.echo-tl-scene[data-scene=\"{n}\"]').click(); return false;")


def change(selector: str, value: str) -> str:
    """JS: set an editor control and fire its change event, as the user's Enter or pick does."""
    return (f"const e = st.view.querySelector({json.dumps(selector)}); e.value = {json.dumps(value)};"
            "e.dispatchEvent(new Event('change', {bubbles: true}));")


@pytest.fixture
def editor(comfy_server, browser):
    B.open_app(browser, comfy_server.url, NODE_TYPE)
    browser.execute_script(ADD_NODE_JS, NODE_TYPE)
    B.wait_js(browser, "window.__echoNode.echoTimeline && window.__echoNode.echoTimeline.done > 0",
              what="the first timeline refresh")
    return browser


@pytest.mark.host
@pytest.mark.browser
def test_edit_the_timeline(editor, comfy_server, artifacts_dir):
    page = editor
    view = set_text(page, TEXT)
    assert view["error"] is None and [s["chunks"] for s in view["scenes"]] == [4, 4, 4]  # 3 s = 4 chunks of 3
    assert view["links"] == [[1, 3]]  # the recall into scene 3 is drawn as a link back to scene 1
    assert "auto: no sampler linked; 3 assumed" in view["totals"]

    # Nothing edited -> nothing written: open the editor, commit the same prompt, the same transition.
    view = click_scene(page, 2)
    assert view["promptInput"] == "a forest"
    for code in (change(".echo-tl-prompt-input", "a forest"), change(".echo-tl-transition", "@1")):
        assert act(page, code + "return false;")["text"] == TEXT
    # ... and a save / load of the workflow keeps the text byte for byte.
    page.execute_script("window.__echoSaved = JSON.stringify(app.graph.serialize());")
    page.execute_async_script("""const done = arguments[0];
        app.loadGraphData(JSON.parse(window.__echoSaved)).then(() => {
          window.__echoNode = app.graph._nodes.find(n => n.type === 'EchoPromptTimeline'); done(); });""")
    B.wait_js(page, "window.__echoNode.echoTimeline.done > 0", what="the reloaded node's refresh")
    assert page.execute_script("return window.__echoNode.echoTimeline.textWidget.value") == TEXT
    click_scene(page, 2)

    # Edit a prompt: only its characters change.
    view = act(page, change(".echo-tl-prompt-input", "a pine forest"))
    assert view["text"] == TEXT.replace("a forest", "a pine forest")
    assert view["prompts"][1] == "a pine forest" and view["error"] is None
    text = view["text"]

    # Drag the boundary after scene 1 by about two chunks to the right: [3s#] becomes 6 chunks = 4.5 s.
    from selenium.webdriver.common.action_chains import ActionChains

    handle = page.execute_script("return window.__echoNode.echoTimeline.view.querySelector('.echo-tl-boundary')")
    px = page.execute_script("const s = window.__echoNode.echoTimeline.view.querySelector('.echo-tl-scene');"
                             "return s.getBoundingClientRect().width / +s.dataset.chunks;")
    before = page.execute_script("return window.__echoNode.echoTimeline.done")
    ActionChains(page).click_and_hold(handle).move_by_offset(int(2.3 * px), 0).release().perform()
    B.wait_js(page, f"window.__echoNode.echoTimeline.done > {before}", what="the parse after the drag")
    view = act(page, "return false;")
    assert view["text"] == text.replace("[3s#]", "[4.5s#]", 1), view["text"]
    assert [s["chunks"] for s in view["scenes"]] == [6, 4, 4]
    text = view["text"]

    # Pick the transition out of scene 1: a recall (automatic routing) instead of the hard cut.
    click_scene(page, 1)
    view = act(page, change(".echo-tl-transition", "@"))
    assert view["text"] == text.replace("[4.5s#]", "[4.5s@]") and "1\u21922 recall (auto)" in view["transitions"]
    text = view["text"]

    # Add a scene: it goes after the last one, before the subtitles.
    view = act(page, "st.view.querySelector('[data-action=\"add\"]').click();")
    assert view["text"] == text.replace("[3s] ;", "[3s] | new scene [3s] ;")
    assert len(view["scenes"]) == 4 and view["promptInput"] == "new scene"  # the new scene is selected
    text = view["text"]
    time.sleep(0.3)  # the recall link is drawn on the next frame
    B.screenshot(page, artifacts_dir / f"comfy{comfy_server.version}" / "timeline_editor_added.png")

    # Move scene 3 ("the beach again", recalls scene 1) left of scene 2: '@1' still names scene 1 and the
    # subtitles follow their scenes.
    click_scene(page, 3)
    view = act(page, "st.view.querySelector('[data-action=\"left\"]').click();")
    assert view["prompts"] == ["a beach at dawn", "the beach again", "a pine forest", "new scene"]
    assert view["text"] == text.replace("a pine forest  [3s@1]||the beach again [3s]",
                                        "the beach again [3s]||a pine forest  [3s@1]").replace("two | three",
                                                                                              "three | two")
    text = view["text"]

    # Delete scene 1 and its subtitle: the recall of scene 1 falls back to automatic routing.
    click_scene(page, 1)
    view = act(page, "st.view.querySelector('[data-action=\"delete\"]').click();")
    assert view["text"] == "  the beach again [3s]||a pine forest  [3s@] | new scene [3s] ; three | two"
    assert view["error"] is None and len(view["scenes"]) == 3 and view["data"]["subtitles"] == ["three", "two", ""]

    # A prompt that the editor would refuse to write is shown inline; the text stays.
    click_scene(page, 1)
    view = act(page, change(".echo-tl-prompt-input", "a | b") + "return false;")
    assert view["text"] == "  the beach again [3s]||a pine forest  [3s@] | new scene [3s] ; three | two"
    assert "prompt: a prompt cannot contain" in view["error"]

    # User text is never HTML: a prompt with markup is shown as characters and runs nothing.
    view = set_text(page, XSS)
    assert view["prompts"] == ["<img src=x onerror=window.__echoXss=1>", "<b>bold</b>"] and view["imgs"] == 0
    assert view["promptInput"] == "<img src=x onerror=window.__echoXss=1>"  # scene 1 is still the one selected
    assert page.execute_script("return window.__echoXss === undefined "
                               "&& document.querySelectorAll('.echo-tl b b, .echo-tl img').length === 0")
    B.screenshot(page, artifacts_dir / f"comfy{comfy_server.version}" / "timeline_editor.png")
    assert not [e for e in B.browser_errors(page) if "/extensions/" in e]  # no error from our scripts


@pytest.mark.host
@pytest.mark.browser
def test_chunk_size_and_steering(editor, comfy_server, artifacts_dir):
    """The totals use the sampler's chunk size (the frame-wise template: 1 frame per chunk, as the route says for
    it), an @name recall reads as the saved scene, and the steering panel against a stub of the server."""
    import requests

    page = editor
    workflow = json.loads(CAUSAL_WORKFLOW.read_text())
    page.execute_async_script("""const [wf, done] = arguments;
        app.loadGraphData(wf).then(() => {
          window.__echoNode = app.graph._nodes.find(n => n.type === 'EchoPromptTimeline'); done(); });""", workflow)
    B.close_dialogs(page)  # the template's model files are not on this server
    B.wait_js(page, "window.__echoNode.echoTimeline.done > 0", what="the template's timeline refresh")
    view = act(page, "return false;")
    text, fps = page.execute_script("const n = window.__echoNode; return [n.echoTimeline.textWidget.value, "
                                    "n.widgets.find(w => w.name === 'fps').value];")
    want = requests.post(comfy_server.url + "/api/echo_forcing/timeline", timeout=10,
                         json={"text": text, "fps": fps, "frames_per_chunk": 1}).json()
    assert view["data"]["frames_per_chunk"] == 1
    assert f"{want['latent_frames']} latent frames \u00b7 {want['total_chunks']} chunks of 1 latent frame " \
           "(the sampler's frames_per_chunk)" in view["totals"]
    # The sampler on auto with a stock MODEL (Load Diffusion Model): 3, as the sampler will use.
    view = act(page, "const s = app.graph._nodes.find(n => n.type === 'EchoForcingSampler');"
                     "const w = s.widgets.find(w => w.name === 'frames_per_chunk');"
                     "w.value = 'auto'; w.callback(w.value);")
    assert view["data"]["frames_per_chunk"] == 3 and "(a stock MODEL's chunk size)" in view["totals"]

    # A recall of a saved scene by name is not automatic routing.
    view = set_text(page, "a harbour [3s@harbour_day] | a market [3s] | the harbour [3s]")
    assert "1\u21922 recall of saved 'harbour_day'" in view["transitions"] and "auto" not in view["transitions"]

    # Steering: the contract's messages on the api object, the steering route answered by a stub.
    node_id = page.execute_script("""
        const node = window.__echoNode;
        window.__steerSent = [];
        const answers = [{error: {message: "<img src=x onerror=window.__echoXss=2> is too long", field: "seconds"}},
                         {accepted: true, applies_at_chunk: 7, timeline: null}, {accepted: true, applies_at_chunk: 8}];
        const orig = app.api.fetchApi;
        app.api.fetchApi = async function (route, opts) {
          if (route !== '/echo_forcing/steer') return orig.call(this, route, opts);
          window.__steerSent.push(JSON.parse(opts.body));
          return new Response(JSON.stringify(answers.shift() ?? {}), {status: 200});
        };
        window.__emit = (type, detail) => app.api.dispatchEvent(new CustomEvent(type, {detail}));
        window.__answers = 0;
        node.echoTimeline.steer.root.addEventListener('echo-steer-answer', () => { window.__answers += 1; });
        return String(node.id);""")
    progress = {"prompt_id": "p-1", "node": "9", "timeline_node": node_id, "chunk": 5, "total_chunks": 12,
                "scene_index": 1, "timeline": "a harbour [3s@harbour_day] | a market [3s] | the harbour [3s]"}
    # The sampler starts: the panel opens before the first chunk, with the prompt id of execution_start.
    page.execute_script("""window.__emit('execution_start', {prompt_id: 'p-1'});
        window.__emit('executing', String(app.graph._nodes.find(n => n.type === 'EchoForcingSampler').id));""")
    view = act(page, "return false;")
    assert view["steer"] and view["scenes"][0]["running"]
    assert page.execute_script("return window.__echoNode.echoTimeline.run.prompt_id") == "p-1"
    page.execute_script(f"window.__emit('echo_forcing.progress', {json.dumps(progress)});")
    B.wait_js(page, "window.__echoNode.echoTimeline.runMessages >= 1", what="the progress message drawn")
    view = act(page, "return false;")
    assert view["steer"] and [(s["done"], s["running"]) for s in view["scenes"]] == [
        (True, False), (False, True), (False, False)]
    status = page.execute_script("return window.__echoNode.echoTimeline.view.querySelector("
                                 "'.echo-tl-steer-status').textContent")
    assert status == "scene 2 of 3 \u00b7 chunk 6 / 12"
    page.execute_script("window.__echoNode.echoTimeline.view.querySelector('.echo-tl-steer-toggle').click()")
    assert page.execute_script("return !window.__echoNode.echoTimeline.view.querySelector("
                               "'.echo-tl-steer-forms').hidden")  # the forms unfold on demand
    options = page.execute_script("return Array.from(window.__echoNode.echoTimeline.view.querySelectorAll("
                                  "'.echo-tl-steer-edit-scene option')).map(o => o.value)")
    assert options == ["3"]  # only scenes that have not started can be edited

    def steer(code: str) -> dict:
        before = page.execute_script("return window.__answers")
        page.execute_script("const st = window.__echoNode.echoTimeline;" + code)
        B.wait_js(page, f"window.__answers > {before}", what="the steering answer")
        return act(page, "return false;")

    fill = ("const v = (c, x) => { st.view.querySelector(c).value = x; };"
            "v('.echo-tl-steer-append-prompt', 'a lighthouse at night'); v('.echo-tl-steer-append-seconds', '4');"
            "st.view.querySelector('[data-action=\"append\"]').click()")
    view = steer(fill)
    sent = page.execute_script("return window.__steerSent")
    assert sent == [{"prompt_id": "p-1", "action": "append", "prompt": "a lighthouse at night", "seconds": 4,
                     "transition": "smooth"}]
    assert view["steerField"] == "seconds" and view["steerMsg"].startswith("seconds: <img src=x")
    assert view["imgs"] == 0 and page.execute_script("return window.__echoXss === undefined")

    view = steer("st.view.querySelector('.echo-tl-steer-now').value = 'recall:1';"
                 "st.view.querySelector('[data-action=\"now\"]').click()")
    sent = page.execute_script("return window.__steerSent")
    assert sent[-1] == {"prompt_id": "p-1", "action": "recall", "scene": 1}
    assert view["steerMsg"] == "accepted: applies at chunk 7"

    view = steer("st.view.querySelector('.echo-tl-steer-edit-seconds').value = 'soon';"
                 "st.view.querySelector('[data-action=\"edit\"]').click()")  # refused before it is sent
    assert len(page.execute_script("return window.__steerSent")) == 2 and view["steerField"] == "seconds"
    view = steer("st.view.querySelector('[data-action=\"stop\"]').click()")
    assert page.execute_script("return window.__steerSent")[-1] == {"prompt_id": "p-1", "action": "stop"}
    time.sleep(0.3)
    B.screenshot(page, artifacts_dir / f"comfy{comfy_server.version}" / "timeline_steering.png")

    # The end of the run writes what was generated back into the widget and leaves run mode.
    final = "a harbour [3s@harbour_day] | a market [2.25s] | a lighthouse at night [4s]"
    view = act(page, "window.__emit('echo_forcing.timeline_final', " + json.dumps(
        {"prompt_id": "p-1", "node": "9", "timeline_node": node_id, "timeline": final}) + ");")
    assert view["text"] == final and not view["steer"] and not any(s["running"] for s in view["scenes"])
    assert view["prompts"][2] == "a lighthouse at night"
