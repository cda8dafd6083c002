"""Echo-Forcing Sampler: chunk-by-chunk generation of a (multi-scene) video as a LATENT for VAE Decode.

Owns: model / timeline / memory wiring, seed, size, denoising steps (`auto`: what the model was made for), the
optional start latent, progress, the memory report, the timeline's fps (for Create Video)
and the run's finished scenes (for Save Scene Memory). The run itself (cache, routing, chunk loop) is
echo_core.run.start_run; every piece of run state is created inside one execute call and freed when it returns or
is interrupted.
"""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from comfy_api.latest import io

from echo_core.errors import EchoError
from echo_core.model.attention_backend import BACKENDS, check_name
from echo_core.run import start_run
from echo_core.session import MemorySpec, TimelineSpec, plan_run
from echo_core.steer_control import MAX_WAIT_SECONDS, WHEN_ENDS

from . import checks, steer_route, types
from ._host import (
    AUTO,
    WAN21,
    ChunkProgress,
    NodeInputError,
    free_memory,
    load_to_device,
    resolve_model,
    run_sampler,
    run_size,
    to_model_space,
    to_vae_space,
)
from .report import run_summary, summary_text
from .scenes import Scenes, run_scenes

MAX_SIZE = 4096
FRAMES = ["auto", "3 (chunk-wise)", "1 (frame-wise)"]


class EchoForcingSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoForcingSampler",
            display_name="Echo-Forcing Sampler",
            category=types.CATEGORY,
            description="Generates the timeline chunk by chunk with a causal Wan2.1 model and Echo-Forcing scene "
                        "memory. Output: a LATENT for VAE Decode (Wan 2.1 VAE) and a JSON memory report.",
            inputs=[
                io.MultiType.Input("model", [types.ARVideoModel, io.Model],
                                   tooltip="Load AR Video Model, or a stock Wan2.1 T2V MODEL (Load Diffusion Model, "
                                           "GGUF, fp8, LoRA loaders)."),
                types.Timeline.Input("timeline", tooltip="The scenes to generate: Prompt Timeline (or Recall Scene "
                                                         "after it)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed and settings give the same video."),
                io.Int.Input("width", default=AUTO, min=0, max=MAX_SIZE, step=16,
                             tooltip="Video width in pixels. 0 = auto: the model's native size (bundled demo model "
                                     "48, Wan2.1 832)."),
                io.Int.Input("height", default=AUTO, min=0, max=MAX_SIZE, step=16,
                             tooltip="Video height in pixels. 0 = auto: the model's native size (bundled demo model "
                                     "48, Wan2.1 480)."),
                io.Int.Input("steps", default=AUTO, min=0, max=50,
                             tooltip="Denoising steps per chunk. 0 = auto: the schedule the model was made for "
                                     "(bundled demo model: its own 12 steps; Wan: Self-Forcing's 4 steps 1000, 750, "
                                     "500, 250)."),
                types.Memory.Input("memory", optional=True,
                                   tooltip="Scene Memory Cache settings (default: Echo-Forcing, official values)."),
                io.Latent.Input("start_latent", optional=True,
                                tooltip="Frames to continue from (extend a video / start from an image): VAE Encode "
                                        "with the Wan 2.1 VAE, or Echo Toy Encode for the bundled demo model. They are "
                                        "written into the cache first and stay at the start of the output."),
                io.Combo.Input("frames_per_chunk", options=FRAMES, default="auto", optional=True,
                               tooltip="auto: what Load AR Video Model chose, or 3 for a stock MODEL. Frame-wise "
                                       "models (e.g. causal_forcing-framewise via Load Diffusion Model) need 1."),
                io.Combo.Input("when_timeline_ends", options=list(WHEN_ENDS), default="stop", optional=True,
                               tooltip="stop: the run ends with the timeline. wait: it waits (up to wait_seconds) "
                                       "for scenes added by live steering, then goes on."),
                io.Float.Input("wait_seconds", default=60.0, min=0.0, max=MAX_WAIT_SECONDS, step=1.0, optional=True,
                               tooltip="How long a run set to wait waits for another scene after the last one."),
                io.Combo.Input("attention", options=list(BACKENDS), default="auto", optional=True,
                               tooltip="Self-attention kernel: auto (flash_attn when installed and the inputs fit, "
                                       "else PyTorch SDPA), sdpa, sage or flash (an error when it cannot run)."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[
                io.Latent.Output(display_name="latent",
                                 tooltip="The video latent (start frames included): VAE Decode for Wan, Echo Toy "
                                         "Decode for the bundled demo model."),
                io.String.Output(display_name="memory_report",
                                 tooltip="JSON: per-chunk cache reports, peak cache, timings and the summary drawn "
                                         "on this node (machine-readable; e.g. Save Text or Preview Any)."),
                io.Float.Output(display_name="fps",
                                tooltip="The timeline's frames per second, for Create Video's fps."),
                Scenes.Output(display_name="scenes", tooltip="The finished scenes, for Save Scene Memory."),
            ],
        )

    @classmethod
    def validate_inputs(cls, frames_per_chunk: str = "auto", when_timeline_ends: str = "stop",
                        attention: str = "auto") -> bool | str:
        for name, value, options in (("when_timeline_ends", when_timeline_ends, WHEN_ENDS),
                                     ("attention", attention, BACKENDS)):
            if value not in options:
                return f"{name}: {value!r} is not one of {', '.join(options)}"
        return checks.validation_message(checks.frames_per_chunk, frames_per_chunk, FRAMES, 3)

    @classmethod
    def execute(cls, model, timeline: TimelineSpec, seed: int, width: int, height: int, steps: int,
                memory: MemorySpec | None = None, start_latent: dict | None = None,
                frames_per_chunk: str = "auto", when_timeline_ends: str = "stop", wait_seconds: float = 60.0,
                attention: str = "auto") -> io.NodeOutput:
        if not isinstance(timeline, TimelineSpec):
            raise NodeInputError("timeline", f"expected a Prompt Timeline output, got {type(timeline).__name__}")
        resolved = resolve_model(model)
        fpc = checks.frames_per_chunk(frames_per_chunk, FRAMES, resolved.frames_per_chunk)
        height, width = run_size(resolved, width, height)
        try:
            plan = plan_run(timeline, resolved.config, fpc, height, width, resolved.spatial_compression)
            sampler = replace(run_sampler(resolved, steps, fpc), attention=check_name(attention))
            steering = timeline.steering(when_ends=when_timeline_ends, wait_seconds=wait_seconds)
        except EchoError as e:
            raise checks.node_error(e) from None
        start = _start_latents(start_latent, plan.latent_shape, resolved.latent_space, resolved.spatial_compression)
        node = getattr(getattr(cls, "hidden", None), "unique_id", None)
        with torch.inference_mode():  # as ComfyUI's executor does; also covers direct calls (tests, scripts)
            chunks, report, scenes, device, final = _generate(resolved, timeline, memory or MemorySpec(), plan,
                                                              seed, sampler, start, steering, node)
        video = torch.cat(([start.cpu()] if start is not None else []) + chunks, dim=2)
        report["latent_shape"] = list(video.shape)
        report["start_frames"] = 0 if start is None else int(start.shape[2])
        summary = run_summary(report, final, device=str(device), size=(height, width),
                              steps=len(sampler.denoising_steps), fps=timeline.fps)
        report["summary"] = summary
        samples = to_vae_space(video, resolved.latent_space)
        latent = {"samples": samples}
        if resolved.latent_space != WAN21:  # lets a matching decode node check what it is given
            latent["echo_latent_space"] = resolved.latent_space
        return io.NodeOutput(latent, json.dumps(report), float(timeline.fps), scenes,
                             ui={"text": [summary_text(summary)], "echo_report": [summary],
                                 "echo_steering": [{"timeline": report["timeline_text"],
                                                    "edits": report["steering"]}]})


def _generate(resolved, timeline: TimelineSpec, memory: MemorySpec, plan, seed, sampler, start, steering, node):
    device = load_to_device(resolved.patcher)
    progress = ChunkProgress(plan.total_chunks, resolved.latent_space)
    steering.on_wait = progress.check_interrupt  # a run waiting for scenes still answers Cancel
    prompt_id, context_node = steer_route.executing_ids()
    node = node if node is not None else context_node
    steered = steer_route.SteeredRun(steering, None if node is None else str(node), timeline.node_id)
    chunks = []
    try:
        inputs = plan.inputs(timeline, seed=seed, sampler=sampler, device=device,
                             start_latents=None if start is None else start.to(device), steering=steering)
        run = start_run(resolved.model, memory.policy_for(plan.frames_per_chunk, timeline.routing), inputs,
                        on_step=progress.check_interrupt, on_layer=lambda *_: progress.check_interrupt())
    except EchoError as e:
        raise checks.node_error(e) from None
    try:
        with steer_route.registered(prompt_id, steered):  # steerable through the route while it runs
            for result in run:
                chunks.append(result.latents.cpu())
                progress.total = run.timeline.total_chunks  # steering may have lengthened or cut it
                progress.tick(len(chunks), result.latents)
                steer_route.send(steer_route.PROGRESS, steer_route.progress_message(prompt_id, steered))
    except EchoError as e:
        raise checks.node_error(e) from None
    finally:
        run.close()  # frees the cache even when an interrupt or error left the loop early
        free_memory()
    report = run.report()
    steer_route.send(steer_route.FINAL, steer_route.final_message(prompt_id, steered))
    scenes = run_scenes(run)  # the run's finished scenes (recall frames) for Save Scene Memory
    final = run.timeline
    del run
    return chunks, report, scenes, device, final


def _start_latents(latent: dict | None, shape: tuple[int, int, int], space: str,
                   compression: int = 8) -> torch.Tensor | None:
    if latent is None:
        return None
    samples = latent.get("samples") if isinstance(latent, dict) else None
    c, h, w = shape
    encoder = "VAE Encode with the Wan 2.1 VAE" if space == WAN21 else "Echo Toy Encode"
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5 or samples.shape[1] != c or \
            tuple(samples.shape[3:]) != (h, w):
        got = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise NodeInputError("start_latent", f"expected a video latent [B, {c}, F, {h}, {w}] matching width/height "
                                             f"{w * compression}x{h * compression} ({encoder}), got {got}")
    tagged = latent.get("echo_latent_space", WAN21)
    if tagged != space:
        raise NodeInputError("start_latent", f"these latents are in the {tagged} latent space, the model samples in "
                                             f"{space}; encode the frames with {encoder}")
    if samples.shape[0] != 1:
        raise NodeInputError("start_latent", f"one video at a time: the latent holds a batch of {samples.shape[0]}")
    return to_model_space(samples, space)
