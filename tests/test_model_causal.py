"""The causal DiT with a KV cache against a full-sequence forward, RoPE shift invariance, rolling bound, determinism."""

from __future__ import annotations

import pytest
import torch

from echo_core.cache.base import AttentionInputs, CachePolicy, CallInfo, ChunkInfo, KVSpan
from echo_core.cache.rolling import RollingCache, full_cache
from echo_core.model.config import get_preset
from echo_core.model.wan import CausalWanModel, block_causal_mask
from echo_core.sampler import SamplerConfig, ScenePlan, generate, sample_video
from echo_core.toy.sampling import ToySamplerConfig

torch.set_grad_enabled(False)


@pytest.fixture(scope="module")
def model() -> CausalWanModel:
    torch.manual_seed(0)
    return CausalWanModel(get_preset("tiny")).eval()


def _chunked(model, cache, x, t, ctx, fpc):
    text = model.encode_text(ctx)
    grid = (x.shape[3] // 2, x.shape[4] // 2)
    outs = []
    for i, f0 in enumerate(range(0, x.shape[2], fpc)):
        cache.begin_chunk(ChunkInfo(i, f0, fpc, grid))
        cache.begin_call(CallInfo(0, False))
        outs.append(model.forward_chunk(x[:, :, f0:f0 + fpc], t[:, f0:f0 + fpc], text, cache))
    return torch.cat(outs, dim=2)


@pytest.mark.parametrize("fpc", [3, 1])
def test_chunked_cache_equals_block_causal_full_forward(model, fpc):
    torch.manual_seed(1)
    frames, h, w = 9, 8, 6
    x = torch.randn(1, 16, frames, h, w)
    t = torch.rand(1, frames) * 1000
    ctx = torch.randn(1, 7, model.cfg.text_dim)
    s = (h // 2) * (w // 2)
    full = model.forward_sequence(x, t, ctx, attn_mask=block_causal_mask(frames, s, fpc))
    chunked = _chunked(model, full_cache(model.cfg.num_layers), x, t, ctx, fpc)
    assert (chunked - full).abs().max().item() < 1e-4
    # and the mask matters: full bidirectional attention gives a different answer for early chunks
    bidir = model.forward_sequence(x, t, ctx)
    assert (bidir[:, :, :fpc] - full[:, :, :fpc]).abs().max().item() > 1e-3


def test_rolling_window_equals_windowed_mask(model):
    torch.manual_seed(2)
    frames, h, w, fpc, window, sink = 12, 4, 4, 3, 9, 3
    x = torch.randn(1, 16, frames, h, w)
    t = torch.rand(1, frames) * 1000
    ctx = torch.randn(1, 5, model.cfg.text_dim)
    s = 4
    block = torch.arange(frames) // fpc
    # query frame f in block b sees frames of blocks <= b, minus those evicted: keep sink frames and the newest
    # (window - sink) frames ending at the end of block b
    q_end = (block + 1) * fpc
    kf = torch.arange(frames)
    allowed = (kf[None] < q_end[:, None]) & ((kf[None] < sink) | (kf[None] >= q_end[:, None] - (window - sink)))
    mask = allowed.repeat_interleave(s, 0).repeat_interleave(s, 1)
    full = model.forward_sequence(x, t, ctx, attn_mask=mask)
    chunked = _chunked(model, RollingCache(model.cfg.num_layers, window, sink), x, t, ctx, fpc)
    assert (chunked - full).abs().max().item() < 1e-4


class _Shifted(CachePolicy):
    """Adds a constant to every temporal position the inner policy hands out (queries and keys alike)."""

    def __init__(self, inner: CachePolicy, offset: int):
        super().__init__(inner.num_layers)
        self.inner, self.offset = inner, offset

    def begin_chunk(self, chunk):
        self.inner.begin_chunk(chunk)

    def begin_call(self, call):
        self.inner.begin_call(call)

    def attend(self, layer, q, k, v):
        got = self.inner.attend(layer, q, k, v)
        shift = torch.tensor([self.offset, 0, 0])
        return AttentionInputs(got.q_positions + shift,
                               [KVSpan(s.k, s.v, s.positions + shift, s.weights) for s in got.spans])

    def token_count(self, layer=0):
        return self.inner.token_count(layer)

    def nbytes(self):
        return self.inner.nbytes()


def test_shifting_all_positions_leaves_output_unchanged(model):
    torch.manual_seed(3)
    x = torch.randn(1, 16, 6, 4, 4)
    t = torch.full((1, 6), 500.0)
    ctx = torch.randn(1, 5, model.cfg.text_dim)
    base = _chunked(model, full_cache(2), x, t, ctx, 3)
    shifted = _chunked(model, _Shifted(full_cache(2), 1000), x, t, ctx, 3)
    assert (base - shifted).abs().max().item() < 1e-4
    # a shift of the queries alone changes the output (the test can tell positions apart)
    class _QueryOnly(_Shifted):
        def attend(self, layer, q, k, v):
            got = self.inner.attend(layer, q, k, v)
            return AttentionInputs(got.q_positions + torch.tensor([5, 0, 0]), got.spans)
    moved = _chunked(model, _QueryOnly(full_cache(2), 0), x, t, ctx, 3)
    assert (base - moved).abs().max().item() > 1e-3


def test_rolling_cache_tokens_constant_after_warmup(model):
    cache = RollingCache(model.cfg.num_layers, window_frames=21, sink_frames=3)
    ctx = [torch.randn(1, 4, model.cfg.text_dim)]
    counts, nbytes = [], []
    cfg = SamplerConfig(denoising_steps=(1000.0,))
    for res in generate(model, cache, ctx, ScenePlan.single(50), latent_shape=(16, 4, 4), seed=0, config=cfg):
        counts.append(res.report["cache_tokens"])
        nbytes.append(res.report["cache_bytes"])
    s = 4
    assert counts[:7] == [s * 3 * (i + 1) for i in range(7)]  # filling: 3 frames per chunk
    assert set(counts[6:]) == {21 * s}
    assert len(set(nbytes[6:])) == 1
    frames = cache.slot_frames
    assert sorted(frames)[:3] == [0, 1, 2] and max(frames) == 149  # sink kept, newest frames present


def test_same_seed_bit_identical_and_seed_matters(model):
    ctx = [torch.randn(1, 4, model.cfg.text_dim, generator=torch.Generator().manual_seed(9))]
    def run(seed):
        cache = RollingCache(model.cfg.num_layers, 6, 3)
        return sample_video(model, cache, ctx, ScenePlan.single(4), latent_shape=(16, 4, 4), seed=seed)[0]
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (1, 16, 12, 4, 4)


def test_warped_timesteps_match_self_forcing():
    ts = SamplerConfig().timesteps()
    assert ts[0] == 1000.0
    assert ts[1:] == pytest.approx([937.5, 833.3333333, 625.0], abs=1e-4)
    assert SamplerConfig(warp_denoising_step=False).timesteps() == [1000.0, 750.0, 500.0, 250.0]


class _HalfVelocity:
    """A stand-in model whose velocity is x / 2, so the sampler's steps can be followed by hand."""

    def encode_text(self, context):
        return context

    def forward_chunk(self, x, t, text, cache):
        return 0.5 * x


@pytest.mark.parametrize("renoise", ["ode", "fresh"])
def test_ode_renoise_takes_euler_steps_and_fresh_draws_new_noise(renoise):
    cfg = ToySamplerConfig(denoising_steps=(1000.0, 500.0), warp_denoising_step=False, renoise=renoise)
    out, _ = sample_video(_HalfVelocity(), full_cache(1), [torch.zeros(1, 4, 8)], ScenePlan.single(1),
                          latent_shape=(16, 2, 2), seed=3, config=cfg)
    noise = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    # s = 1: v = n/2, x0 = n/2; Euler to s = 0.5: x = n + (0.5 - 1) n/2 = 3n/4; then x0 = 3n/4 - 0.5 * 3n/8 = 9n/16
    expected = 9 / 16 * noise
    if renoise == "ode":
        assert torch.allclose(out, expected, atol=1e-6)
    else:  # fresh noise at s = 0.5 gives a different chunk
        assert (out - expected).abs().max().item() > 1e-2


def test_ode_eta_mixes_fresh_noise_in():
    def run(**kw):
        cfg = ToySamplerConfig(denoising_steps=(1000.0, 600.0, 300.0), warp_denoising_step=False, **kw)
        return sample_video(_HalfVelocity(), full_cache(1), [torch.zeros(1, 4, 8)], ScenePlan.single(2),
                            latent_shape=(16, 2, 2), seed=5, config=cfg)[0]

    fresh, ode, half, full = run(renoise="fresh"), run(renoise="ode"), run(renoise="ode", eta=0.5), \
        run(renoise="ode", eta=1.0)
    assert torch.allclose(full, fresh, atol=1e-6)  # eta 1: all fresh noise, as Self-Forcing
    assert (half - ode).abs().max().item() > 1e-2 and (half - fresh).abs().max().item() > 1e-2
    # fresh noise only for the steps that land below 400: the first step follows the ODE, the second is fresh
    hybrid = run(renoise="ode", fresh_below=400.0)
    assert (hybrid - ode).abs().max().item() > 1e-2 and (hybrid - fresh).abs().max().item() > 1e-2
    assert torch.allclose(run(renoise="ode", fresh_below=1000.0), fresh, atol=1e-6)


class _PromptVelocity:
    """Velocity x / 2 plus the prompt's mean: the prompted and the empty prompt's predictions differ by a constant."""

    def __init__(self):
        self.calls = []

    def encode_text(self, context):
        return float(context.mean())

    def forward_chunk(self, x, t, text, cache):
        self.calls.append(text)
        return 0.5 * x + text


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guidance_extrapolates_from_the_empty_prompt(guidance):
    model = _PromptVelocity()
    cfg = SamplerConfig(denoising_steps=(1000.0,), warp_denoising_step=False, guidance=guidance)
    out, _ = sample_video(model, full_cache(1), [torch.full((1, 4, 8), 0.2)], ScenePlan.single(1),
                          latent_shape=(16, 2, 2), seed=3, config=cfg)
    noise = torch.randn(1, 16, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    # v = v_empty + g (v_prompt - v_empty) = n/2 + 0.2 g; one step from s = 1: x0 = n - v = n/2 - 0.2 g
    assert torch.allclose(out, noise / 2 - 0.2 * guidance, atol=1e-5)
    # guidance 1 makes no unprompted call; otherwise one per denoising step, none on the commit pass
    assert model.calls == ([pytest.approx(0.2)] * 2 if guidance == 1 else
                           [pytest.approx(0.2), 0.0, pytest.approx(0.2)])


def test_guidance_interval_guides_only_the_high_noise_steps():
    model = _PromptVelocity()
    cfg = SamplerConfig(denoising_steps=(1000.0, 500.0), warp_denoising_step=False, guidance=2.0,
                        guidance_above=600.0)
    sample_video(model, full_cache(1), [torch.full((1, 4, 8), 0.2)], ScenePlan.single(1), latent_shape=(16, 2, 2),
                 seed=3, config=cfg)
    # t = 1000: prompted + empty; t = 500 (below the interval): prompted only; commit pass: prompted
    assert model.calls == [pytest.approx(0.2), 0.0, pytest.approx(0.2), pytest.approx(0.2)]


def test_guidance_leaves_the_cache_as_the_prompted_calls_wrote_it(model):
    """The unprompted call rewrites the chunk's own K/V slot only, and the commit pass overwrites it after."""
    ctx = [torch.randn(1, 4, model.cfg.text_dim, generator=torch.Generator().manual_seed(2))]
    caches = {}
    for g in (1.0, 2.0):
        cache = RollingCache(model.cfg.num_layers, 6, 3)
        cfg = SamplerConfig(denoising_steps=(1000.0, 500.0), guidance=g)
        latents, _ = sample_video(model, cache, ctx, ScenePlan.single(1), latent_shape=(16, 4, 4), seed=1,
                                  config=cfg)
        caches[g] = (latents, cache)
    (plain, _), (guided, c2) = caches[1.0], caches[2.0]
    assert (plain - guided).abs().max().item() > 1e-3  # guidance changed the chunk...
    # ...and the cache holds exactly the commit pass of the chunk it produced, as without guidance
    replay = RollingCache(model.cfg.num_layers, 6, 3)
    sample_video(model, replay, ctx, ScenePlan.single(0), latent_shape=(16, 4, 4), seed=1,
                 start_latents=guided, config=SamplerConfig(denoising_steps=(1000.0, 500.0)))
    for layer in range(model.cfg.num_layers):
        assert torch.allclose(c2._k[layer].data, replay._k[layer].data, atol=1e-5)


def test_node_sampler_keeps_the_models_renoise_and_sets_the_steps():
    from echo_core.session import sampler_config

    base = ToySamplerConfig(renoise="ode", eta=0.2, fresh_below=300.0, shift=2.0, frames_per_chunk=1)
    cfg = sampler_config(12, 3, base=base)
    assert (cfg.renoise, cfg.eta, cfg.fresh_below, cfg.shift, cfg.frames_per_chunk) == ("ode", 0.2, 300.0, 2.0, 3)
    assert len(cfg.denoising_steps) == 12 and cfg.denoising_steps[0] == 1000.0
    plain = sampler_config(4, 3, shift=5.0)
    assert type(plain) is SamplerConfig and plain.timesteps() == SamplerConfig().timesteps()


@pytest.mark.parametrize("bad, field", [({"denoising_steps": ()}, "denoising_steps"),
                                        ({"denoising_steps": (500.0, 750.0)}, "decreasing"),
                                        ({"frames_per_chunk": 0}, "frames_per_chunk"),
                                        ({"shift": 0}, "shift"),
                                        ({"renoise": "ddim"}, "renoise"),
                                        ({"eta": 1.5}, "eta"),
                                        ({"fresh_below": -1.0}, "fresh_below"),
                                        ({"guidance": 0.0}, "guidance"),
                                        ({"guidance_above": 1000.0}, "guidance_above")])
def test_sampler_config_errors_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        ToySamplerConfig(**bad)  # the core config's checks plus the toy model's re-noise options


def test_start_latents_are_written_first(model):
    torch.manual_seed(4)
    start = torch.randn(1, 16, 3, 4, 4)
    ctx = [torch.randn(1, 4, model.cfg.text_dim)]
    kwargs = dict(latent_shape=(16, 4, 4), seed=1, config=SamplerConfig(denoising_steps=(1000.0,)))
    with_start, _ = sample_video(model, full_cache(2), ctx, ScenePlan.single(2), start_latents=start, **kwargs)
    without, _ = sample_video(model, full_cache(2), ctx, ScenePlan.single(2), **kwargs)
    assert with_start.shape[2] == 9 and torch.equal(with_start[:, :, :3], start)
    # the same noise, but now conditioned on the given frames
    assert (with_start[:, :, 3:6] - without[:, :, :3]).abs().max().item() > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights_run_and_stay_close_to_fp32(model, dtype):
    """bf16/fp16 weights (how real checkpoints run): norms with affine weights must accept the fp32 residual."""
    import copy

    low = copy.deepcopy(model).to(dtype)
    torch.manual_seed(5)
    x = torch.randn(1, 16, 3, 4, 4)
    t = torch.full((1, 3), 600.0)
    ctx = torch.randn(1, 5, model.cfg.text_dim)
    ref = _chunked(model, full_cache(2), x, t, ctx, 3)
    out = _chunked(low, full_cache(2), x, t, ctx, 3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max().item() < 0.05 * ref.abs().max().item()
