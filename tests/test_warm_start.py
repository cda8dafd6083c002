"""The toy sampler's warm start: a chunk that carries on the picture before it starts from that picture's last
frame, noised to a middle timestep, and takes only the steps from there; scene openings after a hard cut or a
recall, and the first chunk of a video, start from pure noise as Self-Forcing does."""

from __future__ import annotations

import pytest
import torch

from echo_core.cache.rolling import RollingCache
from echo_core.sampler import SamplerConfig, ScenePlan, generate
from echo_core.toy.sampling import ToySamplerConfig

STEPS = tuple(1000.0 * (12 - i) / 12 for i in range(12))


def test_chunk_start_blends_the_last_frame_with_the_noise_at_the_first_step_below_the_warm_start():
    cfg = ToySamplerConfig(denoising_steps=STEPS, shift=2.0, renoise="ode", warm_start=700.0)
    full = cfg.timesteps()
    noise = torch.randn(1, 16, 3, 4, 4)
    previous = torch.randn(1, 16, 3, 4, 4)
    x, steps = cfg.chunk_start(noise, previous, continues=True)
    assert steps == [t for t in full if t <= 700] and steps[0] < 700 < full[len(full) - len(steps) - 1]
    sigma = steps[0] / 1000
    assert torch.allclose(x, (1 - sigma) * previous[:, :, 2:3] + sigma * noise)
    for args in ((previous, False), (None, True)):  # a hard cut, or nothing before it
        x, steps = cfg.chunk_start(noise, *args)
        assert x is noise and steps == full
    off = ToySamplerConfig(denoising_steps=STEPS, shift=2.0, renoise="ode")
    x, steps = off.chunk_start(noise, previous, continues=True)
    assert x is noise and steps == full
    assert SamplerConfig().chunk_start(noise, previous, True) == (noise, SamplerConfig().timesteps())
    with pytest.raises(ValueError, match="warm_start"):
        ToySamplerConfig(denoising_steps=(1000.0, 500.0), warm_start=400.0)  # no step at or below it
    with pytest.raises(ValueError, match="warm_start"):
        ToySamplerConfig(warm_start=-1.0)


@pytest.mark.parametrize("marker, warm_at_switch", [("", True), ("#", False), ("@", False)])
def test_generate_warm_starts_inside_scenes_and_at_smooth_switches_only(model, marker, warm_at_switch):
    plan = ScenePlan(5, (0, 3), (_transition(marker),))
    cfg = ToySamplerConfig(denoising_steps=STEPS, shift=2.0, renoise="ode", warm_start=500.0)
    calls: dict[int, int] = {}
    ctx = [torch.randn(1, 4, model.cfg.text_dim), torch.randn(1, 4, model.cfg.text_dim)]
    stream = generate(model, RollingCache(model.cfg.num_layers, 21, 3), ctx, plan, latent_shape=(16, 4, 4), seed=0,
                      config=cfg, on_step=lambda chunk, step: calls.__setitem__(chunk, step))
    results = list(stream)
    warm = len([t for t in cfg.timesteps() if t <= 500])
    full = len(cfg.timesteps())
    # on_step's last call per chunk is the commit, numbered by the steps the chunk took
    assert calls == {0: full, 1: warm, 2: warm, 3: warm if warm_at_switch else full, 4: warm}
    assert len(results) == 5


def _transition(marker: str):
    from echo_core.timeline import Transition, TransitionMode

    mode = {"": TransitionMode.SMOOTH, "#": TransitionMode.HARDCUT, "@": TransitionMode.RECALL}[marker]
    return Transition(at_chunk=3, from_scene=0, to_scene=1, mode=mode, recall_source=None)


def test_a_warm_started_chunk_begins_from_the_previous_chunk_not_from_noise(model):
    """With the noise source returning zeros, a warm-started chunk's first model input is the previous chunk's
    last frame scaled by (1 - sigma): the previous picture, not the noise, is where it starts."""
    cfg = ToySamplerConfig(denoising_steps=STEPS, shift=2.0, renoise="ode", warm_start=500.0)
    inputs: list[torch.Tensor] = []
    original = model.forward_chunk

    def spy(x, t, text, cache):
        inputs.append(x.detach().clone())
        return original(x, t, text, cache)

    model.forward_chunk = spy
    try:
        ctx = [torch.randn(1, 4, model.cfg.text_dim)]
        results = list(generate(model, RollingCache(model.cfg.num_layers, 21, 3), ctx, ScenePlan.single(2),
                                latent_shape=(16, 4, 4), seed=0, config=cfg, noise=lambda shape: torch.zeros(shape)))
    finally:
        del model.forward_chunk
    full = len(cfg.timesteps())
    first_of_chunk_1 = inputs[full + 1]  # after chunk 0's steps and its commit pass
    sigma = [t for t in cfg.timesteps() if t <= 500][0] / 1000
    expected = (1 - sigma) * results[0].latents[:, :, -1:].expand_as(first_of_chunk_1)
    assert torch.allclose(first_of_chunk_1, expected, atol=1e-6)
