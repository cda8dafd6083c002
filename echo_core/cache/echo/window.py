"""The attention window's K/V storage, one [B, H, W*S, D] pair per layer, and the frame edits replayed on it.

Slot j holds tokens [j*S, (j+1)*S). Within a chunk only the chunk's own rows (its slots, from the plan's
`current_start`) are rewritten, by every forward call; everything else changes between chunks only: frame moves
when the window rolls, the compressed region on the chunk's first call, the rebuild at a switch, the eviction of
old memory. Per-token weights live with the decay (decay.py), the layout with the memory (memory.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from echo_core.cache.placement import GPU, HOST, host_zeros, put


@dataclass
class FramesKV:
    """K/V of whole frames for one layer: [B, H, frames*S, D] each, in the model's dtype; each on the compute
    device ("gpu") or the offload device ("host")."""

    k: torch.Tensor
    v: torch.Tensor
    k_place: str = GPU
    v_place: str = GPU

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]

    def placed(self) -> list[tuple[str, torch.Tensor]]:
        return [(self.k_place, self.k), (self.v_place, self.v)]


@dataclass(frozen=True)
class Move:
    """Copy one frame into slot `dst`: from cache slot `src` (from_source False) or anchor-source frame `src`."""

    dst: int
    src: int
    from_source: bool = False


def frames_like(like: torch.Tensor, frames: int, s: int, k_host: torch.device | None = None,
                v_host: torch.device | None = None) -> FramesKV:
    """Zeroed storage for `frames` frames, shaped after a call's k [B, H, L, D] (dtype and device included);
    keys and/or values on a host device instead when given."""
    b, h, _, d = like.shape
    shape = (b, h, frames * s, d)

    def zeros(host: torch.device | None) -> torch.Tensor:
        return like.new_zeros(shape) if host is None else host_zeros(shape, like.dtype, host)

    return FramesKV(zeros(k_host), zeros(v_host), GPU if k_host is None else HOST, GPU if v_host is None else HOST)


class Window:
    """The attention window of every layer (allocated at the layer's first call). With a `host` device the raw
    keys live there (the model's rotated copy, the context memo, is their only device copy during a chunk) and the
    values stay on the compute device; the chunk's own keys reach the host on its commit pass."""

    def __init__(self, num_layers: int, frames: int):
        self.frames = frames
        self.layers: list[FramesKV | None] = [None] * num_layers
        self.host: torch.device | None = None

    def allocate(self, layer: int, like: torch.Tensor, s: int) -> None:
        self.layers[layer] = frames_like(like, self.frames, s, k_host=self.host)

    def allocated(self) -> list[FramesKV]:
        return [kv for kv in self.layers if kv is not None]

    def get(self, layer: int) -> FramesKV:
        kv = self.layers[layer]
        if kv is None:
            raise RuntimeError(f"layer {layer} has no window yet")
        return kv

    def batch(self) -> int:
        return self.allocated()[0].k.shape[0]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Tokens [start, start + L) take k/v [B, H, L, D] (the chunk's own rows, or the compressed region)."""
        kv = self.get(layer)
        put(kv.k[:, :, start:start + k.shape[2]], k)
        kv.v[:, :, start:start + v.shape[2]] = v

    def write_own(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, commit: bool) -> None:
        """The chunk's own rows. Offloaded keys go down on the commit pass only (the one the next chunk keeps;
        the denoising calls' keys reach attention through the memo)."""
        kv = self.get(layer)
        if self.host is None or commit:
            put(kv.k[:, :, start:start + k.shape[2]], k)
        kv.v[:, :, start:start + v.shape[2]] = v

    def view(self, layer: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        kv = self.get(layer)
        return kv.k[:, :, :tokens], kv.v[:, :, :tokens]

    def apply_moves(self, moves: list[Move], s: int, source: Sequence[FramesKV | None]) -> None:
        """Replay a layout plan's frame moves; `source[layer]` is that layer's anchor source."""
        for layer, kv in enumerate(self.layers):
            if kv is None:
                continue
            for mv in moves:
                dst, src = slice(mv.dst * s, (mv.dst + 1) * s), slice(mv.src * s, (mv.src + 1) * s)
                frm = source[layer] if mv.from_source else kv
                if frm is None:
                    raise RuntimeError(f"layer {layer}: an anchor re-insertion without an anchor source")
                # moves go leftwards in ascending order, so each source is read before it is overwritten
                put(kv.k[:, :, dst], frm.k[:, :, src])
                put(kv.v[:, :, dst], frm.v[:, :, src])

    def rebuild(self, frames: int, memory_frames: int, old_recent: int, s: int,
                memory: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None) -> None:
        """At a switch (§6.3): the last `old_recent` of `frames` frames move behind `memory_frames` head slots;
        `memory[layer]` (if given) fills slot 0, otherwise slot 0 keeps what it holds."""
        n, r, o = frames, memory_frames, old_recent
        for layer, kv in enumerate(self.layers):
            if kv is None:
                continue
            old_k, old_v = kv.k[:, :, (n - o) * s:n * s].clone(), kv.v[:, :, (n - o) * s:n * s].clone()
            kv.k[:, :, r * s:(r + o) * s], kv.v[:, :, r * s:(r + o) * s] = old_k, old_v
            mem = None if memory is None else memory[layer]
            if mem is not None:
                kv.k[:, :, :s] = mem[0].to(kv.k.device, kv.k.dtype, non_blocking=True)
                kv.v[:, :, :s] = mem[1].to(kv.v.device, kv.v.dtype, non_blocking=True)

    def drop_head(self, drop: int, frames: int, s: int) -> None:
        """Remove `drop` of `frames` frames at the window head; the rest moves to the front."""
        for kv in self.allocated():
            kv.k[:, :, :(frames - drop) * s] = kv.k[:, :, drop * s:frames * s].clone()
            kv.v[:, :, :(frames - drop) * s] = kv.v[:, :, drop * s:frames * s].clone()

    def release(self) -> None:
        self.layers = [None] * len(self.layers)
