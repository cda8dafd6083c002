"""Run the causal forward over any module tree with Wan2.1's submodule names and hyper-parameter attributes
(our `CausalWanModel`, the original Wan `WanModel`, ComfyUI's `WanModel`, quantised or LoRA-patched)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from echo_core.errors import SpecError
from echo_core.model.config import WanConfig
from echo_core.model.wan import TextState, causal_forward, encode_text, packed_weights_dtype


class ModuleModel:
    """Adapts a Wan-named module tree to the sampler's CausalModel protocol.

    packed_dtype: what layers whose weights are packed integer blocks (GGUF through ComfyUI-GGUF) compute in; the
    host's compute dtype for the model (float32 on a CPU). Float and fp8 weights keep their own rule."""

    def __init__(self, module: nn.Module, cfg: WanConfig, packed_dtype: torch.dtype = torch.float32):
        self.module, self.cfg, self.packed_dtype = module, cfg, packed_dtype

    def encode_text(self, context: torch.Tensor) -> TextState:
        with packed_weights_dtype(self.packed_dtype):
            return encode_text(self.module, self.cfg, context)

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, text: TextState, cache: Any) -> torch.Tensor:
        with packed_weights_dtype(self.packed_dtype):
            return causal_forward(self.module, self.cfg, x, t, text, cache)


def wan_config_of(module: nn.Module) -> WanConfig:
    """WanConfig of a module exposing Wan's hyper-parameters as attributes (`cfg`, or dim/num_heads/... directly)."""
    cfg = getattr(module, "cfg", None)
    if isinstance(cfg, WanConfig):
        return cfg
    names = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim", "text_len",
             "eps", "qk_norm", "cross_attn_norm")
    missing = [n for n in names + ("patch_size",) if not hasattr(module, n)]
    if missing:
        raise SpecError("model", f"{type(module).__name__} is not a Wan2.1 DiT (no {', '.join(missing)})")
    values = {n: getattr(module, n) for n in names}
    values["patch_size"] = tuple(int(p) for p in module.patch_size)
    if values["in_dim"] != values["out_dim"]:
        raise SpecError("model", f"a text-to-video Wan2.1 DiT is needed; this one takes {values['in_dim']} input "
                                 f"channels for {values['out_dim']} output channels (image-to-video or control model)")
    return WanConfig(**values)
