"""Run a timeline on the toy model and decode it as it streams: what the demo, the evaluation and the benchmark share.

Goes through the one entry into a run (`echo_core.run.start_run`), like the ComfyUI nodes: the timeline is parsed
and encoded once, the policy comes from a name, an EchoConfig, a factory or a MemorySpec, chunks are generated one
by one and each is decoded to frames as soon as it is finished (the codec keeps one latent frame of state), so
memory does not grow with the video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from echo_core.errors import SpecError
from echo_core.run import PolicyLike, Run, start_run
from echo_core.sampler import ChunkResult, SamplerConfig
from echo_core.session import MemorySpec, RunPlan, TimelineSpec, encode_timeline, plan_run
from echo_core.timeline import Timeline
from echo_core.toy.codec import PATCH
from echo_core.toy.grammar import parse_prompt
from echo_core.toy.loader import ToyBundle


def timeline_spec(bundle: ToyBundle, text: str, default_mode: str = "smooth") -> TimelineSpec:
    """Parse a timeline whose scene prompts follow the toy grammar (errors name the scene and the word)."""
    enc = bundle.text_encoder

    def encode(prompts: list[str]) -> list[torch.Tensor]:
        for i, prompt in enumerate(prompts):
            try:
                parse_prompt(prompt)
            except ValueError as e:
                raise SpecError("timeline", f"scene {i + 1}: {e}") from None
        return enc.encode_prompts(prompts)

    # Routing prompts (common words removed) are not sentences any more: encode their known words only.
    return encode_timeline(text, float(bundle.fps), default_mode, encode,
                           lambda prompts: enc.encode_prompts(prompts, strict=False))


@dataclass
class StreamedChunk:
    result: ChunkResult
    frames: torch.Tensor  # [n, 3, H, W] video frames this chunk completes
    first_frame: int  # index of frames[0] in the whole video


class ToyRun:
    """A run on the toy model whose chunks come decoded (`StreamedChunk`); `report()` as `Run.report`."""

    def __init__(self, bundle: ToyBundle, plan: RunPlan, run: Run) -> None:
        self.bundle, self.plan, self.run = bundle, plan, run

    @property
    def timeline(self) -> Timeline:
        return self.run.timeline  # as it now stands (steering amends the future)

    def __iter__(self) -> Iterator[StreamedChunk]:
        decoder = self.bundle.stream_decoder()
        produced = 0
        for result in self.run:
            frames = decoder.push(result.latents.cpu())
            yield StreamedChunk(result, frames, produced)
            produced += frames.shape[0]

    def close(self) -> None:
        self.run.close()

    def report(self) -> dict[str, Any]:
        return self.run.report()


def start_toy_run(bundle: ToyBundle, spec: TimelineSpec, *, policy: PolicyLike | MemorySpec = "echo", seed: int = 0,
                  sampler: SamplerConfig | None = None, noise: Any = None, steering: Any = None) -> ToyRun:
    """Open a run of `spec` on the toy model (nothing is generated until it is iterated)."""
    plan = plan_run(spec, bundle.model.cfg, bundle.frames_per_chunk, bundle.height, bundle.width,
                    spatial_compression=PATCH)
    if isinstance(policy, MemorySpec):
        policy = policy.policy_for(bundle.frames_per_chunk, spec.routing)
    inputs = plan.inputs(spec, seed=seed, sampler=sampler or bundle.sampler_config, steering=steering)
    return ToyRun(bundle, plan, start_run(bundle.model, policy, inputs, noise=noise))


def render_timeline(bundle: ToyBundle, text: str, *, policy: PolicyLike | MemorySpec = "echo", seed: int = 0,
                    default_mode: str = "smooth", sampler: SamplerConfig | None = None
                    ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Whole video [T, 3, H, W] of a timeline and its report (tests and evaluation; the demo streams instead)."""
    if isinstance(policy, str) and policy in ("echo", "rolling", "full"):
        policy = MemorySpec(policy=policy)  # the nodes' defaults, as a user gets them
    run = start_toy_run(bundle, timeline_spec(bundle, text, default_mode), policy=policy, seed=seed, sampler=sampler)
    with torch.inference_mode():
        frames = [c.frames for c in run]
    return torch.cat(frames), run.report()
