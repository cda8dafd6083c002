"""What one training step consumes, made from the step number alone.

Every step's data is seeded by its step number (`numpy.random.default_rng([seed, 2, step])`), so the stream is
the same whether it is made inline or by worker processes ahead of the training loop (`--workers`, which keeps a
GPU fed: making one step's data costs about 20 ms of one CPU core per 4 windows). Random draws that belong to
the loss (noise levels, noise, prompt dropout) stay in the training loop, on its own generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from echo_core.toy.codec import ToyCodec
from echo_core.toy.data import Batch, Openings, object_mask, opening_blocks, render_segment, sample_batch, shape_spec
from echo_core.toy.grammar import world_spec
from echo_core.toy.text import ToyTextEncoder

if TYPE_CHECKING:
    from echo_core.toy.train import TrainConfig

OBJECT_WEIGHT = 4.0  # loss weight of object pixels in scene openings


def dilate(cover: torch.Tensor, margin: int) -> torch.Tensor:
    """[..., h, w] object coverage grown by `margin` cells on every side (max filter); margin 0 returns it as is."""
    if margin <= 0:
        return cover
    flat = cover.reshape(-1, 1, *cover.shape[-2:])
    grown = torch.nn.functional.max_pool2d(flat, 2 * margin + 1, stride=1, padding=margin)
    return grown.reshape(cover.shape)


@dataclass
class OpeningTargets:
    """Context-free scene-opening blocks with their clean targets and loss weights."""

    noise: torch.Tensor  # [n, 16, f, h, w] each block's seed noise
    texts: torch.Tensor  # [n, L, D]
    x0: torch.Tensor  # [n, 16, f, h, w] the scene the noise implies, encoded
    weight: torch.Tensor  # [n, 1, f, h, w] object cells (and their margin) weigh OBJECT_WEIGHT


@dataclass
class StepData:
    step: int
    batch: Batch | None  # training windows; None during the shape warm-up (openings only)
    openings: OpeningTargets


def opening_targets(openings: Openings, codec: ToyCodec, size: int, margin: int) -> OpeningTargets:
    times = torch.arange(openings.noise.shape[2])
    with torch.no_grad():
        x0 = torch.stack([codec.encode_images(render_segment(seg, times, size)) for seg in openings.segments])
        cover = torch.stack([object_mask(seg, times, size) for seg in openings.segments])  # [n, f, H, W]
        cells = dilate(torch.nn.functional.avg_pool2d(cover, 4), margin)
    return OpeningTargets(openings.noise, openings.texts, x0.permute(0, 2, 1, 3, 4),
                          1 + (OBJECT_WEIGHT - 1) * cells[:, None])


def make_step_data(step: int, cfg: TrainConfig, codec: ToyCodec, text: ToyTextEncoder) -> StepData:
    """The windows and scene openings of training step `step` (the same for any worker count)."""
    rng = np.random.default_rng([cfg.seed, 2, step])
    if step < cfg.shape_warmup:
        openings = opening_blocks(rng, 2 * cfg.openings, text, cfg.size, cfg.details,
                                  spec_of=lambda r: shape_spec(r, cfg.world))
        return StepData(step, None, opening_targets(openings, codec, cfg.size, cfg.object_margin))
    batch = sample_batch(rng, cfg.batch, codec, text, cfg.size, details=cfg.details, world=cfg.world,
                         mode=cfg.data_mode)
    openings = opening_blocks(rng, cfg.openings, text, cfg.size, cfg.details,
                              spec_of=lambda r: world_spec(r, cfg.world))
    return StepData(step, batch, opening_targets(openings, codec, cfg.size, cfg.object_margin))


class _Steps(torch.utils.data.Dataset):
    def __init__(self, start: int, stop: int, make: Callable[[int], StepData]) -> None:
        self.start, self.stop, self.make = start, stop, make

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> StepData:
        return self.make(self.start + i)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # workers share the machine with the training loop


def step_stream(start: int, stop: int, cfg: TrainConfig, codec: ToyCodec, text: ToyTextEncoder,
                workers: int = 0) -> Iterator[StepData]:
    """StepData for steps start..stop-1 in order: made inline (workers = 0) or by `workers` processes ahead."""
    def make(step: int) -> StepData:
        return make_step_data(step, cfg, codec, text)

    if workers <= 0:
        return (make(step) for step in range(start, stop))
    loader = torch.utils.data.DataLoader(_Steps(start, stop, make), batch_size=None, shuffle=False,
                                         num_workers=workers, prefetch_factor=4, worker_init_fn=_one_thread,
                                         multiprocessing_context="fork")
    return iter(loader)
