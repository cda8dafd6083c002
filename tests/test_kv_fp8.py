"""The fp8 KV cache option end to end: rolling / flush / full caches with kv_dtype float8_e4m3fn against the
model-dtype cache on the same run, the one-dequantisation-per-span attention path, the budget formula, and the
errors every front end gives for a bad kv_dtype (EchoConfig, BaselineConfig, run, CLI)."""

from __future__ import annotations

import pytest
import torch

from echo_core.budget import policy_budget
from echo_core.cache import kv_quant
from echo_core.cache.flush import FlushCache
from echo_core.cache.rolling import RollingCache
from echo_core.cli import main
from echo_core.config import BaselineConfig, EchoConfig
from echo_core.errors import ConfigError
from echo_core.model.config import get_preset
from echo_core.run import RunInputs, start_run
from echo_core.sampler import SamplerConfig
from echo_core.text_standin import standin_embedding
from echo_core.timeline import parse_timeline

FP8 = "float8_e4m3fn"
TL = "a red fox runs [2s#] | a blue bird sings [2s]"  # 6 chunks of 3 frames: the 21-frame window rolls over


def _inputs(model, seed: int = 3) -> RunInputs:
    timeline = parse_timeline(TL, total_latent_frames=672)
    contexts = tuple(standin_embedding(s.prompt, model.cfg.text_dim, 16) for s in timeline.scenes)
    return RunInputs(timeline, contexts, (16, 4, 4), seed=seed,
                     sampler=SamplerConfig(denoising_steps=(1000.0, 750.0, 500.0, 250.0)))


@pytest.mark.parametrize("policy", ["rolling", "flush", "full"])
def test_fp8_cache_stays_close_to_the_model_dtype_cache(model, policy):
    """Same seeded run, K/V stored in the model dtype vs fp8: measured on this tiny model max 2.4e-3 and mean
    3.0e-4 (latents of std 0.84); the bound leaves 4x headroom and still catches a broken scale (a per-tensor
    scale or a missing dequantisation moves latents by > 0.1)."""
    exact, rep_exact = start_run(model, BaselineConfig(policy), _inputs(model)).collect()
    fp8, rep_fp8 = start_run(model, BaselineConfig(policy, FP8), _inputs(model)).collect()
    dev = (exact - fp8).abs()
    assert exact.shape == (1, 16, 18, 4, 4)
    assert 0 < dev.max().item() < 1e-2 and dev.mean().item() < 1.5e-3
    assert rep_fp8["peak_gpu_bytes"] < 0.6 * rep_exact["peak_gpu_bytes"]  # fp32 model: 1 + 4/32 bytes vs 4
    assert rep_fp8["budget"]["kv_storage"] == FP8 and rep_exact["budget"]["kv_storage"] == "model"


def test_model_dtype_path_is_bit_identical_to_the_bare_name(model):
    a, _ = start_run(model, "rolling", _inputs(model)).collect()
    b, _ = start_run(model, BaselineConfig("rolling"), _inputs(model)).collect()
    assert torch.equal(a, b)


def test_budget_formula_matches_what_the_fp8_rolling_cache_holds(model):
    _, rep = start_run(model, BaselineConfig("rolling", FP8), _inputs(model)).collect()
    assert rep["budget"]["gpu_bytes"] == rep["peak_gpu_bytes"]  # slots are preallocated: the formula is exact
    cfg = model.cfg
    b = policy_budget(cfg, 4 * 8, 4 * 8, 3, BaselineConfig("rolling", FP8), kv_dtype=torch.float32)
    frame = cfg.num_heads * 4 * (cfg.head_dim + 4)  # 4 tokens per frame, fp8 values + float32 scale
    assert b.gpu["window"] == cfg.num_layers * 2 * 21 * frame
    assert b.kv_storage == FP8


def test_real_geometry_fp8_cache_is_about_half_of_bf16():
    cfg = get_preset("wan2.1-t2v-1.3b")
    bf16 = policy_budget(cfg, 480, 832, 3, "rolling", kv_dtype=torch.bfloat16)
    fp8 = policy_budget(cfg, 480, 832, 3, BaselineConfig("rolling", FP8), kv_dtype=torch.bfloat16)
    assert fp8.gpu_bytes / bf16.gpu_bytes == pytest.approx((1 + 4 / 128) / 2)  # 0.516
    assert fp8.activation_bytes > bf16.activation_bytes  # the dequantised span of one call


def test_attention_dequantises_each_span_once_per_call(model, monkeypatch):
    calls = []
    real = kv_quant.dequantize

    def counting(q, scale, dtype):
        calls.append(tuple(q.shape))
        return real(q, scale, dtype)

    monkeypatch.setattr(kv_quant, "dequantize", counting)
    run = start_run(model, BaselineConfig("rolling", FP8), _inputs(model))
    first = next(iter(run))
    run.close()
    # one chunk = 4 denoising calls + 1 commit pass; per call and layer one dequantisation of K and one of V, each
    # over the whole span [B, H, L, D] (no loop over tokens or frames)
    assert len(calls) == 5 * model.cfg.num_layers * 2
    assert all(shape == (1, model.cfg.num_heads, 3 * 4, model.cfg.head_dim) for shape in calls)
    assert first.latents.shape == (1, 16, 3, 4, 4)


def test_fp8_span_keeps_the_chunk_s_own_rows_unrounded():
    from echo_core.cache.base import CallInfo, ChunkInfo

    cache = RollingCache(1, window_frames=6, sink_frames=1, kv_dtype=FP8)
    g = torch.Generator().manual_seed(0)
    spans = []
    for i in range(2):
        cache.begin_chunk(ChunkInfo(i, 3 * i, 3, (2, 2)))
        cache.begin_call(CallInfo(0, True))
        k = torch.randn(1, 2, 12, 8, generator=g)
        spans.append((k, cache.attend(0, k, k, k).spans[0]))
    (k0, _), (k1, span) = spans
    assert torch.equal(span.k[:, :, 12:], k1)  # this chunk: exact
    assert not torch.equal(span.k[:, :, :12], k0)  # the cached chunk: fp8-rounded...
    q, s = kv_quant.quantize(k0)
    assert torch.equal(span.k[:, :, :12], kv_quant.dequantize(q, s, torch.float32))  # ...exactly that rounding


def test_flush_moves_fp8_rows_with_their_scales():
    from echo_core.cache.base import CallInfo, ChunkInfo
    from echo_core.timeline import Transition, TransitionMode

    caches = {kv: FlushCache(1, window_frames=9, sink_frames=1, keep_last_frames=2, kv_dtype=kv)
              for kv in ("model", FP8)}
    out = {}
    for kv, cache in caches.items():
        g = torch.Generator().manual_seed(0)
        for i in range(4):
            t = Transition(i, 0, 1, TransitionMode.HARDCUT, None) if i == 3 else None
            cache.begin_chunk(ChunkInfo(i, 3 * i, 3, (2, 2), scene_index=int(i == 3), transition=t))
            cache.begin_call(CallInfo(0, True))
            k = torch.randn(1, 2, 12, 8, generator=g) * (i + 1)
            out[kv] = cache.attend(0, k, k, k).spans[0].k
    assert out["model"].shape == out[FP8].shape == (1, 2, 6 * 4, 8)  # sink + 2 kept + 3 new frames
    err = (out["model"] - out[FP8]).abs()
    assert err.max().item() <= out["model"].abs().amax(-1, keepdim=True).mul(2**-4).max().item()


@pytest.mark.parametrize("build", [
    lambda: EchoConfig(kv_dtype="fp8"),
    lambda: EchoConfig.from_dict({"kv_dtype": "float16"}),
    lambda: BaselineConfig("rolling", "int8"),
])
def test_unknown_kv_dtype_is_a_config_error_naming_the_field(build):
    with pytest.raises(ConfigError) as e:
        build()
    assert e.value.field == "kv_dtype" and "float8_e4m3fn" in e.value.detail


def test_echo_config_round_trips_kv_dtype():
    cfg = EchoConfig(kv_dtype=FP8)
    assert cfg.to_dict()["kv_dtype"] == FP8 and EchoConfig.from_json(cfg.to_json()) == cfg
    assert EchoConfig.from_dict({}).kv_dtype == "model"


def test_echo_fp8_run_stays_close_to_the_model_dtype_echo_run(model):
    """Echo with the window in fp8 vs the model dtype on the same seeded two-scene run (the window rolls, a hard
    cut rebuilds it): close, not equal; measured on this tiny model max 3e-4 scale (see bench/kv_fp8.py)."""
    exact, rep_exact = start_run(model, EchoConfig(), _inputs(model)).collect()
    fp8, rep_fp8 = start_run(model, EchoConfig(kv_dtype=FP8), _inputs(model)).collect()
    dev = (exact - fp8).abs()
    assert 0 < dev.max().item() < 1e-2 and dev.mean().item() < 1.5e-3
    assert rep_fp8["budget"]["kv_storage"] == FP8
    # CPU run, nothing offloaded: the side state stays in the model dtype (fp32 here) on the device, so the whole
    # is 0.69x; the budget formula (window fp8 + scales, no rotated-key memo) is what the cache held
    assert rep_fp8["peak_gpu_bytes"] < 0.75 * rep_exact["peak_gpu_bytes"]
    assert rep_fp8["budget"]["context_bytes"] == 0
    assert abs(rep_fp8["budget"]["gpu_bytes"] - rep_fp8["peak_gpu_bytes"]) <= 0.01 * rep_fp8["peak_gpu_bytes"]


def test_echo_fp8_window_and_moves_keep_values_and_scales_together():
    """The fp8 window reads back what was written within e4m3 rounding, after frame moves too, and keeps its
    keys on the device even when the side state is offloaded."""
    from echo_core.cache.base import CallInfo, ChunkInfo
    from echo_core.cache.echo.policy import EchoCache
    from echo_core.cache.placement import GPU

    g = torch.Generator().manual_seed(1)
    cache = EchoCache(1, EchoConfig(kv_dtype=FP8), offload="cpu")
    s, written = 4, []
    for i in range(9):  # 27 frames: the 21-frame window rolls
        cache.begin_chunk(ChunkInfo(i, 3 * i, 3, (2, 2), 0, 0, None, False))
        k, v = (torch.randn((1, 2, 3 * s, 8), generator=g) * (1 + i) for _ in range(2))
        cache.begin_call(CallInfo(0, True))
        cache.attend(0, torch.randn((1, 2, 3 * s, 8), generator=g), k, v)
        written.append((k, v))
        cache.end_chunk()
    kv = cache.window.get(0)
    assert kv.k.dtype == torch.float8_e4m3fn and kv.ks is not None and cache.window.host is None
    assert all(place == GPU for place, _ in kv.placed())
    keys, values = cache.window.view(0, len(cache.slots) * s)
    last_k, last_v = written[-1]
    a = cache._require_plan().own_rows[0]
    for got, want in ((keys[:, :, a:a + 3 * s], last_k), (values[:, :, a:a + 3 * s], last_v)):
        err = (got - want).abs() / want.abs().amax(-1, keepdim=True)
        assert 0 < err.max().item() <= 2 ** -4
    assert cache.nbytes_by_place()["context"] == 0  # no rotated-key memo in fp8


def test_run_on_a_device_without_float8_is_refused_before_anything_runs(model, monkeypatch):
    monkeypatch.setattr(kv_quant, "_device_casts_fp8", lambda device_type: False)
    with pytest.raises(ConfigError) as e:
        start_run(model, BaselineConfig("rolling", FP8), _inputs(model))
    assert e.value.field == "kv_dtype" and "cpu" in e.value.detail


def test_cli_kv_dtype_flag(tmp_path, capsys):
    import json

    common = ["generate", "--preset", "tiny-random", "--timeline", "a fox[1s] | a bird[1s]", "--steps", "1000,500"]
    report = tmp_path / "r.json"
    assert main([*common, "--memory", "rolling", "--kv-dtype", FP8, "--out", str(tmp_path / "a.safetensors"),
                 "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["kv_dtype"] == FP8 and data["budget"]["kv_storage"] == FP8
    out = tmp_path / "never.safetensors"
    assert main([*common, "--memory", "rolling", "--kv-dtype", "fp8", "--out", str(out)]) == 2
    assert "--kv-dtype: 'fp8' is not one of" in capsys.readouterr().err
    assert not out.exists()
    echo = tmp_path / "echo.json"  # the echo cache stores fp8 too
    assert main([*common, "--memory", "echo", "--kv-dtype", FP8, "--out", str(tmp_path / "e.safetensors"),
                 "--report", str(echo)]) == 0
    assert json.loads(echo.read_text())["budget"]["kv_storage"] == FP8
