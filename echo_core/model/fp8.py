"""Dequantise ComfyUI's fp8 checkpoints to ordinary float tensors.

Two conventions exist in ComfyUI files (facts from ComfyUI's comfy/ops.py, model_detection.py, QUANTIZATION.md):
- "scaled fp8" (e.g. Comfy-Org repackaged `*_fp8_e4m3fn_scaled.safetensors`): a marker tensor named `scaled_fp8`
  (its dtype is the fp8 format), and per Linear `<layer>.scale_weight` (float32) and optionally `<layer>.scale_input`.
  The real weight is `weight.float() * scale_weight`.
- the newer per-layer quantisation: safetensors metadata `_quantization_metadata` (JSON with `layers`), and per
  quantised layer `<layer>.weight_scale` / `<layer>.input_scale`; same dequantisation with `weight_scale`.
Input scales only matter for fp8 matmuls and are dropped.
"""

from __future__ import annotations

import json
from typing import Mapping

import torch

FP8_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)
_WEIGHT_SCALES = (".scale_weight", ".weight_scale")
_DROPPED_SUFFIXES = (".scale_input", ".input_scale")
QUANT_METADATA_KEY = "_quantization_metadata"


def is_fp8(t: torch.Tensor) -> bool:
    return t.dtype in FP8_DTYPES


def has_fp8(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bool:
    return ("scaled_fp8" in state_dict or bool(metadata and QUANT_METADATA_KEY in metadata)
            or any(is_fp8(t) for t in state_dict.values()))


def dequantize_state_dict(state_dict: Mapping[str, torch.Tensor],
                          metadata: Mapping[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Return a new dict with fp8 weights as float32 (times their scale) and the scale/marker tensors removed.
    Tensors that were not quantised are returned unchanged."""
    _check_quant_metadata(metadata)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, t in state_dict.items():
        if key == "scaled_fp8" or key.endswith(_DROPPED_SUFFIXES) or key.endswith(_WEIGHT_SCALES):
            continue
        if not key.endswith(".weight"):
            out[key] = t.float() if is_fp8(t) else t
            continue
        base = key[: -len(".weight")]
        scale = None
        for suffix in _WEIGHT_SCALES:
            if base + suffix in state_dict:
                scale = state_dict[base + suffix]
                used.add(base + suffix)
        if scale is None:
            out[key] = t.float() if is_fp8(t) else t
            continue
        out[key] = _apply_scale(key, t, scale)
    orphans = [k for k in state_dict if k.endswith(_WEIGHT_SCALES) and k not in used]
    if orphans:
        raise ValueError(f"fp8 scale tensors without a matching weight: {orphans[:8]} ({len(orphans)} in all); "
                         "the file is incomplete or uses an unknown quantisation layout")
    return out


def _apply_scale(key: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    w = weight.float()
    s = scale.float()
    if s.numel() == 1:
        return w * s.reshape(())
    if s.ndim >= 1 and s.shape[0] == w.shape[0] and s.numel() == w.shape[0]:  # one scale per output row
        return w * s.reshape(-1, *([1] * (w.ndim - 1)))
    raise ValueError(f"{key}: weight scale of shape {tuple(scale.shape)} does not fit weight {tuple(weight.shape)}; "
                     "block-wise quantisation (e.g. nvfp4/mxfp8) is not supported - use a bf16/fp16 or scaled fp8 file")


def _check_quant_metadata(metadata: Mapping[str, str] | None) -> None:
    if not metadata or QUANT_METADATA_KEY not in metadata:
        return
    try:
        layers = json.loads(metadata[QUANT_METADATA_KEY]).get("layers", {})
    except (ValueError, AttributeError):
        raise ValueError(f"safetensors metadata {QUANT_METADATA_KEY!r} is not valid JSON") from None
    formats = {(v.get("format") if isinstance(v, dict) else v) for v in layers.values()}
    unsupported = sorted(str(f) for f in formats if f not in ("float8_e4m3fn", "float8_e5m2"))
    if unsupported:
        raise ValueError(f"quantisation formats {unsupported} are not supported (only per-tensor float8); "
                         "use a bf16/fp16 or scaled fp8 file")
