"""One batch worker: the model loaded once, then one full generation per task through `echo_core.run.start_run`.

The same class runs in the driver's process (no `--ray`) and as a Ray actor. It writes nothing to the batch folder:
it returns the latents, the encoded video and the memory report to the driver, which writes them. Every failure is
returned as a `TaskResult`, not raised, so the driver treats in-process and Ray workers alike; only a worker that
dies (a killed process, a lost node) surfaces as a Ray error.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from echo_core.batch.settings import BatchSettings, resolve_device, text_embeds_file
from echo_core.batch.tasks import BatchTask
from echo_core.errors import EchoError, InputError

# Test hook: "LINE:KIND[:N],...": KIND "raise" (an exception) or "exit" (the worker process dies) on the first N
# attempts of line LINE (all attempts when N is omitted). Read by the driver and handed to every worker.
FAULTS_ENV = "ECHO_BATCH_FAULTS"
FFMPEG_PARAMS = ["-threads", "1"]  # x264 output depends on its thread count: fixed, same bytes on any machine


@dataclass
class TaskResult:
    line: int
    attempt: int
    ok: bool
    error: str | None = None
    retryable: bool = False  # a crash may pass on a retry; a user error (EchoError) never does
    latents: torch.Tensor | None = None  # [1, C, F, H, W] float32, CPU
    video: bytes | None = None  # MP4, where the model has a decoder
    report: dict[str, Any] | None = None  # the run's memory report (echo_core.run.memory_report)
    timeline: dict[str, Any] | None = None
    seconds: float = 0.0
    peak_bytes: int = 0  # most bytes the KV cache and the scene pool held at once
    peak_device_bytes: int | None = None  # torch.cuda.max_memory_allocated on a CUDA worker
    device: str = ""
    worker: str = ""


class BatchWorker:
    def __init__(self, settings: BatchSettings, faults: str = "") -> None:
        self.settings = settings
        self.faults = parse_faults(faults)
        torch.set_num_threads(settings.cpu_threads)  # part of the settings: the result depends on it on CPU
        self.device = "cpu" if settings.is_toy else resolve_device(settings.device)  # the toy model runs on CPU
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.load_error: EchoError | None = None
        try:
            self.backend: ToyBackend | WanBackend = (ToyBackend(settings) if settings.is_toy
                                                     else WanBackend(settings, self.device))
        except EchoError as e:  # a bad setting: kept for ready(), since Ray cannot carry an EchoError across
            self.load_error = e

    def ready(self) -> dict[str, Any]:
        """Answers once the model is loaded: the worker's name, and the user error that stopped the load."""
        e = self.load_error
        return {"worker": f"{self.name} on {self.device}", "error": None if e is None else [e.field, e.detail]}

    def run(self, task: BatchTask, attempt: int = 1) -> TaskResult:
        t0 = time.perf_counter()
        base = TaskResult(task.line, attempt, False, device=self.device, worker=self.name)
        cuda = self.device.startswith("cuda")
        if self.load_error is not None:
            return replace(base, error=str(self.load_error))
        try:
            self._inject_fault(task.line, attempt)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            latents, video, report, timeline = self.backend.generate(task)
        except EchoError as e:
            return replace(base, error=str(e), seconds=time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - recorded in the manifest; the driver decides on a retry
            if cuda:
                torch.cuda.empty_cache()
            where = traceback.extract_tb(e.__traceback__)[-1]
            error = f"{type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno})"
            return replace(base, error=error, retryable=True, seconds=time.perf_counter() - t0)
        chunks = report.get("chunk_reports", [])
        peak = max((int(r.get("cache_bytes", 0)) + int(r.get("pool_bytes", 0)) for r in chunks), default=0)
        return replace(base, ok=True, latents=latents, video=video, report=report, timeline=timeline,
                       seconds=time.perf_counter() - t0, peak_bytes=peak,
                       peak_device_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None)

    def _inject_fault(self, line: int, attempt: int) -> None:
        kind, attempts = self.faults.get(line, (None, 0))
        if kind is None or (attempts and attempt > attempts):
            return
        if kind == "exit":
            os._exit(13)  # as if killed: no cleanup, no result
        raise RuntimeError(f"injected fault on line {line}, attempt {attempt} ({FAULTS_ENV})")


def parse_faults(spec: str) -> dict[int, tuple[str, int]]:
    faults = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[1] not in ("raise", "exit") or not parts[0].isdigit():
            raise InputError(FAULTS_ENV, f"{item!r}: write LINE:raise|exit[:ATTEMPTS]")
        faults[int(parts[0])] = (parts[1], int(parts[2]) if len(parts) == 3 else 0)
    return faults


def _policy(settings: BatchSettings, default: Any) -> Any:
    if settings.memory_config is not None:
        from echo_core.config import EchoConfig

        return EchoConfig.from_json(settings.memory_config)
    return default


class ToyBackend:
    """The bundled demo model: its own text encoder, and a codec that decodes latents to frames (written as MP4)."""

    def __init__(self, settings: BatchSettings) -> None:
        from echo_core.cli import DTYPES
        from echo_core.session import POLICIES, MemorySpec
        from echo_core.toy.loader import load_toy_model

        self.settings = settings
        try:
            self.bundle = load_toy_model(settings.weights, dtype=DTYPES[settings.dtype])
        except (FileNotFoundError, ValueError) as e:
            raise InputError("--weights", str(e)) from None
        sampler = self.bundle.sampler_config
        self.sampler = sampler if settings.steps is None else replace(sampler, denoising_steps=settings.steps)
        # As the demo: the nodes' memory settings for a name they know, the name itself otherwise (flush)
        self.policy = _policy(settings, MemorySpec(policy=settings.memory) if settings.memory in POLICIES
                              else settings.memory)

    def generate(self, task: BatchTask) -> tuple[torch.Tensor, bytes, dict[str, Any], dict[str, Any]]:
        import imageio.v2 as imageio

        from echo_core.toy.demo import _upscale
        from echo_core.toy.run import start_toy_run, timeline_spec

        spec = timeline_spec(self.bundle, task.text)
        run = start_toy_run(self.bundle, spec, policy=self.policy, seed=task.seed, sampler=self.sampler)
        latents = []
        with tempfile.TemporaryDirectory(prefix="echo-batch-") as tmp:
            path = Path(tmp) / "video.mp4"
            writer = imageio.get_writer(str(path), fps=self.bundle.fps, codec="libx264", quality=8,
                                        macro_block_size=8, ffmpeg_log_level="error", ffmpeg_params=FFMPEG_PARAMS)
            try:
                with torch.inference_mode():
                    for chunk in run:
                        latents.append(chunk.result.latents.cpu())
                        for frame in _upscale(chunk.frames, self.settings.video_scale):
                            writer.append_data(frame)
            finally:
                run.close()
                writer.close()
            video = path.read_bytes()
        return torch.cat(latents, dim=2), video, run.report(), run.timeline.to_dict()


class WanBackend:
    """A Wan checkpoint or preset, as `generate` builds it (the CLI's own helpers): latents and report, no video."""

    def __init__(self, settings: BatchSettings, device: str) -> None:
        from echo_core import cli
        from echo_core.sampler import SamplerConfig

        self.settings = settings
        ns = argparse.Namespace(preset=settings.model if settings.model != "checkpoint" else None,
                                checkpoint=Path(settings.checkpoint) if settings.checkpoint else None,
                                dtype=settings.dtype, device=device)
        self.model, self.cfg, file_fpc = cli._load_model(ns)
        self.fpc = settings.frames_per_chunk or file_fpc or 3
        default_px = (64, 64) if settings.model == "tiny-random" else (480, 832)
        self.height, self.width = settings.height or default_px[0], settings.width or default_px[1]
        if self.height % 16 or self.width % 16:
            raise InputError("--height" if self.height % 16 else "--width",
                             f"must be a multiple of 16, got {self.width}x{self.height}")
        try:
            steps = {} if settings.steps is None else {"denoising_steps": settings.steps}
            self.sampler = SamplerConfig(frames_per_chunk=self.fpc, **steps)
        except ValueError as e:
            raise InputError("--steps", str(e)) from None
        self.policy = _policy(settings, settings.memory)
        self.device = device

    def generate(self, task: BatchTask) -> tuple[torch.Tensor, None, dict[str, Any], dict[str, Any]]:
        from echo_core import cli
        from echo_core.run import RunInputs, start_run
        from echo_core.timeline import TimelineError, parse_timeline

        s = self.settings
        try:
            timeline = parse_timeline(task.text, frames_per_chunk=self.fpc, total_latent_frames=s.total_latent_frames)
        except TimelineError as e:
            raise e.relabel("--total-latent-frames" if e.field == "total_latent_frames" else "timeline") from None
        ns = argparse.Namespace(preset=s.model != "checkpoint", text_embeds=text_embeds_file(s, task.line))
        if ns.text_embeds is not None and not ns.text_embeds.is_file():
            raise InputError("--text-embeds", f"no embeddings for line {task.line}: {ns.text_embeds} not found")
        contexts = cli._contexts(ns, timeline, self.cfg)  # generate's reading and checks of --text-embeds files
        inputs = RunInputs(timeline, tuple(contexts), (self.cfg.in_dim, self.height // 8, self.width // 8),
                           seed=task.seed, sampler=self.sampler, patch=tuple(self.cfg.patch_size[1:]),
                           routing_features=cli._routing_features(ns, contexts, self.cfg), device=self.device)
        latents, report = start_run(self.model, self.policy, inputs).collect()
        return latents, None, report, timeline.to_dict()
