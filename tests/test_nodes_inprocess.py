"""Each node's `execute` inside this process, with ComfyUI 0.3.75 imported on the CPU and tiny model files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import echo_nodes_support as S

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def plugin(comfy_inprocess):
    return S.load_plugin()


@pytest.fixture(scope="module")
def models(plugin, tmp_path_factory):
    root = tmp_path_factory.mktemp("node_models")
    S.register_models_dir(root)
    names = S.write_dit_layouts(root / "diffusion_models")
    from safetensors.torch import save_file

    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1), "decoder.head.0.gamma": torch.ones(4)},
              str(root / "diffusion_models" / "not_a_dit.safetensors"))
    return root, names


def _nodes(plugin):
    from importlib import import_module

    return {name: import_module(f"{plugin.__name__}.nodes.{name}") for name in ("loader", "timeline", "memory",
                                                                                "sampler", "_host")}


def _out(node_output):
    return node_output.args


def _timeline(n, text: str, dim: int = 32, length: int = 16, default: str = "smooth"):
    enc = n["timeline"].StandinTextEncoder(dim, length)
    return _out(n["timeline"].PromptTimeline.execute(enc, text, 16.0, default))[0]


def _load(n, name: str, fpc: str = "auto"):
    return _out(n["loader"].LoadARVideoModel.execute(name, "fp32", fpc))[0]


# --------------------------------------------------------------------------------------------- loader
@pytest.mark.parametrize("layout,fpc", [("wan", 3), ("self_forcing", 3), ("comfyui", 3), ("causal_forcing_comfy", 1)])
def test_loader_reads_every_layout(plugin, models, layout, fpc):
    n = _nodes(plugin)
    _, names = models
    ar = _load(n, names[layout])
    assert ar.frames_per_chunk == fpc
    assert ar.config.dim == 64 and ar.config.num_layers == 2
    assert ar.layout == layout
    import comfy.model_patcher

    assert isinstance(ar.patcher, comfy.model_patcher.ModelPatcher)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ar.frames_per_chunk = 2


def test_loader_frames_per_chunk_override_and_errors(plugin, models):
    n = _nodes(plugin)
    _, names = models
    assert _load(n, names["wan"], "1 (frame-wise)").frames_per_chunk == 1
    with pytest.raises(ValueError, match=r"^model_name: .*not found"):
        _load(n, "missing.safetensors")
    with pytest.raises(ValueError, match=r"^model_name: .*VAE"):
        _load(n, "not_a_dit.safetensors")


def test_loader_fp8_weights_keep_float8_blocks(plugin, models):
    from echo_core.model.fp8_linear import FP8Linear

    n = _nodes(plugin)
    _, names = models
    ar = _out(n["loader"].LoadARVideoModel.execute(names["wan"], "fp8", "auto"))[0]
    linears = [m for m in ar.patcher.model.modules() if isinstance(m, FP8Linear)]
    assert len(linears) == 20 and linears[0].weight.dtype == torch.float8_e4m3fn
    spec = _timeline(n, "a red fox [1s]")
    q8 = _sample(n, ar, spec, seed=1)[0]["samples"]
    ref = _sample(n, _load(n, names["wan"]), spec, seed=1)[0]["samples"]
    rel = ((q8 - ref).norm() / ref.norm()).item()
    assert torch.isfinite(q8).all() and 0 < rel < 0.1, rel  # fp8 rounding moves the output a little


# --------------------------------------------------------------------------------------------- timeline
def test_prompt_timeline_encodes_each_scene(plugin):
    n = _nodes(plugin)
    spec = _timeline(n, "a red fox [2s#] | a frozen lake [2s@] | the red fox again [2s]")
    assert len(spec.contexts) == 3 and all(c.shape == (1, 16, 32) for c in spec.contexts)
    assert not torch.equal(spec.contexts[0], spec.contexts[1])
    assert len(spec.routing_contexts) == 3  # a recall marker: routing prompts are encoded too
    assert _timeline(n, "a [2s] | b [2s]").routing_contexts == ()


def test_prompt_timeline_errors_name_the_scene(plugin):
    n = _nodes(plugin)
    node = n["timeline"].PromptTimeline
    msg = node.validate_inputs(timeline="a cat [10s] | a dog [8x]")
    assert isinstance(msg, str) and msg.startswith("timeline:") and "scene 2" in msg and "unit" in msg
    assert node.validate_inputs(timeline="a cat [10s] | a dog [8s#]") is True
    with pytest.raises(ValueError, match=r"^timeline: scene 1"):
        _timeline(n, "[10s]")


def test_recall_scene_returns_a_new_timeline(plugin):
    n = _nodes(plugin)
    spec = _timeline(n, "a red fox [2s] | a frozen lake [2s@] | the fox again [2s]")
    node = n["timeline"].RecallScene
    manual = _out(node.execute(spec, "scene number", "idf", 1, 0.0))[0]
    assert manual.routing.manual_recall_scene_ids == (1, 1, 1) and manual.routing.method == "idf"
    assert spec.routing.manual_recall_scene_ids == ()  # the cached input object is untouched
    auto = _out(node.execute(spec, "auto", "similarity", 1, 0.3))[0]
    assert auto.routing.threshold == pytest.approx(0.3) and auto.routing.manual_recall_scene_ids == ()
    with pytest.raises(ValueError, match=r"^scene: scene 4 does not exist"):
        node.execute(spec, "scene number", "idf", 4, 0.0)


# --------------------------------------------------------------------------------------------- memory
def test_scene_memory_budget_for_wan_1_3b(plugin):
    n = _nodes(plugin)
    spec, budget_json = _out(n["memory"].SceneMemoryCache.execute(
        "echo", 12, 3, 3, 64, "score_weighted", "local", False, 45, 6, None, None, 832, 480))
    import json

    budget = json.loads(budget_json)
    tokens = 21 * (480 // 16) * (832 // 16)  # 21-frame window, 2x2 patches of the 8x-downsampled latent
    assert budget["cache_tokens"] == tokens == 32760
    expected_mb = 2 * 30 * tokens * 1536 * 2 / 2**20  # K and V, 30 layers, width 1536, bf16
    assert budget["cache_mb"] == pytest.approx(expected_mb, abs=0.05)
    cfg = spec.echo_config(3)
    assert cfg.memory.window_frames == 21 and cfg.memory.anchor_frames == 12
    assert cfg.recall_frames.pool_max_size == 64


def test_memory_and_decay_validation_names_the_field(plugin):
    n = _nodes(plugin)
    with pytest.raises(ValueError, match=r"^min_rate: "):
        n["memory"].DecaySettings.execute("smooth", "diff", 0.9, 0.5, 1.0, 1.0, 5, "old_memory")
    decay = _out(n["memory"].DecaySettings.execute("hardcut", "fixed", 0.8, 0.95, 0.7, 0.8, 1, "old_memory"))[0]
    both = _out(n["memory"].DecaySettings.execute("recall", "diff", 0.5, 0.9, 1.0, 1.0, 4, "old_recall", decay))[0]
    assert [m for m, _ in both.entries] == ["hardcut", "recall"] and [m for m, _ in decay.entries] == ["hardcut"]
    spec = _out(n["memory"].SceneMemoryCache.execute("echo", 12, 3, 3, 64, "score_weighted", "local", False, 45, 6,
                                                      both))[0]
    cfg = spec.echo_config(3)
    assert cfg.hardcut.decay.fixed_rate == pytest.approx(0.7) and cfg.recall.decay.clear_after_blocks == 4
    assert cfg.smooth.decay == type(cfg.smooth.decay)()  # untouched mode keeps the official values
    with pytest.raises(ValueError, match=r"^anchor_frames: "):
        n["memory"].SceneMemoryCache.execute("echo", 2, 3, 3, 64, "score_weighted", "local", False, 45, 6)


# --------------------------------------------------------------------------------------------- sampler
TL = "a red fox [1s#] | a frozen lake [1s@] | the red fox again [1s]"  # hard cut, then recall


def _sample(n, ar, spec, seed=0, memory=None, start=None, steps=2, size=64):
    return _out(n["sampler"].EchoForcingSampler.execute(ar, spec, seed, size, size, steps, memory, start))[:3]


def test_sampler_output_is_process_out_of_the_core_run(plugin, models, comfy_inprocess):
    n = _nodes(plugin)
    _, names = models
    ar = _load(n, names["wan"])
    spec = _timeline(n, TL)
    latent, report, fps = _sample(n, ar, spec, seed=5)
    samples = latent["samples"]
    assert fps == 16.0
    # 3 s at 16 fps -> 48 frames -> 12 latent frames -> 4 chunks of 3
    assert samples.shape == (1, 16, 12, 8, 8)
    from echo_core.run import start_run
    from echo_core.session import MemorySpec, ModuleModel, plan_run, sampler_config

    plan = plan_run(spec, ar.config, 3, 64, 64)
    inputs = plan.inputs(spec, seed=5, sampler=sampler_config(2, 3))
    core, _ = start_run(ModuleModel(ar.patcher.model, ar.config), MemorySpec().policy_for(3, spec.routing),
                        inputs).collect()
    fmt = comfy_inprocess.latent_formats.Wan21()
    assert torch.equal(samples, fmt.process_out(core))
    import json

    rep = json.loads(report)
    assert rep["chunks"] == 4 and len(rep["chunk_reports"]) == 4 and rep["policy"] == "echo"


def test_sampler_is_deterministic_and_seeded(plugin, models):
    n = _nodes(plugin)
    _, names = models
    ar, spec = _load(n, names["wan"]), _timeline(n, "a red fox [1s]")
    a1 = _sample(n, ar, spec, seed=1)[0]["samples"]
    b = _sample(n, ar, spec, seed=2)[0]["samples"]
    a2 = _sample(n, ar, spec, seed=1)[0]["samples"]
    assert torch.equal(a1, a2) and not torch.equal(a1, b)


def test_sampler_start_latent_is_kept_and_checked(plugin, models, comfy_inprocess):
    n = _nodes(plugin)
    _, names = models
    ar, spec = _load(n, names["wan"]), _timeline(n, "a red fox [1s]")
    start = {"samples": comfy_inprocess.latent_formats.Wan21().process_out(torch.randn(1, 16, 3, 8, 8))}
    out = _sample(n, ar, spec, start=start)[0]["samples"]
    assert out.shape[2] == 3 + 6  # 1 s at 16 fps -> 16 frames -> 4 latent frames -> rounded up to 2 chunks of 3
    assert torch.allclose(out[:, :, :3], start["samples"], atol=1e-5)
    no_start = _sample(n, ar, spec)[0]["samples"]
    assert not torch.allclose(out[:, :, 3:], no_start, atol=1e-3)  # generation continues from the start frames
    with pytest.raises(ValueError, match=r"^start_latent: "):
        _sample(n, ar, spec, start={"samples": torch.zeros(1, 16, 3, 4, 4)})


def test_sampler_interrupt_frees_the_cache(plugin, models, monkeypatch):
    n = _nodes(plugin)
    _, names = models
    ar, spec = _load(n, names["wan"]), _timeline(n, TL)
    import comfy.model_management as mm

    import echo_core.run as run

    made = []
    real = run.make_policy

    def recording(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(run, "make_policy", recording)
    ticks = []
    real_tick = n["_host"].ChunkProgress.tick

    def tick(self, done, latents):
        ticks.append(done)
        real_tick(self, done, latents)
        if done == 2 and ticks.count(2) == 1:  # only the first run is interrupted
            mm.interrupt_current_processing(True)

    monkeypatch.setattr(n["_host"].ChunkProgress, "tick", tick)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _sample(n, ar, spec)
    finally:
        mm.interrupt_current_processing(False)
    assert ticks == [1, 2]  # stopped within the next chunk
    assert made and made[0].nbytes() == 0  # released
    latent = _sample(n, ar, spec)[0]["samples"]
    assert latent.shape[2] == 12 and ticks[2:] == [1, 2, 3, 4]


def test_sampler_input_errors(plugin, models):
    n = _nodes(plugin)
    _, names = models
    ar, spec = _load(n, names["wan"]), _timeline(n, "a red fox [1s]")
    with pytest.raises(ValueError, match=r"^width: "):
        n["sampler"].EchoForcingSampler.execute(ar, spec, 0, 72, 64, 2)
    with pytest.raises(ValueError, match=r"^model: "):
        n["sampler"].EchoForcingSampler.execute(object(), spec, 0, 64, 64, 2)
    with pytest.raises(ValueError, match=r"^timeline: "):
        n["sampler"].EchoForcingSampler.execute(ar, "a red fox [1s]", 0, 64, 64, 2)


@pytest.mark.parametrize("policy", ["echo", "rolling", "full"])
def test_sampler_runs_every_policy(plugin, models, policy):
    n = _nodes(plugin)
    _, names = models
    ar, spec = _load(n, names["wan"]), _timeline(n, TL)
    memory = _out(n["memory"].SceneMemoryCache.execute(policy, 12, 3, 3, 64, "score_weighted", "local", False,
                                                        45, 6))[0]
    latent, report, _ = _sample(n, ar, spec, memory=memory)
    import json

    assert latent["samples"].shape[2] == 12 and json.loads(report)["policy"] == policy
    assert torch.isfinite(latent["samples"]).all()


# --------------------------------------------------------------------------------------------- stock MODEL
@pytest.fixture(scope="module")
def stock(plugin, models):
    root, _ = models
    return S.write_stock_dit_and_lora(root / "diffusion_models", root / "loras")


def _stock_model(base: str, lora: str | None, weight_dtype: str = "default"):
    import nodes as comfy_nodes  # ComfyUI's own nodes module (the host is first on sys.path)

    model = comfy_nodes.UNETLoader().load_unet(base, weight_dtype)[0]
    if lora is not None:
        model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, lora, 1.0)[0]
    return model


def test_stock_unet_and_lora_match_our_loader_on_merged_weights(plugin, stock):
    n = _nodes(plugin)
    base, lora, merged = stock
    spec = _timeline(n, "a red fox [1s] | a frozen lake [1s]", dim=4096, length=512)
    ours = _sample(n, _load(n, merged), spec, seed=3)[0]["samples"]
    theirs = _sample(n, _stock_model(base, lora), spec, seed=3)[0]["samples"]
    no_lora = _sample(n, _stock_model(base, None), spec, seed=3)[0]["samples"]
    assert torch.allclose(theirs, ours, atol=1e-5, rtol=0)
    assert (no_lora - ours).abs().max() > 0.1  # the LoRA changes the video, so the match above means something


def test_stock_fp8_model_runs_through_comfys_cast_ops(plugin, stock):
    n = _nodes(plugin)
    base, lora, merged = stock
    spec = _timeline(n, "a red fox [1s]", dim=4096, length=512)
    model = _stock_model(base, lora, "fp8_e4m3fn")
    assert model.model.diffusion_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    fp8 = _sample(n, model, spec, seed=3)[0]["samples"]
    ref = _sample(n, _load(n, merged), spec, seed=3)[0]["samples"]
    assert torch.isfinite(fp8).all()
    rel = ((fp8 - ref).norm() / ref.norm()).item()
    assert 0 < rel < 0.1, rel  # fp8 rounding moves the output a little, not a lot


# --------------------------------------------------------------------------------------------- toy demo nodes
@pytest.fixture
def random_toy(plugin, monkeypatch):
    """The demo model's shape with random weights (the trained weights are a separate artefact)."""
    from importlib import import_module

    from echo_core.model.config import get_preset
    from echo_core.model.wan import CausalWanModel
    from echo_core.toy.codec import ToyCodec
    from echo_core.toy.loader import SAMPLER, ToyBundle
    from echo_core.toy.text import ToyTextEncoder

    torch.manual_seed(0)
    frames = torch.rand(8, 3, 64, 64)
    bundle = ToyBundle(CausalWanModel(get_preset("toy")).eval(), ToyCodec.fit(frames), ToyTextEncoder.create(0),
                       SAMPLER)
    toy_model = import_module(f"{plugin.__name__}.nodes.toy_model")
    monkeypatch.setattr(toy_model, "toy_bundle", lambda: bundle)
    return bundle


TOY_TL = ("a red circle bouncing on a blue striped background [1s#] | a yellow square moving left on a green "
          "checkered background [1s@] | a red circle bouncing on a blue striped background [1s]")


def test_toy_demo_nodes_end_to_end(plugin, random_toy):
    from importlib import import_module

    n = _nodes(plugin)
    toy = import_module(f"{plugin.__name__}.nodes.toy")
    ar = _out(n["loader"].LoadARVideoModel.execute("echo-forcing-toy (bundled demo)", "auto", "auto"))[0]
    assert ar.latent_space == random_toy.latent_space and ar.spatial_compression == 4
    assert ar.shift == random_toy.sampler_config.shift and ar.sampler == random_toy.sampler_config
    assert ar.patcher.model is not random_toy.model  # the shared bundle is never moved or cast by the patcher
    enc = _out(toy.EchoToyTextEncoder.execute())[0]
    spec = _out(n["timeline"].PromptTimeline.execute(enc, TOY_TL, 16.0, "smooth"))[0]
    assert torch.equal(spec.contexts[0][0], random_toy.text_encoder.encode(TOY_TL.split(" [")[0]))
    latent = _sample(n, ar, spec, steps=2)[0]
    assert latent["samples"].shape == (1, 16, 12, 16, 16) and latent["echo_latent_space"] == ar.latent_space
    images = _out(toy.EchoToyDecode.execute(latent))[0]
    assert images.shape == (4 * 12 - 3, 64, 64, 3) and 0 <= images.min() and images.max() <= 1
    assert torch.allclose(images, random_toy.decode(latent["samples"]).permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"^samples: "):
        toy.EchoToyDecode.execute({"samples": latent["samples"]})  # Wan latents (no tag) are refused
    with pytest.raises(ValueError, match=r"^timeline: .*does not know the word"):
        n["timeline"].PromptTimeline.execute(enc, "a red fox [1s]", 16.0, "smooth")
