"""What a self-attention layer exchanges with its KV cache: the interface the model talks to.

The model hands each layer's raw (post-norm, pre-RoPE) q, k, v of the current chunk to `KVCache.attend` and gets
back what to attend to: the queries' positions and a list of key/value spans, each with its own positions and
optional per-token weights. It lives with the model so the model never imports a cache policy; the policies
(echo_core.cache) implement it. Tensors are head-major: [B, H, L, D].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


@dataclass
class KVSpan:
    k: torch.Tensor  # [B, H, L, D] raw keys (not rotated)
    v: torch.Tensor  # [B, H, L, D]
    positions: torch.Tensor  # [L, 3] long (t, y, x)
    weights: torch.Tensor | None = None  # [L]; multiplies rotated keys and values


@dataclass
class AttentionInputs:
    q_positions: torch.Tensor  # [Lq, 3]
    spans: list[KVSpan] = field(default_factory=list)


class KVCache(Protocol):
    """The one call the model makes: store this call's k/v for layer `layer` and return what it attends to."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs: ...
