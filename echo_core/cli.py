"""`python -m echo_core generate ...`: chunked long-video generation from the command line (no ComfyUI)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from echo_core.errors import EchoError, InputError
from echo_core.model.config import get_preset
from echo_core.run import POLICY_NAMES, PolicyLike, RunInputs, start_run
from echo_core.safetensors_out import write_safetensors
from echo_core.sampler import SamplerConfig
from echo_core.scenes_cli import add_scene_flags, add_scenes_parser, scene_options
from echo_core.text_standin import standin_embedding
from echo_core.timeline import OFFICIAL_TOTAL_LATENT_FRAMES, Timeline, TimelineError, parse_timeline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CliError(InputError):
    """A user error on the command line: printed as one line, exit code 2. `field` is the flag."""


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate a (multi-scene) latent video")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="causal Wan DiT file (.safetensors / .pt)")
    src.add_argument("--preset", choices=["tiny-random", "1.3b-random"],
                     help="random weights of a preset architecture (smoke runs, no download)")
    text = p.add_mutually_exclusive_group(required=True)
    text.add_argument("--prompt", help="one prompt for the whole video")
    text.add_argument("--timeline", help="scene timeline, e.g. 'a cat[10s] | a dog[8s#] | the cat again[10s@]'")
    text.add_argument("--timeline-file", type=Path, help="file whose first line is a timeline")
    p.add_argument("--seconds", type=float, default=None, help="video length for --prompt (default 10)")
    p.add_argument("--total-latent-frames", type=int, default=OFFICIAL_TOTAL_LATENT_FRAMES,
                   help="length of a timeline whose scenes do not all have a duration, in latent frames "
                        f"(official default {OFFICIAL_TOTAL_LATENT_FRAMES})")
    p.add_argument("--text-embeds", type=Path,
                   help="safetensors with 'context' [L, text_dim] (all scenes) or 'context.0', 'context.1', ...")
    p.add_argument("--memory", choices=POLICY_NAMES, default="echo", help="KV-cache policy (default echo)")
    p.add_argument("--memory-config", type=Path, help="EchoConfig JSON (echo memory only; routing included)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None, help="video width in pixels (multiple of 16)")
    p.add_argument("--height", type=int, default=None, help="video height in pixels (multiple of 16)")
    p.add_argument("--frames-per-chunk", type=int, default=None, help="3 chunk-wise (default), 1 frame-wise")
    p.add_argument("--steps", default="1000,750,500,250", help="denoising timesteps, comma separated")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True, help="output latents (.safetensors)")
    p.add_argument("--report", type=Path, help="per-chunk JSON report")
    add_scene_flags(p)  # --scene-library, --scenes, --save-scenes, --scene-names (echo_core/scenes_cli.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m echo_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    add_scenes_parser(sub)  # `scenes list|show|save`
    try:
        from echo_core.toy.demo import add_demo_parser
    except ImportError:  # the demo ships with the bundled toy model
        pass
    else:
        add_demo_parser(sub)
    return parser


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, int | None]:
    dtype = DTYPES[args.dtype]
    if args.preset:
        from echo_core.model.wan import CausalWanModel

        cfg = get_preset("tiny" if args.preset == "tiny-random" else "wan2.1-t2v-1.3b")
        torch.manual_seed(0)
        return CausalWanModel(cfg).to(device=args.device, dtype=dtype).eval(), cfg, None
    if not args.checkpoint.exists():
        raise CliError("--checkpoint", f"file not found: {args.checkpoint}")
    from echo_core.model.loading import load_causal_wan

    model, info = load_causal_wan(args.checkpoint, dtype=dtype, device=args.device)
    return model.eval(), info.config, info.frames_per_chunk


def _timeline(args: argparse.Namespace, fpc: int) -> Timeline:
    if args.prompt is not None:
        if "[" in args.prompt or "|" in args.prompt:
            raise CliError("--prompt", "one plain prompt; use --timeline for scenes with [10s] tags and '|'")
        text = f"{args.prompt}[{args.seconds if args.seconds is not None else 10}s]"
    elif args.timeline is not None:
        text = args.timeline
    else:
        if not args.timeline_file.exists():
            raise CliError("--timeline-file", f"file not found: {args.timeline_file}")
        text = args.timeline_file.read_text().strip().splitlines()[0]
    try:
        return parse_timeline(text, frames_per_chunk=fpc, total_latent_frames=args.total_latent_frames)
    except TimelineError as exc:
        raise exc.relabel("--total-latent-frames" if exc.field == "total_latent_frames" else "timeline") from None


def _contexts(args: argparse.Namespace, timeline: Timeline, cfg: Any) -> list[torch.Tensor]:
    if args.text_embeds is None:
        if not args.preset:
            raise CliError("--text-embeds", "required with --checkpoint (umT5 embeddings; the standalone CLI does not "
                                            "run the 5.7B text encoder). Use --preset tiny-random for a smoke run.")
        return [standin_embedding(s.prompt, cfg.text_dim, cfg.text_len) for s in timeline.scenes]
    from safetensors.torch import load_file

    tensors = load_file(str(args.text_embeds))
    n = len(timeline.scenes)
    if "context" in tensors:
        found = [tensors["context"]] * n
    else:
        missing = [f"context.{i}" for i in range(n) if f"context.{i}" not in tensors]
        if missing:
            raise CliError("--text-embeds", f"needs 'context' or one tensor per scene; missing {', '.join(missing)}")
        found = [tensors[f"context.{i}"] for i in range(n)]
    out = []
    for i, t in enumerate(found):
        t = t[None] if t.ndim == 2 else t
        if t.ndim != 3 or t.shape[0] != 1 or t.shape[-1] != cfg.text_dim:
            raise CliError("--text-embeds", f"scene {i + 1} embedding has shape {tuple(t.shape)}, "
                                            f"expected [L, {cfg.text_dim}] or [1, L, {cfg.text_dim}]")
        out.append(t.float())
    return out


def _policy(args: argparse.Namespace) -> PolicyLike:
    if args.memory_config is None:
        return args.memory
    if args.memory != "echo":
        raise CliError("--memory-config", f"an EchoConfig applies to --memory echo, not {args.memory}")
    from echo_core.config import EchoConfig

    try:
        text = args.memory_config.read_text()
    except OSError as e:
        raise CliError("--memory-config", f"cannot read {args.memory_config}: {e.strerror}") from None
    return EchoConfig.from_json(text)


def _routing_features(args: argparse.Namespace, contexts: Sequence[torch.Tensor], cfg: Any) -> Any:
    """Similarity-routing features (spec §7). The official mode re-encodes the prompts with common words removed;
    with the stand-in encoder we do the same, with precomputed embeddings we can only pool each scene's own."""
    if args.preset:
        return lambda texts: [standin_embedding(t, cfg.text_dim, 64)[0] for t in texts]
    return tuple(contexts)


def run_generate(args: argparse.Namespace) -> dict[str, Any]:
    policy = _policy(args)
    model, cfg, file_fpc = _load_model(args)
    fpc = args.frames_per_chunk or file_fpc or 3
    timeline = _timeline(args, fpc)
    default_px = (64, 64) if args.preset == "tiny-random" else (480, 832)
    height, width = args.height or default_px[0], args.width or default_px[1]
    if height % 16 or width % 16:
        raise CliError("--height" if height % 16 else "--width", f"must be a multiple of 16, got {width}x{height}")
    try:
        steps = tuple(float(s) for s in args.steps.split(","))
        sampler_cfg = SamplerConfig(denoising_steps=steps, frames_per_chunk=fpc)
    except ValueError as exc:
        raise CliError("--steps", str(exc)) from None
    contexts = _contexts(args, timeline, cfg)
    scenes = scene_options(args, timeline)  # saved scenes loaded, save folder checked: before the run
    inputs = RunInputs(timeline, tuple(contexts), (cfg.in_dim, height // 8, width // 8), seed=args.seed,
                       sampler=sampler_cfg, patch=tuple(cfg.patch_size[1:]),
                       routing_features=_routing_features(args, contexts, cfg), device=args.device,
                       saved_scenes=scenes.scenes)
    run = start_run(model, policy, inputs)
    latents = []
    try:
        for res in run:
            latents.append(res.latents.cpu())
            print(f"chunk {res.index + 1}/{timeline.total_chunks} scene {res.report['scene'] + 1} "
                  f"{res.report['wall_s']:.2f}s cache {res.report['cache_tokens']} tokens", file=sys.stderr)
    finally:
        run.close()
    video = torch.cat(latents, dim=2)
    _save_latents(args.out, video, timeline, args)
    report = run.report()
    summary = {"out": str(args.out), "latent_shape": list(video.shape), "chunks": len(latents),
               "timeline": timeline.to_dict(), "memory": report["policy"], "seed": args.seed,
               "scenes": report["scenes"], "chunk_reports": report["chunk_reports"],
               "saved_scenes": scenes.save(run)}
    if args.report:
        _write_atomic(args.report, json.dumps(summary, indent=1, default=str))
    return summary


def _save_latents(path: Path, video: torch.Tensor, timeline: Timeline, args: argparse.Namespace) -> None:
    meta = {"timeline": json.dumps(timeline.to_dict()), "seed": str(args.seed), "memory": args.memory,
            "format": "latents [B, C, F, H, W], Wan2.1 model space (decode with the Wan 2.1 VAE)"}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, {"latents": video}, meta)  # sorted header: same seed, same bytes; atomic


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            summary = run_generate(args)
            print(json.dumps({k: v for k, v in summary.items() if k not in ("chunk_reports", "timeline")}))
        else:
            args.handler(args)
    except EchoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
