"""The bundled demo model's own text encoder and decoder, so the example workflow runs without downloads.

The toy model samples in the latent space of a small linear codec (echo_core.toy.codec), not the Wan VAE's,
so its latents go through Echo Toy Decode instead of VAE Decode; its prompts use the toy grammar's words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from . import toy_model, types
from ._host import NodeInputError


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
            outputs=[types.TextEncoder.Output(display_name="text_encoder")],
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
            inputs=[io.Latent.Input("samples")],
            outputs=[io.Image.Output(display_name="images")],
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
