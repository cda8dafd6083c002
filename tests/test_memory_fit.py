"""Echo-Forcing on ordinary cards (issue 12): the raw window keys and the side state live on the host, the model's
rotated keys are their only device copy, and the outputs do not change.

The equality test runs the real model (one layer, the tiny width) at the real 1.3B token geometry (832x480: 1560
tokens per latent frame, a 21-frame window of 32760 keys) through a smooth switch (decay weights live), a hard cut
and a recall, with the window rolled and the compressed region re-selected, once with everything on the compute
device and once offloaded to a second CPU device object; the float32 latents must be bit-identical (the order of
keys and of every operation is unchanged, only where the tensors sit). Before the change: the same run on the
commit before it (d5674a6, everything on one device, weighted values in the memo) gave latents whose SHA-256 is
BEFORE_SHA256 (torch 2.14.1 on this x86 CPU, one thread); on that torch both runs must reproduce it bit for bit.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from echo_core.cache.echo.policy import EchoCache
from echo_core.cache.placement import GPU, HOST, Stager, resolve_offload
from echo_core.config import EchoConfig
from echo_core.model.config import get_preset, preset_with
from echo_core.model.wan import CausalWanModel
from echo_core.run import RunInputs, start_run
from echo_core.sampler import SamplerConfig
from echo_core.text_standin import standin_embedding
from echo_core.timeline import TransitionMode as TM
from echo_core.timeline import parse_timeline
from echo_stand_in import StandIn, timeline_chunks

pytestmark = pytest.mark.usefixtures("one_thread")

# 8 chunks (the window rolls, the compressed region is re-selected) -smooth (decay)-> 1 chunk -hard cut-> 1 chunk
# -recall (routed: scene 1's recall frame)-> 4 chunks; a scene's marker is the transition out of it
TL = "a red fox runs [6s] | the red fox jumps [1s#] | a blue bird sings [1s@] | the red fox runs again [2s]"
LATENT = (16, 60, 104)  # 832x480 pixels: 30 x 52 = 1560 tokens per latent frame
BEFORE_SHA256 = "16403cb16c64b74bd08c9301338f38613f9572439006321742b660b9a35d0ce1"
BEFORE_TORCH = "2.14.1"


def _run(model: CausalWanModel, offload) -> tuple[torch.Tensor, dict, list[EchoCache]]:
    timeline = parse_timeline(TL)
    contexts = tuple(standin_embedding(s.prompt, model.cfg.text_dim, 16) for s in timeline.scenes)
    made: list[EchoCache] = []

    def factory(ctx):
        made.append(EchoCache(ctx.num_layers, EchoConfig(), router=ctx.router(EchoConfig().routing),
                              offload=offload))
        return made[-1]

    inputs = RunInputs(timeline, contexts, LATENT, seed=3, sampler=SamplerConfig(denoising_steps=(1000.0,)),
                       routing_features=lambda ts: [standin_embedding(t, model.cfg.text_dim, 16)[0] for t in ts])
    latents, report = start_run(model, factory, inputs).collect()
    return latents, report, made


def test_offloaded_echo_gives_bit_identical_latents_at_real_token_geometry():  # ~1 min on one CPU thread
    torch.manual_seed(0)
    model = CausalWanModel(replace(get_preset("tiny"), num_layers=1)).eval()
    before, report, _ = _run(model, None)
    after, report_after, caches = _run(model, "cpu")
    assert caches[0].host == torch.device("cpu") and caches[0].window.host == torch.device("cpu")
    chunks = report_after["chunk_reports"]
    assert before.dtype == torch.float32 and before.shape[-2:] == LATENT[-2:]
    assert torch.equal(before, after), (before - after).abs().max()
    if torch.__version__.split("+")[0] == BEFORE_TORCH:  # other torch builds may round differently
        assert hashlib.sha256(after.contiguous().numpy().tobytes()).hexdigest() == BEFORE_SHA256
    # by place: offloaded, the host holds the raw keys and side state; the device far less than without offload
    direct = report["chunk_reports"]
    assert all(r["host_bytes"] == 0 for r in direct) and all(r["host_bytes"] > 0 for r in chunks)
    # (one layer here: the staging buffers, two layers' worth, weigh as much as the rest; see the budget tests)
    assert chunks[-1]["gpu_bytes"] < direct[-1]["gpu_bytes"]
    assert report_after["peak_host_bytes"] >= chunks[-1]["host_bytes"] + chunks[-1]["pool_bytes"]
    # the run exercised what the test claims: compression, decay, a hard cut and a recall
    assert [sc.get("transition") for sc in report_after["scenes"]] == [None, "smooth", "hardcut", "recall"]
    assert report_after["scenes"][3].get("recall_source") is not None
    assert any("compressed_source_frames" in r for r in chunks) and any("decay" in r for r in chunks)


def _stand_in_run(offload, layers=2) -> EchoCache:
    policy = EchoCache(layers, EchoConfig(), offload=offload)
    driver = StandIn(policy, layers=layers, heads=12, head_dim=128, grid=(30, 52), dtype=torch.bfloat16, steps=1,
                     pool=4)
    # scene 1 rolls the window once (8 chunks: the compressed region is selected), a hard cut, a recall of scene 1
    for chunk in timeline_chunks([8, 1, 3], [TM.HARDCUT, TM.RECALL], (30, 52), recall_sources={2: 0}):
        driver.run_chunk(chunk)
    return policy


def test_offload_puts_side_state_and_raw_keys_on_the_host():
    policy = _stand_in_run("cpu")
    kv = policy.window.get(0)
    assert (kv.k_place, kv.v_place) == (HOST, GPU)  # raw keys down, values stay for attention
    assert policy.source.layers[0].k_place == policy.source.layers[0].v_place == HOST
    assert policy.ring.layers[0].kv_place == HOST
    scene = policy.scenes.layers[0]
    assert scene.kv_place == HOST and sorted(scene.candidates) == [0, 4, 8] and scene.first is not None
    placed = policy.nbytes_by_place()
    total = policy.nbytes()
    assert placed[GPU] - placed["context"] - placed["staging"] + placed[HOST] == total
    frame = 12 * 1560 * 128 * 2  # one frame of K (or V), one layer, bf16
    # on the device: the window's values (2 layers x 21 frames), the float32 weights/rates/sums/reuse counts, and
    # the staging buffers (two layers' worth of window keys, ring keys and ring values); the stand-in fills no memo
    assert placed["storage"] == pytest.approx(2 * 21 * frame, rel=0.02)
    assert placed["staging"] == 2 * 3 * 21 * frame
    # the same run without offload holds everything on the device
    direct = _stand_in_run(None).nbytes_by_place()
    assert direct[HOST] == 0 and direct["storage"] == total
    policy.release()


def test_resolve_offload():
    assert resolve_offload("auto", torch.device("cpu")) is None
    assert resolve_offload("auto", torch.device("cuda", 0)) == torch.device("cpu")
    assert resolve_offload(None, torch.device("cuda", 0)) is None
    assert resolve_offload("cpu", torch.device("cpu")) == torch.device("cpu")


def test_stager_double_buffers_and_copies_what_was_asked():
    stager = Stager()
    src = [torch.randn(1, 2, 10, 4) for _ in range(3)]
    cpu = torch.device("cpu")
    stager.prefetch("k", 0, src[0], 6, cpu)
    got0 = stager.get("k", 0, src[0], 6, cpu)
    assert torch.equal(got0, src[0][:, :, :6])
    stager.prefetch("k", 1, src[1], 10, cpu)
    src[1][0, 0, 0, 0] = 99.0  # a copy, not a view: edits after the prefetch are not seen
    assert stager.get("k", 1, src[1], 10, cpu)[0, 0, 0, 0] != 99.0
    # a get for a different token count than was prefetched copies again
    stager.prefetch("k", 2, src[2], 4, cpu)
    assert torch.equal(stager.get("k", 2, src[2], 8, cpu), src[2][:, :, :8])
    assert stager.nbytes() == 2 * src[0].numel() * 4  # two buffers, whatever the number of layers


def test_model_geometry_is_the_real_one():
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=1)
    assert cfg.tokens_per_frame(LATENT[1], LATENT[2]) == 1560
