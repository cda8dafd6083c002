"""ComfyUI-specific glue shared by the node files: model wrapping, latent formats, text encoding, progress.

Everything here talks to the host (comfy.*, folder_paths, latent_preview); every decision about the
algorithm lives in echo_core.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import torch
from PIL import Image

from echo_core.errors import InputError, SpecError
from echo_core.model.adapter import ModuleModel, wan_config_of
from echo_core.model.config import WanConfig
from echo_core.sampler import SamplerConfig

from .budget import WAN_SIZE  # (height, width) Wan2.1 T2V 1.3B and its causal students generate at

TOY_LATENTS = "echo-toy"  # latent space of the bundled demo model's codec (echo_core.toy.loader.LATENT_SPACE)
WAN21 = "wan21"  # latent space of the Wan 2.1 VAE (what ComfyUI's VAE Decode expects after process_out)
AUTO = 0  # width / height / steps widget value meaning "what the model was made for"
WAN_STEPS = 4  # Self-Forcing's few-step schedule (1000, 750, 500, 250)


class NodeInputError(InputError):
    """An execution error whose message starts with the node input to fix."""


@dataclass(frozen=True, eq=False)
class ARModel:
    """What Load AR Video Model outputs: a causal Wan DiT under ComfyUI's memory management (immutable handle)."""

    patcher: Any  # comfy.model_patcher.ModelPatcher around a CausalWanModel
    config: WanConfig
    frames_per_chunk: int
    latent_space: str = WAN21  # or a toy space, decoded by the matching node
    name: str = ""
    layout: str = ""
    shift: float = 5.0  # timestep shift of the sampling schedule (Self-Forcing: 5)
    spatial_compression: int = 8  # pixels per latent cell of the matching VAE / codec
    # The sampler the weights were made for (re-noise kind, shift, warp); the sampler node sets the step count.
    # None: Self-Forcing's (fresh noise, warped schedule with `shift`).
    sampler: SamplerConfig | None = None
    native_size: tuple[int, int] = WAN_SIZE  # (height, width) the sampler's `auto` size means for this model


def wrap_module(module: torch.nn.Module) -> Any:
    """A ModelPatcher that ComfyUI loads to the compute device and offloads like its own models."""
    mm = comfy.model_management
    return comfy.model_patcher.ModelPatcher(module, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


@dataclass
class Resolved:
    patcher: Any
    model: ModuleModel
    config: WanConfig
    frames_per_chunk: int
    latent_space: str
    shift: float = 5.0
    spatial_compression: int = 8
    sampler: SamplerConfig | None = None
    native_size: tuple[int, int] = WAN_SIZE


def resolve_model(model: Any) -> Resolved:
    """Our ARModel, or a stock MODEL whose diffusion model is a Wan2.1 T2V DiT (UNETLoader, GGUF, fp8, LoRAs)."""
    if isinstance(model, ARModel):
        module = model.patcher.model
        return Resolved(model.patcher, ModuleModel(module, model.config), model.config, model.frames_per_chunk,
                        model.latent_space, model.shift, model.spatial_compression, model.sampler, model.native_size)
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if inner is None:
        raise NodeInputError("model", f"expected a Wan2.1 text-to-video MODEL or an AR video model, got "
                                      f"{type(model).__name__}")
    base = model.model
    if not isinstance(getattr(base, "latent_format", None), comfy.latent_formats.Wan21) or \
            getattr(inner, "model_type", "t2v") != "t2v" or getattr(inner, "img_emb", None) is not None:
        raise NodeInputError("model", f"the MODEL is a {type(base).__name__} ({type(inner).__name__}); the "
                                      "Echo-Forcing sampler needs a Wan2.1 text-to-video diffusion model")
    try:
        cfg = wan_config_of(inner)
    except SpecError as e:
        raise NodeInputError("model", e.detail) from None
    return Resolved(model, ModuleModel(inner, cfg, host_compute_dtype(base)), cfg, 3, WAN21)


def host_compute_dtype(base: Any) -> torch.dtype:
    """The dtype ComfyUI computes this model in (its manual-cast dtype, else its weight dtype): what packed GGUF
    weights are dequantised to, as ComfyUI-GGUF's layers do under ComfyUI's own sampler."""
    dtype = getattr(base, "manual_cast_dtype", None) or base.get_dtype()
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def run_size(resolved: Resolved, width: int, height: int) -> tuple[int, int]:
    """(height, width) to generate at: an `auto` (0) widget takes the model's native size."""
    native_h, native_w = resolved.native_size
    return (native_h if height == AUTO else height), (native_w if width == AUTO else width)


def run_sampler(resolved: Resolved, steps: int, frames_per_chunk: int) -> SamplerConfig:
    """The denoising schedule: `auto` (0) steps keep the schedule the weights were made for (the bundled demo
    model's own), or Self-Forcing's 4 steps for Wan; a number gives that many evenly spaced steps."""
    from dataclasses import replace

    from echo_core.session import sampler_config

    if steps == AUTO and resolved.sampler is not None:
        return replace(resolved.sampler, frames_per_chunk=frames_per_chunk)
    return sampler_config(WAN_STEPS if steps == AUTO else steps, frames_per_chunk, resolved.shift, resolved.sampler)


def load_to_device(patcher: Any) -> torch.device:
    comfy.model_management.load_models_gpu([patcher])
    return patcher.load_device


def free_memory() -> None:
    gc.collect()
    comfy.model_management.soft_empty_cache()


# --------------------------------------------------------------------------------------------- latents
def to_model_space(samples: torch.Tensor, latent_space: str) -> torch.Tensor:
    """LATENT['samples'] as VAE Encode gives it -> the space the DiT samples in."""
    if latent_space == WAN21:
        return comfy.latent_formats.Wan21().process_in(samples.float())
    return samples.float()


def to_vae_space(latents: torch.Tensor, latent_space: str) -> torch.Tensor:
    """Sampler output (model space) -> what VAE Decode expects (ComfyUI's samplers apply process_out too)."""
    if latent_space == WAN21:
        return comfy.latent_formats.Wan21().process_out(latents.float())
    return latents.float()


# --------------------------------------------------------------------------------------------- text
def encode_prompts(encoder: Any, prompts: Sequence[str], strict: bool = True) -> list[torch.Tensor]:
    """One [1, L, D] embedding per prompt from a ComfyUI CLIP (umT5 for Wan) or an echo text encoder (`strict`
    False: an encoder with a closed vocabulary skips unknown words instead of failing)."""
    if hasattr(encoder, "encode_prompts"):
        try:
            return list(encoder.encode_prompts(prompts, strict=strict))
        except ValueError as e:
            raise NodeInputError("timeline", str(e)) from None
    if not hasattr(encoder, "tokenize"):
        raise NodeInputError("clip", "expected a CLIP text encoder (Load CLIP, type wan), got "
                                     f"{type(encoder).__name__}")
    out = []
    for prompt in prompts:
        cond = encoder.encode_from_tokens_scheduled(encoder.tokenize(prompt))
        out.append(cond[0][0].detach().float().cpu())
    return out


# --------------------------------------------------------------------------------------------- progress
class ChunkProgress:
    """One progress tick per chunk with a preview of the chunk's first latent frame; honours interrupts."""

    def __init__(self, total: int, latent_space: str, preview: Callable[[torch.Tensor], Any] | None = None):
        self.bar = comfy.utils.ProgressBar(total)
        self.total = total
        self.preview = preview if preview is not None else _previewer(latent_space)

    def check_interrupt(self, chunk: int = 0, step: int = 0) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()

    def tick(self, done: int, chunk_latents: torch.Tensor) -> None:
        image = None
        if self.preview is not None:
            image = self.preview(chunk_latents)
        self.bar.update_absolute(done, self.total, image)


def _previewer(latent_space: str) -> Callable[[torch.Tensor], Any] | None:
    """The host's configured previewer for Wan latents; latent->RGB factors when previews are set to none, since a
    long video is only watchable while it runs through its per-chunk previews."""
    import latent_preview

    if latent_space == TOY_LATENTS:  # the bundled demo model: its own (cheap, exact) codec draws the preview
        from .toy_model import toy_bundle

        codec = toy_bundle().codec

        def preview_toy(x0: torch.Tensor) -> Any:
            rgb = codec.decode_images(x0[:1, :, 0].float().cpu())[0]  # [3, H, W] in [0, 1]
            image = Image.fromarray((rgb.permute(1, 2, 0) * 255).round().byte().numpy())
            return ("JPEG", image, latent_preview.MAX_PREVIEW_RESOLUTION)

        return preview_toy
    if latent_space != WAN21:
        return None

    fmt = comfy.latent_formats.Wan21()
    previewer = latent_preview.get_previewer(comfy.model_management.get_torch_device(), fmt)
    if previewer is None:
        previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)

    def preview(x0: torch.Tensor) -> Any:
        return previewer.decode_latent_to_preview_image("JPEG", x0[:1, :, :1].float().cpu())

    return preview
