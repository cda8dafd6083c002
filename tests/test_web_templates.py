"""First contact, in the real frontend of each host (ComfyUI 0.3.75 / frontend 1.32.9 and 0.8.0 / 1.35.9), in
headless Chromium: every template opens from the Templates menu with its thumbnail and without an error dialog or
a missing node, the demo template runs to a video with its report drawn on the sampler node, a graph built from
the node menu with default values runs, the cache budget follows the settings live, and Decay Settings loads the
official values of the mode picked. Screenshots go to out/test-artifacts/comfy<version>/ (conftest.artifacts_dir).
"""

from __future__ import annotations

import json
import time

import pytest

import browser as B
import echo_nodes_support as S

pytestmark = [pytest.mark.host, pytest.mark.browser, pytest.mark.slow]

TEMPLATES = sorted(p.stem for p in S.EXAMPLES.glob("*.json"))
MODULE = "comfyui-echo-forcing"
DEMO = "Demo - bundled model"

# Open the Templates dialog the way its menu entry does, pick our category, then list the cards and thumbnails.
OPEN_TEMPLATES_JS = """
const [module, done] = arguments;
(async () => {
  await app.extensionManager.command.execute('Comfy.BrowseTemplates');
  const find = () => Array.from(document.querySelectorAll('.p-dialog nav *'))
    .find(e => e.children.length <= 2 && e.innerText && e.innerText.trim() === module);
  for (let i = 0; i < 100 && !find(); i++) await new Promise(r => setTimeout(r, 100));
  find().click();
  const cards = () => Array.from(document.querySelectorAll('[data-testid^="template-workflow-"]'));
  for (let i = 0; i < 100; i++) {
    const imgs = cards().map(c => c.querySelector('img'));
    if (imgs.length && imgs.every(img => img && img.complete && img.naturalWidth > 0)) break;
    await new Promise(r => setTimeout(r, 100));
  }
  done(cards().map(c => ({name: c.getAttribute('data-testid').replace('template-workflow-', ''),
                          text: c.innerText, img: c.querySelector('img')?.src,
                          imgWidth: c.querySelector('img')?.naturalWidth})));
})().catch(e => done({error: String(e)}));
"""

CLICK_CARD_JS = """
const [name, done] = arguments;
const card = document.querySelector(`[data-testid="template-workflow-${name}"]`);
(card.querySelector('img') || card).click();
done(true);
"""


def _open_template(page, name: str) -> list[dict]:
    cards = page.execute_async_script(OPEN_TEMPLATES_JS, MODULE)
    assert isinstance(cards, list), cards
    page.execute_async_script(CLICK_CARD_JS, name)
    B.wait_js(page, f"app.graph._nodes.length > 0 && !document.querySelector('.p-dialog') && "
                    f"app.extensionManager.workflow.activeWorkflow?.filename?.startsWith({name!r})",
              what=f"template {name} to load")
    time.sleep(0.5)
    return cards


@pytest.fixture
def page(comfy_server, browser):
    B.open_app(browser, comfy_server.url)
    B.browser_errors(browser)  # start each test with a drained console log
    return browser


def _shots(artifacts_dir, comfy_server):
    return artifacts_dir / f"comfy{comfy_server.version}"


def test_every_template_opens_from_the_templates_menu(page, comfy_server, artifacts_dir):
    for name in TEMPLATES:
        cards = _open_template(page, name)
        # The menu lists exactly our UI templates, each with its own thumbnail (no 404, no stock placeholder).
        assert sorted(c["name"] for c in cards) == TEMPLATES
        for c in cards:  # our 512 px thumbnails (the frontend shows a blob of the .jpg; its placeholder is 224 px)
            assert "default-template" not in c["img"] and c["imgWidth"] == 512, c
        assert B.dialogs(page) == [], f"{name}: a dialog opened: {B.dialogs(page)}"
        nodes = B.graph_nodes(page)
        unknown = [n["type"] for n in nodes if not n["known"]]
        assert not unknown, f"{name}: missing node types {unknown}"
        assert not B.overlaps(nodes), f"{name}: overlapping nodes {B.overlaps(nodes)}"
        ui = json.loads((S.EXAMPLES / f"{name}.json").read_text())
        assert len(nodes) == len(ui["nodes"])
        # The plugin's views are up: the timeline under the Prompt Timeline text, the budget on the cache node.
        B.wait_js(page, "app.graph._nodes.filter(n => n.type === 'EchoPromptTimeline')"
                        ".every(n => n.echoTimeline && n.echoTimeline.done > 0)", what="the timeline views")
        B.wait_js(page, "app.graph._nodes.filter(n => n.type === 'EchoSceneMemoryCache')"
                        ".every(n => n.echoBudget && n.echoBudget.done > 0)", what="the budget views")
        assert page.execute_script("return app.canvas.ds.scale") == 1  # opens at 100% zoom
        B.screenshot(page, _shots(artifacts_dir, comfy_server) / f"template - {name}.png")
    severe = [e for e in B.browser_errors(page) if "api.comfy.org" not in e and "favicon" not in e
              and "user.css" not in e and "/api/userdata" not in e]
    assert not [e for e in severe if "echo" in e.lower()], severe


def _queue(page, comfy_server) -> set:
    """Queue the open graph as the Run button does; returns the prompt ids the server knew before."""
    before = set(comfy_server.get_json("/history"))
    page.execute_script("app.queuePrompt(0, 1)")
    return before


def _wait_report(page, comfy_server, before: set, node_type: str = "EchoForcingSampler",
                 timeout: float = 600) -> dict:
    """Wait for the report on every sampler node; fail at once, with the server's words, if this run fails."""
    script = (f"app.graph._nodes.filter(n => n.type === {node_type!r})"
              f".every(n => n.echoReport && n.echoReport.summary)")
    deadline = time.monotonic() + timeout
    while not page.execute_script(f"return !!({script});"):
        history = {k: v for k, v in comfy_server.get_json("/history").items() if k not in before}
        failed = [e["status"] for e in history.values() if e.get("status", {}).get("status_str") == "error"]
        assert not failed, f"the run failed: {json.dumps(failed)[:3000]}; dialogs: {B.dialogs(page)}"
        if time.monotonic() > deadline:
            queue = comfy_server.get_json("/queue")
            raise TimeoutError(f"no report on the sampler node after {timeout:.0f} s; queue running "
                               f"{len(queue['queue_running'])}, pending {len(queue['queue_pending'])}; history "
                               f"{[e.get('status') for e in history.values()][-2:]}; dialogs {B.dialogs(page)}; "
                               f"log tail:\n{comfy_server.log_tail(15)}")
        time.sleep(0.5)
    return page.execute_script(f"""
        const n = app.graph._nodes.find(n => n.type === {node_type!r});
        return {{summary: n.echoReport.summary, text: n.echoReport.view.innerText}};""")


def _last_history(comfy_server, before: set, timeout: float = 300) -> dict:
    """The prompt queued since `before`, once the queue has run dry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = comfy_server.get_json("/queue")
        history = {k: v for k, v in comfy_server.get_json("/history").items() if k not in before}
        if not queue["queue_running"] and not queue["queue_pending"] and history:
            entry = list(history.values())[-1]
            if entry.get("status", {}).get("status_str"):
                return entry
        time.sleep(0.3)
    raise TimeoutError(f"the queue did not finish within {timeout} s")


def _saved_video(comfy_server, entry: dict):
    import io

    import av

    items = [i for o in entry["outputs"].values() for k in ("images", "videos") for i in o.get(k, [])
             if i["filename"].endswith((".mp4", ".webm"))]
    assert items, entry["outputs"]
    data = comfy_server.view(items[0]["filename"], items[0]["subfolder"], items[0]["type"])
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return sum(1 for _ in container.decode(video=0)), float(stream.average_rate)


def test_demo_template_runs_to_a_video_and_reports_on_the_node(page, comfy_server, artifacts_dir):
    _open_template(page, DEMO)
    before = _queue(page, comfy_server)
    report = _wait_report(page, comfy_server, before)
    s = report["summary"]
    assert [sc["transition"] for sc in s["scenes"]] == [None, "hardcut", "recall"]
    assert s["size"] == [48, 48] and s["steps"] == 12
    for words in ("hard cut, RoPE +45", "recall of scene 1", "peak cache", "host (recall pool)", "s per chunk"):
        assert words in report["text"], (words, report["text"])
    entry = _last_history(comfy_server, before)
    assert entry["status"]["status_str"] == "success"
    frames, fps = _saved_video(comfy_server, entry)
    assert frames == 4 * s["latent_frames"] - 3 and fps == 16
    page.execute_script("app.canvas.ds.offset = [-700, 0]; app.graph.setDirtyCanvas(true, true)")
    B.screenshot(page, _shots(artifacts_dir, comfy_server) / "demo template after a run.png")


# Nodes added the way the node menu adds them (LiteGraph.createNode: every widget at its default), wired in the
# obvious way to the bundled model; Create Video's fps comes from the sampler's fps output.
MENU_GRAPH_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  app.graph.clear();
  const add = (type, x, y) => { const n = LiteGraph.createNode(type); n.pos = [x, y]; app.graph.add(n); return n; };
  const loader = add('EchoLoadARVideoModel', 100, 150), text = add('EchoToyTextEncoder', 100, 420);
  const timeline = add('EchoPromptTimeline', 500, 150), recall = add('EchoRecallScene', 1150, 150);
  const decay = add('EchoDecaySettings', 500, 600), memory = add('EchoSceneMemoryCache', 900, 600);
  const sampler = add('EchoForcingSampler', 1500, 150), decode = add('EchoToyDecode', 1950, 150);
  const video = add('CreateVideo', 1950, 300), save = add('SaveVideo', 2300, 150);
  text.connect(0, timeline, 'clip');
  timeline.connect(0, recall, 'timeline');
  decay.connect(0, memory, 'decay');
  loader.connect(0, memory, 'budget_model');
  loader.connect(0, sampler, 'model');
  recall.connect(0, sampler, 'timeline');
  memory.connect(0, sampler, 'memory');
  sampler.connect(0, decode, 'samples');
  decode.connect(0, video, 'images');
  sampler.connect(2, video, 'fps');
  video.connect(0, save, 'video');
  app.graph.setDirtyCanvas(true, true);
  const w = (n) => Object.fromEntries((n.widgets || [])
    .filter(w => w.type !== 'echo_panel' && typeof w.value !== 'object').map(w => [w.name, w.value]));
  done({loader: w(loader), timeline: w(timeline), recall: w(recall), decay: w(decay), memory: w(memory),
        sampler: w(sampler), video: w(video)});
})().catch(e => done({error: String(e) + e.stack}));
"""


def test_graph_from_the_node_menu_with_defaults_runs(page, comfy_server, artifacts_dir):
    defaults = page.execute_async_script(MENU_GRAPH_JS)
    assert "error" not in defaults, defaults
    assert defaults["loader"]["model_name"] == "echo-forcing-toy (bundled demo)"
    assert (defaults["sampler"]["width"], defaults["sampler"]["height"], defaults["sampler"]["steps"]) == (0, 0, 0)
    assert defaults["recall"]["source"] == "auto" and defaults["decay"]["transition"] == "smooth"
    before = _queue(page, comfy_server)
    report = _wait_report(page, comfy_server, before)
    assert report["summary"]["size"] == [48, 48]
    entry = _last_history(comfy_server, before)
    assert entry["status"]["status_str"] == "success", entry["status"]
    frames, fps = _saved_video(comfy_server, entry)
    assert fps == 16 and frames == 4 * report["summary"]["latent_frames"] - 3  # the timeline's fps, not 30
    assert not B.dialogs(page)
    page.execute_script("app.canvas.ds.offset = [-300, 0]; app.graph.setDirtyCanvas(true, true)")
    B.screenshot(page, _shots(artifacts_dir, comfy_server) / "graph from the node menu after a run.png")


BUDGET_JS = """
const [changes, done] = arguments;
const node = app.graph._nodes.find(n => n.type === 'EchoSceneMemoryCache'), st = node.echoBudget;
(async () => {
  const settle = async () => { const before = st.done; for (let i = 0; i < 200 && st.done === before; i++)
    await new Promise(r => setTimeout(r, 25)); await new Promise(r => setTimeout(r, 400)); };
  const out = [];
  for (const [name, value] of changes) {
    const w = node.widgets.find(w => w.name === name); w.value = value; w.callback?.(w.value);
    await settle();
    out.push({budget: st.data.budget, error: st.data.error, model: st.data.model, text: st.view.innerText});
  }
  done(out);
})();
"""


def test_budget_follows_the_settings_live_and_decay_loads_official_values(page, comfy_server, artifacts_dir):
    from echo_core.config import EchoConfig

    page.execute_async_script(MENU_GRAPH_JS)
    B.wait_js(page, "app.graph._nodes.find(n => n.type === 'EchoSceneMemoryCache').echoBudget.done > 0")
    out = page.execute_async_script(BUDGET_JS, [["anchor_frames", 12], ["anchor_frames", 6], ["budget_width", 96],
                                                ["anchor_frames", 1]])
    first, fewer, wider, bad = out
    assert first["model"] == "bundled demo model" and first["budget"]["window_frames"] == 21
    assert fewer["budget"]["window_frames"] == 15 and fewer["budget"]["cache_mb"] < first["budget"]["cache_mb"]
    assert wider["budget"]["tokens_per_frame"] == 2 * first["budget"]["tokens_per_frame"]  # 96x48 vs 48x48
    assert f"{first['budget']['cache_mb']} MB K/V" in first["text"] and "recall pool" in first["text"]
    assert bad["error"] and bad["error"]["field"] == "anchor_frames"  # drawn on the node, not a dialog
    B.screenshot(page, _shots(artifacts_dir, comfy_server) / "budget on the cache node.png")

    values = page.execute_script("""
        const n = app.graph._nodes.find(n => n.type === 'EchoDecaySettings');
        const t = n.widgets.find(w => w.name === 'transition');
        t.value = 'hardcut'; t.callback(t.value);
        return Object.fromEntries(n.widgets.map(w => [w.name, w.value]));""")
    official = EchoConfig().mode("hardcut").decay
    assert values["strategy"] == official.strategy == "fixed"
    assert values["fixed_rate"] == official.fixed_rate == 1.0
    assert values["first_chunk_weight"] == official.first_block_weight == 0.8
    assert values["clear_after_chunks"] == official.clear_after_blocks == 1
