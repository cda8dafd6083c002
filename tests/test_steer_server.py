"""Live steering through the HTTP route of a real ComfyUI server, on the bundled toy model: a hard cut to a new
prompt and later a recall of scene 1 sent while the sampler runs, each taking effect at the next chunk; the toy
scorer finds the backgrounds in that order; the written-back text with the same seed gives identical latents."""

from __future__ import annotations

import json
import time

import pytest
import requests
import torch

from comfy_host import ComfyServer
from echo_core.timeline import parse_timeline

pytestmark = pytest.mark.host

TOY = "echo-forcing-toy (bundled demo)"
A = "a red circle moving right on a blue striped background"
B = "a yellow square moving left on a green checkered background"
ROUTE = "/echo_forcing/steer"


def toy_graph(timeline: str, seed: int = 4) -> dict:
    return {
        "1": {"class_type": "EchoLoadARVideoModel",
              "inputs": {"model_name": TOY, "weight_dtype": "fp32", "frames_per_chunk": "auto"}},
        "2": {"class_type": "EchoToyTextEncoder", "inputs": {}},
        "3": {"class_type": "EchoPromptTimeline", "inputs": {"clip": ["2", 0], "timeline": timeline, "fps": 16.0}},
        "6": {"class_type": "EchoForcingSampler",
              "inputs": {"model": ["1", 0], "timeline": ["3", 0], "seed": seed, "width": 48, "height": 48,
                         "steps": 2, "when_timeline_ends": "stop", "wait_seconds": 0.0, "attention": "auto"}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "steer_test"}},
    }


def _latent(server: ComfyServer, entry: dict) -> torch.Tensor:
    from safetensors.torch import load

    item = entry["outputs"]["7"]["latents"][0]
    return load(server.view(item["filename"], item.get("subfolder", "")))["latent_tensor"]


def _state(server: ComfyServer, prompt_id: str) -> tuple[int, dict]:
    r = requests.get(server.url + ROUTE, params={"prompt_id": prompt_id}, timeout=10)
    return r.status_code, r.json()


def _wait_chunk(server: ComfyServer, prompt_id: str, chunk: int, timeout: float = 300) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status, body = _state(server, prompt_id)
        if status == 200 and body["chunk"] >= chunk:
            return body
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach chunk {chunk}: {server.log_tail()}")


def _post(server: ComfyServer, body: dict) -> tuple[int, dict]:
    r = requests.post(server.url + ROUTE, data=json.dumps(body), timeout=60)
    return r.status_code, r.json()


def test_live_steering_through_the_route(comfy_server):
    server = comfy_server
    assert _post(server, {"prompt_id": "nope", "action": "stop"})[0] == 404
    assert requests.get(server.url + ROUTE, timeout=10).status_code == 400  # no prompt id
    r = requests.post(server.url + "/api" + ROUTE, data="not json", timeout=10)  # the front end's /api prefix
    assert r.status_code == 400 and r.json()["error"]["field"] == "body"
    with server.websocket() as ws:
        prompt_id = server.post_prompt(toy_graph(f"{A} [30s]"), client_id=ws.client_id)
        before = _wait_chunk(server, prompt_id, 2)
        assert before["state"] == "running" and before["total_chunks"] == 40 and before["scene_index"] == 0
        status, bad = _post(server, {"prompt_id": prompt_id, "action": "cut", "prompt": "a [bad] prompt",
                                     "seconds": 3})
        assert status == 200 and bad["error"]["field"] == "prompt"  # shown inline, the run goes on
        status, bad = _post(server, {"prompt_id": prompt_id, "action": "cut", "prompt": B})
        assert status == 400 and bad["error"]["field"] == "seconds"  # malformed: a required field is missing
        status, bad = _post(server, {"prompt_id": prompt_id, "action": "recall", "scene": 2})
        assert status == 200 and bad["error"]["field"] == "scene"  # the parser refuses it; the run goes on
        status, cut = _post(server, {"prompt_id": prompt_id, "action": "cut", "prompt": B, "seconds": 6})
        assert status == 200 and cut["accepted"] and B in cut["timeline"], cut
        cut_at = cut["applies_at_chunk"]
        _wait_chunk(server, prompt_id, cut_at + 2)
        status, recall = _post(server, {"prompt_id": prompt_id, "action": "recall", "scene": 1, "seconds": 3})
        assert status == 200 and recall["accepted"], recall
        recall_at = recall["applies_at_chunk"]
        entry = server.wait_history(prompt_id, timeout=600)
        assert entry["status"]["status_str"] == "success", entry["status"]
        ws.wait_for(lambda w: bool(w.of_type("echo_forcing.timeline_final")), timeout=30)
        final = ws.of_type("echo_forcing.timeline_final")[-1]
        progress = [m for m in ws.of_type("echo_forcing.progress") if m["prompt_id"] == prompt_id]
    assert _post(server, {"prompt_id": prompt_id, "action": "stop"})[0] == 404  # ended: no longer steerable
    assert final["prompt_id"] == prompt_id and final["node"] == "6" and final["timeline_node"] == "3"
    assert progress and progress[-1]["chunk"] == progress[-1]["total_chunks"] and progress[0]["node"] == "6"
    ui = entry["outputs"]["6"]["echo_steering"][0]
    assert ui["timeline"] == final["timeline"]
    edits = ui["edits"]
    assert [e["action"] for e in edits] == ["cut", "recall"]
    for e, at in zip(edits, (cut_at, recall_at)):  # each took effect at the next chunk boundary
        # requested_at_chunk: chunks finished when it arrived (+1 when a chunk was being generated then)
        assert e["applied_at_chunk"] == at and e["applied_at_chunk"] - e["requested_at_chunk"] in (0, 1)
    scenes = parse_timeline(final["timeline"]).scenes  # the switches sit exactly at those chunks
    assert [(s.prompt, s.start_chunk) for s in scenes] == [(A, 0), (B, cut_at), (A, recall_at)]
    steered = _latent(server, entry)
    fpc = 3
    assert steered.shape[2] == (recall_at + 4) * fpc

    # the toy scorer finds the backgrounds in the order the edits asked for
    from echo_core.toy.grammar import parse_prompt
    from echo_core.toy.loader import load_toy_model
    from echo_core.toy.scorer import identify_scene

    bundle = load_toy_model()
    frames = bundle.decode(steered.float())
    idx, _ = identify_scene(frames, [parse_prompt(A), parse_prompt(B)])
    # video frame t comes from latent frame (t + 3) // 4 (the first latent frame decodes to one frame)
    chunk_of = torch.div(torch.arange(frames.shape[0]) + 3, 4, rounding_mode="floor") // fpc

    def share(first: int, last: int, want: int) -> float:  # scene chunks [first, last) but the switch chunk
        keep = (chunk_of > first) & (chunk_of < last)
        return float((idx[keep] == want).float().mean())

    shares = [share(0, cut_at, 0), share(cut_at, recall_at, 1), share(recall_at, recall_at + 4, 0)]
    print(f"steered: cut at chunk {cut_at}, recall at chunk {recall_at}, {steered.shape[2] // fpc} chunks; "
          f"scorer share of frames showing the asked background per scene: {[round(x, 3) for x in shares]}")
    assert min(shares) >= 0.8, shares

    # a batch run of the written-back text with the same seed gives the same latents, bit for bit
    batch = _latent(server, server.run_prompt(toy_graph(final["timeline"]), timeout=600))
    assert torch.equal(batch, steered)
