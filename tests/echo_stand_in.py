"""A stand-in for the DiT that drives a CachePolicy through the sampler's exact call sequence (no model).

Per chunk: begin_chunk; `steps` denoising calls (begin_call(step=i, commit=False) + attend for every layer);
one commit call (step=steps, commit=True); end_chunk. Prefill chunks get the commit call only.
Raw q/k are random (drawn per frame from a small pool, so the same frame always has the same keys); values
carry tags the tests decode from whatever the policy hands back:
    channel 0 = absolute latent frame, channel 1 = in-frame token index, channel 2 = call step (commit = steps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from echo_core.cache.base import CachePolicy, CallInfo, ChunkInfo
from echo_core.timeline import Transition, TransitionMode


@dataclass
class LayerView:
    """What one layer attended to in one call, decoded (float32 tags of head 0 and key positions)."""

    frame: torch.Tensor  # [N] channel-0 tag of every returned key token
    spatial: torch.Tensor  # [N]
    step: torch.Tensor  # [N]
    k_pos: torch.Tensor  # [N, 3]
    q_pos: torch.Tensor  # [Lq, 3]
    weights: torch.Tensor | None  # [N] or None
    keys: torch.Tensor | None = None  # raw keys [N, H*D] float32 (only when kept)

    def slot_frames(self, s: int) -> list[float]:
        return self.frame[::s].tolist()


@dataclass
class ChunkRecord:
    info: ChunkInfo
    first: list[LayerView] = field(default_factory=list)  # first denoising call, per layer
    commit: list[LayerView] = field(default_factory=list)  # commit call, per layer
    report: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 0  # most key tokens any layer was handed in any call of this chunk


class StandIn:
    def __init__(self, policy: CachePolicy, *, layers: int, heads: int, head_dim: int, grid: tuple[int, int],
                 dtype: torch.dtype = torch.float16, steps: int = 4, seed: int = 0, pool: int = 16,
                 keep_keys: bool = False, on_attend: Any = None):
        self.on_attend = on_attend  # called with (layer, inputs) after every attend (e.g. to fill the memo)
        self.policy, self.layers, self.steps, self.grid, self.dtype = policy, layers, steps, grid, dtype
        self.s = grid[0] * grid[1]
        self.keep_keys = keep_keys
        g = torch.Generator().manual_seed(seed)
        shape = (layers, pool, 1, heads, self.s, head_dim)
        self.k_pool = torch.randn(shape, generator=g).to(dtype)
        self.q_pool = torch.randn(shape, generator=g).to(dtype)
        self.pool = pool
        self.calls: list[tuple[int, bool]] = []  # (step, commit) in the order the policy saw them

    def frame_keys(self, layer: int, frame: int) -> torch.Tensor:
        return self.k_pool[layer, frame % self.pool]

    def _tensors(self, layer: int, frames: list[int]):
        k = torch.cat([self.k_pool[layer, f % self.pool] for f in frames], dim=2)
        q = torch.cat([self.q_pool[layer, (3 * f + 1) % self.pool] for f in frames], dim=2)
        v = torch.zeros_like(k)
        v[..., 0] = torch.tensor(frames, dtype=torch.float32).repeat_interleave(self.s).to(self.dtype)
        v[..., 1] = torch.arange(self.s).repeat(len(frames)).to(self.dtype)
        return q, k, v

    def _view(self, inputs) -> LayerView:
        span = inputs.spans[0] if len(inputs.spans) == 1 else None
        if span is None:
            raise AssertionError(f"expected one KV span, got {len(inputs.spans)}")
        keys = span.k[0].transpose(0, 1).flatten(1).float().clone() if self.keep_keys else None
        return LayerView(frame=span.v[0, 0, :, 0].float().clone(), spatial=span.v[0, 0, :, 1].float().clone(),
                         step=span.v[0, 0, :, 2].float().clone(), k_pos=span.positions.clone(),
                         q_pos=inputs.q_positions.clone(),
                         weights=None if span.weights is None else span.weights.float().clone(), keys=keys)

    def run_chunk(self, info: ChunkInfo) -> ChunkRecord:
        rec = ChunkRecord(info)
        self.policy.begin_chunk(info)
        frames = list(range(info.start_frame, info.end_frame))
        calls = [(self.steps, True)] if info.prefill else [(i, False) for i in range(self.steps)] + [(self.steps, True)]
        tensors = [self._tensors(layer, frames) for layer in range(self.layers)]
        for n, (step, commit) in enumerate(calls):
            self.policy.begin_call(CallInfo(step=step, commit=commit))
            for layer in range(self.layers):
                q, k, v = tensors[layer]
                v[..., 2] = step  # policies copy what they keep, so the tensor can be re-tagged in place
                out = self.policy.attend(layer, q, k, v)
                if self.on_attend is not None:
                    self.on_attend(layer, out)
                total = sum(sp.k.shape[2] for sp in out.spans)
                if out.q_positions.shape[0] != q.shape[2]:
                    raise AssertionError("query positions do not cover the chunk")
                for sp in out.spans:
                    if sp.positions.shape[0] != sp.k.shape[2]:
                        raise AssertionError("key positions do not cover the span")
                rec.max_tokens = max(rec.max_tokens, total)
                self.max_tokens_seen = max(getattr(self, "max_tokens_seen", 0), total)
                if n == 0:
                    rec.first.append(self._view(out))
                if commit:
                    rec.commit.append(self._view(out))
        rec.report = self.policy.end_chunk()
        return rec


def timeline_chunks(scene_chunks: list[int], modes: list[TransitionMode], grid: tuple[int, int],
                    frames_per_chunk: int = 3, recall_sources: dict[int, int] | None = None) -> list[ChunkInfo]:
    """ChunkInfos for consecutive scenes of `scene_chunks` chunks; modes[i] = transition into scene i+1."""
    out: list[ChunkInfo] = []
    index = frame = 0
    for si, n in enumerate(scene_chunks):
        start = frame
        for j in range(n):
            transition = None
            if j == 0 and si > 0:
                src = (recall_sources or {}).get(si)
                transition = Transition(at_chunk=index, from_scene=si - 1, to_scene=si, mode=modes[si - 1],
                                        recall_source=src)
            out.append(ChunkInfo(index=index, start_frame=frame, num_frames=frames_per_chunk, grid=grid,
                                 scene_index=si, scene_start_frame=start, transition=transition,
                                 is_scene_end=j == n - 1))
            index += 1
            frame += frames_per_chunk
    return out


def pingpong(n: int, period: int = 12) -> int:
    """The palindrome 0..P-1, P-1..0, 0.. of spec §2.5, written independently of the implementation."""
    seq = list(range(period)) + list(range(period - 1, -1, -1))
    return seq[n % (2 * period)]
