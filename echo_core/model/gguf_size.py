"""Bytes of a Wan2.1 DiT stored as GGUF, tensor by tensor, the way ComfyUI-GGUF's tools make such files.

Facts from city96/ComfyUI-GGUF (tools/convert.py, tools/lcpp.patch), restated as tables: the converter writes 1-D
tensors, tensors of at most 1024 elements, the `.modulation` parameters and the 5-D patch embedding in float32
and the other tensors in the source's dtype (bf16 for Wan); the quantiser then quantises only 2-D weights outside
the embeddings, time projection, head and modulation (in practice every Linear weight of the blocks), with the
file type's base type, except the attention value weights (`.v.weight`) and the FFN down projection
(`.ffn.2.weight`), which some file types keep one step more precise. A K-quant needs rows of 256 elements
(otherwise float16). The packed bytes are what ComfyUI-GGUF holds in memory (it dequantises one layer per call).
"""

from __future__ import annotations

import math

from echo_core.model.config import WanConfig

# GGML type -> (elements per block, bytes per block)
BLOCK_BYTES: dict[str, tuple[int, int]] = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q4_0": (32, 18), "Q4_1": (32, 20),
    "Q6_K": (256, 210), "Q5_K": (256, 176), "Q4_K": (256, 144),
}
# file type -> (base type, attention value weights, FFN down projection)
FILE_TYPES: dict[str, tuple[str, str, str]] = {
    "q8_0": ("Q8_0", "Q8_0", "Q8_0"),
    "q6_k": ("Q6_K", "Q6_K", "Q6_K"),
    "q5_k_m": ("Q5_K", "Q6_K", "Q6_K"),
    "q5_0": ("Q5_0", "Q5_0", "Q5_1"),
    "q4_k_m": ("Q4_K", "Q6_K", "Q6_K"),
    "q4_0": ("Q4_0", "Q4_0", "Q4_1"),
}
KEEP = ("modulation", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.", "head.")
SMALL = 1024  # the converter keeps tensors this small in float32


def wan_tensor_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter of a Wan2.1 T2V DiT of geometry `cfg`, in state-dict order, with its shape."""
    d, f = cfg.dim, cfg.ffn_dim
    out: dict[str, tuple[int, ...]] = {
        "patch_embedding.weight": (d, cfg.in_dim, *cfg.patch_size), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
    }
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        out[b + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                out[f"{b}{attn}.{p}.weight"], out[f"{b}{attn}.{p}.bias"] = (d, d), (d,)
            if cfg.qk_norm:
                out[f"{b}{attn}.norm_q.weight"] = out[f"{b}{attn}.norm_k.weight"] = (d,)
            if attn == "self_attn" and cfg.cross_attn_norm:
                out[b + "norm3.weight"], out[b + "norm3.bias"] = (d,), (d,)
        out[b + "ffn.0.weight"], out[b + "ffn.0.bias"] = (f, d), (f,)
        out[b + "ffn.2.weight"], out[b + "ffn.2.bias"] = (d, f), (d,)
    out["head.modulation"] = (1, 2, d)
    out["head.head.weight"] = (cfg.out_dim * math.prod(cfg.patch_size), d)
    out["head.head.bias"] = (cfg.out_dim * math.prod(cfg.patch_size),)
    return out


def gguf_tensor_type(name: str, shape: tuple[int, ...], file_type: str, source: str = "BF16") -> str:
    """The GGML type tensor `name` is stored as in a GGUF of `file_type` (a FILE_TYPES key) made from weights in
    `source` (the converter's base type for 2-D tensors it does not quantise)."""
    base, value, ffn_down = FILE_TYPES[file_type]
    n = math.prod(shape)
    if len(shape) != 2 or n <= SMALL or any(k in name for k in KEEP):
        return "F32" if len(shape) != 2 or n <= SMALL or "modulation" in name else source
    qtype = value if name.endswith(".v.weight") else ffn_down if name.endswith(".ffn.2.weight") else base
    if shape[-1] % BLOCK_BYTES[qtype][0]:
        return "F16"
    return qtype


def gguf_bytes(cfg: WanConfig, file_type: str, source: str = "BF16") -> int:
    """Bytes of the tensors of a Wan2.1 DiT of geometry `cfg` as a GGUF of `file_type` (e.g. "q8_0", "q4_k_m")."""
    if file_type not in FILE_TYPES:
        raise ValueError(f"unknown GGUF file type {file_type!r}; known: {', '.join(FILE_TYPES)}")
    total = 0
    for name, shape in wan_tensor_shapes(cfg).items():
        block, size = BLOCK_BYTES[gguf_tensor_type(name, shape, file_type, source)]
        total += math.prod(shape) // block * size
    return total
