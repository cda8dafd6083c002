"""Checkpoint files -> CausalWanModel: key layouts, architecture checks, fp8 dequantisation, LoRA merge, saving.

Layouts recognised (facts from the public repos' loading code):
- "wan": bare Wan2.1 keys (`blocks.0.self_attn.q.weight`), e.g. files written by `save_checkpoint`.
- "self_forcing": training checkpoints `{"generator": ..., "generator_ema": ..., ...}` with `model.` (and FSDP's
  `_fsdp_wrapped_module.`) prefixes - Self-Forcing, CausVid, Rolling Forcing, Causal Forcing `.pt` files.
- "longlive": the same dict layout in a file named like LongLive's `longlive_base.pt`.
- "comfyui": `model.diffusion_model.` / `diffusion_model.` prefixes (Comfy-Org repackaged files).
- "comfyui_fp8": ComfyUI fp8 files (scaled fp8 or per-layer quantisation), dequantised at load.
- "causal_forcing_comfy": ComfyUI's repackaged Causal Forcing file; its safetensors metadata `config` is
  `{"transformer": {"causal_ar": true}}` (frame-wise: one latent frame per block).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from echo_core.model.checkpoint_io import CheckpointError, read_weights_file
from echo_core.model.config import CONFIG_METADATA_KEY, NotAWanCheckpointError, WanConfig, infer_config
from echo_core.model.fp8 import dequantize_state_dict, has_fp8
from echo_core.model.lora import merge_lora, read_lora
from echo_core.model.wan import CausalWanModel

FRAMES_METADATA_KEY = "echo_forcing.frames_per_chunk"
EXPECTED = "expected a Wan2.1 T2V DiT (keys like blocks.0.self_attn.q.weight)"
_WRAPPERS = ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module.")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "model.")
_NESTING = ("state_dict", "model", "module", "ema", "net")
_IGNORED = ("scaled_fp8",)  # ComfyUI's fp8 marker (consumed by dequantisation when present)
_IGNORED_PREFIXES = ("rope_embedder.",)  # ComfyUI's RoPE module has no weights but may leave empty entries
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


@dataclass(frozen=True)
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]  # Wan parameter names, no prefix
    config: WanConfig
    layout: str
    frames_per_chunk: int | None  # 1 frame-wise, 3 chunk-wise, None unknown
    metadata: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | Path, *, prefer_ema: bool = True) -> LoadedCheckpoint:
    """Read a Wan2.1 T2V DiT file in any supported layout; weights keep the file's dtype (fp8 -> float32)."""
    p = Path(path)
    raw, file_meta = read_weights_file(p)
    nested, picked = _unnest(raw, prefer_ema)
    metadata: dict[str, Any] = dict(file_meta)
    metadata.update({k: v for k, v in raw.items() if isinstance(v, (str, int, float, bool))})
    if picked:
        metadata["picked"] = picked
    tensors = {k: v for k, v in nested.items() if isinstance(v, torch.Tensor)}
    sd, prefixes = _strip_keys(tensors)
    fp8 = has_fp8(sd, file_meta)
    metadata["file_dtype"] = str(_file_dtype(sd, fp8)).removeprefix("torch.")
    if fp8:
        try:
            sd = dequantize_state_dict(sd, file_meta)
        except ValueError as e:
            raise CheckpointError(f"{p}: {e}") from None
    sd = {k: v for k, v in sd.items() if k not in _IGNORED and not k.startswith(_IGNORED_PREFIXES)}
    _check_architecture(sd, p)
    try:
        config = infer_config(sd, file_meta)
    except NotAWanCheckpointError as e:
        raise NotAWanCheckpointError(f"{p}: {e}") from None
    layout = _layout(p, file_meta, picked, prefixes, fp8)
    return LoadedCheckpoint(sd, config, layout, _frames_per_chunk(p, file_meta, layout), metadata)


def load_causal_wan(path: str | Path, *, dtype: torch.dtype | str = torch.bfloat16, device: str | torch.device = "cpu",
                    lora_path: str | Path | None = None, lora_strength: float = 1.0, num_heads: int | None = None,
                    prefer_ema: bool | None = None, lora_alpha: float | None = None,
                    ) -> tuple[CausalWanModel, LoadedCheckpoint]:
    """Build a CausalWanModel from a checkpoint (plus an optional LoRA merged into the weights).

    dtype: "auto" keeps the file's float dtype (fp8 files -> bf16), or bf16 / fp16 / fp32, or "fp8": block Linear
    weights stored as float8 with per-row scales (LoRA merged first), computing in bf16.
    prefer_ema: None picks `generator_ema` when present, except with a LoRA: LongLive trains and runs its LoRA on
    the plain `generator` weights (its inference config sets use_ema false).
    """
    if prefer_ema is None:
        prefer_ema = lora_path is None
    ckpt = read_checkpoint(path, prefer_ema=prefer_ema)
    fp8 = isinstance(dtype, str) and dtype.lower() in ("fp8", "fp8_e4m3fn", "float8_e4m3fn")
    target = torch.bfloat16 if fp8 else _resolve_dtype(dtype, getattr(torch, ckpt.metadata["file_dtype"]))
    sd, layout = ckpt.state_dict, ckpt.layout
    if lora_path is not None:
        lora = read_lora(lora_path)
        sd = merge_lora(sd, lora, lora_strength, alpha=lora_alpha, source=str(lora_path))
        if lora.style == "peft" and layout == "self_forcing":
            layout = "longlive"
    cfg = ckpt.config if num_heads is None else _with_heads(ckpt.config, num_heads)
    model = _build(cfg, sd, target, device, path)
    if fp8:
        from echo_core.model.fp8_linear import quantize_blocks_fp8

        quantize_blocks_fp8(model, target)
    meta = dict(ckpt.metadata, **({"lora": str(lora_path), "lora_strength": lora_strength} if lora_path else {}))
    return model, LoadedCheckpoint(dict(model.state_dict()), cfg, layout, ckpt.frames_per_chunk, meta)


def save_checkpoint(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | Path, *,
                    config: WanConfig | None = None, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write Wan-named weights as .safetensors with our config in metadata (so num_heads / text_len survive)."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ValueError(f"save_checkpoint writes safetensors: give a path ending in .safetensors, not {p.name!r}")
    if isinstance(model_or_state_dict, nn.Module):
        config = config or getattr(model_or_state_dict, "cfg", None)
        sd = model_or_state_dict.state_dict()
    else:
        sd = dict(model_or_state_dict)
    if config is None:
        config = infer_config(sd)
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta[CONFIG_METADATA_KEY] = json.dumps(config.to_dict())
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in sd.items()}, str(p), metadata=meta)
    return p


# --------------------------------------------------------------------------------------------- key layouts
def _unnest(raw: Mapping[str, Any], prefer_ema: bool) -> tuple[Mapping[str, Any], str | None]:
    order = ("generator_ema", "generator") if prefer_ema else ("generator", "generator_ema")
    for key in order:
        if isinstance(raw.get(key), Mapping):
            return raw[key], key
    obj, picked = raw, None
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"module": ...}}
        inner = next((k for k in _NESTING if isinstance(obj.get(k), Mapping)), None)
        if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        obj, picked = obj[inner], inner if picked is None else f"{picked}.{inner}"
    return obj, picked


def _strip_keys(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    out: dict[str, torch.Tensor] = {}
    seen: set[str] = set()
    for key, value in sd.items():
        k = key
        for w in _WRAPPERS:
            if w in k:
                k, _ = k.replace(w, ""), seen.add(w)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
                    seen.add(prefix)
        if k in out:
            raise CheckpointError(f"two entries map to the same weight {k!r} after removing prefixes "
                                  f"(one of them is {key!r}); the file mixes several models")
        out[k] = value
    return out, seen


def _layout(p: Path, meta: Mapping[str, str], picked: str | None, prefixes: set[str], fp8: bool) -> str:
    if _causal_ar(meta):
        return "causal_forcing_comfy"
    if fp8:
        return "comfyui_fp8"
    if picked in ("generator", "generator_ema"):
        return "longlive" if "longlive" in p.name.lower() else "self_forcing"
    if prefixes & {"model.diffusion_model.", "diffusion_model."}:
        return "comfyui"
    return "wan"


def _causal_ar(meta: Mapping[str, str]) -> bool:
    try:
        cfg = json.loads(meta.get("config", "{}"))
    except ValueError:
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("transformer"), dict) and cfg["transformer"].get(
        "causal_ar") is True


def _frames_per_chunk(p: Path, meta: Mapping[str, str], layout: str) -> int | None:
    if FRAMES_METADATA_KEY in meta:
        return int(meta[FRAMES_METADATA_KEY])
    if _causal_ar(meta):
        return 1  # ComfyUI's AR support targets Causal Forcing's frame-wise model
    name = str(p).lower().replace("-", "").replace("_", "")
    if "framewise" in name:
        return 1
    if "chunkwise" in name:
        return 3
    if layout in ("self_forcing", "longlive"):
        return 3  # Self-Forcing, CausVid, Rolling Forcing, LongLive: num_frame_per_block 3
    return None


# --------------------------------------------------------------------------------------------- architecture
def _check_architecture(sd: Mapping[str, torch.Tensor], p: Path) -> None:
    keys = list(sd)
    first = ", ".join(keys[:5]) or "(no tensors)"
    has = lambda *names: any(n in sd for n in names)  # noqa: E731
    starts = lambda *pre: any(k.startswith(pre) for k in keys)  # noqa: E731
    if has("img_emb.proj.0.weight", "blocks.0.cross_attn.k_img.weight") or (
            "patch_embedding.weight" in sd and sd["patch_embedding.weight"].shape[1] == 36):
        raise NotAWanCheckpointError(f"{p}: this is a Wan image-to-video DiT (img_emb / k_img weights or 36 input "
                                     f"channels); {EXPECTED} such as wan2.1_t2v_1.3B or a Self-Forcing checkpoint")
    if starts("vace_blocks.", "vace_patch_embedding."):
        raise NotAWanCheckpointError(f"{p}: this is a Wan VACE DiT (vace_blocks.*); {EXPECTED}")
    if "patch_embedding.weight" in sd and "blocks.0.self_attn.q.weight" in sd:
        return
    if starts("decoder.middle.", "encoder.downsamples.", "first_stage_model.", "decoder.upsamples.") or has(
            "decoder.conv1.weight", "encoder.conv1.weight", "conv1.weight"):
        raise NotAWanCheckpointError(f"{p}: this is a video VAE (first keys: {first}), not a diffusion model; load it "
                                     f"with ComfyUI's Load VAE node. {EXPECTED}")
    if starts("encoder.block.", "shared.", "text_model.", "visual.", "token_embedding.") or has("log_scale"):
        raise NotAWanCheckpointError(f"{p}: this is a text/image encoder (umT5 / CLIP; first keys: {first}), not a "
                                     f"diffusion model; load it with ComfyUI's Load CLIP node. {EXPECTED}")
    if any(".lora_" in k or k.endswith(".alpha") for k in keys[:50]):
        raise NotAWanCheckpointError(f"{p}: this is a LoRA (first keys: {first}); pass it as lora_path next to a "
                                     f"base model. {EXPECTED}")
    raise NotAWanCheckpointError(f"{p}: not a Wan DiT checkpoint ({len(keys)} tensors, first keys: {first}); "
                                 f"{EXPECTED}")


def _check_keys(model: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {missing[:8]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {unexpected[:8]}")
        raise NotAWanCheckpointError(f"{path}: the weights do not fit the model ({'; '.join(parts)}); {EXPECTED}")
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        raise NotAWanCheckpointError(f"{path}: {len(wrong)} weights have the wrong shape (file vs model): {wrong[:8]}")


# --------------------------------------------------------------------------------------------- build
def _file_dtype(sd: Mapping[str, torch.Tensor], fp8: bool) -> torch.dtype:
    """The file's own float dtype (by element count); fp8 files count as bf16, the dtype they compute in."""
    counts: dict[torch.dtype, int] = {}
    for t in sd.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    if fp8 or not counts:
        return torch.bfloat16
    return max(counts, key=lambda d: counts[d])


def _resolve_dtype(dtype: torch.dtype | str, file_dtype: torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            return dtype
        raise ValueError(f"dtype {dtype} is not supported; choose 'auto', 'bf16', 'fp16', 'fp32' or 'fp8'")
    name = dtype.lower()
    if name == "auto":
        return file_dtype if file_dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32
    if name in _DTYPES:
        return _DTYPES[name]
    raise ValueError(f"unknown dtype {dtype!r}; choose 'auto', 'bf16', 'fp16', 'fp32' or 'fp8'")


def _with_heads(cfg: WanConfig, num_heads: int) -> WanConfig:
    from dataclasses import replace

    if num_heads <= 0 or cfg.dim % num_heads:
        raise ValueError(f"num_heads={num_heads} does not divide the model width dim={cfg.dim}")
    return replace(cfg, num_heads=num_heads)


def _build(cfg: WanConfig, sd: Mapping[str, torch.Tensor], dtype: torch.dtype, device: str | torch.device,
           path: str | Path) -> CausalWanModel:
    with torch.device("meta"):  # no random init of a 1.3B model just to overwrite it
        model = CausalWanModel(cfg)
    _check_keys(model, sd, path)
    converted = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    model.load_state_dict(converted, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise RuntimeError(f"CausalWanModel has tensors no checkpoint provides: {left[:8]}")
    return model.eval().requires_grad_(False)
