"""The toy model's sampler: Self-Forcing's chunk loop with the re-noise rules a plain flow-matching model needs.

The bundled model is trained by flow matching, not distilled, so besides Self-Forcing's fresh noise between
steps it can take Euler steps of the flow ODE (re-use the noise the model predicted), which is how such a model
samples multimodal layouts. These options belong to this model, not to the core sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from echo_core.sampler import SamplerConfig

RENOISE_MODES = ("fresh", "ode")


@dataclass(frozen=True)
class ToySamplerConfig(SamplerConfig):
    # "fresh": new noise between steps (Self-Forcing); "ode": the noise the model predicted (Euler steps).
    renoise: str = "fresh"
    eta: float = 0.0  # "ode" only: share of fresh noise mixed in (DDIM's eta; 0 = pure ODE, 1 = as "fresh")
    # "ode" only: re-noise to timesteps below this one with fresh noise. The ODE commits the layout at high noise;
    # fresh-noise steps at low noise pull an imperfect model's output back onto clean images (SDEdit-style).
    fresh_below: float = 0.0
    # Warm start (0 = off): a chunk that carries on the picture before it (not a scene's first chunk after a hard
    # cut or a recall) starts from the previous chunk's last frame, noised to the first timestep at or below this
    # one, and takes only the steps from there. This model continues a scene well from moderate noise but
    # poorly from pure noise, where its prediction blurs a moving object along its path (MODEL_CARD.md, session 8).
    warm_start: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.warm_start <= self.num_train_timesteps:
            raise ValueError(f"warm_start must lie in [0, {self.num_train_timesteps}], got {self.warm_start}")
        if self.warm_start and not any(t <= self.warm_start for t in self.timesteps()):
            raise ValueError(f"warm_start {self.warm_start:g} lies below every denoising step {self.timesteps()}")
        if self.renoise not in RENOISE_MODES:
            raise ValueError(f"renoise must be one of {', '.join(RENOISE_MODES)}, got {self.renoise!r}")
        if not 0 <= self.fresh_below <= self.num_train_timesteps:
            raise ValueError(f"fresh_below must lie in [0, {self.num_train_timesteps}], got {self.fresh_below}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {self.eta}")

    def renoise_target(self, x0: torch.Tensor, v: torch.Tensor, next_t: float,
                       draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.renoise == "fresh" or next_t < self.fresh_below:
            return draw()
        predicted = x0 + v  # the noise the model predicted: x_t = (1 - t) x0 + t * noise
        if self.eta > 0:
            return (1 - self.eta ** 2) ** 0.5 * predicted + self.eta * draw()
        return predicted

    def chunk_start(self, noise: torch.Tensor, previous: torch.Tensor | None,
                    continues: bool) -> tuple[torch.Tensor, list[float]]:
        steps = self.timesteps()
        if not self.warm_start or not continues or previous is None:
            return noise, steps
        steps = [t for t in steps if t <= self.warm_start]
        sigma = steps[0] / self.num_train_timesteps
        last = previous[:, :, -1:].to(noise.device, noise.dtype).expand_as(noise)
        return (1 - sigma) * last + sigma * noise, steps
