"""Self-Forcing's baseline cache: an attention sink (the first frames) plus a rolling window of recent frames.

Storage is a fixed set of frame-sized slots per layer; a slot keeps its frame's raw keys, values and absolute
frame index. Once full, the oldest non-sink frame's slot is reused for each new frame, so nothing is copied
on eviction and memory stays constant. Keys are rotated at attention time with the frame's absolute index,
which reproduces Self-Forcing (it rotates before caching, at the same positions).
With `window_frames=None` nothing is evicted: the cache keeps every frame (the reference for tests).
"""

from __future__ import annotations

import torch

from echo_core.cache.base import AttentionInputs, CachePolicy, ChunkInfo, KVSpan
from echo_core.model.rope import grid_positions


class RollingCache(CachePolicy):
    def __init__(self, num_layers: int, window_frames: int | None = 21, sink_frames: int = 3):
        super().__init__(num_layers)
        if window_frames is not None and window_frames <= sink_frames:
            raise ValueError(f"window_frames ({window_frames}) must exceed sink_frames ({sink_frames})")
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.slot_frames: list[int] = []  # absolute frame held by each slot, slots filled in order
        self._chunk_slots: list[int] = []
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers
        self._key_positions: torch.Tensor | None = None
        self._query_positions: torch.Tensor | None = None

    # -- planning -------------------------------------------------------------------------------------------
    def begin_chunk(self, chunk: ChunkInfo) -> None:
        super().begin_chunk(chunk)
        frames = list(range(chunk.start_frame, chunk.end_frame))
        slots = []
        for frame in frames:
            if frame in self.slot_frames:
                slots.append(self.slot_frames.index(frame))
            elif self.window_frames is None or len(self.slot_frames) < self.window_frames:
                self.slot_frames.append(frame)
                slots.append(len(self.slot_frames) - 1)
            else:
                slot = self._oldest_evictable(exclude=slots)
                self.slot_frames[slot] = frame
                slots.append(slot)
        self._chunk_slots = slots
        self._key_positions = None
        self._query_positions = None

    def _oldest_evictable(self, exclude: list[int]) -> int:
        sink = set(sorted(self.slot_frames)[: self.sink_frames])
        candidates = [(f, s) for s, f in enumerate(self.slot_frames) if f not in sink and s not in exclude]
        if not candidates:
            raise ValueError(
                f"chunk of {self._require_chunk().num_frames} frames does not fit a rolling window of "
                f"{self.window_frames} frames with {self.sink_frames} sink frames; raise window_frames")
        return min(candidates)[1]

    # -- attention ------------------------------------------------------------------------------------------
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
        chunk = self._require_chunk()
        s = chunk.tokens_per_frame
        kbuf, vbuf = self._buffers(layer, k, len(self.slot_frames) * s)
        for j, slot in enumerate(self._chunk_slots):
            kbuf[:, :, slot * s:(slot + 1) * s] = k[:, :, j * s:(j + 1) * s]
            vbuf[:, :, slot * s:(slot + 1) * s] = v[:, :, j * s:(j + 1) * s]
        n = len(self.slot_frames) * s
        if self._key_positions is None or self._key_positions.device != k.device:
            rows, cols = chunk.grid
            self._key_positions = grid_positions(self.slot_frames, rows, cols, device=k.device)
            self._query_positions = grid_positions(range(chunk.start_frame, chunk.end_frame), rows, cols,
                                                   device=k.device)
        span = KVSpan(kbuf[:, :, :n], vbuf[:, :, :n], self._key_positions)
        return self.reusable(layer, self._query_positions, span, tuple((slot * s, (slot + 1) * s)
                                                                        for slot in self._chunk_slots))

    def _buffers(self, layer: int, like: torch.Tensor, needed_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        kbuf = self._k[layer]
        if kbuf is None or kbuf.shape[2] < needed_tokens or kbuf.dtype != like.dtype or kbuf.device != like.device:
            b, h, _, d = like.shape
            s = self._require_chunk().tokens_per_frame
            if self.window_frames is not None:
                capacity = self.window_frames * s
            else:  # unbounded: grow geometrically so appends stay amortised O(1)
                capacity = max(needed_tokens, 2 * (kbuf.shape[2] if kbuf is not None else 0))
            new_k = like.new_zeros((b, h, capacity, d))
            new_v = like.new_zeros((b, h, capacity, d))
            if kbuf is not None:
                keep = min(kbuf.shape[2], capacity)
                new_k[:, :, :keep] = kbuf[:, :, :keep]
                new_v[:, :, :keep] = self._v[layer][:, :, :keep]  # type: ignore[index]
            self._k[layer], self._v[layer] = new_k, new_v
        return self._k[layer], self._v[layer]  # type: ignore[return-value]

    # -- accounting -----------------------------------------------------------------------------------------
    def token_count(self, layer: int = 0) -> int:
        s = self.chunk.tokens_per_frame if self.chunk else 0
        return len(self.slot_frames) * s if self._k[layer] is not None else 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v if t is not None)

    def end_chunk(self) -> dict:
        report = super().end_chunk()
        report["cache_frames"] = list(self.slot_frames)
        return report

    def release(self) -> None:
        self.release_context()
        self._k = [None] * self.num_layers
        self._v = [None] * self.num_layers
        self.slot_frames = []
        self._key_positions = self._query_positions = None


def full_cache(num_layers: int) -> RollingCache:
    """A cache that keeps every frame: block-causal attention over the whole past (reference policy)."""
    return RollingCache(num_layers, window_frames=None, sink_frames=0)
