"""Wan2.1 text-to-video DiT geometry: presets and inference from a checkpoint's tensor shapes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Mapping

import torch


@dataclass(frozen=True)
class WanConfig:
    """Architecture hyper-parameters of a Wan2.1 T2V DiT (names follow Wan's own config)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"WanConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"WanConfig head_dim ({self.head_dim}) must be even for RoPE")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "WanConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "patch_size" in known:
            known["patch_size"] = tuple(int(p) for p in known["patch_size"])
        return cls(**known)

    def tokens_per_frame(self, latent_height: int, latent_width: int) -> int:
        return (latent_height // self.patch_size[1]) * (latent_width // self.patch_size[2])


PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Same layout at toy size: head_dim 32 keeps the 3-axis RoPE split meaningful (pairs 6/5/5).
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32, text_len=16),
    # Smallest layout ComfyUI's own model detection accepts (it assumes 128-dim heads).
    # Its text_dim stays 4096: ComfyUI builds the text embedding at umT5 width whatever the file holds.
    "tiny-comfy": WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, freq_dim=256,
                            text_len=32),
    # The bundled demo model (echo_core/toy): ~1.2M parameters, 32-dim heads, text from the toy text encoder.
    "toy": WanConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=4, text_dim=64, freq_dim=64, text_len=24),
}


def get_preset(name: str) -> WanConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


def preset_with(name: str, **overrides) -> WanConfig:
    return replace(get_preset(name), **overrides)


class NotAWanCheckpointError(ValueError):
    """The tensors do not describe a Wan2.1 text-to-video DiT."""


CONFIG_METADATA_KEY = "echo_forcing.config"  # safetensors metadata entry holding WanConfig.to_dict() as JSON


def infer_config(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> WanConfig:
    """Read the architecture from tensor shapes of a state dict in Wan key names (no prefix).

    Head count and text length are invisible in shapes: a config stated in `metadata` (written by our
    `save_checkpoint`) wins, then a preset whose visible geometry matches, then Wan's 128-dim-head guess."""
    required = ("patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                "head.head.weight", "blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight")
    missing = [k for k in required if k not in state_dict]
    if missing:
        raise NotAWanCheckpointError(
            "not a Wan2.1 DiT checkpoint: missing " + ", ".join(missing)
            + " (expected keys like 'blocks.0.self_attn.q.weight')")
    patch_w = state_dict["patch_embedding.weight"]
    if patch_w.ndim != 5:
        raise NotAWanCheckpointError(f"patch_embedding.weight has shape {tuple(patch_w.shape)}, expected 5-D Conv3d")
    dim, in_dim = int(patch_w.shape[0]), int(patch_w.shape[1])
    patch = tuple(int(s) for s in patch_w.shape[2:])
    layer_ids = {int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    num_layers = max(layer_ids) + 1
    head_w = state_dict["head.head.weight"]
    out_dim = int(head_w.shape[0]) // (patch[0] * patch[1] * patch[2])
    if "img_emb.proj.0.weight" in state_dict or "blocks.0.cross_attn.k_img.weight" in state_dict:
        raise NotAWanCheckpointError("this is a Wan image-to-video checkpoint; an autoregressive T2V DiT is expected")
    norm_q = state_dict.get("blocks.0.self_attn.norm_q.weight")
    head_dim = _guess_head_dim(dim)
    shaped = WanConfig(
        dim=dim,
        ffn_dim=int(state_dict["blocks.0.ffn.0.weight"].shape[0]),
        num_heads=dim // head_dim,
        num_layers=num_layers,
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=int(state_dict["text_embedding.0.weight"].shape[1]),
        freq_dim=int(state_dict["time_embedding.0.weight"].shape[1]),
        patch_size=patch,  # type: ignore[arg-type]
        qk_norm=norm_q is not None,
        cross_attn_norm="blocks.0.norm3.weight" in state_dict,
        text_len=512 if dim >= 1024 else PRESETS["tiny"].text_len,
    )
    stated = _config_from_metadata(metadata)
    if stated is not None:
        _check_same_geometry(stated, shaped, "the config stored in the file's metadata")
        return stated
    for preset in PRESETS.values():
        if all(getattr(preset, f) == getattr(shaped, f) for f in _SHAPE_FIELDS):
            return preset
    return shaped


# Fields that tensor shapes reveal; the others (num_heads, text_len, eps) need metadata or a preset.
_SHAPE_FIELDS = ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim", "patch_size",
                 "qk_norm", "cross_attn_norm")


def _config_from_metadata(metadata: Mapping[str, str] | None) -> WanConfig | None:
    if not metadata or CONFIG_METADATA_KEY not in metadata:
        return None
    import json

    try:
        return WanConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    except (ValueError, TypeError) as e:
        raise NotAWanCheckpointError(
            f"metadata entry {CONFIG_METADATA_KEY!r} is not a valid WanConfig JSON ({e}); "
            "remove the entry or re-save the file with save_checkpoint") from None


def _check_same_geometry(stated: WanConfig, shaped: WanConfig, source: str) -> None:
    diffs = [f"{f}: stated {getattr(stated, f)!r}, tensors say {getattr(shaped, f)!r}"
             for f in _SHAPE_FIELDS if getattr(stated, f) != getattr(shaped, f)]
    if diffs:
        raise NotAWanCheckpointError(f"{source} disagrees with the tensor shapes ({'; '.join(diffs)}); "
                                     "the file was edited after saving - re-save it with save_checkpoint")


def _guess_head_dim(dim: int) -> int:
    # Head count is not visible in shapes. Wan (and ComfyUI's detection) use 128-dim heads;
    # our tiny test preset uses 32. Files may state num_heads in metadata to override this guess.
    for head_dim in (128, 32):
        if dim % head_dim == 0:
            return head_dim
    return dim
