"""A cheap, stable fingerprint of a Wan DiT's weights: what a saved scene (echo_core.scene_library) is valid for.

Hashing 1.3B parameters would take seconds; a recall frame is K/V the model computed, so it is pinned to the
tensors that make K/V and to the architecture: the WanConfig, the input embeddings, the first, middle and last
blocks' key/value projections (and key norm) and the output head. Values are hashed as bfloat16 (the dtype Wan
weights ship in), so the same checkpoint loaded in bf16, fp16 or fp32 has one fingerprint; a fine-tune, a LoRA
merged into those tensors or another checkpoint changes it. A change confined to other tensors goes unnoticed:
it is a fingerprint, not a checksum. The digest is cached per module until one of its hashed tensors is
replaced or written in place (ComfyUI patches LoRAs into the weights when it loads a model).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any

import torch
from torch import nn

from echo_core.model.config import WanConfig

FINGERPRINT_VERSION = 1
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, str]]" = weakref.WeakKeyDictionary()


def fingerprint_tensor_names(cfg: WanConfig) -> list[str]:
    """Wan key names hashed into the fingerprint (the same in our model, Wan's and ComfyUI's)."""
    blocks = sorted({0, cfg.num_layers // 2, cfg.num_layers - 1})
    names = ["patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight", "head.head.weight"]
    for b in blocks:
        names += [f"blocks.{b}.self_attn.k.weight", f"blocks.{b}.self_attn.k.bias",
                  f"blocks.{b}.self_attn.v.weight", f"blocks.{b}.self_attn.norm_k.weight"]
    return names


def _version(t: torch.Tensor) -> int | None:
    """In-place write counter; inference tensors have none (then the digest is not cached)."""
    try:
        return t._version
    except RuntimeError:
        return None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach()
    try:
        data = t.to("cpu", torch.bfloat16).contiguous().view(torch.int16)
    except (RuntimeError, TypeError):  # not a float tensor (a quantised storage type): its raw bytes
        data = t.to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return data.numpy().tobytes()


def weights_fingerprint(module: nn.Module, cfg: WanConfig) -> str:
    """Hex digest (32 characters) of `cfg` and the fingerprint tensors of `module` (see the module docstring)."""
    params = dict(module.named_parameters())
    names = fingerprint_tensor_names(cfg)
    found = [params.get(n) for n in names]
    key = (json.dumps(cfg.to_dict(), sort_keys=True),
           tuple(None if t is None else (t.data_ptr(), _version(t), t.dtype, str(t.device)) for t in found))
    cached = _CACHE.get(module)
    if cached is not None and cached[0] == key and None not in (v[1] for v in key[1] if v is not None):
        return cached[1]
    h = hashlib.sha256(f"echo-forcing weights fingerprint v{FINGERPRINT_VERSION}\n".encode())
    h.update(key[0].encode())
    for name, t in zip(names, found):
        h.update(f"\n{name}:".encode())
        if t is None:
            h.update(b"absent")
            continue
        h.update(json.dumps(list(t.shape)).encode())
        h.update(_tensor_bytes(t))
    digest = h.hexdigest()[:32]
    _CACHE[module] = (key, digest)
    return digest
