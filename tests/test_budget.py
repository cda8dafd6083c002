"""echo_core/budget.py: the one formula of the bytes a policy holds, checked against the caches' own nbytes().

The Echo check runs the real EchoCache at the real Wan2.1-1.3B token geometry (1560 tokens per latent frame at
832x480, 12 heads x 128) with 2 layers through a multi-scene run (window full, a hard cut and a recall done,
recall candidates held) and compares the formula with `nbytes()` within 1 %; the formula scales linearly to 30
layers. Whoever changes the cache's storage changes the formula, or this fails.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from echo_core.budget import human, policy_budget, weights_bytes
from echo_core.cache.echo.policy import EchoCache
from echo_core.cache.flush import FlushCache
from echo_core.cache.rolling import RollingCache, full_cache
from echo_core.config import EchoConfig, HierarchicalMemoryConfig
from echo_core.model.config import PRESETS, preset_with
from echo_core.model.wan import CausalWanModel
from echo_core.session import MemorySpec
from echo_core.timeline import TransitionMode as TM
from echo_stand_in import StandIn, timeline_chunks

pytestmark = pytest.mark.usefixtures("one_thread")


def _drive(policy, layers, heads, head_dim, grid, scenes, modes, dtype=torch.bfloat16, recall=None, fpc=3,
           on_attend=None):
    driver = StandIn(policy, layers=layers, heads=heads, head_dim=head_dim, grid=grid, dtype=dtype, steps=1, pool=4,
                     on_attend=on_attend)
    for chunk in timeline_chunks(scenes, modes, grid, frames_per_chunk=fpc, recall_sources=recall):
        driver.run_chunk(chunk)
    return driver


def test_echo_formula_matches_nbytes_at_1_3b_geometry():
    layers = 2
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=layers)
    policy = EchoCache(layers, EchoConfig(), offload=None)
    # scene 1 fills the 21-frame window (7 chunks), a hard cut, then a recall of scene 1 long enough (9 frames)
    # to hold all three recall candidates (scene frames 0, 4, 8)
    _drive(policy, layers, 12, 128, (30, 52), [7, 1, 3], [TM.HARDCUT, TM.RECALL], recall={2: 0})
    scene = policy.scenes.layers[0]
    assert sorted(scene.candidates) == [0, 4, 8] and scene.first is not None and len(policy.pool) == 3
    budget = policy_budget(cfg, 480, 832, 3, "echo", kv_dtype=torch.bfloat16, offload=False)
    measured = policy.nbytes()
    assert budget.tokens_per_frame == 1560
    assert abs(budget.gpu_bytes - measured) <= 0.01 * measured, (budget.gpu, measured)
    assert budget.pool_bytes_per_scene == policy.pool.nbytes() / len(policy.pool)
    # linear in depth: the 30-layer figure is the 2-layer one times 15 (about 17.5 GB, of which the window 6 GB)
    full = policy_budget(preset_with("wan2.1-t2v-1.3b"), 480, 832, 3, "echo", kv_dtype=torch.bfloat16,
                         offload=False)
    assert full.gpu_bytes == 15 * budget.gpu_bytes
    assert full.gpu_bytes == pytest.approx(17.55e9, rel=0.01) and full.window_bytes == pytest.approx(6.04e9, rel=0.01)
    assert full.pool_bytes_per_scene == pytest.approx(30 * 2 * 1560 * 1536 * 2)
    # the portrait size has the same token count, hence the same bytes
    assert policy_budget(preset_with("wan2.1-t2v-1.3b"), 832, 480, 3, "echo", offload=False).gpu_bytes == \
        full.gpu_bytes
    policy.release()


def test_offloaded_echo_formula_matches_nbytes_by_place_at_1_3b_geometry():
    """Offloaded (EchoCache's default on CUDA; here a second CPU device object): per place, measured on 2 layers
    with the model's own rotated context filled (wan.attention_context), against the formula, then scaled to 30."""
    from echo_core.model.wan import attention_context

    layers = 2
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=layers)
    policy = EchoCache(layers, EchoConfig(), offload="cpu")
    peak = {"context": 0}

    def fill_memo(layer, inputs):  # the model's rotated keys; the memo is the size of the window it holds
        attention_context(inputs, 128)
        peak["context"] = max(peak["context"], policy.context_nbytes())

    # scene 1 rolls (8 chunks: the ring is staged for a compression), a hard cut, a recall of scene 1
    _drive(policy, layers, 12, 128, (30, 52), [8, 1, 3], [TM.HARDCUT, TM.RECALL], recall={2: 0}, on_attend=fill_memo)
    placed = {**policy.nbytes_by_place(), **peak}
    b = policy_budget(cfg, 480, 832, 3, "echo", kv_dtype=torch.bfloat16)  # offload is the default
    index = b.gpu["compressed_index"]  # int64 origins, not counted by nbytes
    assert abs(b.gpu_bytes - index - placed["storage"] - placed["staging"]) <= 0.01 * placed["storage"], \
        (b.gpu, placed)
    assert b.gpu["staging"] == placed["staging"] and b.context_bytes == placed["context"]
    assert abs(b.host_storage_bytes - placed["host"]) <= 0.01 * placed["host"], (b.host, placed)
    assert b.host_bytes(len(policy.pool)) == b.host_storage_bytes + policy.pool.nbytes()
    # 30 layers: everything per layer scales by 15, the staging buffers (two layers' worth) do not
    full = policy_budget(preset_with("wan2.1-t2v-1.3b"), 480, 832, 3, "echo", kv_dtype=torch.bfloat16)
    scaled = 15 * (placed["storage"] + placed["context"]) + placed["staging"]
    assert abs(full.device_bytes - full.gpu["compressed_index"] - scaled) <= 0.01 * scaled
    assert full.device_bytes <= 1.5 * full.window_bytes  # issue 12: the card holds at most 1.5 windows
    assert full.host_storage_bytes == pytest.approx(15 * placed["host"], rel=0.01)
    policy.release()


def _no_hierarchy() -> EchoConfig:
    return EchoConfig(memory=HierarchicalMemoryConfig(anchor_frames=0, compressed_frames=0, recent_frames=18))


def _select_memory() -> EchoConfig:
    base = EchoConfig()
    return replace(base, smooth=replace(base.smooth, old_memory_source="select"),
                   hardcut=replace(base.hardcut, decay=replace(base.hardcut.decay, target="old_recent")))


@pytest.mark.parametrize("offload", [None, "cpu"])
@pytest.mark.parametrize("name, config, fpc", [
    ("official", EchoConfig(), 3),
    ("frame-wise", EchoConfig(memory=HierarchicalMemoryConfig.for_frames_per_chunk(1)), 1),
    ("no hierarchy", _no_hierarchy(), 3),
    ("select memory", _select_memory(), 3),
])
def test_echo_formula_matches_nbytes_for_other_layouts(name, config, fpc, offload):
    cfg = replace(PRESETS["tiny"], num_layers=2)
    policy = EchoCache(2, config, offload=offload)
    scenes = [24 // fpc, 3 // fpc + 1, 12 // fpc]
    _drive(policy, 2, cfg.num_heads, cfg.head_dim, (4, 4), scenes, [TM.SMOOTH, TM.HARDCUT], dtype=torch.float16,
           fpc=fpc)
    budget = policy_budget(cfg, 64, 64, fpc, config, kv_dtype=torch.float16, offload=offload is not None)
    # tiny frames: the int64 compressed-token index (not counted by nbytes) weighs a few percent here
    index = budget.gpu.get("compressed_index", 0)
    placed = policy.nbytes_by_place()
    assert budget.gpu_bytes - index == placed["storage"] + placed["staging"], (name, budget.gpu, placed)
    assert budget.host_storage_bytes == placed["host"], (name, budget.host, placed)
    assert placed["storage"] + placed["host"] == policy.nbytes()
    per_scene = policy.pool.nbytes() / len(policy.pool)
    assert budget.pool_bytes_per_scene == per_scene, name


@pytest.mark.parametrize("name, make", [
    ("rolling", lambda n: RollingCache(n, window_frames=21, sink_frames=1)),
    ("flush", lambda n: FlushCache(n, window_frames=21, sink_frames=1)),
    ("full", full_cache),
])
def test_baseline_formulas_match_nbytes(name, make):
    cfg = replace(PRESETS["tiny"], num_layers=2)
    policy = make(2)
    _drive(policy, 2, cfg.num_heads, cfg.head_dim, (4, 4), [6, 5], [TM.HARDCUT], dtype=torch.float16)
    budget = policy_budget(cfg, 64, 64, 3, name, kv_dtype=torch.float16, total_frames=33)
    assert budget.gpu_bytes == policy.nbytes() and budget.pool_bytes_per_scene == 0
    assert (budget.window_frames is None) == (name == "full")


def test_full_needs_the_video_length():
    with pytest.raises(ValueError, match="^memory: the full cache grows"):
        policy_budget(PRESETS["tiny"], 64, 64, 3, "full")


@pytest.mark.parametrize("preset", ["tiny", "toy", "tiny-comfy", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_weights_bytes_is_the_parameter_count(preset):
    with torch.device("meta"):
        model = CausalWanModel(PRESETS[preset])
    assert weights_bytes(PRESETS[preset], torch.bfloat16) == 2 * sum(p.numel() for p in model.parameters())


def test_memory_spec_budget_keeps_old_keys_and_tells_the_whole_truth():
    cfg = PRESETS["wan2.1-t2v-1.3b"]
    b = MemorySpec().budget(cfg, 480, 832, 3)
    window = 2 * 30 * 32760 * 1536 * 2
    assert b["cache_tokens"] == 32760 and b["window_frames"] == 21
    assert b["cache_mb"] == pytest.approx(window / 2**20, abs=0.05)  # the window alone
    # on the card: the window's values, the rotated keys, the staging buffers and the small state (offloaded)
    assert b["gpu_mb"] == pytest.approx((window + 6 * window / 60) / 2**20, rel=0.01)  # staging: 6 half-layers
    assert b["gpu_mb"] <= 1.5 * b["cache_mb"]
    assert sum(b["gpu_components_mb"].values()) == pytest.approx(b["gpu_mb"], abs=0.1)
    assert b["gpu_components_mb"]["context"] == pytest.approx(window / 2 / 2**20, abs=0.01)
    assert sum(b["host_components_mb"].values()) == pytest.approx(b["host_mb"], abs=0.1)
    assert b["host_components_mb"]["window_keys"] == pytest.approx(window / 2 / 2**20, abs=0.01)
    assert b["pool_mb_per_scene"] == pytest.approx(30 * 2 * 1560 * 1536 * 2 / 2**20, abs=0.01)
    assert b["host_max_mb"] == pytest.approx(b["host_mb"] + 64 * b["pool_mb_per_scene"], abs=0.1)
    rolling = MemorySpec(policy="rolling").budget(cfg, 480, 832, 3)
    assert rolling["cache_mb"] == b["cache_mb"] and "pool_mb_per_scene" not in rolling and "host_mb" not in rolling
    assert rolling["gpu_mb"] == pytest.approx(1.5 * rolling["cache_mb"], abs=0.1)  # window + its rotated keys
    assert "gpu_mb" not in MemorySpec(policy="full").budget(cfg, 480, 832, 3)


def test_human():
    assert human(3 * 2**30) == "3.00 GiB" and human(512) == "512 B" and human(None) == "n/a"


def test_footprint_bench_json(monkeypatch, capsys):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "memory_footprint.py"
    spec = importlib.util.spec_from_file_location("memory_footprint_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    real = bench.measure
    monkeypatch.setattr(bench, "measure", lambda h, w, layers=1: real(h // 8, w // 8, layers))  # small grids
    monkeypatch.setattr(sys, "argv", ["memory_footprint.py", "--json"])
    bench.main()
    out = json.loads(capsys.readouterr().out)
    for key in ("window_bytes", "echo_gpu_bytes", "echo_host_bytes", "pool_bytes_per_scene", "rolling_gpu_bytes",
                "echo_unoffloaded_gpu_bytes", "echo_fp8_gpu_bytes"):
        assert out[key] > 0
        assert abs(out["sizes"][0]["formula"][key] - out[key]) <= 0.01 * out[key], key
    assert out["pool_scenes"] == 3
    # issue 12's fp8 bound: the fp8 window on the device, no rotated-key memo, at most 0.55x of model-dtype Echo
    assert out["echo_fp8_gpu_bytes"] <= 0.55 * out["echo_gpu_bytes"]
    assert out["echo_fp8_over_echo"] == round(out["echo_fp8_gpu_bytes"] / out["echo_gpu_bytes"], 4)
    # issue 12's bound holds at these grids too; without offload Echo held over 3 windows
    assert out["echo_gpu_bytes"] <= 1.5 * out["window_bytes"] < out["echo_unoffloaded_gpu_bytes"]
    monkeypatch.setattr(sys, "argv", ["memory_footprint.py"])
    bench.main()
    assert "echo + fp8 KV" in capsys.readouterr().out
