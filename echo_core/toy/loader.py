"""Load the bundled toy model: DiT, codec, text encoder and the sampler settings it was tuned for.

`load_toy_model()` reads echo_core/toy/weights/ (written by `python -m echo_core.toy.train --out ...`); the DiT
file uses Wan key names, so `echo_core.model.loading.load_causal_wan` (and the ComfyUI loader node) read it like
any causal Wan checkpoint. Two models ship (`BUNDLED_MODELS`): the demo's, trained on Echo-Forcing's cache layouts
too, and one trained only as Self-Forcing is, the subject of the benchmark's training-free test.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from echo_core.model.wan import CausalWanModel
from echo_core.toy.codec import CHANNELS, PATCH, StreamDecoder, ToyCodec
from echo_core.toy.sampling import ToySamplerConfig
from echo_core.toy.text import ToyTextEncoder

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # layout-aware: the demo's and the nodes' model
TRAINING_FREE_DIR = Path(__file__).resolve().parent / "weights_training_free"  # never shown Echo's layouts
# Row sets of bench/memory_quality.py, main subject first: Echo-Forcing claims to need no training.
BUNDLED_MODELS: dict[str, Path] = {"training-free": TRAINING_FREE_DIR, "layout-aware": WEIGHTS_DIR}
DIT_FILE = "toy_dit.safetensors"
ASSETS_FILE = "toy_assets.safetensors"
LATENT_SPACE = "echo-toy"  # latents of ToyCodec (not decodable by the Wan VAE)

# The project's Self-Forcing sampler (fresh noise between steps). The first step, at t = 1000, commits to the
# scene's layout (a new scene reads its details from that step's noise, see data.py); the next steps start at
# half noise, where that layout is plainly visible, and sharpen it.
SAMPLER = ToySamplerConfig(denoising_steps=(1000.0, 500.0, 300.0, 150.0, 60.0), warp_denoising_step=False,
                        shift=2.0, frames_per_chunk=3)


@dataclass
class ToyBundle:
    model: CausalWanModel
    codec: ToyCodec
    text_encoder: ToyTextEncoder
    sampler_config: ToySamplerConfig
    height: int = 48
    width: int = 48
    fps: int = 16
    frames_per_chunk: int = 3
    latent_space: str = LATENT_SPACE
    world: str = "v1"  # the toy world the weights draw (grammar.WORLDS); weights before world v2 say nothing
    data_mode: str = "layouts"  # what they were trained on (data.MODE_KINDS); older weights: Echo's layouts too

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one latent frame, as `sampler.generate` takes it."""
        return CHANNELS, self.height // PATCH, self.width // PATCH

    @property
    def patch(self) -> tuple[int, int]:
        return tuple(self.model.cfg.patch_size[1:])  # type: ignore[return-value]

    def with_sampler(self, **settings) -> "ToyBundle":
        """The same model sampled with some settings changed (ValueError names a setting out of range)."""
        return replace(self, sampler_config=replace(self.sampler_config, **settings))

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self.codec)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [1, 16, F, h, w] -> video [4F-3, 3, H, W] in [0, 1]."""
        return self.codec.decode_video(latents.float().cpu())


def load_toy_model(weights_dir: str | Path | None = None, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> ToyBundle:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from echo_core.model.loading import load_causal_wan

    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_DIR
    missing = [n for n in (DIT_FILE, ASSETS_FILE) if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"toy model weights not found: {', '.join(str(folder / n) for n in missing)}; "
                                f"train them with `python -m echo_core.toy.train --out {folder}`")
    model, info = load_causal_wan(folder / DIT_FILE, dtype=dtype, device=device)
    assets = load_file(str(folder / ASSETS_FILE))
    with safe_open(str(folder / ASSETS_FILE), framework="pt") as f:
        meta = dict(f.metadata() or {})
    codec = ToyCodec.from_state_dict(assets)
    text = ToyTextEncoder.from_state_dict(assets, meta)
    if text.text_dim != model.cfg.text_dim:
        raise ValueError(f"toy text encoder gives {text.text_dim}-dim rows but the DiT expects {model.cfg.text_dim}; "
                         f"the files in {folder} come from different training runs")
    import json

    height, width = json.loads(meta.get("toy.resolution", "[48, 48]"))
    settings = info.metadata.get("toy.sampler")  # the sampler the weights were trained for (train.sampler_for)
    sampler = SAMPLER
    if settings:
        raw = json.loads(settings)
        sampler = ToySamplerConfig(**{**raw, "denoising_steps": tuple(raw["denoising_steps"])})
    return ToyBundle(model.eval(), codec, text, sampler, height=int(height), width=int(width),
                     fps=int(meta.get("toy.fps", "16")), world=info.metadata.get("toy.world", "v1"),
                     data_mode=info.metadata.get("toy.data_mode", "layouts"))
