"""Run a timeline on the toy model and decode it as it streams: what the demo, the evaluation and the benchmark share.

Uses the same front door as the ComfyUI nodes (`echo_core.session`): the timeline is parsed and encoded once, the
memory policy is built from a MemorySpec, chunks are generated one by one and each is decoded to frames as soon as
it is finished (the codec keeps one latent frame of state), so memory does not grow with the video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from echo_core.sampler import ChunkResult, SamplerConfig
from echo_core.session import MemorySpec, RunPlan, TimelineSpec, encode_timeline, memory_report, plan_run, run_session
from echo_core.toy.codec import PATCH
from echo_core.toy.grammar import parse_prompt
from echo_core.toy.loader import ToyBundle


def timeline_spec(bundle: ToyBundle, text: str, default_mode: str = "smooth") -> TimelineSpec:
    """Parse a timeline whose scene prompts follow the toy grammar (errors name the scene and the word)."""
    spec = TimelineSpec(text, float(bundle.fps), default_mode)
    for i, scene in enumerate(spec.parse(bundle.frames_per_chunk).scenes):
        try:
            parse_prompt(scene.prompt)
        except ValueError as e:
            raise ValueError(f"timeline scene {i + 1}: {e}") from None
    # Routing prompts (common words removed) are not sentences any more: encode their known words only.
    enc = bundle.text_encoder
    return encode_timeline(text, float(bundle.fps), default_mode, enc.encode_prompts,
                           lambda prompts: enc.encode_prompts(prompts, strict=False))


@dataclass
class StreamedChunk:
    result: ChunkResult
    frames: torch.Tensor  # [n, 3, H, W] video frames this chunk completes
    first_frame: int  # index of frames[0] in the whole video


@dataclass
class RunSummary:
    plan: RunPlan
    reports: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def memory(self, memory: MemorySpec) -> dict[str, Any]:
        return memory_report(self.reports, self.plan, memory)


def stream_timeline(bundle: ToyBundle, spec: TimelineSpec, *, memory: MemorySpec | None = None, seed: int = 0,
                    sampler: SamplerConfig | None = None, summary: RunSummary | None = None
                    ) -> Iterator[StreamedChunk]:
    """Yield every chunk with its decoded frames. Pass a RunSummary to collect the per-chunk reports."""
    cfg = bundle.model.cfg
    plan = plan_run(spec, cfg, bundle.frames_per_chunk, bundle.height, bundle.width, spatial_compression=PATCH)
    if summary is not None:
        summary.plan = plan
    decoder = bundle.stream_decoder()
    produced = 0
    t0 = time.perf_counter()
    for result in run_session(bundle.model, cfg, spec, memory or MemorySpec(), plan, seed=seed,
                              sampler=sampler or bundle.sampler_config):
        frames = decoder.push(result.latents.cpu())
        if summary is not None:
            summary.reports.append(result.report)
            summary.wall_s = time.perf_counter() - t0
        yield StreamedChunk(result, frames, produced)
        produced += frames.shape[0]


def render_timeline(bundle: ToyBundle, text: str, *, policy: str = "echo", seed: int = 0,
                    default_mode: str = "smooth", sampler: SamplerConfig | None = None,
                    memory: MemorySpec | None = None) -> tuple[torch.Tensor, RunSummary]:
    """Whole video [T, 3, H, W] of a timeline (for tests and evaluation; the demo streams instead)."""
    spec = timeline_spec(bundle, text, default_mode)
    summary = RunSummary(plan=None)  # type: ignore[arg-type]
    frames = [c.frames for c in stream_timeline(bundle, spec, memory=memory or MemorySpec(policy=policy),
                                                 seed=seed, sampler=sampler, summary=summary)]
    return torch.cat(frames), summary
