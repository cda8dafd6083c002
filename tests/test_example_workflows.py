"""The templates ComfyUI lists (example_workflows/) and their API twins (api_workflows/), checked as files.

ComfyUI's Templates menu reads every JSON in a plugin's example_workflows/ (and in example/, examples/, workflow/,
workflows/) and shows <name>.jpg beside it as the thumbnail; an API-format file there opens as an empty tab with
"Workflow does not contain a valid version". That the twins describe the same graph is checked against each host's
/object_info in test_nodes_server.py; that they open and run in the real frontends, in test_web_templates.py.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

import echo_nodes_support as S
from template_builder import MODEL_SOURCES, MODEL_WIDGETS, NOTES

MENU_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")  # app/custom_node_manager.py
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar sits above its pos
TEMPLATES = sorted(p.stem for p in S.EXAMPLES.glob("*.json"))


def _ui(name: str) -> dict:
    return json.loads((S.EXAMPLES / f"{name}.json").read_text())


def test_the_menu_reads_only_ui_templates_each_with_a_thumbnail():
    assert [d for d in MENU_FOLDERS if (S.REPO / d).exists()] == ["example_workflows"]
    files = sorted(p.name for p in S.EXAMPLES.iterdir())
    assert files == sorted([f"{n}.json" for n in TEMPLATES] + [f"{n}.jpg" for n in TEMPLATES])
    assert len(TEMPLATES) == 5 and TEMPLATES == sorted(p.stem for p in S.API_WORKFLOWS.glob("*.json"))
    for name in TEMPLATES:
        ui = _ui(name)
        assert {"nodes", "links", "version"} <= set(ui), f"{name} is not in the UI format"
        api = S.load_api_workflow(f"{name}.json")
        assert api and all("class_type" in n for n in api.values()), f"api_workflows/{name}.json is not API format"
        with Image.open(S.EXAMPLES / f"{name}.jpg") as im:
            assert im.format == "JPEG" and im.size[0] == im.size[1] >= 256


@pytest.mark.parametrize("name", TEMPLATES)
def test_layout_left_to_right_without_overlaps(name):
    ui = _ui(name)
    nodes = {n["id"]: n for n in ui["nodes"]}
    boxes = {i: (n["pos"][0], n["pos"][1] - TITLE, n["size"][0], n["size"][1] + TITLE) for i, n in nodes.items()}
    ids = sorted(boxes)
    for k, a in enumerate(ids):
        ax, ay, aw, ah = boxes[a]
        for b in ids[k + 1:]:
            bx, by, bw, bh = boxes[b]
            assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), \
                f"{nodes[a].get('title', nodes[a]['type'])} overlaps {nodes[b].get('title', nodes[b]['type'])}"
    for _, src, _, dst, _, _ in ui["links"]:  # every link runs left to right
        assert nodes[src]["pos"][0] + nodes[src]["size"][0] < nodes[dst]["pos"][0], (nodes[src]["type"],
                                                                                     nodes[dst]["type"])
    for n in ui["nodes"]:
        if n["type"] == "EchoPromptTimeline":
            assert n["size"][0] >= 600  # wide enough for the timeline view under its text
    assert ui["extra"]["ds"]["scale"] == 1  # opens at 100% zoom


@pytest.mark.parametrize("name", TEMPLATES)
def test_note_and_loaders_say_which_files_and_where_to_get_them(name):
    ui = _ui(name)
    notes = [n for n in ui["nodes"] if n["type"] in ("MarkdownNote", "Note")]
    assert len(notes) == 1 and notes[0]["widgets_values"][0] == NOTES[name]
    needed = set()
    for n in ui["nodes"]:
        widget = MODEL_WIDGETS.get(n["type"])
        if widget is None:
            continue
        value = n["widgets_values"][0]  # the file is each loader's first widget
        if value not in MODEL_SOURCES:
            assert value == "echo-forcing-toy (bundled demo)", f"{n['type']}: {value} has no source"
            continue
        folder, url = MODEL_SOURCES[value]
        assert n["properties"]["models"] == [{"name": value, "url": url, "directory": folder}]
        assert url.startswith("https://huggingface.co/") and url.endswith("/" + value)
        needed.add(value)
        assert value in S.REAL_MODEL_FILES[folder]  # the test servers hold a stand-in under this name
    for value in needed:
        assert value in NOTES[name] and MODEL_SOURCES[value][1] in NOTES[name]
    seeds = [n for n in ui["nodes"] if n["type"] == "EchoForcingSampler"]
    assert seeds and all(n["widgets_values"][1] == "fixed" for n in seeds)  # the thumbnail's video, every time
