"""Training forward of the causal Wan DiT over windows whose frames follow different prompts.

`CausalWanModel.forward_sequence` conditions a whole sequence on one prompt and shares RoPE positions across the
batch. Training windows switch prompts between blocks (cut, smooth, revisit) and place their frames at
per-window positions (memory layouts), so this forward runs `wan._block` with two attention functions of its
own: cross-attention reads, for every frame, the prompt that frame was generated under, and self-attention
rotates each window with its own positions under its own mask. With one prompt and shared
positions it equals `forward_sequence` (tests/test_toy_model.py checks this).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from echo_core.model.rope import apply_rope, grid_positions, rope_cos_sin
from echo_core.model.wan import CausalWanModel, _block, _dtype_of, _embed, _time_modulation, _unpatchify


def window_mask(blocks: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """[B, F] block id per frame -> [B, 1, L, L] bool: a token sees its own block and earlier blocks."""
    tok = blocks.repeat_interleave(tokens_per_frame, dim=1)
    return (tok[:, :, None] >= tok[:, None, :])[:, None]


def _rope_tables(positions: torch.Tensor, rows: int, cols: int, head_dim: int):
    cos, sin = [], []
    for p in positions:  # per window: a handful, cheap
        c, s = rope_cos_sin(grid_positions(p, rows, cols, device=positions.device), head_dim)
        cos.append(c)
        sin.append(s)
    return torch.stack(cos)[:, None], torch.stack(sin)[:, None]  # [B, 1, L, D/2]


def window_forward(m: CausalWanModel, x: torch.Tensor, t: torch.Tensor, texts: torch.Tensor,
                   text_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Velocity prediction for windows x [B, C, F, H, W] at per-frame timesteps t [B, F].

    texts [B, S, L, text_dim]: the prompts of each window; text_ids [B, F] which one each frame follows;
    positions [B, F] temporal RoPE positions; mask [B, 1, N, N] bool (True = may attend)."""
    cfg = m.cfg
    tokens, grid = _embed(m, cfg, x)
    frames, rows, cols = grid
    b, n, _ = tokens.shape
    per_frame = rows * cols
    e, e0 = _time_modulation(m, cfg, t, b, frames)
    if texts.shape[2] < cfg.text_len:
        texts = F.pad(texts, (0, 0, 0, cfg.text_len - texts.shape[2]))
    context = m.text_embedding(texts.to(_dtype_of(m.text_embedding[0])))  # [B, S, L, dim]
    cos, sin = _rope_tables(positions, rows, cols, cfg.head_dim)
    heads, hd = cfg.num_heads, cfg.head_dim
    gather = text_ids[:, :, None, None].expand(b, frames, context.shape[2], heads * hd)

    def self_attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, attn_mask=mask)

    def cross_attention(layer: int, h: torch.Tensor) -> torch.Tensor:
        ca = m.blocks[layer].cross_attn
        ck = torch.gather(ca.norm_k(ca.k(context)), 1, gather).unflatten(-1, (heads, hd))  # [B, F, L, H, hd]
        cv = torch.gather(ca.v(context), 1, gather).unflatten(-1, (heads, hd))
        cq = ca.norm_q(ca.q(h)).view(b, frames, per_frame, heads, hd)
        logits = torch.einsum("bfthd,bflhd->bfhtl", cq, ck) * hd**-0.5
        return torch.einsum("bfhtl,bflhd->bfthd", logits.softmax(-1), cv).reshape(b, n, heads * hd)

    for layer in range(len(m.blocks)):
        tokens = _block(m, cfg, layer, tokens, e0, frames, None, self_attention, cross_attention)
    return _unpatchify(m, cfg, tokens, e, grid)
