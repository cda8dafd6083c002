"""bench/toy_continuation.py: the teacher-forced probe must score a perfect continuation as perfect, so that a low
number on real weights says something about the weights and not about the probe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "bench"))

import toy_continuation  # noqa: E402

from echo_core.toy import load_toy_model  # noqa: E402
from echo_core.toy.data import BLOCK  # noqa: E402
from echo_core.toy.evaluate import eval_prompts  # noqa: E402
from echo_core.toy.scorer import object_presence  # noqa: E402


@pytest.mark.parametrize("sampler", [{}, {"warm_start": 700.0, "guidance": 3.0, "guidance_above": 700.0}])
def test_an_oracle_model_continues_the_rendered_scene_exactly(monkeypatch, sampler):
    """Also through the warm start and guidance: the oracle's velocity ignores the prompt, so guidance leaves it
    as it is, and from any start the steps land on the truth."""
    bundle = load_toy_model().with_sampler(**sampler)
    spec = eval_prompts(1, world=bundle.world)[0]
    chunks, seed = 3, 7
    truth, _ = toy_continuation.rendered(bundle, spec, chunks, seed)
    seen_context: list[int] = []
    first_inputs: dict[int, torch.Tensor] = {}

    def oracle(model, x, t, texts, ids, positions, mask):
        n = x.shape[2]
        k = n // BLOCK - 1  # the chunk being sampled (its past is never cut at 3 chunks)
        assert torch.equal(x[:, :, :-BLOCK], truth[:, :, :BLOCK * k])  # the past is the rendered scene
        assert bool((t[0, :-BLOCK] == 0).all()) and bool(mask[0, 0, -1].all())  # clean, and all of it visible
        seen_context.append(n - BLOCK)
        first_inputs.setdefault(k, x[:, :, -BLOCK:].clone())
        sigma = t[0, -1] / 1000.0
        v = torch.zeros_like(x)
        v[:, :, -BLOCK:] = (x[:, :, -BLOCK:] - truth[:, :, BLOCK * k:BLOCK * (k + 1)]) / sigma
        return v

    monkeypatch.setattr(toy_continuation, "window_forward", oracle)
    frames = toy_continuation.teacher_forced(bundle, spec, chunks, seed)
    assert sorted(set(seen_context)) == [0, BLOCK, 2 * BLOCK]
    if sampler:  # a continuing chunk starts from the last rendered frame, partly noised
        sigma = [t for t in bundle.sampler_config.timesteps() if t <= 700][0] / 1000
        start = first_inputs[2] - (1 - sigma) * truth[:, :, 2 * BLOCK - 1:2 * BLOCK]
        assert float(start.std() / sigma) == pytest.approx(1.0, abs=0.15)  # what is left is the noise
    expected = toy_continuation.decode(bundle, truth)
    assert torch.allclose(frames, expected, atol=1e-4)
    assert toy_continuation.per_chunk(object_presence(frames, spec).all(1), BLOCK, chunks) == \
        toy_continuation.per_chunk(object_presence(expected, spec).all(1), BLOCK, chunks)
    assert float(object_presence(expected, spec).all(1).float().mean()) >= 0.5  # and the comparison is not 0 == 0
