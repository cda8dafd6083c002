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
class ContextMemo:
    """Scratch a policy lends the model for one layer: the context's keys rotated to their positions, built on the
    chunk's first call and reused by its other calls, which only rewrite the chunk's own rows. Span weights are
    applied per call on top (one layer's transient), so the memo is one key-sized tensor per layer: a policy that
    keeps its raw keys on the host makes it their only device copy. The policy owns it (one per layer, freed with
    the cache); the model fills it."""

    context_id: object = None
    k: torch.Tensor | None = None  # rotated keys, the whole span (unweighted)

    def fresh(self, context_id: object, tokens: int) -> bool:
        """Built for this context and this many keys: only the rows a call writes need rotating."""
        return context_id is not None and self.context_id == context_id and self.k is not None \
            and self.k.shape[2] == tokens

    def clear(self) -> None:
        self.context_id, self.k = None, None

    def nbytes(self) -> int:
        return 0 if self.k is None else self.k.numel() * self.k.element_size()


@dataclass
class AttentionInputs:
    q_positions: torch.Tensor  # [Lq, 3]
    spans: list[KVSpan] = field(default_factory=list)
    # Hot path (one span only): while `context_id` stays the same, every row of the span outside `own_rows` - its
    # keys, values, positions and weights - is unchanged since the memo was built, so only `own_rows` (the rows
    # this call wrote, [start, end) ranges) need rotating again, and the model reads no other row of the span's
    # keys (a policy whose keys live on the host fills only those). None: rotate everything (no reuse).
    context_id: object = None
    own_rows: tuple[tuple[int, int], ...] = ()
    memo: ContextMemo | None = None


class KVCache(Protocol):
    """The one call the model makes: store this call's k/v for layer `layer` and return what it attends to."""

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs: ...
