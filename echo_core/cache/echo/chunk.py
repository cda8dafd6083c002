"""What EchoCache decides once per chunk (the same for every layer), and the little that changes while it runs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from echo_core.cache.echo.compression import RingChunk, origin_positions
from echo_core.cache.echo.memory import slot_positions


@dataclass(frozen=True)
class ChunkPlan:
    """Built in begin_chunk, after any switch and the layout's frame moves."""

    frames: int  # c, frames in the chunk
    grid: tuple[int, int]  # token rows and columns per frame
    local: int  # scene-local index of the chunk's first frame
    clock: int  # policy clock of the chunk's first frame (§3.2)
    start: int  # the chunk's first slot: its own K/V rows are [start*S, (start+c)*S)
    jump: int  # RoPE jump on the chunk's slots (§3.3)
    times: tuple[int, ...]  # RoPE time of every slot
    compress: bool  # re-select the compressed region on each layer's first call
    ring: RingChunk  # the chunk's ring slots and calibration role
    mirror: tuple[tuple[int, int], ...]  # (chunk frame, anchor-source frame) copies on the commit pass

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def first_of_scene(self) -> bool:
        return self.local == 0

    @property
    def own_rows(self) -> tuple[int, int]:
        return self.start * self.tokens_per_frame, (self.start + self.frames) * self.tokens_per_frame


@dataclass
class ChunkProgress:
    """Mutable per-chunk state: which layers still compress, whether a commit pass ran, cached positions."""

    pending_compress: set[int]
    committed: bool = False
    _positions: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # device -> (q, k)
    _origin_positions: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> k positions

    def positions(self, plan: ChunkPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and key positions [L, 3] on `device`, the same for every layer; made once per chunk."""
        key = str(device)
        if key not in self._positions:
            k_pos = slot_positions(list(plan.times), *plan.grid, device)
            a, b = plan.own_rows
            self._positions[key] = (k_pos[a:b], k_pos)
        return self._positions[key]

    def origin_positions(self, layer: int, k_pos: torch.Tensor, start: int, spatial: torch.Tensor,
                         cols: int) -> torch.Tensor:
        """Key positions with the layer's compressed tokens at their origin (row, column); made once per chunk
        (a selection happens on the layer's first call, before any positions)."""
        if layer not in self._origin_positions:
            self._origin_positions[layer] = origin_positions(k_pos, start, spatial, cols)
        return self._origin_positions[layer]
