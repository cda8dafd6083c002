"""What a new user meets first, in-process (ComfyUI 0.3.75 imported on the CPU): `auto` sizes and steps, the run
summary drawn on the sampler, the live budget and the official decay values the editor loads, Recall Scene's
defaults, the demo model's encoder and continuing a video from given frames."""

from __future__ import annotations

import json
from importlib import import_module

import pytest
import torch

import echo_nodes_support as S

pytestmark = pytest.mark.host

TOY = "echo-forcing-toy (bundled demo)"
TOY_TL = ("a red circle bouncing on a blue striped background [1s#] | a yellow square moving left on a green "
          "checkered background [1s@] | a red circle bouncing on a blue striped background [1s]")


@pytest.fixture(scope="module")
def n(comfy_inprocess):
    plugin = S.load_plugin()
    return {name: import_module(f"{plugin.__name__}.nodes.{name}")
            for name in ("loader", "timeline", "memory", "sampler", "toy", "budget", "_host")}


@pytest.fixture(scope="module")
def wan(n, tmp_path_factory):
    root = tmp_path_factory.mktemp("defaults_models")
    S.register_models_dir(root)
    names = S.write_dit_layouts(root / "diffusion_models")
    return n["loader"].LoadARVideoModel.execute(names["wan"], "fp32", "auto").args[0]


def _out(node_output):
    return node_output.args


def _standin_timeline(n, text: str):
    enc = n["timeline"].StandinTextEncoder(32, 16)
    return _out(n["timeline"].PromptTimeline.execute(enc, text, 16.0, "smooth"))[0]


def _toy_timeline(n, text: str = TOY_TL):
    enc = _out(n["toy"].EchoToyTextEncoder.execute())[0]
    return _out(n["timeline"].PromptTimeline.execute(enc, text, 16.0, "smooth"))[0]


def _toy_model(n):
    return _out(n["loader"].LoadARVideoModel.execute(TOY, "auto", "auto"))[0]


# --------------------------------------------------------------------------------------------- auto defaults
def test_auto_size_and_steps_follow_the_model(n, wan):
    h = n["_host"]
    resolved = h.resolve_model(wan)
    assert h.run_size(resolved, 0, 0) == (480, 832)  # Wan2.1's native size
    assert h.run_size(resolved, 64, 0) == (480, 64)  # a number wins over auto
    assert h.run_sampler(resolved, 0, 3).denoising_steps == (1000.0, 750.0, 500.0, 250.0)
    toy = h.resolve_model(_toy_model(n))
    bundle = n["toy"].toy_bundle()
    assert h.run_size(toy, 0, 0) == (bundle.height, bundle.width) == (48, 48)
    assert h.run_sampler(toy, 0, 3) == bundle.sampler_config  # the schedule the demo weights were made for
    assert len(h.run_sampler(toy, 2, 3).denoising_steps) == 2


def test_menu_defaults_run_the_demo_model_and_report_on_the_node(n):
    """Every schema default as it is (what a node added from the menu holds), wired to the bundled model."""
    schema = {cls: cls.define_schema() for cls in (n["timeline"].PromptTimeline, n["sampler"].EchoForcingSampler,
                                                  n["memory"].SceneMemoryCache, n["timeline"].RecallScene)}

    def defaults(cls):
        return {i.id: i.default for i in schema[cls].inputs if getattr(i, "default", None) is not None}

    pt, rs = n["timeline"].PromptTimeline, n["timeline"].RecallScene
    enc = _out(n["toy"].EchoToyTextEncoder.execute())[0]
    spec = _out(pt.execute(enc, **defaults(pt)))[0]  # the default text is in the demo model's words
    spec = _out(rs.execute(spec, **defaults(rs)))[0]
    memory = _out(n["memory"].SceneMemoryCache.execute(**defaults(n["memory"].SceneMemoryCache)))[0]
    sampler = n["sampler"].EchoForcingSampler
    out = sampler.execute(_toy_model(n), spec, **defaults(sampler), memory=memory)
    latent, report, fps, _ = out.args  # and the run's scenes
    assert fps == 16.0  # what Create Video needs, from the timeline
    assert latent["samples"].shape[-2:] == (12, 12)  # 48x48 pixels through the demo codec
    report = json.loads(report)
    summary = out.ui["echo_report"][0]
    assert report["summary"] == summary and summary["size"] == [48, 48] and summary["steps"] == 12
    images = _out(n["toy"].EchoToyDecode.execute(latent))[0]
    assert images.shape[1:] == (48, 48, 3) and images.shape[0] == 4 * latent["samples"].shape[2] - 3


def test_run_summary_names_each_switch(n, wan):
    tl = "a red fox [1s#] | a frozen lake [1s@] | the red fox again [1s]"  # hard cut, then recall
    out = n["sampler"].EchoForcingSampler.execute(wan, _standin_timeline(n, tl), 0, 64, 64, 2)
    s = out.ui["echo_report"][0]
    assert [sc["transition"] for sc in s["scenes"]] == [None, "hardcut", "recall"]
    assert s["scenes"][1]["rope_jump"] == 45  # the official hard-cut jump
    assert s["scenes"][2]["recall_source"] == 1 and s["scenes"][2]["rope_jump"] is not None
    assert s["peak_device_mb"] > 0 and s["peak_host_mb"] > 0  # window K/V, and the recall pool on the host
    assert s["seconds_per_chunk"] > 0 and s["chunks"] == 4 and s["device"] == "cpu"
    text = out.ui["text"][0]
    assert "hardcut, RoPE +45" in text and "recall of scene 1" in text and "s per chunk" in text
    assert json.loads(out.args[1])["chunk_reports"]  # the output stays the full machine-readable report


def test_recall_scene_defaults_work_with_and_without_at(n, wan):
    rs = n["timeline"].RecallScene
    for text in ("a red fox [1s] | a frozen lake [1s]", "a red fox [1s#] | a lake [1s@] | the red fox [1s]"):
        spec = _out(rs.execute(_standin_timeline(n, text), "auto", "similarity", 1, 0.0))[0]
        latent = _out(n["sampler"].EchoForcingSampler.execute(wan, spec, 0, 64, 64, 1))[0]
        assert torch.isfinite(latent["samples"]).all()
    note = rs.execute(_standin_timeline(n, "a red fox [1s] | a frozen lake [1s]"), "auto", "similarity", 1, 0.0)
    assert "no recall" in note.ui["text"][0]


# --------------------------------------------------------------------------------------------- budget / decay
def test_memory_node_budget_defaults_and_route_agree(n):
    node, b = n["memory"].SceneMemoryCache, n["budget"]
    args = ("echo", 12, 3, 3, 64, "score_weighted", "local", False, 45, 6)
    _, shown = _out(node.execute(*args))
    shown = json.loads(shown)
    assert shown["cache_tokens"] == 21 * 30 * 52  # auto size: Wan2.1 1.3B at 832x480
    params = dict(zip(b.MEMORY_INPUTS, args))
    status, body = b.budget_response({**params, "budget_width": 0, "budget_height": 0})
    assert status == 200 and body["budget"] == shown and (body["width"], body["height"]) == (832, 480)
    assert "832x480" in body["text"] and "window 21 frames" in body["text"] and "history ring" in body["text"]
    toy = _toy_model(n)
    _, toy_shown = _out(node.execute(*args, budget_model=toy))
    status, body = b.budget_response({**params, "model_name": TOY})
    assert body["budget"] == json.loads(toy_shown) and (body["width"], body["height"]) == (48, 48)
    # The route reads the demo model's geometry from its files' metadata; it must be the loaded model's.
    cfg, size = b._toy_geometry()
    bundle = n["toy"].toy_bundle()
    assert cfg == bundle.model.cfg and size == (bundle.height, bundle.width)
    status, body = b.budget_response({**params, "anchor_frames": 2})  # too small a window: drawn on the node
    assert status == 200 and body["error"]["field"] == "anchor_frames"
    status, body = b.budget_response({"policy": "echo"})
    assert status == 400 and body["error"]["field"] == "anchor_frames"


def test_decay_defaults_are_the_official_values_per_mode(n):
    from echo_core.config import EchoConfig

    d = n["budget"].decay_defaults()
    assert d["hardcut"] == {"strategy": "fixed", "min_rate": 0.8, "max_rate": 0.95, "fixed_rate": 1.0,
                            "first_chunk_weight": 0.8, "clear_after_chunks": 1, "target": "old_memory"}
    assert (d["recall"]["min_rate"], d["recall"]["max_rate"]) == (0.55, 0.9)
    node = n["memory"].DecaySettings
    for mode, values in d.items():  # the editor's values, given to the node, give the core's official config
        decay = _out(node.execute(mode, **values))[0]
        assert dict(decay.entries)[mode] == EchoConfig().mode(mode).decay
    schema = {i.id: i.default for i in node.define_schema().inputs if getattr(i, "default", None) is not None}
    assert {k: schema[k] for k in d["smooth"]} == d["smooth"]  # the node's own defaults: smooth


# --------------------------------------------------------------------------------------------- continue a video
def test_toy_encode_round_trips_keyframes_and_tags_the_latents(n):
    toy = n["toy"]
    bundle = toy.toy_bundle()
    video = _out(toy.EchoToyDecode.execute(_out(n["sampler"].EchoForcingSampler.execute(
        _toy_model(n), _toy_timeline(n, "a red circle bouncing on a blue striped background [1s]"), 3, 0, 0, 0))[0]))[0]
    latent = _out(toy.EchoToyEncode.execute(video))[0]
    assert latent["echo_latent_space"] == bundle.latent_space
    assert latent["samples"].shape[2] == (video.shape[0] + 3) // 4
    again = _out(toy.EchoToyDecode.execute(latent))[0]
    assert (again[::4] - video[::4]).abs().mean() < 0.05  # the codec keeps the keyframes
    big = torch.nn.functional.interpolate(video[:1].movedim(-1, 1), size=(96, 80)).movedim(1, -1)
    assert _out(toy.EchoToyEncode.execute(big))[0]["samples"].shape[-2:] == (12, 12)  # resized to 48x48
    with pytest.raises(ValueError, match=r"^start_latent: .*Echo Toy Encode"):
        n["sampler"].EchoForcingSampler.execute(_toy_model(n), _toy_timeline(n), 0, 0, 0, 2, None,
                                                {"samples": latent["samples"]})  # untagged (Wan) latents


def test_continuation_first_chunk_attends_to_the_given_frames(n):
    """Continue 2 s demo videos: the first new chunk holds the given frames in its attention window and carries
    their scene on (the toy world draws each scene's layout from the noise, so a fresh run with the same seed
    draws another one). Measured on two seed pairs: continued 0.052 / 0.052, fresh 0.087 / 0.079 (mean absolute
    pixel difference of the first new frame to the last given frame)."""
    sampler, toy = n["sampler"].EchoForcingSampler, n["toy"]
    prompt = "a red circle bouncing on a blue striped background"
    model = _toy_model(n)
    for first_seed, seed in ((1, 2), (3, 4)):
        first = _out(sampler.execute(model, _toy_timeline(n, f"{prompt} [2s]"), first_seed, 0, 0, 0))[0]
        frames = _out(toy.EchoToyDecode.execute(first))[0]
        start = _out(toy.EchoToyEncode.execute(frames))[0]
        given = start["samples"].shape[2]

        cont_tl = _toy_timeline(n, f"{prompt} [1s]")
        cont = sampler.execute(model, cont_tl, seed, 0, 0, 0, None, start)
        fresh = sampler.execute(model, cont_tl, seed, 0, 0, 0)
        report = json.loads(cont.args[1])
        assert report["start_frames"] == given
        fpc = report["frames_per_chunk"]
        # The first generated chunk's window holds the given frames (all of them: 2 s fit the 21-frame window).
        assert report["chunk_reports"][0]["cache_frames"] == given + fpc
        assert json.loads(fresh.args[1])["chunk_reports"][0]["cache_frames"] == fpc
        out = cont.args[0]["samples"]
        assert torch.equal(out[:, :, :given], start["samples"])  # the given frames stay at the start of the output
        new = _out(toy.EchoToyDecode.execute({**cont.args[0], "samples": out[:, :, given:given + fpc]}))[0]
        alone = _out(toy.EchoToyDecode.execute({**fresh.args[0], "samples": fresh.args[0]["samples"][:, :, :fpc]}))[0]
        near_cont = (new[0] - frames[-1]).abs().mean().item()
        near_fresh = (alone[0] - frames[-1]).abs().mean().item()
        print(f"seeds {first_seed}->{seed}: first new frame vs last given frame: continued {near_cont:.4f}, "
              f"fresh {near_fresh:.4f}")
        assert near_cont < 0.8 * near_fresh
