"""Merge LoRA files into a Wan state dict: W += strength * (alpha / rank) * up @ down.

Accepted key styles (all mapped to Wan parameter names):
- PEFT, as LongLive saves `lora.pt` (peft.get_peft_model_state_dict on the generator's CausalWanModel, optionally
  under a `generator_lora` entry): `base_model.model.blocks.0.self_attn.q.lora_A.weight` / `.lora_B.weight`.
  No alpha is stored; LongLive's configs use rank 256, alpha 256 (scale 1).
- ComfyUI / kohya: `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_unet_blocks_0_self_attn_q.lora_down.weight`, plus full-weight `.diff` and bias `.diff_b` entries.
A missing alpha means alpha = rank (scale 1), as in PEFT's LongLive configs and ComfyUI's loader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from echo_core.model.checkpoint_io import CheckpointError, read_weights_file

# (suffix, role). Longest suffixes first so `.lora_A.default.weight` wins over `.weight`-less forms.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_A", "down"), (".lora_B", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff", "diff"),
)
_UNSUPPORTED = (".lora_mid.weight", ".dora_scale", ".hada_w1_a", ".lokr_w1", ".oft_blocks")
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "module.", "model.")
_WRAPPERS = ("_fsdp_wrapped_module.", "_orig_mod.", "_checkpoint_wrapped_module.")


@dataclass
class LoraModule:
    """One adapted module (`name` in Wan naming, or a kohya `lora_unet_*` name resolved at merge time)."""

    name: str
    down: torch.Tensor | None = None  # [rank, in, ...] (PEFT lora_A)
    up: torch.Tensor | None = None  # [out, rank, ...] (PEFT lora_B)
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None


@dataclass(frozen=True)
class LoraFile:
    modules: dict[str, LoraModule]
    style: str  # "peft" | "comfyui"
    file_alpha: float | None  # alpha stated for the whole file (dict entry, metadata or adapter_config.json)


def read_lora(path: str | Path) -> LoraFile:
    p = Path(path)
    raw, metadata = read_weights_file(p)
    file_alpha = _file_alpha(raw, metadata, p)
    if "generator_lora" in raw and isinstance(raw["generator_lora"], Mapping):
        raw = dict(raw["generator_lora"])  # LongLive training checkpoint: {"generator_lora", "critic_lora", "step"}
    modules: dict[str, LoraModule] = {}
    unknown, unsupported, style = [], [], "comfyui"
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            continue
        if key.endswith(_UNSUPPORTED):
            unsupported.append(key)
            continue
        name, role = _split(key)
        if role is None:
            unknown.append(key)
            continue
        if ".lora_A" in key or ".lora_B" in key:
            style = "peft"
        mod = modules.setdefault(name, LoraModule(name))
        if role == "alpha":
            mod.alpha = float(value.float().reshape(-1)[0])
        else:
            setattr(mod, role, value)
    if unsupported:
        raise CheckpointError(f"{p}: LoRA variants with {sorted({_suffix_of(k) for k in unsupported})} "
                              f"(e.g. {unsupported[0]}) are not supported; only plain LoRA (up/down), diff and diff_b")
    if unknown or not modules:
        shown = ", ".join(unknown[:8]) if unknown else "(no tensors)"
        raise CheckpointError(
            f"{p}: not a LoRA file this loader understands: {len(unknown)} keys without a LoRA suffix, first: "
            f"{shown}. Expected keys like 'diffusion_model.blocks.0.self_attn.q.lora_up.weight' (ComfyUI) or "
            "'base_model.model.blocks.0.self_attn.q.lora_B.weight' (PEFT / LongLive lora.pt)")
    for mod in modules.values():
        if (mod.up is None) != (mod.down is None):
            raise CheckpointError(f"{p}: module {mod.name!r} has only one of the two LoRA matrices (up/B and down/A)")
    return LoraFile(modules, style, file_alpha)


def merge_lora(state_dict: Mapping[str, torch.Tensor], lora: LoraFile, strength: float = 1.0,
               alpha: float | None = None, source: str = "LoRA") -> dict[str, torch.Tensor]:
    """Return a new state dict with the LoRA folded in (merged tensors in float32, others untouched).
    `alpha` overrides per-module and file alphas; with none of them, alpha = rank."""
    out = dict(state_dict)
    kohya = {k[: -len(".weight")].replace(".", "_"): k[: -len(".weight")] for k in state_dict if k.endswith(".weight")}
    missing: list[str] = []
    for mod in lora.modules.values():
        target = _resolve(mod.name, state_dict, kohya)
        if target is None:
            missing.append(mod.name)
            continue
        wkey, bkey = target + ".weight", target + ".bias"
        if mod.up is not None and mod.down is not None:
            w = out[wkey]
            delta = _low_rank_delta(mod, w, alpha if alpha is not None else (mod.alpha or lora.file_alpha), source)
            out[wkey] = w.float() + strength * delta
        if mod.diff is not None:
            out[wkey] = out[wkey].float() + strength * _same_shape(mod.diff, out[wkey], wkey, source)
        if mod.diff_b is not None:
            if bkey not in out:
                missing.append(bkey)
                continue
            out[bkey] = out[bkey].float() + strength * _same_shape(mod.diff_b, out[bkey], bkey, source)
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} LoRA modules have no matching weight in the model, first: {missing[:8]}; "
            "the LoRA was made for a different architecture (this model is a Wan2.1 T2V DiT)")
    return out


def _low_rank_delta(mod: LoraModule, w: torch.Tensor, alpha: float | None, source: str) -> torch.Tensor:
    assert mod.up is not None and mod.down is not None
    rank = mod.down.shape[0]
    if mod.up.shape[1] != rank:
        raise CheckpointError(f"{source}: {mod.name}: up {tuple(mod.up.shape)} and down {tuple(mod.down.shape)} "
                              "disagree on the rank")
    scale = (alpha / rank) if alpha is not None else 1.0
    delta = mod.up.float().flatten(1) @ mod.down.float().flatten(1)  # [out, in*k...]
    if delta.numel() != w.numel() or delta.shape[0] != w.shape[0]:
        raise CheckpointError(f"{source}: {mod.name}: LoRA product {tuple(delta.shape)} does not fit the weight "
                              f"{tuple(w.shape)}; the LoRA was made for a model of another size")
    return delta.reshape(w.shape) * scale


def _same_shape(d: torch.Tensor, w: torch.Tensor, key: str, source: str) -> torch.Tensor:
    if d.shape != w.shape:
        raise CheckpointError(f"{source}: diff for {key} has shape {tuple(d.shape)}, the weight {tuple(w.shape)}")
    return d.float()


def _split(key: str) -> tuple[str, str | None]:
    for suffix, role in _SUFFIXES:
        if key.endswith(suffix):
            return _clean_name(key[: -len(suffix)]), role
    return key, None


def _clean_name(name: str) -> str:
    for w in _WRAPPERS:
        name = name.replace(w, "")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    return name


def _resolve(name: str, sd: Mapping[str, torch.Tensor], kohya: Mapping[str, str]) -> str | None:
    if name + ".weight" in sd:
        return name
    if name.startswith("lora_unet_"):
        return kohya.get(name[len("lora_unet_"):])
    return None


def _suffix_of(key: str) -> str:
    return next((s for s in _UNSUPPORTED if key.endswith(s)), key.rsplit(".", 1)[-1])


def _file_alpha(raw: Mapping, metadata: Mapping[str, str], p: Path) -> float | None:
    """An alpha stated for the whole file: a top-level number, safetensors metadata, or PEFT's adapter_config.json."""
    for key in ("lora_alpha", "alpha"):
        v = raw.get(key, metadata.get(key))
        if isinstance(v, (int, float)) or (isinstance(v, str) and _is_number(v)):
            return float(v)
    cfg = p.parent / "adapter_config.json"
    if cfg.is_file():
        try:
            v = json.loads(cfg.read_text()).get("lora_alpha")
        except (ValueError, OSError):
            v = None
        if isinstance(v, (int, float)):
            return float(v)
    return None


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
