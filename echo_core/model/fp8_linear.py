"""Keep a model's Linear weights in float8 (e4m3fn) with one scale per output row, computing in bf16/fp16.

Halves weight memory against bf16: the block Linears (attention q/k/v/o, FFN) hold ~97% of a Wan DiT's
parameters. Weights are dequantised per forward call, one layer at a time, so peak memory stays near the fp8
size. Requantising a ComfyUI scaled-fp8 file's (dequantised) weights this way reproduces them up to fp8
rounding of the per-row rescale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0  # largest finite float8_e4m3fn


class FP8Linear(nn.Module):
    """A Linear whose `weight` is float8 with a per-output-row float32 `scale_weight`."""

    def __init__(self, linear: nn.Linear, compute_dtype: torch.dtype):
        super().__init__()
        if FP8 is None:
            raise RuntimeError("this torch build has no float8_e4m3fn; choose bf16 or fp16 weights")
        w = linear.weight.detach().float()
        scale = (w.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp_min(1e-12)
        self.weight = nn.Parameter((w / scale).to(FP8), requires_grad=False)
        self.scale_weight = nn.Parameter(scale, requires_grad=False)
        bias = None if linear.bias is None else linear.bias.detach().to(compute_dtype)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.compute_dtype = compute_dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantized(self) -> torch.Tensor:
        return (self.weight.to(torch.float32) * self.scale_weight).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.dequantized(), self.bias)


def quantize_blocks_fp8(model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every nn.Linear inside `model.blocks` by an FP8Linear (in place); returns how many were replaced.
    Embeddings, time projection and head stay in `compute_dtype` (small, and most sensitive to rounding)."""
    if compute_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"fp8 weights compute in bf16 or fp16, not {compute_dtype}")
    count = 0
    for block in model.blocks:
        for name, module in list(block.named_modules()):
            if isinstance(module, nn.Linear):
                parent_name, _, child = name.rpartition(".")
                parent = block.get_submodule(parent_name) if parent_name else block
                setattr(parent, child, FP8Linear(module, compute_dtype))
                count += 1
    return count
