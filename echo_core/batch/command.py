"""`python -m echo_core batch --prompts FILE --out DIR [--workers N] [--ray ADDRESS|local]`: one full generation
per prompt line, in this process or on Ray, resumable (a rerun skips the lines whose outputs are complete).

Model options as in `generate` (`--checkpoint` / `--preset`); without them, the bundled toy model. Exit status:
0 every task succeeded, 1 some failed (see DIR/manifest.jsonl), 2 a user error, 130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from echo_core.batch.settings import CHECKPOINT, PRESETS, TOY, BatchSettings, checkpoint_model_id, toy_model_id
from echo_core.errors import EchoError, InputError
from echo_core.run import POLICY_NAMES
from echo_core.timeline import OFFICIAL_TOTAL_LATENT_FRAMES


def add_batch_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("batch", help="generate one video per prompt line (in-process or on Ray), resumable",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=Path, required=True, help="prompt file: one timeline per line (official syntax)")
    p.add_argument("--out", type=Path, required=True, help="output folder (manifest.jsonl, one folder per line)")
    p.add_argument("--ray", metavar="ADDRESS|local", default=None,
                   help="run on Ray: 'local' starts a cluster on this machine, an address joins one "
                        "(default: in this process, one task after the other)")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers, each loads the model once (default: one per GPU, or 1 without GPUs)")
    p.add_argument("--retries", type=int, default=2, help="retries of a task that crashes (default 2)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", type=Path, help="causal Wan DiT file (.safetensors / .pt), as for generate")
    src.add_argument("--preset", choices=PRESETS, help="random weights of a preset architecture, as for generate")
    p.add_argument("--weights", type=Path, default=None, help="toy model weights folder (default: bundled)")
    p.add_argument("--text-embeds", type=Path, help="folder of line-NNNN.safetensors (generate's --text-embeds "
                                                    "format, NNNN the 1-based line); required with --checkpoint")
    p.add_argument("--memory", choices=POLICY_NAMES, default="echo", help="KV-cache policy (default echo)")
    p.add_argument("--memory-config", type=Path, help="EchoConfig JSON (echo memory only)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each line's seed is derived from it and the line")
    p.add_argument("--width", type=int, default=None, help="video width in pixels (multiple of 16)")
    p.add_argument("--height", type=int, default=None, help="video height in pixels (multiple of 16)")
    p.add_argument("--frames-per-chunk", type=int, default=None, help="3 chunk-wise (default), 1 frame-wise")
    p.add_argument("--steps", default=None, help="denoising timesteps, comma separated (default: the model's)")
    p.add_argument("--total-latent-frames", type=int, default=OFFICIAL_TOTAL_LATENT_FRAMES,
                   help="length of a line whose scenes do not all have a duration, in latent frames")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--device", default="auto", help="auto (CUDA where a worker has a GPU), cpu, cuda, cuda:N")
    p.add_argument("--cpu-threads", type=int, default=1,
                   help="torch CPU threads per worker (default 1); CPU results depend on it, so it is kept per batch")
    p.add_argument("--scale", type=int, default=4, help="toy model: pixel upscaling of the MP4 (default 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_batch_command)
    return p


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    model = CHECKPOINT if args.checkpoint else args.preset or TOY
    if model == TOY:
        for flag, value in (("--width", args.width), ("--height", args.height),
                            ("--frames-per-chunk", args.frames_per_chunk), ("--text-embeds", args.text_embeds)):
            if value is not None:
                raise InputError(flag, "the bundled toy model has its own size, chunking and text encoder; "
                                       "give --checkpoint or --preset to set it")
        model_id = toy_model_id(str(args.weights) if args.weights else None)
    elif args.weights is not None:
        raise InputError("--weights", "is for the bundled toy model; a Wan model comes from --checkpoint or --preset")
    else:
        model_id = checkpoint_model_id(args.checkpoint) if model == CHECKPOINT else f"preset:{model}"
    if model == CHECKPOINT and args.text_embeds is None:
        raise InputError("--text-embeds", "required with --checkpoint: a folder of umT5 embeddings per line "
                                          "(line-0001.safetensors, ...); use --preset tiny-random for a smoke run")
    if args.text_embeds is not None and not args.text_embeds.is_dir():
        raise InputError("--text-embeds", f"not a folder: {args.text_embeds}")
    steps = None
    if args.steps is not None:
        from echo_core.sampler import SamplerConfig

        try:
            steps = tuple(float(s) for s in args.steps.split(","))
            SamplerConfig(denoising_steps=steps)
        except ValueError as e:
            raise InputError("--steps", str(e)) from None
    memory_config = None
    if args.memory_config is not None:
        if args.memory != "echo":
            raise InputError("--memory-config", f"an EchoConfig applies to --memory echo, not {args.memory}")
        from echo_core.config import EchoConfig

        try:
            memory_config = args.memory_config.read_text()
            EchoConfig.from_json(memory_config)
        except OSError as e:
            raise InputError("--memory-config", f"cannot read {args.memory_config}: {e.strerror}") from None
        except EchoError as e:
            raise e.relabel("--memory-config") from None
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value is not None and (value < 16 or value % 16):
            raise InputError(flag, f"must be a positive multiple of 16, got {value}")
    if args.frames_per_chunk is not None and args.frames_per_chunk < 1:
        raise InputError("--frames-per-chunk", f"must be >= 1, got {args.frames_per_chunk}")
    if args.cpu_threads < 1:
        raise InputError("--cpu-threads", f"must be >= 1, got {args.cpu_threads}")
    if not 1 <= args.scale <= 16:
        raise InputError("--scale", f"must be between 1 and 16, got {args.scale}")
    if args.device != "auto" and args.device != "cpu" and not args.device.startswith("cuda"):
        raise InputError("--device", f"auto, cpu, cuda or cuda:N, got {args.device!r}")
    return BatchSettings(
        model=model, model_id=model_id, checkpoint=str(args.checkpoint.resolve()) if args.checkpoint else None,
        weights=str(args.weights.resolve()) if args.weights else None,
        text_embeds=str(args.text_embeds.resolve()) if args.text_embeds else None, memory=args.memory,
        memory_config=memory_config, steps=steps, height=args.height, width=args.width,
        frames_per_chunk=args.frames_per_chunk, dtype=args.dtype, device=args.device,
        total_latent_frames=args.total_latent_frames, video_scale=args.scale, cpu_threads=args.cpu_threads,
        base_seed=args.seed)


def run_batch_command(args: argparse.Namespace) -> dict[str, Any]:
    from echo_core.batch.driver import InProcessPool, run_batch
    from echo_core.batch.tasks import read_prompt_file
    from echo_core.batch.worker import FAULTS_ENV, parse_faults

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers", f"must be >= 1, got {args.workers}")
    if args.ray is None and (args.workers or 1) > 1:
        raise InputError("--workers", "more than one worker needs Ray: add --ray local (this machine) or --ray ADDRESS")
    if args.retries < 0:
        raise InputError("--retries", f"must be >= 0, got {args.retries}")
    faults = os.environ.get(FAULTS_ENV, "")
    parse_faults(faults)
    settings = settings_from_args(args)
    tasks = read_prompt_file(args.prompts, args.seed)

    def make_pool(tasks_to_run: int) -> Any:
        if args.ray is None:
            return InProcessPool(settings, faults)
        from echo_core.batch.ray_pool import RayPool

        return RayPool(settings, faults, address=args.ray, workers=args.workers, max_workers=tasks_to_run)

    summary = run_batch(settings, tasks, args.out, make_pool, retries=args.retries, progress=not args.no_progress)
    print(json.dumps(summary.to_dict()))
    if summary.interrupted:
        raise SystemExit(130)  # rerun the same command to resume
    if summary.failed:
        raise SystemExit(1)
    return summary.to_dict()
