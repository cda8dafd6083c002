"""Causal Wan2.1 text-to-video DiT.

`CausalWanModel` declares the modules with Wan's exact names, so Wan / Self-Forcing / ComfyUI state dicts load
as they are. The forward passes are plain functions over "a module tree with Wan's submodule names"
(`causal_forward`, `sequence_forward`), so the same code also runs over the modules of ComfyUI's own
`WanModel` (quantised, fp8 or LoRA-patched by the host). Per-token work is identical to Wan's block:
AdaLN-modulated self-attention with RMS-normed q/k and 3-axis RoPE, cross-attention on the text, GELU-tanh FFN.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from echo_core.model import attention_backend
from echo_core.model.attention_io import AttentionInputs, ContextMemo, KVCache, KVSpan
from echo_core.model.config import WanConfig
from echo_core.model.rope import apply_rope, grid_positions, rope_cos_sin_cached


# --------------------------------------------------------------------------------------------- modules
class WanRMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the weights' dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


class WanAttention(nn.Module):
    def __init__(self, dim: int, qk_norm: bool, eps: float):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm1 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.self_attn = WanAttention(cfg.dim, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanAttention(cfg.dim, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, cfg.dim) / cfg.dim**0.5)


class WanHead(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)


class CausalWanModel(nn.Module):
    """Wan2.1 T2V DiT whose self-attention reads its context through a KV cache policy."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(WanBlock(cfg) for _ in range(cfg.num_layers))
        self.head = WanHead(cfg)

    def encode_text(self, context: torch.Tensor) -> "TextState":
        return encode_text(self, self.cfg, context)

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, text: "TextState", cache: KVCache) -> torch.Tensor:
        return causal_forward(self, self.cfg, x, t, text, cache)

    def forward_sequence(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                         attn_mask: torch.Tensor | None = None,
                         frame_positions: torch.Tensor | None = None) -> torch.Tensor:
        return sequence_forward(self, self.cfg, x, t, encode_text(self, self.cfg, context), attn_mask,
                                frame_positions)

    forward = forward_sequence


# --------------------------------------------------------------------------------------------- layer hook
# Called with the layer index before every block of a causal forward (interrupt checks between layers, so a
# stop request answers within a fraction of a model call). Set per call by the sampler through `layer_hook`.
_LAYER_HOOK: ContextVar[Callable[[int], None] | None] = ContextVar("echo_layer_hook", default=None)


@contextmanager
def layer_hook(hook: Callable[[int], None] | None) -> Iterator[None]:
    """Run `hook(layer)` before every block of the causal forwards made inside this context."""
    token = _LAYER_HOOK.set(hook)
    try:
        yield
    finally:
        _LAYER_HOOK.reset(token)


# --------------------------------------------------------------------------------------------- packed weights
# Weights stored as packed integer blocks (GGUF Q8_0 / Q4_0 ... through ComfyUI-GGUF's layers) are dequantised by
# their layer to the dtype of its input, so the input's dtype is ours to choose: the host's compute dtype for the
# model (float32 on a CPU), set per call by the adapter through `packed_weights_dtype`.
_PACKED_DTYPE: ContextVar[torch.dtype] = ContextVar("echo_packed_dtype", default=torch.float32)


@contextmanager
def packed_weights_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Layers whose weights are packed integer blocks compute in `dtype` inside this context."""
    token = _PACKED_DTYPE.set(dtype)
    try:
        yield
    finally:
        _PACKED_DTYPE.reset(token)


def compute_dtype(weight: torch.Tensor | None) -> torch.dtype:
    """The dtype a layer with this weight computes in: the weight's own float dtype; bf16 for fp8 weights; the
    packed-weights dtype for packed integer blocks (GGUF); float32 without a weight."""
    if weight is None:
        return torch.float32
    if torch.is_floating_point(weight):
        return torch.bfloat16 if weight.element_size() == 1 else weight.dtype
    return _PACKED_DTYPE.get()


# --------------------------------------------------------------------------------------------- helpers
def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] timesteps -> [N, dim] (cos half first, then sin), computed in float64 as Wan does."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(t.to(torch.float64), freqs)
    return torch.cat((torch.cos(angles), torch.sin(angles)), dim=1)


def _param(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return p.to(device=like.device, dtype=torch.float32)


def _dtype_of(module: nn.Module) -> torch.dtype:
    return compute_dtype(getattr(module, "weight", None))


@dataclass
class TextState:
    """A prompt's text embedding and its per-layer cross-attention K/V, made once per prompt and reused."""

    context: torch.Tensor  # [B, L, dim] after the text-embedding MLP
    kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def encode_text(m: nn.Module, cfg: WanConfig, context: torch.Tensor) -> TextState:
    if context.ndim == 2:
        context = context[None]
    if context.shape[-1] != cfg.text_dim:
        raise ValueError(f"text context has feature size {context.shape[-1]}, the model expects {cfg.text_dim}")
    if context.shape[1] < cfg.text_len:  # Wan pads the umT5 sequence with zero rows to text_len
        context = F.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
    dtype = _dtype_of(m.text_embedding[0])
    return TextState(m.text_embedding(context.to(dtype)))


def _cross_kv(m: nn.Module, cfg: WanConfig, layer: int, text: TextState) -> tuple[torch.Tensor, torch.Tensor]:
    if layer not in text.kv:
        attn = m.blocks[layer].cross_attn
        k = attn.norm_k(attn.k(text.context)).unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)
        v = attn.v(text.context).unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)
        text.kv[layer] = (k, v)
    return text.kv[layer]


def _time_modulation(m: nn.Module, cfg: WanConfig, t: torch.Tensor, batch: int, frames: int):
    """Per-frame timestep embedding e [B, F, dim] and its 6-way projection e0 [B, F, 6, dim] in float32."""
    t = t.reshape(batch, -1).float()
    if t.shape[1] == 1:
        t = t.expand(batch, frames)
    if t.shape[1] != frames:
        raise ValueError(f"timestep has {t.shape[1]} entries per sample, expected 1 or {frames} (one per frame)")
    dtype = _dtype_of(m.time_embedding[0])
    emb = sinusoidal_embedding(t.flatten(), cfg.freq_dim).to(dtype)
    e = m.time_embedding(emb).float()
    e0 = m.time_projection(e.to(dtype)).float().unflatten(1, (6, cfg.dim))
    return e.view(batch, frames, cfg.dim), e0.view(batch, frames, 6, cfg.dim)


def _norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a norm module to the float32 residual stream. Foreign modules (ComfyUI's) with low-precision
    affine weights get their input in the weights' dtype, since CPU LayerNorm refuses mixed dtypes."""
    w = getattr(norm, "weight", None)
    if isinstance(norm, WanLayerNorm) or w is None or w.dtype == x.dtype or w.element_size() == 1:
        return norm(x).float()
    return norm(x.to(w.dtype)).float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, frames: int) -> torch.Tensor:
    """x [B, F*S, dim] float32; shift/scale [B, F, dim] applied per frame."""
    b, n, d = x.shape
    xf = x.view(b, frames, n // frames, d)
    return (xf * (1 + scale[:, :, None]) + shift[:, :, None]).view(b, n, d)


def _gate(y: torch.Tensor, gate: torch.Tensor, frames: int) -> torch.Tensor:
    b, n, d = y.shape
    return (y.float().view(b, frames, n // frames, d) * gate[:, :, None]).view(b, n, d)


def _attend(q: torch.Tensor, inputs: AttentionInputs, head_dim: int, mask: torch.Tensor | None = None):
    """Rotate q and the context keys with their positions, weight keys/values, attend. q is [B, H, Lq, D].
    With a memo (one span), the context rotated on the chunk's first call is reused and only the rows this call
    wrote are rotated again: the same numbers, without re-rotating the whole window on every call."""
    cos, sin = rope_cos_sin_cached(inputs.q_positions, head_dim)
    q = apply_rope(q, cos, sin)
    k, v = attention_context(inputs, head_dim)
    return attention_backend.attend(q, k.to(q.dtype), v.to(q.dtype), mask)  # SDPA / sage / flash


def attention_context(inputs: AttentionInputs, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values attention reads for `inputs` (rotated, weighted; through the memo when one is lent):
    `_attend` before the kernel, public for the benches and tests that measure the memo without attending."""
    if inputs.memo is not None and inputs.context_id is not None and len(inputs.spans) == 1:
        return _memo_context(inputs.memo, inputs, head_dim)
    pairs = [_rotated(span, head_dim) for span in inputs.spans]
    k = pairs[0][0] if len(pairs) == 1 else torch.cat([p[0] for p in pairs], dim=2)
    v = pairs[0][1] if len(pairs) == 1 else torch.cat([p[1] for p in pairs], dim=2)
    return k, v


def _rotated(span: KVSpan, head_dim: int, rows: tuple[int, int] | None = None):
    """Keys rotated to their positions and keys/values scaled by the span's weights (spec §2.8), for all rows or
    for rows [a, b) only (elementwise per row, so a slice gives exactly the rows of the whole)."""
    cos, sin = rope_cos_sin_cached(span.positions, head_dim)
    k, v, w = span.k, span.v, span.weights
    if rows is not None:
        a, b = rows
        k, v, cos, sin = k[:, :, a:b], v[:, :, a:b], cos[a:b], sin[a:b]
        w = None if w is None else w[a:b]
    k = apply_rope(k, cos, sin)
    if w is not None:
        w = w.to(k.dtype)[:, None]
        k, v = k * w, v * w
    return k, v


def _memo_context(memo: ContextMemo, inputs: AttentionInputs, head_dim: int):
    """The memo keeps rotated keys only; weights (rope first, then weight, as in `_rotated`) are applied per call,
    which gives the same numbers as weighting once and costs one layer's transient instead of a stored copy."""
    span = inputs.spans[0]
    plain = KVSpan(span.k, span.v, span.positions)
    if not memo.fresh(inputs.context_id, span.k.shape[2]):
        memo.context_id, memo.k = inputs.context_id, _rotated(plain, head_dim)[0]
    else:
        for a, b in inputs.own_rows:
            memo.k[:, :, a:b] = _rotated(plain, head_dim, (a, b))[0]  # type: ignore[index]
    if span.weights is None:
        return memo.k, span.v
    w = span.weights.to(memo.k.dtype)[:, None]  # type: ignore[union-attr]
    return memo.k * w, span.v * w


def _block(m: nn.Module, cfg: WanConfig, layer: int, x: torch.Tensor, e0: torch.Tensor, frames: int,
           text: TextState | None, self_attention, cross_attention=None) -> torch.Tensor:
    """One DiT block. self_attention(layer, q, k, v) -> [B, H, L, D]; cross_attention(layer, h) -> [B, L, dim]
    replaces the attention to `text` (the toy training forward gives every frame its own prompt)."""
    blk = m.blocks[layer]
    mod = _param(blk.modulation, x)[:, None] + e0  # [B, F, 6, dim]
    shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(2)
    sa = blk.self_attn
    dtype = _dtype_of(sa.q)
    h = _modulate(_norm(blk.norm1, x), shift1, scale1, frames).to(dtype)
    q = sa.norm_q(sa.q(h)).unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)
    k = sa.norm_k(sa.k(h)).unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)
    v = sa.v(h).unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)
    y = self_attention(layer, q, k, v).transpose(1, 2).flatten(2)
    x = x + _gate(sa.o(y), gate1, frames)

    ca = blk.cross_attn
    h = _norm(blk.norm3, x).to(dtype)
    if cross_attention is not None:
        y = cross_attention(layer, h)
    else:
        ck, cv = _cross_kv(m, cfg, layer, text)
        cq = ca.norm_q(ca.q(h)).unflatten(-1, (cfg.num_heads, -1)).transpose(1, 2)
        y = F.scaled_dot_product_attention(cq, ck.to(cq.dtype), cv.to(cq.dtype)).transpose(1, 2).flatten(2)
    x = x + ca.o(y).float()

    h = _modulate(_norm(blk.norm2, x), shift2, scale2, frames).to(dtype)
    return x + _gate(blk.ffn(h), gate2, frames)


def _embed(m: nn.Module, cfg: WanConfig, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    if x.ndim != 5 or x.shape[1] != cfg.in_dim:
        raise ValueError(f"latent must be [B, {cfg.in_dim}, F, H, W], got {tuple(x.shape)}")
    pt, ph, pw = cfg.patch_size
    if x.shape[3] % ph or x.shape[4] % pw:
        raise ValueError(f"latent height/width {tuple(x.shape[3:])} must be multiples of the patch size {(ph, pw)}")
    dtype = _dtype_of(m.patch_embedding)
    tokens = m.patch_embedding(x.to(dtype))  # [B, dim, F, h, w]
    grid = tuple(tokens.shape[2:])
    return tokens.flatten(2).transpose(1, 2).float(), grid  # type: ignore[return-value]


def _unpatchify(m: nn.Module, cfg: WanConfig, x: torch.Tensor, e: torch.Tensor,
                grid: tuple[int, int, int]) -> torch.Tensor:
    frames = grid[0]
    mod = _param(m.head.modulation, x)[:, None] + e[:, :, None]  # [B, F, 2, dim]
    shift, scale = mod.unbind(2)
    h = _modulate(_norm(m.head.norm, x), shift, scale, frames).to(_dtype_of(m.head.head))
    out = m.head.head(h).float()  # [B, L, pt*ph*pw*C]
    pt, ph, pw = cfg.patch_size
    f, hh, ww = grid
    out = out.view(out.shape[0], f, hh, ww, pt, ph, pw, cfg.out_dim)
    return out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(out.shape[0], cfg.out_dim, f * pt, hh * ph, ww * pw)


# --------------------------------------------------------------------------------------------- forwards
def causal_forward(m: nn.Module, cfg: WanConfig, x: torch.Tensor, t: torch.Tensor, text: TextState,
                   cache: KVCache) -> torch.Tensor:
    """One chunk [B, C, f, H, W] at timestep(s) t; self-attention context comes from `cache` (which also stores
    this chunk's K/V). Returns the flow-matching velocity prediction, float32."""
    tokens, grid = _embed(m, cfg, x)
    e, e0 = _time_modulation(m, cfg, t.to(x.device), x.shape[0], grid[0])

    def self_attention(layer, q, k, v):
        return _attend(q, cache.attend(layer, q, k, v), cfg.head_dim)

    hook = _LAYER_HOOK.get()
    for layer in range(len(m.blocks)):
        if hook is not None:
            hook(layer)
        tokens = _block(m, cfg, layer, tokens, e0, grid[0], text, self_attention)
    return _unpatchify(m, cfg, tokens, e, grid)


def sequence_forward(m: nn.Module, cfg: WanConfig, x: torch.Tensor, t: torch.Tensor, text: TextState,
                     attn_mask: torch.Tensor | None = None,
                     frame_positions: torch.Tensor | None = None) -> torch.Tensor:
    """Whole sequence at once (training, tests): `attn_mask` [L, L] bool (True = may attend) or None for full
    attention; `frame_positions` [F] gives each frame's temporal RoPE position (default 0..F-1)."""
    tokens, grid = _embed(m, cfg, x)
    frames, rows, cols = grid
    e, e0 = _time_modulation(m, cfg, t.to(x.device), x.shape[0], frames)
    fpos = frame_positions if frame_positions is not None else torch.arange(frames)
    positions = grid_positions(fpos.to(x.device), rows, cols, device=x.device)

    def self_attention(layer, q, k, v):
        return _attend(q, AttentionInputs(positions, [KVSpan(k, v, positions)]), cfg.head_dim, attn_mask)

    for layer in range(len(m.blocks)):
        tokens = _block(m, cfg, layer, tokens, e0, frames, text, self_attention)
    return _unpatchify(m, cfg, tokens, e, grid)


def block_causal_mask(num_frames: int, tokens_per_frame: int, frames_per_block: int,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """[L, L] bool: a token may attend to every token of its own block and of earlier blocks."""
    block = torch.arange(num_frames, device=device) // frames_per_block
    block = block.repeat_interleave(tokens_per_frame)
    return block[:, None] >= block[None, :]
