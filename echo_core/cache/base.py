"""The interface between the causal DiT and a KV-cache policy.

The model never knows which policy it runs under. Per forward call it hands each layer's raw (post-norm,
pre-RoPE) q, k, v of the current chunk to `CachePolicy.attend`, and gets back what to attend to
(`AttentionInputs`, defined with the model in echo_core.model.attention_io so the model never imports a
policy). The model rotates queries and keys with those positions, scales keys and values by the weights
(spec §2.8) and runs scaled_dot_product_attention. Tensors are head-major: [B, H, L, D].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from echo_core.model.attention_io import AttentionInputs, ContextMemo, KVSpan

__all__ = ["AttentionInputs", "CachePolicy", "CallInfo", "ChunkInfo", "KVSpan"]


@dataclass(frozen=True)
class ChunkInfo:
    """What the sampler tells a policy about the chunk it is about to run."""

    index: int  # chunk number in this run, 0-based
    start_frame: int  # absolute latent frame of the chunk's first frame
    num_frames: int
    grid: tuple[int, int]  # token rows and columns per latent frame
    scene_index: int = 0
    scene_start_frame: int = 0  # absolute latent frame where the current scene began
    transition: Any = None  # timeline.Transition when this chunk opens a new scene, else None
    is_scene_end: bool = False  # last chunk of its scene
    prefill: bool = False  # start latents given by the caller (written with commit passes only)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.num_frames


@dataclass(frozen=True)
class CallInfo:
    """One forward call inside a chunk: a denoising step, or the commit (context) pass that writes clean K/V."""

    step: int  # 0 for the first denoising call of the chunk; commit pass uses the step count
    commit: bool


class CachePolicy(ABC):
    """A per-run KV cache and the rule for what it keeps. One instance serves all layers of one model."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.chunk: ChunkInfo | None = None
        self.call: CallInfo | None = None
        # The hot path: per layer, the context as attention reads it, rebuilt once per chunk (see ContextMemo).
        self._memos = [ContextMemo() for _ in range(num_layers)]
        self._epoch = 0

    def begin_chunk(self, chunk: ChunkInfo) -> None:
        """Called once before the chunk's first forward call; a policy plans slots and scene switches here."""
        self.chunk = chunk
        self._epoch += 1  # every context memo is stale from here on

    def reusable(self, layer: int, q_positions: torch.Tensor, span: KVSpan,
                 own_rows: tuple[tuple[int, int], ...]) -> AttentionInputs:
        """AttentionInputs for a policy whose context (all of `span` but `own_rows`, the rows this call wrote)
        stays the same over the calls of a chunk, so the model rotates it once per chunk."""
        return AttentionInputs(q_positions, [span], context_id=self._epoch, own_rows=own_rows,
                               memo=self._memos[layer])

    def context_nbytes(self) -> int:
        """Bytes of the rotated context the model keeps per layer for the running chunk (beside `nbytes`)."""
        return sum(m.nbytes() for m in self._memos)

    def release_context(self) -> None:
        for memo in self._memos:
            memo.clear()

    def begin_call(self, call: CallInfo) -> None:
        self.call = call

    @abstractmethod
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
        """Store this call's k/v for the chunk and return what layer `layer` attends to."""

    def end_chunk(self) -> dict[str, Any]:
        """Called after the commit pass; returns a JSON-able report of the cache state."""
        return {"cache_tokens": self.token_count(), "cache_bytes": self.nbytes()}

    @abstractmethod
    def token_count(self, layer: int = 0) -> int:
        """Tokens currently held for `layer` (what the next chunk would attend to, besides itself)."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes of K/V held by this policy across all layers."""

    def release(self) -> None:
        """Free every tensor; the policy is unusable afterwards."""

    def _require_chunk(self) -> ChunkInfo:
        if self.chunk is None:
            raise RuntimeError("CachePolicy.begin_chunk must be called before attend")
        return self.chunk

    def _require_call(self) -> CallInfo:
        if self.call is None:
            raise RuntimeError("CachePolicy.begin_call must be called before attend")
        return self.call
