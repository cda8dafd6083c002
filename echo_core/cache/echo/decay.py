"""Difference-aware memory decay (spec §5).

The memory inserted at a switch is multiplied into attention through per-token weights (keys and values are
both scaled, §2.8). Each chunk end multiplies the weights by per-token rates; after `clear_after_blocks` chunks
the old memory is dropped from the window. With the `diff` strategy a location's rate falls with how much the
new scene's first frame differs from the memory at that location (keys compared per spatial token).
`DecayState` holds the running decay and the per-layer weights and rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from echo_core.cache.echo.window import Move
from echo_core.cache.placement import GPU
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


@dataclass
class LayerWeights:
    """One layer's per-token attention weights over the window and the rates that fade them each chunk."""

    w: torch.Tensor  # [W*S] float32, 1 except on faded memory
    rates: torch.Tensor  # [W*S] float32, 1 outside the decayed span

    def tensors(self) -> list[torch.Tensor]:
        return [self.w, self.rates]

    def placed(self) -> list[tuple[str, torch.Tensor]]:
        return [(GPU, self.w), (GPU, self.rates)]


class DecayState:
    """The decay running since the last switch (§5.3) and the per-layer weights it fades; it also says when the
    old memory is due for eviction (§5.4). Weights move with their K/V when the layout moves frames."""

    def __init__(self, num_layers: int, window_frames: int):
        self.window_frames = window_frames
        self.layers: list[LayerWeights | None] = [None] * num_layers
        self.plan: DecayPlan | None = None
        self.applied = False  # weights are handed to attention (from a switch with decay until an eviction)

    def allocate(self, layer: int, like: torch.Tensor, s: int) -> None:
        n = self.window_frames * s
        self.layers[layer] = LayerWeights(torch.ones(n, dtype=torch.float32, device=like.device),
                                          torch.ones(n, dtype=torch.float32, device=like.device))

    def allocated(self) -> list[LayerWeights]:
        return [lw for lw in self.layers if lw is not None]

    def weights(self, layer: int, tokens: int) -> torch.Tensor | None:
        lw = self.layers[layer]
        return lw.w[:tokens] if self.applied and lw is not None else None

    def apply_moves(self, moves: list[Move], s: int) -> None:
        """Replay the layout's frame moves: weights travel with their frame; re-inserted anchors start fresh."""
        for lw in self.allocated():
            for mv in moves:
                dst, src = slice(mv.dst * s, (mv.dst + 1) * s), slice(mv.src * s, (mv.src + 1) * s)
                if mv.from_source:
                    lw.w[dst] = 1.0
                    lw.rates[dst] = 1.0
                else:
                    lw.w[dst] = lw.w[src]
                    lw.rates[dst] = lw.rates[src]

    def reset_rows(self, layer: int, start: int, end: int) -> None:
        """Tokens [start, end) were replaced by fresh ones (compression): full weight, no decay."""
        lw = self.layers[layer]
        if lw is not None:
            lw.w[start:end] = 1.0
            lw.rates[start:end] = 1.0

    def reset(self) -> None:
        """All weights back to 1, none handed to attention (a switch, an eviction)."""
        for lw in self.allocated():
            lw.w.fill_(1.0)
            lw.rates.fill_(1.0)
        self.applied = False

    def start(self, plan: DecayPlan | None, s: int) -> None:
        """A switch: weights start over, then the decay it planned: first weights on its span, fixed rates now,
        diff rates after the new scene's first commit pass."""
        self.reset()
        self.plan = None if plan is None or plan.empty else plan
        if self.plan is None:
            return
        a, b = self.plan.span
        for lw in self.allocated():
            lw.w[a * s:b * s] = self.plan.first_weight
            if self.plan.strategy == "fixed":
                lw.rates[a * s:b * s] = self.plan.fixed_rate
        self.applied = True

    def capture_rates(self, layer: int, first: torch.Tensor, previous_first: tuple[torch.Tensor, torch.Tensor] | None,
                      window_head: torch.Tensor, s: int) -> None:
        """Diff rates from the new scene's first frame keys [B, H, S, D] (commit pass of its first chunk). The
        reference is the old scene's first frame for target old_recent (when captured), else window slot 0."""
        d, lw = self.plan, self.layers[layer]
        if d is None or not d.rates_pending or lw is None:
            return
        ref = previous_first[0] if d.target == "old_recent" and previous_first is not None else window_head
        rates = diff_rates(first, ref.to(first.device, non_blocking=True), d.min_rate, d.max_rate)  # ref: maybe host
        a, b = d.span
        lw.rates[a * s:b * s] = tile_rates(rates, b - a)

    def rates_captured(self) -> None:
        if self.plan is not None:
            self.plan.rates_pending = False

    def step(self) -> bool:
        """Chunk end: fade the weights by their rates; True when the old memory is due for eviction."""
        if self.plan is None:
            return False
        for lw in self.allocated():
            lw.w.mul_(lw.rates)
        self.plan.blocks_left -= 1
        return self.plan.blocks_left <= 0

    def stop(self) -> None:
        self.plan = None

    def report(self, memory_tokens: int, s: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        live = self.allocated()
        if memory_tokens and live:
            w = torch.stack([lw.w[:memory_tokens] for lw in live])
            out["memory_weights"] = dict(zip(("mean", "min", "max"),
                                             torch.stack((w.mean(), w.min(), w.max())).tolist()))
        if self.plan is not None and live:
            a, b = self.plan.span
            r = torch.stack([lw.rates[a * s:b * s] for lw in live])
            out["decay"] = dict(target=self.plan.target, strategy=self.plan.strategy,
                                blocks_left=self.plan.blocks_left,
                                **dict(zip(("rate_min", "rate_mean", "rate_max"),
                                           torch.stack((r.min(), r.mean(), r.max())).tolist())))
        return out

    def release(self) -> None:
        self.layers = [None] * len(self.layers)
