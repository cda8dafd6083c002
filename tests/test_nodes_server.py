"""The node set inside real ComfyUI servers (0.3.75 and 0.8.0, subprocesses on loopback ports), driven over HTTP
and websocket.

One server per host for the session (conftest.comfy_server); tiny model files written by the tests: causal DiTs
in several layouts, a DiT plus LoRA the stock loaders read, a tiny Wan 2.1 VAE, a file of the wrong architecture,
and stand-ins under the file names the real-model templates use.
"""

from __future__ import annotations

import io
import json
import time

import pytest
import torch

import echo_nodes_support as S
from comfy_host import ComfyServer, PromptFailed

pytestmark = pytest.mark.host

SIX = ("EchoLoadARVideoModel", "EchoSceneMemoryCache", "EchoDecaySettings", "EchoPromptTimeline", "EchoRecallScene",
       "EchoForcingSampler")
SHORT = "a red fox in the snow [1s#] | a frozen lake [1s@] | the red fox in the snow again [1s]"
TOY_SHORT = ("a red circle bouncing on a blue striped background [1s#] | a yellow square moving left on a green "
             "checkered background [1s@] | a red circle bouncing on a blue striped background [1s]")
TOY = "echo-forcing-toy (bundled demo)"


@pytest.fixture
def server(comfy_server) -> ComfyServer:
    return comfy_server


def latent_graph(model_name: str = "tiny_wan.safetensors", timeline: str = SHORT, seed: int = 0,
                 policy: str = "echo", prefix: str = "echo_test") -> dict:
    """Our loader -> timeline (stand-in text) -> recall -> memory -> sampler -> SaveLatent (no VAE)."""
    return {
        "1": {"class_type": "EchoLoadARVideoModel",
              "inputs": {"model_name": model_name, "weight_dtype": "fp32", "frames_per_chunk": "auto"}},
        "2": {"class_type": "EchoStandinTextEncoder", "inputs": {"dim": 32, "length": 16}},
        "3": {"class_type": "EchoPromptTimeline", "inputs": {"clip": ["2", 0], "timeline": timeline, "fps": 16.0}},
        "4": {"class_type": "EchoRecallScene", "inputs": {"timeline": ["3", 0], "source": "auto", "routing": "idf",
                                                          "scene": 1, "threshold": 0.0}},
        "5": {"class_type": "EchoSceneMemoryCache",
              "inputs": {"policy": policy, "anchor_frames": 12, "compressed_frames": 3, "recent_frames": 3,
                         "recall_pool_size": 64, "compression_mode": "score_weighted", "rope_position_mode": "local",
                         "keep_origin_positions": False, "hardcut_rope_jump": 45, "recall_rope_jump_max": 6}},
        "6": {"class_type": "EchoForcingSampler",
              "inputs": {"model": ["1", 0], "timeline": ["4", 0], "memory": ["5", 0], "seed": seed, "width": 64,
                         "height": 64, "steps": 2}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
    }


def saved_latent(server: ComfyServer, entry: dict, node: str = "7") -> torch.Tensor:
    from safetensors.torch import load

    item = entry["outputs"][node]["latents"][0]
    return load(server.view(item["filename"], item["subfolder"], item["type"]))["latent_tensor"]


def video_frames(data: bytes, filename: str) -> int:
    if filename.endswith(".webp"):
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            return im.n_frames
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


# --------------------------------------------------------------------------------------------- schema
def test_object_info_lists_the_six_nodes(server):
    info = server.object_info()
    for node_id in SIX:
        assert node_id in info, f"{node_id} missing from /object_info"
        assert info[node_id]["category"] == "Echo-Forcing"
    sampler = info["EchoForcingSampler"]
    assert set(sampler["input"]["required"]) == {"model", "timeline", "seed", "width", "height", "steps"}
    assert set(sampler["input"]["optional"]) == {"memory", "start_latent", "frames_per_chunk", "when_timeline_ends",
                                                 "wait_seconds", "attention"}
    assert sampler["input"]["required"]["model"][0] == "ECHO_AR_MODEL,MODEL"
    assert sampler["output"] == ["LATENT", "STRING", "FLOAT", "ECHO_SCENES"]
    assert sampler["output_name"] == ["latent", "memory_report", "fps", "scenes"]
    loader = info["EchoLoadARVideoModel"]
    files = loader["input"]["required"]["model_name"][1]["options"]
    assert "echo-forcing-toy (bundled demo)" in files and "tiny_self_forcing.pt" in files
    assert info["EchoPromptTimeline"]["input"]["required"]["clip"][0] == "CLIP,ECHO_TEXT_ENCODER"
    assert info["EchoPromptTimeline"]["output"] == ["ECHO_TIMELINE"]
    assert info["EchoRecallScene"]["output"] == ["ECHO_TIMELINE"]
    assert info["EchoSceneMemoryCache"]["output"] == ["ECHO_MEMORY", "STRING"]
    assert info["EchoSceneMemoryCache"]["input"]["optional"]["decay"][0] == "ECHO_DECAY"
    assert info["EchoDecaySettings"]["output"] == ["ECHO_DECAY"]


def test_every_input_and_output_has_a_tooltip(server):
    info = server.object_info()
    ours = {k: v for k, v in info.items() if v["category"].startswith("Echo-Forcing")}
    assert len(ours) >= 10
    missing = []
    for node_id, node in ours.items():
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                if not (len(spec) > 1 and spec[1].get("tooltip")):
                    missing.append(f"{node_id}.{name}")
        tips = node.get("output_tooltips") or [None] * len(node["output"])
        missing += [f"{node_id} -> {name}" for name, tip in zip(node["output_name"], tips) if not tip]
    assert not missing, missing


# --------------------------------------------------------------------------------------------- workflows
def _adapt(graph: dict) -> dict:
    """Make a template's API twin quick to run here: the stand-in text encoder for umT5 (too large for these
    machines), a small size, two steps and a short timeline. Model files keep their names: the test models folder
    holds tiny stand-ins under them."""
    models = {n["class_type"] for n in graph.values()}
    te_dim, te_len = (4096, 512) if "UNETLoader" in models else (32, 16)  # the stock-loadable stand-in or tiny
    g = S.substitute_text_encoder(graph, te_dim, te_len)
    toy = any(n["inputs"].get("model_name") == TOY for n in g.values())
    if not toy:
        g = S.set_inputs(g, "EchoForcingSampler", width=64, height=64)
        if "ImageScale" in models:
            g = S.set_inputs(g, "ImageScale", width=64, height=64)
    g = S.set_inputs(g, "EchoForcingSampler", steps=2)
    return S.set_inputs(g, "EchoPromptTimeline", timeline=TOY_SHORT if toy else SHORT)


def _frames_per_chunk(graph: dict) -> int:
    choices = [n["inputs"].get("frames_per_chunk", "auto") for n in graph.values()
               if n["class_type"] in ("EchoForcingSampler", "EchoLoadARVideoModel")]
    return 1 if "1 (frame-wise)" in choices else 3


API_NAMES = sorted(p.name for p in S.API_WORKFLOWS.glob("*.json"))


@pytest.mark.parametrize("name", API_NAMES)
def test_every_api_workflow_runs_with_progress_and_previews(server, name):
    graph = _adapt(S.load_api_workflow(name))
    samplers = S.find_nodes(graph, "EchoForcingSampler")
    ws = server.websocket()
    entry = server.run_prompt(graph, timeout=300, client_id=ws.client_id)
    ws.wait_for(lambda c: c.of_type("execution_success"), timeout=30)
    # 3 s at 16 fps = 48 frames -> 12 latent frames -> 4 chunks of 3 (or 12 of 1)
    chunks = 12 // _frames_per_chunk(graph)
    for sampler_id in samplers:
        ticks = [p["value"] for p in ws.progress() if p["node"] == sampler_id]
        assert ticks == list(range(1, chunks + 1)) and all(p["max"] == chunks for p in ws.progress()
                                                           if p["node"] == sampler_id)
        summary = entry["outputs"][sampler_id]["echo_report"][0]  # what the sampler node draws after the run
        assert summary["chunks"] == chunks and summary["latent_frames"] == summary["start_frames"] + 12
        assert entry["outputs"][sampler_id]["text"]
    assert len(ws.previews) >= chunks and all(p.data[:2] == b"\xff\xd8" for p in ws.previews)  # JPEG
    saved = [item for out in entry["outputs"].values() for key in ("images", "gifs", "videos")
             for item in out.get(key, [])]
    assert saved, f"{name} saved nothing: {entry['outputs']}"
    data = server.view(saved[0]["filename"], saved[0]["subfolder"], saved[0]["type"])
    last = max(samplers, key=int)  # the sampler whose video is saved
    latent_frames = entry["outputs"][last]["echo_report"][0]["latent_frames"]
    assert video_frames(data, saved[0]["filename"]) == 4 * latent_frames - 3


@pytest.mark.parametrize("name", API_NAMES)
def test_template_and_its_api_twin_say_the_same(server, name):
    """example_workflows/X.json (UI format, what the Templates menu opens) and api_workflows/X.json (for POST
    /prompt) describe the same graph, converted through this host's /object_info. Notes are UI-only."""
    from workflow_ui import strip_meta, ui_to_api

    twin = S.EXAMPLES / name
    assert twin.is_file(), f"example_workflows/{name} (UI format) is missing for api_workflows/{name}"
    ui = json.loads(twin.read_text())
    assert {"nodes", "links", "version"} <= set(ui)
    assert ui_to_api(ui, server.object_info()) == strip_meta(S.load_api_workflow(name))


# --------------------------------------------------------------------------------------------- interrupt
def test_interrupt_mid_run_then_next_run_succeeds(server):
    long = latent_graph(timeline="a red fox in the snow [30s]", seed=11, prefix="interrupted")
    ws = server.websocket()
    prompt_id = server.post_prompt(long, client_id=ws.client_id)
    ws.wait_for(lambda c: any(p["node"] == "6" for p in c.progress()), timeout=120)
    t0 = time.monotonic()
    server.interrupt()
    entry = server.wait_history(prompt_id, timeout=120)
    stopped_after = time.monotonic() - t0
    assert entry["status"]["status_str"] == "error"
    assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
    total = [p["max"] for p in ws.progress() if p["node"] == "6"][0]
    done = max(p["value"] for p in ws.progress() if p["node"] == "6")
    assert done < total and stopped_after < 30
    after = server.run_prompt(latent_graph(seed=12, prefix="after_interrupt"), timeout=120)
    assert saved_latent(server, after).shape == (1, 16, 12, 8, 8)


# --------------------------------------------------------------------------------------------- errors
def _rejected(server: ComfyServer, graph: dict) -> str:
    """The validation error (400 on POST) or, for checks only execution can make, the execution error."""
    with pytest.raises(PromptFailed) as info:
        server.run_prompt(graph, timeout=60)
    return str(info.value)


def _rejected_at_post(server: ComfyServer, graph: dict) -> str:
    """A validation error: POST /prompt answers 400 and nothing runs."""
    with pytest.raises(PromptFailed, match="answered 400") as info:
        server.post_prompt(graph)
    return str(info.value)


def test_bad_inputs_come_back_naming_the_field(server):
    bad_timeline = latent_graph(timeline="a red fox [10s] | a lake [8x]")
    msg = _rejected_at_post(server, bad_timeline)
    assert "timeline" in msg and "scene 2" in msg and "unit" in msg

    msg = _rejected(server, latent_graph(model_name="no_such_model.safetensors"))
    assert "model_name" in msg and "no_such_model.safetensors" in msg

    negative = latent_graph()
    negative["6"]["inputs"]["width"] = -16
    msg = _rejected_at_post(server, negative)
    assert "width" in msg and "-16" in msg
    off_grid = latent_graph()  # 0 is auto, 16, 32, ... are sizes; 8 is neither
    off_grid["6"]["inputs"]["width"] = 8
    msg = _rejected(server, off_grid)
    assert "width:" in msg and ("multiples of 16" in msg or "pixels >= 16, got 8" in msg)
    negative_steps = latent_graph()
    negative_steps["6"]["inputs"]["steps"] = -1
    assert "steps" in _rejected_at_post(server, negative_steps)

    msg = _rejected(server, latent_graph(model_name="wrong_architecture.safetensors", prefix="wrong"))
    assert "model_name:" in msg and "VAE" in msg

    bad_decay = latent_graph()
    bad_decay["8"] = {"class_type": "EchoDecaySettings",
                      "inputs": {"transition": "smooth", "strategy": "diff", "min_rate": 0.9, "max_rate": 0.5,
                                 "fixed_rate": 1.0, "first_chunk_weight": 1.0, "clear_after_chunks": 5,
                                 "target": "old_memory"}}
    bad_decay["5"]["inputs"]["decay"] = ["8", 0]
    assert "min_rate:" in _rejected(server, bad_decay)


# --------------------------------------------------------------------------------------------- state
def test_a_then_b_then_a_is_bit_identical(server):
    a1 = saved_latent(server, server.run_prompt(latent_graph(seed=1, prefix="aba"), timeout=120))
    b = saved_latent(server, server.run_prompt(
        latent_graph(seed=2, timeline="a frozen lake [1s@] | a red fox [1s] | the lake again [1s]", prefix="aba"),
        timeout=120))
    a2 = saved_latent(server, server.run_prompt(latent_graph(seed=1, prefix="aba"), timeout=120))
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, b)


def test_ten_runs_keep_resident_memory_flat(server):
    rss = []
    for i in range(10):
        server.run_prompt(latent_graph(seed=100 + i, prefix="rss"), timeout=120)
        rss.append(server.rss_bytes())
    growth = (rss[-1] - rss[0]) / rss[0]
    print(f"RSS after runs 1..10 (MiB): {[r // 2**20 for r in rss]}")
    assert growth < 0.10, f"RSS grew {growth:.1%} over 10 runs: {[r // 2**20 for r in rss]} MiB"


def test_stock_unet_and_lora_in_the_server_match_our_loader(server):
    base, lora, merged = server.stock
    graph = latent_graph(model_name=merged, timeline="a red fox [1s]", seed=5, prefix="stock_ours")
    graph["2"]["inputs"].update(dim=4096, length=512)
    ours = saved_latent(server, server.run_prompt(graph, timeout=120))
    stock = json.loads(json.dumps(graph))
    stock["1"] = {"class_type": "UNETLoader", "inputs": {"unet_name": base, "weight_dtype": "default"}}
    stock["9"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora,
                                                                  "strength_model": 1.0}}
    stock["6"]["inputs"]["model"] = ["9", 0]
    stock["7"]["inputs"]["filename_prefix"] = "stock_theirs"
    theirs = saved_latent(server, server.run_prompt(stock, timeout=120))
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
