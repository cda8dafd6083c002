"""The checks a run passes before its first chunk (echo_core/preflight.py via start_run): memory need against free
memory (CPU and a simulated GPU), the chunk limit, manual recalls, NaN inputs and outputs, the memory report, and
the interrupt hook between layers."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from echo_core import preflight as pf
from echo_core.config import EchoConfig, RecallFrameConfig, RoutingConfig
from echo_core.errors import SpecError
from echo_core.model.config import PRESETS
from echo_core.model.wan import CausalWanModel
from echo_core.run import RunInputs, start_run
from echo_core.sampler import SamplerConfig
from echo_core.timeline import Timeline, parse_timeline

pytestmark = pytest.mark.usefixtures("one_thread")
TOY = PRESETS["toy"]


@pytest.fixture(scope="module")
def toy_model():
    torch.manual_seed(0)
    return CausalWanModel(TOY).eval()


def _inputs(timeline, shape, **kw) -> RunInputs:
    ctx = tuple(torch.randn(1, TOY.text_len, TOY.text_dim) for _ in timeline.scenes)
    return RunInputs(timeline, ctx, shape, sampler=SamplerConfig(denoising_steps=(1000.0,)), **kw)


def test_toy_4096_is_refused_before_allocation(toy_model, monkeypatch):
    monkeypatch.setenv(pf.MAX_MEMORY_ENV, "16G")  # the same answer on any machine
    t0 = time.perf_counter()
    # toy codec: 4 pixels per latent cell, so 4096 px -> 1024 latent cells, 262,144 tokens per latent frame
    with pytest.raises(SpecError) as e:
        start_run(toy_model, "echo", _inputs(Timeline.single(8), (16, 1024, 1024), spatial_compression=4))
    assert time.perf_counter() - t0 < 1.0
    msg = str(e.value)
    assert e.value.field == "width" and "4096x4096" in msg and "echo memory" in msg
    assert "GiB of RAM" in msg and "GiB are available" in msg and "caps a run at 16.00 GiB" in msg and "rolling" in msg


def test_a_run_that_fits_passes_and_reports_its_budget(toy_model):
    run = start_run(toy_model, "echo", _inputs(parse_timeline("a[1s#] | b[1s]"), (16, 4, 4)))
    latents, report = run.collect()
    b = report["budget"]
    assert b["policy"] == "echo" and b["device"] == "cpu" and b["host_available"] > 0
    # the formula's storage is what the policy held at its peak (window full or not: buffers are allocated whole);
    # the model's rotated context (a CPU run does not offload) comes on top and grows with the window up to its max
    storage = b["gpu_bytes"] - b["gpu_components"]["compressed_index"]
    context = max(r["context_bytes"] for r in report["chunk_reports"])
    assert 0 < context <= b["context_bytes"]
    assert report["peak_gpu_bytes"] == pytest.approx(storage + context, rel=0.05)
    assert b["host_storage_bytes"] == 0
    assert report["peak_host_bytes"] == 2 * b["pool_bytes_per_scene"]  # two finished scenes pooled


def test_simulated_gpu_without_room(toy_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (2 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda i=0: 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda i=0: 0)
    assert pf.device_available_bytes("cuda") == 3 * 2**30
    need = pf.memory_need(PRESETS["wan2.1-t2v-1.3b"], "echo", latent_shape=(16, 60, 104), frames_per_chunk=3,
                          total_frames=63, scenes=1, device="cuda", kv_dtype=torch.bfloat16)
    # on CUDA Echo offloads: the card holds the window's values, staging and small state (+ rotated context)
    with pytest.raises(SpecError, match=r"^width: at 832x480 the echo memory \(30 layers, 1,560 tokens.*needs "
                                        r"[0-9.]+ GiB on cuda \(cache 3.39 GiB \+ rotated context 2.81 GiB .* but "
                                        r"3.00 GiB are free; lower width/height$"):
        pf.check_memory(need, width=832, height=480)
    rolling = pf.memory_need(PRESETS["wan2.1-t2v-1.3b"], "rolling", latent_shape=(16, 60, 104),
                             frames_per_chunk=3, total_frames=63, scenes=1, device="cuda", kv_dtype=torch.bfloat16)
    with pytest.raises(SpecError, match="rolling memory"):
        pf.check_memory(rolling, width=832, height=480)


def test_chunk_limit(toy_model, monkeypatch):
    long = parse_timeline("a day [86400s]")
    assert long.total_chunks == 115_200
    with pytest.raises(SpecError, match=r"^timeline: the video has 115,200 chunks \(about 24.0 h .* limit of 20,000"):
        start_run(toy_model, "rolling", _inputs(long, (16, 4, 4)))
    with pytest.raises(SpecError, match="limit of 5 chunks"):
        start_run(toy_model, "rolling", _inputs(Timeline.single(8), (16, 4, 4), max_chunks=5))
    monkeypatch.setenv(pf.MAX_CHUNKS_ENV, "7")
    with pytest.raises(SpecError, match="limit of 7 chunks"):
        start_run(toy_model, "rolling", _inputs(Timeline.single(8), (16, 4, 4)))
    monkeypatch.setenv(pf.MAX_CHUNKS_ENV, "lots")
    with pytest.raises(SpecError, match=f"^{pf.MAX_CHUNKS_ENV}: must be a whole number"):
        pf.max_chunks()
    monkeypatch.setenv(pf.MAX_MEMORY_ENV, "plenty")
    with pytest.raises(SpecError, match=f"^{pf.MAX_MEMORY_ENV}: must be a number of bytes"):
        pf.memory_cap()
    monkeypatch.setenv(pf.MAX_MEMORY_ENV, "1.5k")
    assert pf.memory_cap() == 1536


def test_manual_recall_of_a_scene_not_yet_finished():
    tl = parse_timeline("a[1s@] | b[1s] | c[1s]")  # the marker of scene 1 makes the switch into scene 2 a recall
    cfg = EchoConfig(routing=RoutingConfig(manual_recall_scene_ids=(0, 3, 0)))
    with pytest.raises(SpecError, match=r"^scene: recall of scene 3 into scene 2: scene 3 is not finished"):
        pf.check_recalls(tl, cfg)
    pf.check_recalls(tl, EchoConfig(routing=RoutingConfig(manual_recall_scene_ids=(0, 1, 0))))
    small = replace(cfg, recall_frames=RecallFrameConfig(pool_max_size=1),
                    routing=RoutingConfig(manual_recall_scene_ids=(0, 0, 0, 1)))
    with pytest.raises(SpecError, match="pool keeps the last 1 scenes"):
        pf.check_recalls(parse_timeline("a[1s] | b[1s] | c[1s@] | d[1s]"), small)


def test_nan_inputs_and_outputs_are_refused(toy_model):
    tl = Timeline.single(2)
    bad = torch.full((1, TOY.text_len, TOY.text_dim), float("nan"))
    with pytest.raises(SpecError, match="^timeline: the text embedding of scene 1 holds NaN"):
        RunInputs(tl, (bad,), (16, 4, 4))
    with pytest.raises(SpecError, match="^seed: "):
        _inputs(tl, (16, 4, 4), seed=2**70)
    with pytest.raises(SpecError, match="^width: "):
        _inputs(tl, (16, 4, 0))
    broken = CausalWanModel(TOY).eval()
    with torch.no_grad():
        broken.head.head.weight.fill_(float("nan"))
    with pytest.raises(SpecError, match="^model: the model produced NaN"):
        start_run(broken, "rolling", _inputs(tl, (16, 4, 4))).collect()


def test_interrupt_answers_between_layers(toy_model):
    """A stop request raised by the layer hook ends the run inside the first model call, after one layer."""
    class Stop(Exception):
        pass

    seen: list[tuple[int, int, int]] = []

    def on_layer(chunk, step, layer):
        seen.append((chunk, step, layer))
        if len(seen) == 2:
            raise Stop

    run = start_run(toy_model, "echo", _inputs(Timeline.single(3), (16, 4, 4)), on_layer=on_layer)
    with pytest.raises(Stop):
        next(iter(run))
    assert seen == [(0, 0, 0), (0, 0, 1)]  # 1 of the toy's 4 layers of the first call ran
    run.close()
    assert run.cache.nbytes() == 0  # released


def test_kv_dtype_of():
    m = CausalWanModel(PRESETS["tiny"])
    assert pf.kv_dtype_of(m) == torch.float32 and pf.kv_dtype_of(m.to(torch.bfloat16)) == torch.bfloat16
    from echo_core.model.fp8_linear import quantize_blocks_fp8

    quantize_blocks_fp8(m, torch.bfloat16)
    assert pf.kv_dtype_of(m) == torch.bfloat16
    assert pf.kv_dtype_of(object()) == torch.float32


def test_recall_routing_threshold_must_be_a_number():
    from echo_core.session import recall_routing

    with pytest.raises(SpecError, match="^threshold: must be a number from 0 to 1"):
        recall_routing("idf", None, float("nan"), 3)
    assert recall_routing("idf", None, 0.0, 3).threshold is None
