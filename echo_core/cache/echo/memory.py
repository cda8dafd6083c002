"""Hierarchical temporal memory (spec §2.3-§2.5, §3.2-§3.3): which frame sits in which slot, and where in RoPE time.

The window is a fixed array of frame-sized slots, identical for every layer (only the contents differ), so the
layout is planned once per chunk here, as plain Python (`plan_chunk`, kept by `Layout` with the scene's clock),
and the resulting frame moves are replayed on each layer's tensors (window.py, decay.py). Steady state
(official sizes):

    slots 0-11 anchors (ping-pong replay of the scene's first 12 frames) | 12-14 compressed history tokens |
    15-17 recent (previous chunk)                                        | 18-20 current chunk

Filling phase: chunks are appended. When the next chunk no longer fits, the chunk "rolls": anchors shift left by
one chunk and the next ping-pong chunk is re-inserted from the anchor source, the newest frames become the
recent region, the chunk takes the last slots, and the compressed region is re-selected (compression.py).
Re-inserted anchors come from the `AnchorSource`, a per-layer copy of the scene's first clock frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

import torch

from echo_core.cache.base import ChunkInfo
from echo_core.cache.echo.window import FramesKV, Move, frames_like
from echo_core.cache.placement import put
from echo_core.config import EchoConfig, HierarchicalMemoryConfig

ANCHOR, COMPRESSED, RECENT, CURRENT, OLD_MEMORY = "anchor", "compressed", "recent", "current", "old_memory"
REGIONS = (ANCHOR, COMPRESSED, RECENT, CURRENT, OLD_MEMORY)


@dataclass(frozen=True)
class SlotInfo:
    """What one frame-sized slot holds. `frame` is the absolute latent frame (None for mixes: compressed tokens,
    recall frames); `scene_frame` the frame's index inside its scene; `label` says where old memory came from."""

    region: str
    frame: int | None = None
    scene_frame: int | None = None
    label: str = ""


@dataclass
class SlotPlan:
    slots: list[SlotInfo]  # layout after the chunk's frames are placed
    current_start: int  # first slot of the chunk
    clock: int  # policy clock of the chunk's first frame (pc_start)
    rolled: bool
    moves: list[Move] = field(default_factory=list)  # applied in order, before the chunk is written
    inserted_anchor_frames: list[int] = field(default_factory=list)  # anchor-source indices re-inserted
    compress: bool = False  # re-select the compressed region on the chunk's first call


def pingpong_index(n: int, period: int) -> int:
    """Element n of the palindromic sequence 0, 1, ..., P-1, P-1, ..., 0, 0, 1, ... (period 2P)."""
    m = n % (2 * period)
    return m if m < period else 2 * period - 1 - m


def anchor_insert_frames(pc_start: int, count: int, window: int, period: int) -> list[int]:
    """Anchor-source frames re-inserted for a rolled chunk whose clock starts at `pc_start` (spec §2.5).

    Official rule: RS = pc_start - (W - P), r = RS mod P; odd ⌊RS/P⌋ -> frames P-r-1 down to P-r-count, else
    r .. r+count-1. Both are `count` consecutive elements of the palindrome starting at RS, which is also
    defined when RS is not a multiple of the chunk size (after an odd-sized memory offset)."""
    start = pc_start - (window - period)
    return [pingpong_index(start + j, period) for j in range(count)]


def plan_chunk(slots: list[SlotInfo], cfg: HierarchicalMemoryConfig, *, frames: list[int], scene_frames: list[int],
               pc_start: int, source: list[SlotInfo | None]) -> SlotPlan:
    """Place a chunk of `frames` (absolute) into the window whose current layout is `slots`.

    `pc_start` is the policy clock (scene-local start plus old-memory offset, §3.2); `source` describes the
    anchor-source frames (index = clock frame) so re-inserted anchors can be labelled."""
    c, n, w = len(frames), len(slots), cfg.window_frames
    settled = [replace(s, region=RECENT) if s.region == CURRENT else s for s in slots]
    chunk = [SlotInfo(CURRENT, f, sf) for f, sf in zip(frames, scene_frames)]
    if n + c <= w:  # filling phase: append
        return SlotPlan(settled + chunk, n, pc_start, rolled=False)
    if c != cfg.frames_per_chunk:
        raise ValueError(f"a chunk of {c} frames arrived at a full window; this memory layout is built for "
                         f"frames_per_chunk={cfg.frames_per_chunk} (set memory.frames_per_chunk to the model's "
                         "chunk size)")
    a, m, r = cfg.anchor_frames, cfg.compressed_frames, cfg.recent_frames
    new: list[SlotInfo] = [SlotInfo(RECENT)] * w
    moves: list[Move] = []
    inserted: list[int] = []
    # 1. anchors: drop the oldest chunk, shift the rest left
    for d in range(a - c):
        moves.append(Move(d, d + c))
        new[d] = _as(settled[d + c], ANCHOR)
    # 2. re-insert the next ping-pong chunk from the scene's first frames (only once the clock passed a window)
    if a > 0:
        if pc_start >= w:
            inserted = anchor_insert_frames(pc_start, c, w, cfg.anchor_period)
            for j, src in enumerate(inserted):
                moves.append(Move(a - c + j, src, from_source=True))
                info = source[src] if src < len(source) else None
                new[a - c + j] = _as(info, ANCHOR) if info is not None else SlotInfo(ANCHOR, label="empty")
        else:  # official: slots keep what they held (the shifted-in copies)
            for d in range(a - c, a):
                new[d] = _as(settled[d], ANCHOR)
    # 3. compressed region keeps its slots; it is re-selected on the chunk's first call
    for d in range(a, a + m):
        new[d] = _as(settled[d], COMPRESSED) if settled[d].region != COMPRESSED else settled[d]
    # 4. the newest r frames become the recent region
    for j in range(r):
        moves.append(Move(a + m + j, n - r + j))
        new[a + m + j] = _as(settled[n - r + j], RECENT)
    # 5. the chunk takes the last slots
    new[w - c:] = chunk
    return SlotPlan(new, w - c, pc_start, rolled=True, moves=moves, inserted_anchor_frames=inserted, compress=m > 0)


def _as(info: SlotInfo, region: str) -> SlotInfo:
    if info.region == OLD_MEMORY:  # old memory keeps its label wherever rolling pushes it
        return info
    return replace(info, region=region)


def temporal_positions(num_frames: int, cfg_window: int, mode: str, jump: int, jump_frames: int) -> list[int]:
    """RoPE time of each slot (§3.2/§3.3): "local" slot s -> s, "tail" -> W - n + s; the last `jump_frames`
    slots (the chunk) are pushed `jump` further when a RoPE jump is active."""
    base = 0 if mode == "local" else cfg_window - num_frames
    times = [base + s for s in range(num_frames)]
    for s in range(max(0, num_frames - jump_frames), num_frames):
        times[s] += jump
    return times


def slot_positions(times: list[int], rows: int, cols: int, device=None) -> torch.Tensor:
    """[len(times) * rows * cols, 3] positions (t, y, x) for whole slots in token order."""
    s = rows * cols
    t = torch.as_tensor(times, dtype=torch.long, device=device).repeat_interleave(s)
    ys = torch.arange(rows, device=device).repeat_interleave(cols).repeat(len(times))
    xs = torch.arange(cols, device=device).repeat(rows * len(times))
    return torch.stack((t, ys, xs), dim=1)


def slot_label(info: SlotInfo) -> str:
    """Short report label: A<frame> anchor, C:tokens compressed, R/C<frame> recent/current, M:<origin> memory."""
    if info.region == OLD_MEMORY:
        return f"M:{info.label}" + (f"@{info.frame}" if info.frame is not None else "")
    if info.region == COMPRESSED and info.frame is None:
        return "C:tokens"
    return f"{info.region[0].upper()}{'' if info.frame is None else info.frame}"


def region_tokens(slots: list[SlotInfo], tokens_per_frame: int) -> dict[str, int]:
    counts = {name: 0 for name in REGIONS}
    for info in slots:
        counts[info.region] += tokens_per_frame
    return counts


def region_times(slots: list[SlotInfo], times: list[int]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for info, t in zip(slots, times):
        out.setdefault(info.region, []).append(t)
    return out


def switch_slots(old: list[SlotInfo], memory_frames: int, old_recent: int, label: str,
                 memory_in_slot0: bool) -> list[SlotInfo]:
    """The layout a switch leaves (§6.3): [memory | old recent]; memory already in slot 0 keeps its frame."""
    n = len(old)
    slots = ([SlotInfo(OLD_MEMORY, None, None, label)] if memory_frames else []) + \
        [SlotInfo(OLD_MEMORY, x.frame, x.scene_frame, "old_recent") for x in old[n - old_recent:n]]
    if memory_in_slot0 and old:
        slots[0] = SlotInfo(OLD_MEMORY, old[0].frame, old[0].scene_frame, label)
    return slots


def _leading(slots: Sequence[SlotInfo | None], region: str) -> int:
    n = 0
    while n < len(slots) and (info := slots[n]) is not None and info.region == region:
        n += 1
    return n


class Layout:
    """The window's slot layout and the running scene's clock, the same for every layer (§2.3, §3.2)."""

    def __init__(self, cfg: HierarchicalMemoryConfig):
        self.cfg = cfg
        self.slots: list[SlotInfo] = []
        self.offset = 0  # old-memory frames at the window head (scene timing offset, §3.2)
        self.local_timing = False  # official: False until the first switch
        self.rope_mode = cfg.rope_position_mode
        self.pending_jump = 0  # RoPE jump (§3.3) of the scene's first chunk
        self.rolled_in_scene = False

    def place(self, chunk: ChunkInfo, source: list[SlotInfo | None]) -> SlotPlan:
        """Place the chunk at its policy clock: scene-local plus the old-memory offset, or absolute (§3.2)."""
        local = chunk.start_frame - chunk.scene_start_frame
        clock = local + self.offset if self.local_timing else chunk.start_frame
        plan = plan_chunk(self.slots, self.cfg, frames=list(range(chunk.start_frame, chunk.end_frame)),
                          scene_frames=[local + j for j in range(chunk.num_frames)], pc_start=clock, source=source)
        self.slots = plan.slots
        self.rolled_in_scene |= plan.rolled
        return plan

    def mark_compressed(self) -> None:
        """The compressed region now holds selected tokens, not frames."""
        a, m = self.cfg.anchor_frames, self.cfg.compressed_frames
        self.slots[a:a + m] = [SlotInfo(COMPRESSED)] * m

    def compressed_region(self) -> list[SlotInfo]:
        a, m = self.cfg.anchor_frames, self.cfg.compressed_frames
        return self.slots[a:a + m]

    def times(self, chunk_frames: int) -> tuple[int, list[int]]:
        """The chunk's RoPE jump (used up here) and the RoPE time of every slot."""
        jump, self.pending_jump = self.pending_jump, 0
        return jump, temporal_positions(len(self.slots), self.cfg.window_frames, self.rope_mode, jump, chunk_frames)

    def restart(self, slots: list[SlotInfo], offset: int, local_timing: bool, rope_mode: str, jump: int) -> None:
        """A switch: the new scene starts after `offset` old-memory frames."""
        self.slots = slots
        self.offset = offset
        self.local_timing = local_timing
        self.rope_mode = rope_mode
        self.pending_jump = jump
        self.rolled_in_scene = False

    def old_memory_frames(self) -> int:
        return sum(1 for i in self.slots if i.region == OLD_MEMORY)

    def old_memory_head(self) -> int:
        """Old-memory frames at the window head (what an eviction drops)."""
        return _leading(self.slots, OLD_MEMORY)

    def drop_head(self, drop: int) -> None:
        self.slots = self.slots[drop:]
        self.offset = max(0, self.offset - drop)


def source_capacity(config: EchoConfig) -> int:
    """Anchor-source frames kept. Like the official `k_original` it is indexed by the clock (old memory first)
    and shifted when the old memory is evicted, so it must also hold the frames that slide into [0, P) at that
    moment: P plus the largest old memory a switch can insert."""
    mem = config.memory
    if mem.anchor_frames == 0:
        return 0
    extra = 0
    for name in ("smooth", "hardcut", "recall"):
        tc = config.mode(name)
        extra = max(extra, int(tc.use_old_memory) + (tc.old_recent_frames if tc.use_old_recent else 0))
    return min(mem.window_frames, mem.anchor_period + extra)


class AnchorSource:
    """The scene's first clock frames, per layer, from which rolled chunks re-insert their ping-pong anchors
    (§2.5); `meta[p]` says what clock frame p is, for the layout's labels."""

    def __init__(self, num_layers: int, config: EchoConfig):
        self.capacity = source_capacity(config)
        self.meta: list[SlotInfo | None] = [None] * self.capacity
        self.layers: list[FramesKV | None] = [None] * num_layers
        self.host: torch.device | None = None  # read only when a rolled chunk re-inserts anchors: may live there

    def allocate(self, layer: int, like: torch.Tensor, s: int) -> None:
        if self.capacity > 0:
            self.layers[layer] = frames_like(like, self.capacity, s, k_host=self.host, v_host=self.host)

    def allocated(self) -> list[FramesKV]:
        return [kv for kv in self.layers if kv is not None]

    def mirror(self, clock: int, frames: int) -> tuple[tuple[int, int], ...]:
        """(chunk frame, source frame) pairs a chunk starting at clock frame `clock` fills."""
        return tuple((j, clock + j) for j in range(frames) if 0 <= clock + j < self.capacity)

    def record(self, layer: int, mirror: tuple[tuple[int, int], ...], k: torch.Tensor, v: torch.Tensor,
               s: int) -> None:
        """Commit pass: copy the chunk's frames [B, H, c*S, D] that fall inside the source."""
        src = self.layers[layer]
        if src is None:
            return
        for j, p in mirror:
            put(src.k[:, :, p * s:(p + 1) * s], k[:, :, j * s:(j + 1) * s])
            put(src.v[:, :, p * s:(p + 1) * s], v[:, :, j * s:(j + 1) * s])

    def commit(self, mirror: tuple[tuple[int, int], ...], start_frame: int, local: int) -> None:
        for j, p in mirror:
            self.meta[p] = SlotInfo(ANCHOR, start_frame + j, local + j)

    def restart(self, slots: list[SlotInfo], window: Iterable[FramesKV | None], keep: int, s: int) -> None:
        """A switch: the `keep` frames left at the window head (`slots`) become the new source's first frames."""
        self.meta = [None] * self.capacity
        for p, info in enumerate(slots[:self.capacity]):
            self.meta[p] = info
        p = min(keep, self.capacity)
        for src, win in zip(self.layers, window):
            if src is not None and win is not None:
                put(src.k[:, :, :p * s], win.k[:, :, :p * s])
                put(src.v[:, :, :p * s], win.v[:, :, :p * s])

    def old_memory_head(self) -> int:
        return _leading(self.meta, OLD_MEMORY)

    def drop_head(self, drop: int, s: int) -> None:
        """An eviction: the old memory leaves the head of the source too."""
        for src in self.allocated():
            if drop:
                n = src.k.shape[2] - drop * s
                src.k[:, :, :n] = src.k[:, :, drop * s:].clone()
                src.v[:, :, :n] = src.v[:, :, drop * s:].clone()
        self.meta = self.meta[drop:] + [None] * drop

    def release(self) -> None:
        self.layers = [None] * len(self.layers)
