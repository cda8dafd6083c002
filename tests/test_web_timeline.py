"""The timeline editor: the /echo_forcing/timeline route and the front-end view it feeds.

Three layers: the route's request handling called directly, the aiohttp handler in-process, and (markers
`host` + `browser`) a real ComfyUI server with the plugin mounted, driven by headless Chromium through
Selenium: the test adds a Prompt Timeline node through the frontend's JS API, types timelines into its text
widget and reads back what web/js/echo_timeline.js drew. Chromium comes from scripts/install_browser.sh.

Expected numbers come from spec §6.1's worked example (6 x 10 s: 13 chunks per scene, 15 for the last,
boundaries at 13, 26, 39, 52, 65, 80 chunks = 240 latent frames), not from running the parser.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest

import browser as B

REPO_ROOT = Path(__file__).resolve().parents[1]
ROUTE_FILE = REPO_ROOT / "nodes" / "timeline_route.py"

# The official recall prompt set (spec §6.1): A->B hard, B->C hard, C->A' recall, A'->B' recall, B'->C' recall.
OFFICIAL = "A red fox [10s#] | B blue lake [10s#] | C old town [10s@] | A fox again [10s@] | B lake again [10s@] " \
           "| C town again [10s]"
OFFICIAL_CHUNKS = [13, 13, 13, 13, 13, 15]
OFFICIAL_AT = [13, 26, 39, 52, 65]
OFFICIAL_MODES = ["hardcut", "hardcut", "recall", "recall", "recall"]
BAD_UNIT = "a cat on a sofa [5s] | the cat jumps [5m#] | a dog [5s]"  # scene 2 uses minutes


@pytest.fixture(scope="module")
def route():
    """nodes/timeline_route.py under a private module name: importing it as `nodes.timeline_route` would
    shadow ComfyUI's own top-level `nodes` module for the in-process host tests of the same session."""
    spec = importlib.util.spec_from_file_location("echo_timeline_route_under_test", ROUTE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REGISTERED is False  # no ComfyUI server in this process
    return module


# ------------------------------------------------------------------------------------------ request handling

def test_route_parses_official_example(route):
    status, body = route.timeline_response({"text": OFFICIAL})
    assert status == 200 and "error" not in body
    assert [s["num_chunks"] for s in body["scenes"]] == OFFICIAL_CHUNKS
    assert [t["at_chunk"] for t in body["transitions"]] == OFFICIAL_AT
    assert [t["mode"] for t in body["transitions"]] == OFFICIAL_MODES
    assert [t["recall_source"] for t in body["transitions"]] == [None] * 5  # automatic routing
    assert body["total_chunks"] == 80 and body["latent_frames"] == 240
    assert body["scenes"][0]["prompt"] == "A red fox" and body["scenes"][0]["seconds"] == 10.0
    json.dumps(body)  # the whole answer must be JSON


def test_route_converts_query_strings_and_passes_options(route):
    # Incoming markers: the marker on scene i says how scene i is entered: B's '#' enters B, C's, A''s and
    # B''s '@' enter those scenes, and C' has no marker, so B'->C' takes the default (smooth).
    status, body = route.timeline_response({"text": OFFICIAL, "fps": "16", "frames_per_chunk": "3",
                                            "marker_semantics": "incoming"})
    assert status == 200, body
    assert [t["mode"] for t in body["transitions"]] == ["hardcut", "recall", "recall", "recall", "smooth"]
    status, body = route.timeline_response({"text": "a [6s] | b [6s]", "fps": "8", "frames_per_chunk": "2"})
    assert status == 200, body
    # 6 s at 8 fps = 48 frames -> 12 latent frames -> chunks of 2 -> int(48 / 8) = 6 chunks per scene.
    assert [s["num_chunks"] for s in body["scenes"]] == [6, 6]


def test_route_manual_recall_source(route):
    status, body = route.timeline_response({"text": "a [3s#] | b [3s@1] | c [3s]"})
    assert status == 200, body
    assert [(t["mode"], t["recall_source"]) for t in body["transitions"]] == [("hardcut", None), ("recall", 0)]


def test_route_reports_parse_error_with_position(route):
    status, body = route.timeline_response({"text": BAD_UNIT})
    assert status == 200
    err = body["error"]
    assert err["scene_index"] == 1 and err["field"] == "unit"
    assert err["column"] == BAD_UNIT.index("m#]")  # points at the unit inside the tag
    assert "scene 2" in err["message"] and "'m'" in err["message"] and "[10s]" in err["message"]


def test_route_gives_source_ranges_for_splicing(route):
    """Each scene's pieces as [start, end) ranges of the text as written (odd spacing, an opening tag, a tag in the
    middle of a prompt, empty parts and subtitles), so the editor can change one piece and leave the rest."""
    text = "  [@intro] a cat [10s@1 ] |b  [ 5 s #]|| c dog [3s@hero] d | e [2s] ; one|two"
    status, body = route.timeline_response({"text": text})
    assert status == 200, body
    cut = [{k: None if r is None else text[r[0]:r[1]] for k, r in s.items()} for s in body["source"]]
    assert cut[0] == {"span": "[@intro] a cat [10s@1 ]", "prompt": "a cat", "tag": "[10s@1 ]", "seconds": "10",
                      "marker": "@1", "opening": "[@intro]"}
    assert cut[1] == {"span": "b  [ 5 s #]", "prompt": "b", "tag": "[ 5 s #]", "seconds": "5", "marker": "#",
                      "opening": None}
    assert cut[2]["prompt"] == "c dog [3s@hero] d" and cut[2]["marker"] == "@hero"
    e = body["source"][3]
    assert cut[3]["marker"] == "" and e["marker"] == [text.index("s] ;") + 1] * 2  # where a marker would go
    assert [s["prompt"] for s in body["scenes"]] == ["a cat", "b", "c dog d", "e"]  # the parser's view agrees
    assert [text[a:b] for a, b in body["subtitle_source"]] == ["one", "two"]
    subs = "a [2s] | b [2s] ;x|  | y ; not a subtitle"
    status, body = route.timeline_response({"text": subs})
    blank = subs.index("|  |") + 3  # an empty subtitle: an empty range where its text would go
    assert body["subtitle_source"] == [[17, 18], [blank, blank], [23, 24]] and subs[23] == "y"
    assert route.timeline_response({"text": "a [2s]"})[1]["subtitle_source"] == []


@pytest.mark.parametrize("params, field", [
    ({}, "text"),
    ({"text": 5}, "text"),
    ({"text": "x" * 100_001}, "text"),
    ({"text": "a [5s]", "frames": "3"}, "frames"),
])
def test_route_rejects_malformed_requests(route, params, field):
    status, body = route.timeline_response(params)
    assert status == 400 and body["error"]["field"] == field and body["error"]["message"]


@pytest.mark.parametrize("params, field", [
    ({"text": "a [5s]", "fps": "fast"}, "fps"),
    ({"text": "a [5s]", "frames_per_chunk": "2.5"}, "frames_per_chunk"),
    ({"text": "a [5s]", "frames_per_chunk": 0}, "frames_per_chunk"),
    ({"text": "a [5s]", "marker_semantics": "sideways"}, "marker_semantics"),
    ({"text": "a [5s]", "default_mode": "sideways"}, "default_mode"),
])
def test_route_option_errors_name_the_field(route, params, field):
    status, body = route.timeline_response(params)
    assert status == 200 and body["error"]["field"] == field and body["error"]["scene_index"] is None


def test_route_through_aiohttp(route):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def scenario() -> None:
        routes = web.RouteTableDef()
        route.register(routes)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            r = await client.get(route.ROUTE, params={"text": OFFICIAL, "fps": "16"})
            assert r.status == 200
            assert [t["mode"] for t in (await r.json())["transitions"]] == OFFICIAL_MODES
            r = await client.post(route.ROUTE, json={"text": BAD_UNIT, "marker_semantics": "outgoing"})
            assert r.status == 200 and (await r.json())["error"]["scene_index"] == 1
            r = await client.post(route.ROUTE, data=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status == 400 and (await r.json())["error"]["field"] == "body"
            r = await client.post(route.ROUTE, json=["a [5s]"])
            assert r.status == 400 and (await r.json())["error"]["field"] == "body"

    asyncio.run(scenario())


def test_route_registers_once_on_a_running_host(route, monkeypatch):
    """Inside ComfyUI the module finds PromptServer.instance; a second import must not add the route again
    (aiohttp would refuse to start with two GET handlers for one path)."""
    import types

    from aiohttp import web

    instance = types.SimpleNamespace(routes=web.RouteTableDef())
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace(PromptServer=types.SimpleNamespace(
        instance=instance)))
    assert route._register_with_host() and route._register_with_host()
    assert sorted((r.method, r.path) for r in instance.routes) == [("GET", route.ROUTE), ("POST", route.ROUTE)]
    monkeypatch.setitem(sys.modules, "server", types.SimpleNamespace())  # not ComfyUI's server module
    assert route._register_with_host() is False


# ------------------------------------------------------------------------------------------ real host

@pytest.mark.host
def test_route_on_real_server(comfy_server):
    import requests

    for prefix in ("", "/api"):  # ComfyUI serves every route twice; the front end uses /api
        r = requests.post(comfy_server.url + prefix + "/echo_forcing/timeline", json={"text": OFFICIAL}, timeout=10)
        assert r.status_code == 200, r.text
        assert [t["at_chunk"] for t in r.json()["transitions"]] == OFFICIAL_AT
    r = requests.get(comfy_server.url + "/api/echo_forcing/timeline", params={"text": BAD_UNIT}, timeout=10)
    assert r.json()["error"]["scene_index"] == 1


# ------------------------------------------------------------------------------------------ browser

NODE_TYPE = "EchoPromptTimeline"


# JS run in the page: set the node's text the way typing does (input event -> widget callback) and
# resolve with what the view shows once the debounced refresh has landed.
SET_TEXT_JS = """
const [texts, done] = [arguments[0], arguments[arguments.length - 1]];
const node = window.__echoNode, st = node.echoTimeline, before = st.done;
const input = st.textWidget.inputEl;
for (const t of texts) { input.value = t; input.dispatchEvent(new Event('input', {bubbles: true})); }
(function poll() {
  if (st.done === before) return setTimeout(poll, 25);
  setTimeout(report, 500);  // longer than the debounce: a second refresh would show up in the count
})();
function report() {
  const v = st.view, q = (s) => Array.from(v.querySelectorAll(s));
  done({
    refreshes: st.done - before,
    scenes: q('.echo-tl-scene').map(e => ({n: +e.dataset.scene, chunks: +e.dataset.chunks,
        width: e.getBoundingClientRect().width, text: e.innerText})),
    boundaries: q('.echo-tl-boundary').map(e => ({mode: e.dataset.mode, at: +e.dataset.atChunk,
        recall: e.dataset.recallSource || null, title: e.title})),
    transitions: v.querySelector('.echo-tl-transitions')?.innerText ?? null,
    totals: v.querySelector('.echo-tl-totals')?.innerText ?? null,
    error: v.querySelector('.echo-tl-error') ? {text: v.querySelector('.echo-tl-error').innerText,
        scene: v.querySelector('.echo-tl-error').dataset.scene} : null,
    stale: !!v.querySelector('.echo-tl-bar.stale'),
  });
}
"""


@pytest.fixture
def page(comfy_server, browser):
    """The ComfyUI page with one Prompt Timeline node in an empty graph (window.__echoNode)."""
    t0 = time.monotonic()
    B.open_app(browser, comfy_server.url, NODE_TYPE)
    browser.execute_script(f"""
        app.graph.clear();
        const node = LiteGraph.createNode({NODE_TYPE!r});
        node.pos = [90, 150];  // clear of the side bar and the floating workflow menu
        app.graph.add(node);
        node.setSize([760, node.computeSize()[1]]);
        app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1;
        app.graph.setDirtyCanvas(true, true);
        window.__echoNode = node;""")
    B.wait_js(browser, "window.__echoNode.echoTimeline && window.__echoNode.echoTimeline.done > 0",
              what="the first timeline refresh")
    browser.page_load_seconds = time.monotonic() - t0
    return browser


def set_text(page, *texts: str) -> dict:
    return page.execute_async_script(SET_TEXT_JS, list(texts))


@pytest.mark.host
@pytest.mark.browser
def test_view_draws_scenes_and_transitions(page, comfy_server, artifacts_dir):
    # Three quick edits inside the debounce window: only the last one is parsed and drawn.
    view = set_text(page, "draft one [5s]", "draft two [5s] | x [5s]", OFFICIAL)
    assert view["refreshes"] == 1 and view["error"] is None
    assert [s["n"] for s in view["scenes"]] == [1, 2, 3, 4, 5, 6]
    assert [s["chunks"] for s in view["scenes"]] == OFFICIAL_CHUNKS
    widths = [s["width"] for s in view["scenes"]]
    assert widths[5] / widths[0] == pytest.approx(15 / 13, rel=0.05)  # bars proportional to chunks
    assert "A red fox" in view["scenes"][0]["text"] and "10 s" in view["scenes"][0]["text"]
    assert [(b["mode"], b["at"]) for b in view["boundaries"]] == list(zip(OFFICIAL_MODES, OFFICIAL_AT))
    assert "scene 3 \u2192 4" in view["boundaries"][2]["title"] and "auto" in view["boundaries"][2]["title"]
    assert "1\u21922 hard cut" in view["transitions"] and "3\u21924 recall (auto)" in view["transitions"]
    assert "240 latent frames" in view["totals"] and "80 chunks" in view["totals"]
    time.sleep(0.3)  # let the canvas repaint before the picture
    shot = B.screenshot(page, artifacts_dir / f"comfy{comfy_server.version}" / "timeline.png")
    assert shot.stat().st_size > 10_000


@pytest.mark.host
@pytest.mark.browser
def test_view_manual_recall_and_error(page, comfy_server, artifacts_dir):
    view = set_text(page, "a beach [3s#] | a forest [3s@1] | the beach again [3s]")
    assert [(b["mode"], b["recall"]) for b in view["boundaries"]] == [("hardcut", None), ("recall", "1")]
    assert "2\u21923 recall scene 1" in view["transitions"]

    view = set_text(page, BAD_UNIT)
    assert view["error"] is not None and view["error"]["scene"] == "2"
    assert "scene 2" in view["error"]["text"] and "column" in view["error"]["text"]
    assert view["stale"] and len(view["scenes"]) == 3  # the last good timeline stays, dimmed
    B.screenshot(page, artifacts_dir / f"comfy{comfy_server.version}" / "timeline_error.png")

    view = set_text(page, "one scene only [4s]")
    assert view["error"] is None and not view["stale"] and len(view["scenes"]) == 1
    assert view["boundaries"] == []


SET_WIDGET_JS = """
const [name, value, done] = arguments;
const node = window.__echoNode, st = node.echoTimeline, before = st.done;
const w = node.widgets.find(w => w.name === name);
w.value = value; w.callback?.(w.value);  // what a click on the widget does
(function poll() {
  if (st.done === before) return setTimeout(poll, 25);
  done(Array.from(st.view.querySelectorAll('.echo-tl-boundary')).map(e => e.dataset.mode));
})();
"""


@pytest.mark.host
@pytest.mark.browser
def test_view_follows_option_widgets(page):
    """Unmarked boundaries take the node's default transition; changing that widget redraws the view."""
    set_text(page, "a harbour [3s] | a market [3s#] | a lighthouse [3s]")
    try:
        modes = page.execute_async_script(SET_WIDGET_JS, "default_transition", "recall")
        assert modes == ["recall", "hardcut"]
        modes = page.execute_async_script(SET_WIDGET_JS, "fps", 8)  # any option widget triggers a refresh
        assert modes == ["recall", "hardcut"]
    finally:
        page.execute_async_script(SET_WIDGET_JS, "default_transition", "smooth")
    assert page.execute_script("return window.__echoNode.echoTimeline.data.fps") == 8


def test_route_refuses_what_the_sampler_would_refuse(route):
    status, body = route.timeline_response({"text": "a day [86400s]"})
    assert status == 200 and body["error"]["field"] == "text" and "115,200 chunks" in body["error"]["message"]
