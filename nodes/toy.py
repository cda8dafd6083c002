"""The bundled demo model's own text encoder, encoder and decoder, so the example workflows run without downloads.

The toy model samples in the latent space of a small linear codec (echo_core.toy.codec), not the Wan VAE's,
so its latents go through Echo Toy Decode instead of VAE Decode (and frames to continue from through Echo Toy
Encode instead of VAE Encode); its prompts use the toy grammar's words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from . import toy_model, types
from ._host import NodeInputError
from .toy_model import toy_bundle  # noqa: F401  (re-exported: callers and tests reach the bundle here)


@dataclass(frozen=True, eq=False)
class ToyPrompts:
    """Echo text encoder over the toy grammar's vocabulary."""

    encoder: Any

    def encode_prompts(self, prompts, strict: bool = True) -> list[torch.Tensor]:
        return [self.encoder.encode(p, strict=strict)[None] for p in prompts]


class EchoToyTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoToyTextEncoder",
            display_name="Echo Toy Text Encoder (demo)",
            category=types.CATEGORY + "/demo",
            description="Text encoder of the bundled demo model. Prompts use its small grammar, e.g. 'a red circle "
                        "bouncing on blue stripes'.",
            inputs=[],
            outputs=[types.TextEncoder.Output(display_name="text_encoder",
                                              tooltip="For Prompt Timeline's clip input (bundled demo model only).")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(ToyPrompts(toy_model.toy_bundle().text_encoder))


class EchoToyDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoToyDecode",
            display_name="Echo Toy Decode (demo)",
            category=types.CATEGORY + "/demo",
            description="Decodes the demo model's latents to frames (the counterpart of VAE Decode for it).",
            inputs=[io.Latent.Input("samples", tooltip="The Echo-Forcing Sampler's latent from the bundled demo "
                                                       "model.")],
            outputs=[io.Image.Output(display_name="images", tooltip="Video frames (4 per latent frame, the first "
                                                                    "alone), for Create Video or Save Image.")],
        )

    @classmethod
    def execute(cls, samples: dict) -> io.NodeOutput:
        toy = toy_model.toy_bundle()
        space = samples.get("echo_latent_space")
        if space != toy.latent_space:
            found = space or "no latent-space tag, e.g. from a Wan model"
            raise NodeInputError("samples", f"these latents are not the demo model's ({found}); decode Wan latents "
                                            "with VAE Decode")
        frames = toy.decode(samples["samples"][:1])  # [N, 3, H, W] in [0, 1]
        return io.NodeOutput(frames.permute(0, 2, 3, 1).contiguous().float())


class EchoToyEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoToyEncode",
            display_name="Echo Toy Encode (demo)",
            category=types.CATEGORY + "/demo",
            description="Encodes frames (a video to continue, or one image to start from) into the demo model's "
                        "latents for the sampler's start_latent (the counterpart of VAE Encode for it).",
            inputs=[io.Image.Input("images", tooltip="Frames to continue from: a video's frames or a single image. "
                                                     "Resized (centre crop) to the demo model's size.")],
            outputs=[io.Latent.Output(display_name="latent", tooltip="For the Echo-Forcing Sampler's start_latent "
                                                                     "(one latent frame per 4 video frames).")],
        )

    @classmethod
    def execute(cls, images: torch.Tensor) -> io.NodeOutput:
        import comfy.utils

        toy = toy_model.toy_bundle()
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3:
            raise NodeInputError("images", "expected IMAGE frames [N, H, W, 3]")
        frames = images[..., :3].movedim(-1, 1).float()  # [N, 3, H, W]
        if tuple(frames.shape[2:]) != (toy.height, toy.width):
            frames = comfy.utils.common_upscale(frames, toy.width, toy.height, "area", "center")
        # As Wan's causal VAE: latent frame i holds video frame 4i (frame 0 alone, then one per 4 frames).
        latents = toy.codec.encode_images(frames[::4].clamp(0, 1).cpu())  # [T, 16, h, w]
        return io.NodeOutput({"samples": latents.movedim(0, 1)[None].contiguous(),
                              "echo_latent_space": toy.latent_space})
