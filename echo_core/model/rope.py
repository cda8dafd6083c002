"""3-axis rotary position embedding (time, height, width) computed from integer positions on the fly.

Wan splits each head's pairs into a temporal band and two spatial bands (22/21/21 pairs for 128-dim heads).
There is no fixed position table: angles come from whatever positions the cache policy assigns, so neither
video length nor a re-assigned (relative) position is capped.
"""

from __future__ import annotations

import weakref

import torch

# cos/sin per positions tensor: a policy hands the same positions object to every layer and every call of a
# chunk, so the angles (and the host sync of their min/max) are computed once per chunk, not once per layer.
# Positions tensors given to attention must therefore never be modified in place afterwards.
# Keyed by identity (tensors compare element-wise, so they cannot be ordinary dict keys); an entry goes away
# with its tensor.
_MEMO: dict[int, tuple[weakref.ref, int, tuple[torch.Tensor, torch.Tensor]]] = {}


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of complex pairs per axis (time, height, width), Wan's split."""
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def axis_frequencies(pairs: int, theta: float = 10000.0) -> torch.Tensor:
    """theta^(-2j / (2*pairs)) for j < pairs, in float64."""
    return theta ** (-torch.arange(pairs, dtype=torch.float64) / pairs)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of every pair angle for tokens at `positions` [L, 3] (t, y, x) -> two [L, head_dim/2] float32.

    Angles are computed in float64 on a per-axis table spanning only the positions present (positions are
    few distinct small integers), then gathered, so the cost is independent of how large positions get.
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [L, 3] (t, y, x), got {tuple(positions.shape)}")
    device = positions.device
    cos_parts, sin_parts = [], []
    for axis, pairs in enumerate(axis_pairs(head_dim)):
        pos = positions[:, axis].long()
        lo = int(pos.min()) if pos.numel() else 0
        hi = int(pos.max()) if pos.numel() else 0
        span = torch.arange(lo, hi + 1, dtype=torch.float64, device=device)
        angles = torch.outer(span, axis_frequencies(pairs, theta).to(device))
        idx = pos - lo
        cos_parts.append(torch.cos(angles).float()[idx])
        sin_parts.append(torch.sin(angles).float()[idx])
    return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)


def rope_cos_sin_cached(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`rope_cos_sin`, remembered for as long as the positions tensor lives."""
    key = id(positions)
    hit = _MEMO.get(key)
    if hit is not None and hit[0]() is positions and hit[1] == head_dim:
        return hit[2]
    out = rope_cos_sin(positions, head_dim)
    _MEMO[key] = (weakref.ref(positions, lambda _ref, key=key: _MEMO.pop(key, None)), head_dim, out)
    return out


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent element pairs of x [..., L, D] by angles given as cos/sin [L, D/2]; math in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    return out.to(x.dtype)


def grid_positions(frames: torch.Tensor | range | list[int], rows: int, cols: int,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Positions [len(frames)*rows*cols, 3] for whole frames in token order (frame, row, column)."""
    t = torch.as_tensor(list(frames) if not isinstance(frames, torch.Tensor) else frames, dtype=torch.long,
                        device=device)
    ys = torch.arange(rows, device=device).repeat_interleave(cols)
    xs = torch.arange(cols, device=device).repeat(rows)
    spatial = torch.stack((ys, xs), dim=1)  # [S, 2]
    n, s = t.numel(), spatial.shape[0]
    return torch.cat((t.repeat_interleave(s)[:, None], spatial.repeat(n, 1)), dim=1)
