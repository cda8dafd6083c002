"""Bytes a run will hold, from geometry and dtype: one formula per cache policy (spec §8).

`policy_budget(cfg, height, width, ...)` gives, for a model geometry (WanConfig), a resolution, frames per chunk,
a policy (name or EchoConfig), the K/V dtype and whether Echo offloads (its default on CUDA):

* `gpu`: bytes per component the policy keeps on the compute device (all layers), and `context`: the model's
  rotated keys (the hot path's ContextMemo, one key-sized tensor per layer), also on the device during a chunk;
  `device_bytes` is their sum, everything the cache costs the card. Echo without offload keeps the window, the
  history ring, the anchor source, recall candidates, the scene's first frame, weights/rates and small float32
  sums there; offloaded (echo_core.cache.placement) the device keeps the window's values, the rotated keys, the
  small state and two layers of staging buffers, and
* `host`: the offloaded storage (raw window keys, history ring, anchor source, recall candidates, first frame);
* `pool_bytes_per_scene`: what one finished scene costs in the scene pool, which lives on the host (CPU);
* `weights_bytes` (exact parameter count of a Wan2.1 DiT of that geometry) and `activation_bytes`, a rough peak
  of one forward call's working set (one layer at a time) plus the per-prompt cross-attention K/V.

The Echo part restates what `EchoCache` allocates (each echo module's `allocate`, `source_capacity`, the
`Stager`); it is checked against `EchoCache.nbytes_by_place()` after a multi-scene run at the real 1.3B token
geometry within 1 % (tests/test_budget.py). Whoever changes that storage changes `_echo_layer` here too, or that
test fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from echo_core.cache.kv_quant import FLOAT8, MODEL, SCALE_BYTES
from echo_core.config import BaselineConfig, EchoConfig
from echo_core.errors import SpecError
from echo_core.model.config import WanConfig

ROLLING_WINDOW_FRAMES = 21  # rolling / flush baselines (echo_core.run.ROLLING_WINDOW_FRAMES)
F32 = 4
I32 = 4
I64 = 8

PolicySpec = Union[str, EchoConfig, BaselineConfig]


@dataclass(frozen=True)
class Budget:
    """Bytes of one run. `gpu` is what the policy holds on the compute device (CPU in CPU runs), all layers."""

    policy: str
    layers: int
    tokens_per_frame: int
    window_frames: int | None  # frames a chunk attends to at most (None: the whole past)
    kv_dtype: str  # the dtype the model computes K/V in
    gpu: dict[str, int]  # component -> bytes, all layers
    pool: dict[str, int] = field(default_factory=dict)  # component -> bytes per pooled scene, all layers (host)
    pool_max_scenes: int = 0
    weights_bytes: int = 0
    activation_bytes: int = 0  # rough peak of one forward call's working set plus the prompt's text K/V
    # The hot path's context per layer (cache.base ContextMemo): keys rotated once per chunk, held on the device
    # by the model for the running chunk, beside `gpu`.
    context: dict[str, int] = field(default_factory=dict)
    kv_storage: str = MODEL  # how the cache stores K/V (kv_quant): "model" (kv_dtype) or "float8_e4m3fn"
    host: dict[str, int] = field(default_factory=dict)  # component -> bytes offloaded to the host, all layers
    window_kv: int = 0  # the attention window's K/V, wherever they live

    @property
    def context_bytes(self) -> int:
        return sum(self.context.values())

    @property
    def device_bytes(self) -> int:
        """Everything the cache costs the compute device during a chunk: storage, staging, rotated context."""
        return self.gpu_bytes + self.context_bytes

    @property
    def host_storage_bytes(self) -> int:
        return sum(self.host.values())

    @property
    def gpu_bytes(self) -> int:
        return sum(self.gpu.values())

    @property
    def window_bytes(self) -> int:
        """The attention window's K/V alone (what Self-Forcing's rolling cache holds)."""
        return self.window_kv

    @property
    def pool_bytes_per_scene(self) -> int:
        return sum(self.pool.values())

    def host_bytes(self, scenes: int | None = None) -> int:
        """Host bytes after `scenes` finished scenes (default: a full pool): the offloaded storage plus the pool.
        A smooth chain's first scene is kept for smooth switches even once the pool has dropped it: at most one
        scene more than the pool size."""
        n = self.pool_max_scenes if scenes is None else min(max(scenes, 0), self.pool_max_scenes)
        return self.host_storage_bytes + n * self.pool_bytes_per_scene

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "layers": self.layers, "tokens_per_frame": self.tokens_per_frame,
            "window_frames": self.window_frames, "kv_dtype": self.kv_dtype, "kv_storage": self.kv_storage,
            "gpu_bytes": self.gpu_bytes, "gpu_components": dict(self.gpu),
            "pool_bytes_per_scene": self.pool_bytes_per_scene, "pool_components": dict(self.pool),
            "pool_max_scenes": self.pool_max_scenes, "host_max_bytes": self.host_bytes(),
            "weights_bytes": self.weights_bytes, "activation_bytes": self.activation_bytes,
            "context_bytes": self.context_bytes, "context_components": dict(self.context),
            "device_bytes": self.device_bytes, "host_storage_bytes": self.host_storage_bytes,
            "host_components": dict(self.host), "window_bytes": self.window_bytes,
        }


def policy_budget(cfg: WanConfig, height: int, width: int, frames_per_chunk: int = 3,
                  policy: PolicySpec = "echo", *, kv_dtype: torch.dtype = torch.bfloat16,
                  model_dtype: torch.dtype | None = None, total_frames: int | None = None,
                  spatial_compression: int = 8, guidance: bool = False, batch: int = 1,
                  offload: bool = True) -> Budget:
    """The budget of `policy` for `cfg` at `width` x `height` pixels.

    offload: Echo keeps its raw window keys and side state on the host (EchoCache's default on CUDA; False: a
    CPU run, or `EchoCache(offload=None)`).

    kv_dtype: the dtype K/V are computed in (the model's compute dtype; bf16 for fp8 weights). model_dtype: the
    weights' dtype (default kv_dtype). total_frames: latent frames of the whole video, needed by "full" (whose
    cache grows with the video). guidance: classifier-free guidance keeps a second (empty) prompt's text K/V.
    How the cache stores K/V comes with the policy (EchoConfig / BaselineConfig `kv_dtype`): fp8 costs one byte
    per element plus a float32 scale per token per head (kv_quant.KVBuffer); the scene pool (host) and the
    model's rotated context stay in the model dtype."""
    latent_h, latent_w = height // spatial_compression, width // spatial_compression
    s = cfg.tokens_per_frame(latent_h, latent_w)
    e = _itemsize(kv_dtype)
    frame = batch * cfg.dim * s * e  # one latent frame of K (or V) for one layer, in the model dtype
    name, echo, storage = _resolve(policy, frames_per_chunk)
    stored = stored_frame_bytes(storage, batch, cfg.num_heads, s, cfg.head_dim, e)  # one frame as the cache holds it
    host: dict[str, int] = {}
    staging = 0
    if echo is not None:
        per_layer, host = _echo_layer(echo, s, cfg.num_heads, cfg.head_dim, e, batch, offload, stored)
        pool = _echo_pool_scene(echo, frame)
        window: int | None = echo.memory.window_frames
        pool_max = echo.recall_frames.pool_max_size
        staging = _echo_staging(echo, frame, quantized=storage != MODEL) if offload else 0
    elif name in ("rolling", "flush"):
        window = ROLLING_WINDOW_FRAMES
        per_layer, pool, pool_max = {"window": 2 * window * stored}, {}, 0
    elif name == "full":
        if total_frames is None:
            raise SpecError("memory", "the full cache grows with the video: its budget needs the video's length")
        window = None
        per_layer, pool, pool_max = {"window": 2 * _full_capacity_frames(total_frames, frames_per_chunk) * stored}, \
            {}, 0
    else:
        raise SpecError("memory", f"unknown memory policy {name!r}; choose one of echo, rolling, full, flush")
    attended = window if window is not None else (total_frames or 0)
    gpu = {k: v * cfg.num_layers for k, v in per_layer.items()}
    if staging:
        gpu["staging"] = staging  # two layers' worth, whatever the depth
    pool_all = {k: v * cfg.num_layers for k, v in pool.items()}
    act = activation_bytes(cfg, s, frames_per_chunk, attended, e, guidance=guidance, batch=batch,
                           weighted=echo is not None, scene_end=pool_all.get("recall_frame", 0),
                           dequantised=storage != MODEL)
    # the model's rotated-key memo; Echo in fp8 lends none (keys rotated per call: activations)
    context = {} if echo is not None and storage != MODEL else {"rotated_keys": cfg.num_layers * attended * frame}
    return Budget(name, cfg.num_layers, s, window, str(kv_dtype).removeprefix("torch."), gpu, pool_all, pool_max,
                  weights_bytes(cfg, model_dtype or kv_dtype), act, context, storage,
                  {k: v * cfg.num_layers for k, v in host.items()}, 2 * attended * stored * cfg.num_layers)


def _resolve(policy: PolicySpec, frames_per_chunk: int) -> tuple[str, EchoConfig | None, str]:
    """(policy name, its EchoConfig or None, K/V storage)."""
    if isinstance(policy, EchoConfig):
        return "echo", policy, policy.kv_dtype
    if isinstance(policy, BaselineConfig):
        return policy.policy, None, policy.kv_dtype
    if policy == "echo":
        from echo_core.config import HierarchicalMemoryConfig

        return "echo", EchoConfig(memory=HierarchicalMemoryConfig.for_frames_per_chunk(frames_per_chunk)), MODEL
    return str(policy), None, MODEL


def stored_frame_bytes(kv_storage: str, batch: int, heads: int, s: int, head_dim: int, e: int) -> int:
    """Bytes of one latent frame of K (or V), one layer, as a cache stores it: `e` bytes per element in the model
    dtype; fp8 one byte per element plus one float32 scale per token per head (kv_quant.KVBuffer.nbytes)."""
    if kv_storage == FLOAT8:
        return batch * heads * s * (head_dim + SCALE_BYTES)
    return batch * heads * s * head_dim * e


# ------------------------------------------------------------------------------------------------- Echo
def echo_source_frames(config: EchoConfig) -> int:
    """Anchor-source frames per layer: the cache's own rule (echo.memory.source_capacity)."""
    from echo_core.cache.echo.memory import source_capacity

    return source_capacity(config)


def _echo_layer(config: EchoConfig, s: int, heads: int, head_dim: int, e: int, batch: int,
                offload: bool, stored: int | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes one layer of EchoCache holds at most, per stored tensor (the `allocate` of each echo module), as
    (on the device, on the host). The window's K/V are `stored` bytes per frame (the model's dtype, `e` bytes per
    element, or fp8 with scales: stored_frame_bytes), the frame-sized side state the model dtype; weights, rates,
    sums and counts in float32/int32 stay on the device; offloaded, the side state moves to the host, and so do
    the raw window keys unless they are fp8 (an fp8 window stays on the device whole)."""
    mem = config.memory
    w = mem.window_frames
    frame = batch * heads * s * head_dim * e
    window = frame if stored is None else stored
    gpu = {"weights_rates": 2 * w * s * F32}  # w, rates [W*S]
    side = {"first_frame": 2 * frame}  # select: the scene's first frame, kept from its first commit on
    if mem.compressed_frames > 0:
        side["history_ring"] = 2 * w * frame  # ring k, v [B, H, W*S, D]
        gpu["ring_counts"] = w * s * I32
        gpu["calibration"] = heads * head_dim * F32 + heads * (head_dim // 2) * F32  # q_sum, abs_sum
        gpu["compressed_index"] = 2 * mem.compressed_frames * s * I64  # origin frame/spatial (not in nbytes)
    source = echo_source_frames(config)
    if source:
        side["anchor_source"] = 2 * source * frame  # k, v [B, H, cap*S, D]
    if config.needs_recall_frames:
        side["recall_candidates"] = 2 * len(config.recall_frames.sampled_frames()) * frame  # frames 0, 4, 8
        gpu["recall_query_sum"] = heads * head_dim * F32
    if not offload:
        return {"window": 2 * w * window, **gpu, **side}, {}
    if window != frame:
        return {"window": 2 * w * window, **gpu}, side
    return {"window_values": w * frame, **gpu}, {"window_keys": w * frame, **side}


def _echo_staging(config: EchoConfig, frame: int, quantized: bool = False) -> int:
    """Device buffers of an offloading EchoCache (placement.Stager): two layers of raw window keys (none when the
    window is fp8: it stays on the device), and of the history ring's keys and values when the memory compresses."""
    w = config.memory.window_frames
    kinds = (2 if config.memory.compressed_frames > 0 else 0) + (0 if quantized else 1)
    return 2 * kinds * w * frame


def _echo_pool_scene(config: EchoConfig, frame: int) -> dict[str, int]:
    """Per layer, per finished scene, in the pool (host, model dtype): recall frame and/or first frame."""
    out = {}
    if config.needs_recall_frames:
        out["recall_frame"] = 2 * frame
    if config.needs_select_frames:
        out["first_frame"] = 2 * frame
    return out


def _full_capacity_frames(total_frames: int, frames_per_chunk: int) -> int:
    """Frames the unbounded cache has allocated after `total_frames` (RollingCache grows geometrically: at least
    double, at least what is needed)."""
    capacity = 0
    needed = 0
    while needed < total_frames:
        needed = min(total_frames, needed + frames_per_chunk)
        if capacity < needed:
            capacity = max(needed, 2 * capacity)
    return capacity


# ------------------------------------------------------------------------------------------------- model
GGUF_PREFIX = "gguf_"  # weights_bytes(cfg, "gguf_q8_0"): a GGUF file type (echo_core.model.gguf_size.FILE_TYPES)


def weights_bytes(cfg: WanConfig, dtype: torch.dtype | str = torch.bfloat16) -> int:
    """Bytes of a Wan2.1 T2V DiT's parameters (CausalWanModel's exact parameter count) in `dtype`, or packed as a
    GGUF file type such as "gguf_q8_0" / "gguf_q4_k_m" / "gguf_q4_0" (what ComfyUI-GGUF holds, tensor by tensor)."""
    if isinstance(dtype, str):
        from echo_core.model.gguf_size import FILE_TYPES, gguf_bytes

        kind = dtype.lower().removeprefix(GGUF_PREFIX)
        if not dtype.lower().startswith(GGUF_PREFIX) or kind not in FILE_TYPES:
            raise SpecError("weights", f"unknown weight format {dtype!r}; give a torch dtype or one of "
                                       + ", ".join(GGUF_PREFIX + k for k in FILE_TYPES))
        return gguf_bytes(cfg, kind)
    d, f = cfg.dim, cfg.ffn_dim
    patch = math.prod(cfg.patch_size)
    linear = d * d + d
    attn = 4 * linear + (2 * d if cfg.qk_norm else 0)
    block = 2 * attn + (2 * d if cfg.cross_attn_norm else 0) + (d * f + f + f * d + d) + 6 * d
    count = (cfg.in_dim * d * patch + d  # patch embedding
             + cfg.text_dim * d + d + linear  # text embedding
             + cfg.freq_dim * d + d + linear  # time embedding
             + d * 6 * d + 6 * d  # time projection
             + cfg.num_layers * block
             + d * cfg.out_dim * patch + cfg.out_dim * patch + 2 * d)  # head
    return count * _itemsize(dtype)


def activation_bytes(cfg: WanConfig, s: int, frames_per_chunk: int, attended_frames: int, e: int, *,
                     guidance: bool = False, batch: int = 1, weighted: bool = True, scene_end: int = 0,
                     dequantised: bool = False) -> int:
    """A rough peak of what one chunk's forward call allocates besides the cache and the weights (one layer at a
    time, as the model runs): the float32 residual stream, the chunk's q/k/v, the float32 RoPE work over every
    attended key, weighted keys/values, the FFN hidden layer; plus the cross-attention K/V of the prompt (all
    layers, twice with guidance) and the recall frame fused at a scene's end before it moves to the pool."""
    d = cfg.dim
    q_tokens = batch * frames_per_chunk * s
    k_tokens = batch * (attended_frames + frames_per_chunk) * s
    residual = 3 * q_tokens * d * F32
    qkv = 3 * q_tokens * d * e
    rope = q_tokens * d * (2 * F32 + e) + k_tokens * d * (3 * F32 + e)  # float copy, products, result, cast
    weights = 2 * k_tokens * d * e if weighted else 0
    dequant = 2 * k_tokens * d * e if dequantised else 0  # an fp8 cache's span, dequantised K and V for the call
    attention = qkv + rope + weights + dequant + q_tokens * d * e
    ffn = 2 * q_tokens * cfg.ffn_dim * e + q_tokens * d * F32
    text = (2 if guidance else 1) * cfg.num_layers * 2 * batch * cfg.text_len * d * e
    positions = k_tokens * 3 * I64 + 2 * k_tokens * (cfg.head_dim // 2) * F32  # key positions, cos/sin
    return residual + max(attention, ffn) + text + positions + scene_end


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def human(n: int | float | None) -> str:
    """Bytes as a short human string (GiB / MiB / KiB)."""
    if n is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
