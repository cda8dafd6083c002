"""Load AR Video Model: a causal Wan2.1 DiT file (any layout echo_core reads) or the bundled demo model.

Owns: which file, weight dtype, frames per chunk, an optional LoRA merged at load. The weights go into a
ComfyUI ModelPatcher, so the host's memory management loads and offloads them like any model.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from echo_core.errors import quote

from . import checks, types
from ._host import ARModel, NodeInputError, wrap_module
from .budget import TOY_MODEL

DTYPES = ["auto", "bf16", "fp16", "fp32", "fp8"]
FRAMES = ["auto", "3 (chunk-wise)", "1 (frame-wise)"]
NO_LORA = "none"


def _model_files() -> list[str]:
    return [TOY_MODEL] + folder_paths.get_filename_list("diffusion_models")


class LoadARVideoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoLoadARVideoModel",
            display_name="Load AR Video Model",
            category=types.CATEGORY,
            description="Loads an autoregressive (causal) Wan2.1 text-to-video DiT: Self-Forcing, LongLive, Causal "
                        "Forcing, Rolling Forcing checkpoints (.pt or .safetensors) or the bundled demo model.",
            inputs=[
                io.Combo.Input("model_name", options=_model_files(),
                               tooltip="A file in models/diffusion_models, or the bundled demo model (no download)."),
                io.Combo.Input("weight_dtype", options=DTYPES, default="auto",
                               tooltip="auto keeps the file's dtype (fp8 files are dequantised to bf16). fp8 keeps "
                                       "the block weights in float8 with per-row scales (half the memory of bf16), "
                                       "computing in bf16; it works for any file, fp8 or not."),
                io.Combo.Input("frames_per_chunk", options=FRAMES, default="auto",
                               tooltip="Latent frames generated per step of the video. auto reads the file (metadata "
                                       "or name); 3 for chunk-wise models (Self-Forcing), 1 for frame-wise ones."),
                io.Combo.Input("lora_name", options=[NO_LORA] + folder_paths.get_filename_list("loras"),
                               default=NO_LORA, optional=True,
                               tooltip="Optional LoRA merged into the weights at load (e.g. LongLive's lora.pt)."),
                io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05, optional=True,
                               tooltip="How strongly the LoRA is merged (1.0: as trained)."),
            ],
            outputs=[types.ARVideoModel.Output(display_name="ar_model",
                                               tooltip="The causal model for the Echo-Forcing Sampler (and the Scene "
                                                       "Memory Cache's budget_model).")],
        )

    @classmethod
    def validate_inputs(cls, weight_dtype: str = "auto", frames_per_chunk: str = "auto",
                        lora_strength: float = 1.0) -> bool | str:
        return checks.validation_message(checks.loader_inputs, weight_dtype, frames_per_chunk, lora_strength,
                                         DTYPES, FRAMES)

    @classmethod
    def execute(cls, model_name: str, weight_dtype: str, frames_per_chunk: str, lora_name: str = NO_LORA,
                lora_strength: float = 1.0) -> io.NodeOutput:
        fpc_choice = checks.loader_inputs(weight_dtype, frames_per_chunk, lora_strength, DTYPES, FRAMES) or None
        if not isinstance(model_name, str) or not model_name:
            raise NodeInputError("model_name", f"choose a model file, got {quote(model_name)}")
        if model_name == TOY_MODEL:
            return io.NodeOutput(_load_toy(weight_dtype, fpc_choice))
        path = folder_paths.get_full_path("diffusion_models", model_name)
        if path is None:
            raise NodeInputError("model_name", f"file {model_name!r} not found in the diffusion_models folders")
        lora_path = None
        if lora_name and lora_name != NO_LORA:
            lora_path = folder_paths.get_full_path("loras", lora_name)
            if lora_path is None:
                raise NodeInputError("lora_name", f"file {lora_name!r} not found in the loras folders")
        from echo_core.model.loading import load_causal_wan

        try:
            module, info = load_causal_wan(path, dtype=weight_dtype, device="cpu", lora_path=lora_path,
                                           lora_strength=lora_strength)
        except (ValueError, OSError, RuntimeError) as e:
            field = "lora_name" if lora_path is not None and str(lora_path) in str(e) else "model_name"
            raise NodeInputError(field, str(e)) from None
        fpc = fpc_choice or info.frames_per_chunk or 3
        return io.NodeOutput(ARModel(wrap_module(module), info.config, fpc, name=Path(path).name,
                                     layout=info.layout))


def _load_toy(weight_dtype: str, frames_per_chunk: int | None) -> ARModel:
    import copy

    import torch

    from echo_core.model.fp8_linear import quantize_blocks_fp8

    from .toy_model import toy_bundle

    toy = toy_bundle()
    module = copy.deepcopy(toy.model)  # our own copy: the patcher moves and casts it, the shared bundle stays as is
    if weight_dtype in ("bf16", "fp16", "fp8"):
        module = module.to(torch.float16 if weight_dtype == "fp16" else torch.bfloat16)
    if weight_dtype == "fp8":
        quantize_blocks_fp8(module, torch.bfloat16)
    return ARModel(wrap_module(module), module.cfg, frames_per_chunk or toy.frames_per_chunk,
                   latent_space=toy.latent_space, name=TOY_MODEL, layout="toy", shift=toy.sampler_config.shift,
                   spatial_compression=toy.width // toy.latent_shape[2], sampler=toy.sampler_config,
                   native_size=(toy.height, toy.width))
