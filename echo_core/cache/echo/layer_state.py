"""Per-layer tensors of EchoCache and the frame-level edits the policy replays on them.

Everything a layer holds lives here, sized once at the first call: the attention window, per-token weights and
decay rates, the history ring (compression candidates), the anchor source, calibration sums, the scene's query
sum and recall candidates, and its first frame. The layout itself is shared by all layers and planned elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echo_core.cache.echo.memory import Move


@dataclass
class LayerState:
    k: torch.Tensor  # [B, H, W*S, D] window keys (raw)
    v: torch.Tensor
    src_k: torch.Tensor | None = None  # [B, H, cap*S, D] anchor source, indexed by clock frame
    src_v: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        out = [t for t in (self.k, self.v, self.src_k, self.src_v) if t is not None]
        return out


def allocate_layer(like: torch.Tensor, s: int, window: int, *, source_frames: int) -> LayerState:
    """Buffers for one layer, shaped after this call's k [B, H, L, D] (dtype and device included)."""
    b, h, _, d = like.shape
    new = like.new_zeros
    st = LayerState(k=new((b, h, window * s, d)), v=new((b, h, window * s, d)))
    if source_frames > 0:
        st.src_k, st.src_v = new((b, h, source_frames * s, d)), new((b, h, source_frames * s, d))
    return st


def apply_moves(st: LayerState, moves: list[Move], s: int) -> None:
    """Replay a plan's frame moves (K, V and the per-token decay state move together)."""
    for mv in moves:
        dst, src = slice(mv.dst * s, (mv.dst + 1) * s), slice(mv.src * s, (mv.src + 1) * s)
        if mv.from_source:
            st.k[:, :, dst] = st.src_k[:, :, src]  # type: ignore[index]
            st.v[:, :, dst] = st.src_v[:, :, src]  # type: ignore[index]
        else:  # moves go leftwards in ascending order, so each source is read before it is overwritten
            st.k[:, :, dst] = st.k[:, :, src]
            st.v[:, :, dst] = st.v[:, :, src]


def reset_for_scene(st: LayerState, keep_frames: int, s: int, source_frames: int) -> None:
    """After a switch: the kept head frames seed the anchor source; per-scene statistics start over."""
    if st.src_k is not None:
        p = min(keep_frames, source_frames)
        st.src_k[:, :, :p * s] = st.k[:, :, :p * s]
        st.src_v[:, :, :p * s] = st.v[:, :, :p * s]  # type: ignore[index]


def drop_head_frames(st: LayerState, drop: int, frames: int, s: int, source_drop: int) -> None:
    """Remove `drop` frames at the window head (and `source_drop` at the anchor-source head); weights reset."""
    st.k[:, :, :(frames - drop) * s] = st.k[:, :, drop * s:frames * s].clone()
    st.v[:, :, :(frames - drop) * s] = st.v[:, :, drop * s:frames * s].clone()
    if st.src_k is not None and source_drop:
        n = st.src_k.shape[2] - source_drop * s
        st.src_k[:, :, :n] = st.src_k[:, :, source_drop * s:].clone()
        st.src_v[:, :, :n] = st.src_v[:, :, source_drop * s:].clone()  # type: ignore[index]
