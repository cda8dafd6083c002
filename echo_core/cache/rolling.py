"""Self-Forcing's baseline cache: an attention sink (the first frames) plus a rolling window of recent frames.

Storage is a fixed set of frame-sized slots per layer; a slot keeps its frame's raw keys, values and absolute
frame index. Once full, the oldest non-sink frame's slot is reused for each new frame, so nothing is copied
on eviction and memory stays constant. Keys are rotated at attention time with the frame's absolute index,
which reproduces Self-Forcing (it rotates before caching, at the same positions).
With `window_frames=None` nothing is evicted: the cache keeps every frame (the reference for tests).
`kv_dtype` "float8_e4m3fn" stores the slots in fp8 with per-token-per-head scales (echo_core.cache.kv_quant): each
call dequantises the whole span once and attends to it in the model dtype, the chunk's own rows unrounded.
"""

from __future__ import annotations

import torch

from echo_core.cache.base import AttentionInputs, CachePolicy, ChunkInfo, KVSpan
from echo_core.cache.kv_quant import MODEL, KVBuffer, blocks, check_kv_dtype
from echo_core.model.rope import grid_positions


class RollingCache(CachePolicy):
    def __init__(self, num_layers: int, window_frames: int | None = 21, sink_frames: int = 3,
                 kv_dtype: str = MODEL):
        super().__init__(num_layers)
        self.kv_dtype = check_kv_dtype(kv_dtype)
        if window_frames is not None and window_frames <= sink_frames:
            raise ValueError(f"window_frames ({window_frames}) must exceed sink_frames ({sink_frames})")
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.slot_frames: list[int] = []  # absolute frame held by each slot, slots filled in order
        self._chunk_slots: list[int] = []
        self._k: list[KVBuffer | None] = [None] * num_layers
        self._v: list[KVBuffer | None] = [None] * num_layers
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
        starts = [slot * s for slot in self._chunk_slots]
        kbuf.write_blocks(starts, s, k)
        vbuf.write_blocks(starts, s, v)
        n = len(self.slot_frames) * s
        if self._key_positions is None or self._key_positions.device != k.device:
            rows, cols = chunk.grid
            self._key_positions = grid_positions(self.slot_frames, rows, cols, device=k.device)
            self._query_positions = grid_positions(range(chunk.start_frame, chunk.end_frame), rows, cols,
                                                   device=k.device)
        span = KVSpan(kbuf.read(n, exact=blocks(starts, s, k)), vbuf.read(n, exact=blocks(starts, s, v)),
                      self._key_positions)
        return self.reusable(layer, self._query_positions, span, tuple((a, a + s) for a in starts))

    def _buffers(self, layer: int, like: torch.Tensor, needed_tokens: int) -> tuple[KVBuffer, KVBuffer]:
        kbuf = self._k[layer]
        if kbuf is None or kbuf.capacity < needed_tokens or kbuf.dtype != like.dtype or kbuf.device != like.device:
            b, h, _, d = like.shape
            s = self._require_chunk().tokens_per_frame
            if self.window_frames is not None:
                capacity = self.window_frames * s
            else:  # unbounded: grow geometrically so appends stay amortised O(1)
                capacity = max(needed_tokens, 2 * (kbuf.capacity if kbuf is not None else 0))
            vbuf = self._v[layer]
            if kbuf is not None and vbuf is not None:
                self._k[layer] = kbuf.grown(capacity, like.dtype, like.device)
                self._v[layer] = vbuf.grown(capacity, like.dtype, like.device)
            else:
                shape = (b, h, capacity, d)
                self._k[layer] = KVBuffer(shape, like.dtype, like.device, self.kv_dtype)
                self._v[layer] = KVBuffer(shape, like.dtype, like.device, self.kv_dtype)
        return self._k[layer], self._v[layer]  # type: ignore[return-value]

    # -- accounting -----------------------------------------------------------------------------------------
    def token_count(self, layer: int = 0) -> int:
        s = self.chunk.tokens_per_frame if self.chunk else 0
        return len(self.slot_frames) * s if self._k[layer] is not None else 0

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self._k + self._v if t is not None)

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


def full_cache(num_layers: int, kv_dtype: str = MODEL) -> RollingCache:
    """A cache that keeps every frame: block-causal attention over the whole past (reference policy)."""
    return RollingCache(num_layers, window_frames=None, sink_frames=0, kv_dtype=kv_dtype)
