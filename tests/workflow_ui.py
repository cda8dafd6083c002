"""Convert between ComfyUI's API-format graphs and its UI (litegraph) workflow format, using /object_info.

Used to check that each template (example_workflows/, UI format) still says what its API twin (api_workflows/)
says. Frontend-only nodes (notes, reroutes) have no API counterpart and are skipped.
Widget values follow the node's input order (required, then optional); an INT input with
control_after_generate carries one extra widget value ("fixed") right after it, as the frontend saves it.
"""

from __future__ import annotations

from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def _inputs(info: dict) -> list[tuple[str, Any, dict]]:
    """(name, type, options) in the node's input order."""
    out = []
    for section in ("required", "optional"):
        spec = info["input"].get(section, {})
        for name in info.get("input_order", {}).get(section, list(spec)):
            entry = spec[name]
            out.append((name, entry[0], entry[1] if len(entry) > 1 else {}))
    return out


def _is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def api_to_ui(api: dict, object_info: dict) -> dict:
    nodes, links = [], []
    order = sorted(api, key=int)
    outgoing: dict[tuple[str, int], list[int]] = {}
    for nid in order:  # links first, so outputs can list them
        for name, value in api[nid]["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                link_id = len(links) + 1
                src, slot = value
                kind = object_info[api[src]["class_type"]]["output"][slot]
                links.append([link_id, int(src), slot, int(nid), name, kind])
                outgoing.setdefault((src, slot), []).append(link_id)
    for i, nid in enumerate(order):
        node = api[nid]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, kind, opts in _inputs(info):
            value = node["inputs"].get(name)
            if _is_widget(kind) and not isinstance(value, list):
                widgets.append(opts.get("default") if value is None else value)
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
            elif not _is_widget(kind):
                link = next((ln[0] for ln in links if ln[3] == int(nid) and ln[4] == name), None)
                inputs.append({"name": name, "type": kind, "link": link})
        outputs = [{"name": n, "type": t, "links": outgoing.get((nid, s), []), "slot_index": s}
                   for s, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
        nodes.append({"id": int(nid), "type": node["class_type"], "pos": [60 + 340 * (i % 4), 60 + 420 * (i // 4)],
                      "size": [315, 160], "flags": {}, "order": i, "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
                      **({"title": node["_meta"]["title"]} if "_meta" in node else {})})
    # litegraph links name the target slot by index among the node's link inputs
    slot_of = {(n["id"], inp["name"]): k for n in nodes for k, inp in enumerate(n["inputs"])}
    ui_links = [[lid, src, slot, dst, slot_of[(dst, name)], kind] for lid, src, slot, dst, name, kind in links]
    return {"last_node_id": max(int(n) for n in api), "last_link_id": len(ui_links), "nodes": nodes,
            "links": ui_links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    links = {ln[0]: ln for ln in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        info = object_info[node["type"]]
        values = list(node.get("widgets_values", []))
        by_name = {inp["name"]: inp for inp in node.get("inputs", [])}
        inputs: dict[str, Any] = {}
        for name, kind, opts in _inputs(info):
            inp = by_name.get(name)
            if inp is not None and inp.get("link") is not None:
                src = links[inp["link"]]
                inputs[name] = [str(src[1]), src[2]]
                if _is_widget(kind) and values:  # a widget converted to an input still holds its slot
                    values.pop(0)
            elif _is_widget(kind):
                if not values:
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value left for {name!r}")
                inputs[name] = values.pop(0)
                if opts.get("control_after_generate") and values:
                    values.pop(0)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def strip_meta(api: dict) -> dict:
    return {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in api.items()}
