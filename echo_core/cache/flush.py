"""Flush-on-switch baseline: a sink plus rolling window that forgets the old scene at every prompt switch.

In the style of Infinity-RoPE's KV flush and LongLive's "+Flush" ablation: between switches it is Self-Forcing's
cache (the run's first `sink_frames` frames as an attention sink plus a rolling window of the newest frames).
When a chunk opens a new scene, everything is dropped except the sink and the last `keep_last_frames` frames,
so the new prompt meets no stale context but the video can still continue from its last frames. There is no
scene memory: a recalled scene is generated as if it were new (apart from whatever the sink holds).

Positions (`positions`):
* "relative" (default, as Infinity-RoPE's block-relative RoPE and our Echo cache): the frames held are numbered
  0..n-1 in time order and the chunk's queries sit at their own slots, so RoPE distances never exceed the
  window, however long the video runs; after a flush the kept frames simply become adjacent.
* "absolute": every frame keeps its absolute latent index, as `RollingCache` (Self-Forcing) does. Without
  switches this is then exactly the rolling baseline.

Storage is a fixed set of frame-sized slots per layer. A flush moves the few kept frames to the first slots
(one small copy per layer, only at a switch); otherwise the oldest non-sink slot is reused for each new frame.
`kv_dtype` "float8_e4m3fn" stores the slots in fp8 as RollingCache does (echo_core.cache.kv_quant).
"""

from __future__ import annotations

from typing import Any

import torch

from echo_core.cache.base import AttentionInputs, CachePolicy, ChunkInfo, KVSpan
from echo_core.cache.kv_quant import MODEL, KVBuffer, blocks, check_kv_dtype
from echo_core.model.rope import grid_positions

POSITION_MODES = ("relative", "absolute")
TRANSITION_MODES = ("smooth", "hardcut", "recall")


class FlushCache(CachePolicy):
    def __init__(self, num_layers: int, window_frames: int = 21, sink_frames: int = 3, keep_last_frames: int = 2,
                 positions: str = "relative", flush_modes: tuple[str, ...] = TRANSITION_MODES,
                 kv_dtype: str = MODEL):
        super().__init__(num_layers)
        self.kv_dtype = check_kv_dtype(kv_dtype)
        for name, value, low in (("window_frames", window_frames, 1), ("sink_frames", sink_frames, 0),
                                 ("keep_last_frames", keep_last_frames, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if sink_frames + keep_last_frames >= window_frames:
            raise ValueError(f"sink_frames ({sink_frames}) + keep_last_frames ({keep_last_frames}) must be below "
                             f"window_frames ({window_frames}) so that a chunk fits after a flush; lower "
                             "keep_last_frames or raise window_frames")
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {', '.join(POSITION_MODES)}, got {positions!r}")
        unknown = [m for m in flush_modes if m not in TRANSITION_MODES]
        if unknown:
            raise ValueError(f"flush_modes: {unknown[0]!r} is not one of {', '.join(TRANSITION_MODES)}")
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.keep_last_frames = keep_last_frames
        self.positions = positions
        self.flush_modes = tuple(flush_modes)
        self.slot_frames: list[int] = []  # absolute frame held by each slot; slots fill in order
        self.sink: list[int] = []  # the run's first frames, kept through every flush
        self._scene: int | None = None
        self._chunk_slots: list[int] = []
        self._flushed: list[int] = []  # frames dropped by this chunk's flush (report)
        self._k: list[KVBuffer | None] = [None] * num_layers
        self._v: list[KVBuffer | None] = [None] * num_layers
        self._pos: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- planning -------------------------------------------------------------------------------------------
    def begin_chunk(self, chunk: ChunkInfo) -> None:
        if chunk.num_frames > self.window_frames - self.sink_frames - self.keep_last_frames:
            raise ValueError(f"a chunk of {chunk.num_frames} frames does not fit a window of {self.window_frames} "
                             f"frames after keeping {self.sink_frames} sink and {self.keep_last_frames} last "
                             "frames; raise window_frames")
        self._flushed = []
        switched = self._scene is not None and (chunk.scene_index != self._scene or chunk.transition is not None)
        mode = str(getattr(getattr(chunk.transition, "mode", None), "value", "smooth"))
        if switched and mode in self.flush_modes and not chunk.prefill:
            self._flush(chunk.tokens_per_frame)
        self._scene = chunk.scene_index
        super().begin_chunk(chunk)
        slots = []
        for frame in range(chunk.start_frame, chunk.end_frame):
            if frame in self.slot_frames:  # a re-run of the same frames (not done by our sampler)
                slots.append(self.slot_frames.index(frame))
                continue
            if len(self.sink) < self.sink_frames:
                self.sink.append(frame)
            if len(self.slot_frames) < self.window_frames:
                self.slot_frames.append(frame)
                slots.append(len(self.slot_frames) - 1)
            else:
                slot = min((f, s) for s, f in enumerate(self.slot_frames) if f not in self.sink and s not in slots)[1]
                self.slot_frames[slot] = frame
                slots.append(slot)
        self._chunk_slots = slots
        self._pos = None

    def _flush(self, s: int) -> None:
        """Keep the sink and the newest `keep_last_frames` frames, moved to the first slots in time order."""
        rest = sorted(f for f in self.slot_frames if f not in self.sink)
        last = rest[len(rest) - self.keep_last_frames:] if self.keep_last_frames else []
        keep = sorted(f for f in self.slot_frames if f in self.sink) + last
        self._flushed = [f for f in rest if f not in last]
        index = [self.slot_frames.index(f) for f in keep]
        for layer in range(self.num_layers):
            k, v = self._k[layer], self._v[layer]
            if k is None or v is None or not index:
                continue
            tokens = torch.cat([torch.arange(i * s, (i + 1) * s, device=k.device) for i in index])
            k.put(0, k.take(tokens))  # take copies (index_select): no overlap hazard
            v.put(0, v.take(tokens))
        self.slot_frames = keep

    # -- attention ------------------------------------------------------------------------------------------
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
        chunk = self._require_chunk()
        s = chunk.tokens_per_frame
        if k.ndim != 4 or k.shape[2] != chunk.num_frames * s or v.shape != k.shape:
            raise ValueError(f"layer {layer}: k/v must be [B, H, {chunk.num_frames * s}, D], got k "
                             f"{tuple(k.shape)}, v {tuple(v.shape)}")
        kbuf, vbuf = self._buffers(layer, k)
        starts = [slot * s for slot in self._chunk_slots]
        kbuf.write_blocks(starts, s, k)
        vbuf.write_blocks(starts, s, v)
        n = len(self.slot_frames) * s
        if self._pos is None or self._pos[0].device != k.device:
            self._pos = self._positions(chunk, k.device)
        span = KVSpan(kbuf.read(n, exact=blocks(starts, s, k)), vbuf.read(n, exact=blocks(starts, s, v)),
                      self._pos[0])
        return self.reusable(layer, self._pos[1], span, tuple((a, a + s) for a in starts))

    def slot_times(self) -> list[int]:
        """RoPE time of every slot: its frame's rank in time order (relative) or its absolute frame index."""
        if self.positions == "absolute":
            return list(self.slot_frames)
        rank = {f: i for i, f in enumerate(sorted(self.slot_frames))}
        return [rank[f] for f in self.slot_frames]

    def _positions(self, chunk: ChunkInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = chunk.grid
        times = self.slot_times()
        query_times = [times[s] for s in self._chunk_slots]
        return grid_positions(times, rows, cols, device=device), grid_positions(query_times, rows, cols, device=device)

    def _buffers(self, layer: int, like: torch.Tensor) -> tuple[KVBuffer, KVBuffer]:
        kbuf = self._k[layer]
        if kbuf is None or kbuf.dtype != like.dtype or kbuf.device != like.device:
            b, h, _, d = like.shape
            shape = (b, h, self.window_frames * self._require_chunk().tokens_per_frame, d)
            self._k[layer] = KVBuffer(shape, like.dtype, like.device, self.kv_dtype)
            self._v[layer] = KVBuffer(shape, like.dtype, like.device, self.kv_dtype)
        return self._k[layer], self._v[layer]  # type: ignore[return-value]

    # -- accounting -----------------------------------------------------------------------------------------
    def token_count(self, layer: int = 0) -> int:
        if self._k[layer] is None or self.chunk is None:
            return 0
        return len(self.slot_frames) * self.chunk.tokens_per_frame

    def nbytes(self) -> int:
        return sum(t.nbytes() for t in self._k + self._v if t is not None)

    def end_chunk(self) -> dict[str, Any]:
        report = super().end_chunk()
        report.update(policy="flush", cache_frames=sorted(self.slot_frames), flushed_frames=list(self._flushed),
                      rope_t=sorted(self.slot_times()))
        return report

    def release(self) -> None:
        self.release_context()
        self._k = [None] * self.num_layers
        self._v = [None] * self.num_layers
        self.slot_frames, self.sink, self._scene, self._pos = [], [], None, None
