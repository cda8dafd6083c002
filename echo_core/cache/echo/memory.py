"""Hierarchical temporal memory (spec §2.3-§2.5, §3.2-§3.3): which frame sits in which slot, and where in RoPE time.

The window is a fixed array of frame-sized slots, identical for every layer (only the contents differ), so the
layout is planned once per chunk here, as plain Python, and the policy replays the resulting frame moves on
each layer's tensors. Steady state (official sizes):

    slots 0-11 anchors (ping-pong replay of the scene's first 12 frames) | 12-14 compressed history tokens |
    15-17 recent (previous chunk)                                        | 18-20 current chunk

Filling phase: chunks are appended. When the next chunk no longer fits, the chunk "rolls": anchors shift left by
one chunk and the next ping-pong chunk is re-inserted from the anchor source, the newest frames become the
recent region, the chunk takes the last slots, and the compressed region is re-selected (compression.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from echo_core.config import HierarchicalMemoryConfig

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


@dataclass(frozen=True)
class Move:
    """Copy one frame into slot `dst`: from cache slot `src` (from_source False) or anchor-source frame `src`."""

    dst: int
    src: int
    from_source: bool = False


@dataclass
class ChunkPlan:
    slots: list[SlotInfo]  # layout after the chunk's frames are placed
    current_start: int  # first slot of the chunk
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
               pc_start: int, source: list[SlotInfo | None]) -> ChunkPlan:
    """Place a chunk of `frames` (absolute) into the window whose current layout is `slots`.

    `pc_start` is the policy clock (scene-local start plus old-memory offset, §3.2); `source` describes the
    anchor-source frames (index = clock frame) so re-inserted anchors can be labelled."""
    c, n, w = len(frames), len(slots), cfg.window_frames
    settled = [replace(s, region=RECENT) if s.region == CURRENT else s for s in slots]
    chunk = [SlotInfo(CURRENT, f, sf) for f, sf in zip(frames, scene_frames)]
    if n + c <= w:  # filling phase: append
        return ChunkPlan(settled + chunk, n, rolled=False)
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
    return ChunkPlan(new, w - c, rolled=True, moves=moves, inserted_anchor_frames=inserted, compress=m > 0)


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
