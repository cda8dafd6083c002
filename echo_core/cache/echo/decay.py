"""Difference-aware memory decay (spec §5).

The memory inserted at a switch is multiplied into attention through per-token weights (keys and values are
both scaled, §2.8). Each chunk end multiplies the weights by per-token rates; after `clear_after_blocks` chunks
the old memory is dropped from the window. With the `diff` strategy a location's rate falls with how much the
new scene's first frame differs from the memory at that location (keys compared per spatial token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echo_core.config import TransitionConfig


def key_difference(k_cur: torch.Tensor, k_ref: torch.Tensor) -> torch.Tensor:
    """d_p = mean_b (1 - cos(K_cur[b, :, p, :], K_ref[b, :, p, :])) over all heads × dims, [B, H, S, D] -> [S]."""
    if k_cur.shape != k_ref.shape:
        raise ValueError(f"frames to compare differ in shape: {tuple(k_cur.shape)} vs {tuple(k_ref.shape)}")
    cur = k_cur.float().transpose(1, 2).flatten(2)  # [B, S, H*D]
    ref = k_ref.float().transpose(1, 2).flatten(2)
    cos = torch.nn.functional.cosine_similarity(cur, ref, dim=-1, eps=1e-8)
    return (1.0 - cos).mean(dim=0)


def rates_from_difference(d: torch.Tensor, min_rate: float, max_rate: float) -> torch.Tensor:
    """Min-max normalise d over the frame (0 if its range is <= 1e-6) and map linearly: the most changed
    location decays at `min_rate`, the least changed at `max_rate`."""
    lo, hi = d.min(), d.max()
    span = hi - lo
    norm = torch.where(span > 1e-6, (d - lo) / span.clamp_min(1e-12), torch.zeros_like(d))
    return (max_rate - (max_rate - min_rate) * norm).clamp(min_rate, max_rate)


def diff_rates(k_cur: torch.Tensor, k_ref: torch.Tensor, min_rate: float, max_rate: float) -> torch.Tensor:
    """Per-location decay rates [S] (float32) from the new scene's first frame and the reference frame."""
    return rates_from_difference(key_difference(k_cur, k_ref), min_rate, max_rate)


@dataclass
class DecayPlan:
    """Decay set up at a switch, shared by all layers (rates themselves are per layer)."""

    span: tuple[int, int]  # decayed slots [start, end) at the switch
    strategy: str
    min_rate: float
    max_rate: float
    fixed_rate: float
    first_weight: float
    target: str
    blocks_left: int  # chunk ends until the old memory is dropped
    rates_pending: bool  # diff rates wait for the first commit pass of the new scene

    @property
    def empty(self) -> bool:
        return self.span[0] >= self.span[1]


def plan_decay(mode: str, tc: TransitionConfig, memory_frames: int, old_recent_frames: int) -> DecayPlan | None:
    """§5.2: which slots decay and how. The window after a switch is [memory | old recent | new chunk].

    Smooth always sets up decay and eviction (target picks the decayed span); hard cut and recall only when the
    target is `old_memory` and memory was inserted (official), otherwise the memory stays until rolled out."""
    d = tc.decay
    total = memory_frames + old_recent_frames
    if mode != "smooth" and (d.target != "old_memory" or memory_frames == 0):
        return None
    if total == 0:
        return None
    span = {"old_memory": (0, total), "old_recall": (0, memory_frames),
            "old_recent": (memory_frames, total)}[d.target]
    return DecayPlan(span=span, strategy=d.strategy, min_rate=d.min_rate, max_rate=d.max_rate,
                     fixed_rate=d.fixed_rate, first_weight=d.first_block_weight, target=d.target,
                     blocks_left=d.clear_after_blocks, rates_pending=d.strategy == "diff")


def tile_rates(rates: torch.Tensor, frames: int) -> torch.Tensor:
    """Per-location rates [S] repeated for `frames` frames (token p of every memory frame shares location p)."""
    return rates.repeat(frames)
