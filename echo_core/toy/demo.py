"""`python -m echo_core demo --out demo.mp4`: the main job out of the box, on the bundled toy model.

Renders a 30-second, 4-segment timeline over 3 scenes - a smooth transition (same scene, new motion), a hard cut
to a new scene, then a recall of the first scene - with Echo-Forcing memory, decoding each chunk as soon as it
is generated. Writes the MP4, a PNG contact sheet with scene boundaries and transition modes marked, and
prints the memory report.

The scene library: `--save-scenes DIR` saves the demo's scenes (named demo-1 ... demo-4); `--sequel --scene-library
DIR` renders a second video that opens on the saved first scene ([@demo-1]), cuts to a new place and recalls the
saved third scene by name (@demo-3), days later as far as the model is concerned:

    python -m echo_core demo --save-scenes out/scenes
    python -m echo_core demo --sequel --scene-library out/scenes --out out/sequel.mp4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

DEMO_TIMELINE = (
    "a red circle moving right on a blue striped background [8s]"
    " | a red circle bouncing on a blue striped background [7s#]"
    " | a yellow triangle moving up and a white square standing still on a green checkered background [7s@]"
    " | a red circle moving right on a blue striped background [8s]"
)
# The second demo timeline: starts with a recall of the first demo's saved scene 1, ends on its saved scene 3.
DEMO_SEQUEL_TIMELINE = (
    "[@demo-1] a red circle bouncing on a blue striped background [8s#]"
    " | a white square moving left on an orange dotted background [7s@demo-3]"
    " | a yellow triangle moving up and a white square standing still on a green checkered background [7s]"
)


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="render the bundled toy model's multi-scene demo to an MP4",
                              description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("demo.mp4"), help="output MP4 (default demo.mp4)")
    p.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG (default: next to --out)")
    p.add_argument("--timeline", default=DEMO_TIMELINE,
                   help="timeline in the toy grammar, e.g. 'a red circle moving right on a blue background [10s]"
                        " | ... [10s#]' (default: the bundled 30 s demo)")
    p.add_argument("--memory", choices=["echo", "rolling", "full"], default="echo", help="KV-cache policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    p.add_argument("--scale", type=int, default=4, help="pixel upscaling of the written video (default 4)")
    p.add_argument("--weights", type=Path, default=None, help="toy weights folder (default: bundled)")
    p.add_argument("--report", type=Path, default=None, help="write the full memory report as JSON here")
    p.add_argument("--latents", type=Path, default=None,
                   help="also save the demo's latents [1, C, F, H, W] here (.safetensors), e.g. to compare runs")
    from echo_core.steer_cli import add_steer_flag

    add_steer_flag(p)  # --steer FILE: timed edits; writes <out>.timeline.txt
    p.add_argument("--sequel", action="store_true",
                   help="render the second demo timeline, which opens on the first demo's saved scene 1 (needs "
                        "--scene-library with the scenes `demo --save-scenes` wrote)")
    from echo_core.scenes_cli import add_scene_flags

    add_scene_flags(p)  # --save-scenes (demo scenes are named demo-N), --scene-library, --scenes, --scene-names
    p.set_defaults(handler=run_demo)
    return p


def _upscale(frames: torch.Tensor, scale: int) -> Any:
    """[n, 3, H, W] in [0, 1] -> uint8 numpy [n, H*scale, W*scale, 3] (nearest neighbour keeps edges crisp)."""
    x = frames.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3) if scale > 1 else frames
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import imageio.v2 as imageio
    except ImportError as e:  # optional: only this demo writes MP4 through imageio (ComfyUI has its own writer)
        raise ImportError("the demo writes MP4 through imageio: pip install imageio imageio-ffmpeg "
                          "(or the package's [demo] extra)") from e

    from echo_core.errors import EchoError, InputError
    from echo_core.session import MemorySpec
    from echo_core.toy.contact_sheet import ContactSheet
    from echo_core.toy.loader import load_toy_model
    from echo_core.toy.run import start_toy_run, timeline_spec

    if args.scale < 1 or args.scale > 16:
        raise InputError("--scale", f"must be between 1 and 16, got {args.scale}")
    if args.out.suffix.lower() != ".mp4":
        raise InputError("--out", f"must end in .mp4, got {args.out.name!r}")
    try:
        bundle = load_toy_model(args.weights)
    except (FileNotFoundError, ValueError) as e:
        raise InputError("--weights", str(e)) from None
    if args.sequel:
        if args.timeline != DEMO_TIMELINE:
            raise InputError("--sequel", "renders its own timeline; drop --timeline")
        if args.scene_library is None:
            raise InputError("--sequel", "recalls the first demo's saved scenes: add --scene-library DIR (written by "
                                         "`python -m echo_core demo --save-scenes DIR`)")
        args.timeline = DEMO_SEQUEL_TIMELINE
    try:
        spec = timeline_spec(bundle, args.timeline)
    except EchoError as e:
        raise e.relabel("--timeline") from None
    scenes = _scene_options(args, spec.schedule(bundle.frames_per_chunk))
    sampler = bundle.sampler_config
    if args.steps is not None:
        from dataclasses import replace

        if args.steps < 1:
            raise InputError("--steps", f"must be >= 1, got {args.steps}")
        sampler = replace(sampler, denoising_steps=tuple(1000.0 * (args.steps - i) / args.steps
                                                         for i in range(args.steps)))
    policy = args.memory
    memory = MemorySpec(policy=policy)
    from echo_core.steer_cli import steering_from_args

    steering = steering_from_args(args, args.timeline, spec.encode, spec.encode_routing)
    if steering is not None and (scenes.scenes or scenes.save_dir is not None):
        raise InputError("--steer", "cannot be combined with the scene library flags yet; steer a plain demo run")
    if args.latents is not None and args.latents.suffix != ".safetensors":
        raise InputError("--latents", f"must end in .safetensors, got {args.latents.name!r}")
    if scenes.scenes or scenes.save_dir is not None:  # routing with saved scenes needs the encoder itself
        from echo_core.toy.scenes import start_toy_scene_run

        run = start_toy_scene_run(bundle, args.timeline, saved=scenes.scenes, policy=memory, seed=args.seed,
                                  sampler=sampler)
    else:
        run = start_toy_run(bundle, spec, policy=memory, seed=args.seed, sampler=sampler, steering=steering)
    timeline = run.timeline
    latents = []
    sheet_path = args.sheet or args.out.with_suffix(".png")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.stem + ".partial.mp4")
    sheet = ContactSheet(timeline, bundle.frames_per_chunk)
    t0 = time.perf_counter()
    print(f"demo: {len(timeline.scenes)} scenes, {timeline.total_chunks} chunks, "
          f"{timeline.video_frames} frames at {bundle.fps} fps, {bundle.width}x{bundle.height} px, memory {policy}",
          file=sys.stderr)
    writer = imageio.get_writer(str(partial), fps=bundle.fps, codec="libx264", quality=8,
                                macro_block_size=8, ffmpeg_log_level="error")
    try:
        with torch.inference_mode():
            for chunk in run:
                for frame in _upscale(chunk.frames, args.scale):
                    writer.append_data(frame)
                sheet.add(chunk.result.index, chunk.frames[-1])
                if args.latents is not None:
                    latents.append(chunk.result.latents.cpu())
                r = chunk.result.report
                print(f"chunk {chunk.result.index + 1}/{run.timeline.total_chunks} scene {r['scene'] + 1} "
                      f"{r['wall_s']:.2f}s cache {r.get('cache_tokens', 0)} tokens", file=sys.stderr)
    finally:
        run.close()
        writer.close()
    partial.replace(args.out)  # never leave a half-written video under the requested name
    timeline = sheet.timeline = run.timeline  # as generated
    sheet.save(sheet_path)
    extra: dict[str, Any] = {}
    if args.latents is not None:
        from echo_core.safetensors_out import write_safetensors

        args.latents.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(args.latents, {"latents": torch.cat(latents, dim=2)}, {"seed": str(args.seed)})
        extra["latents"] = str(args.latents)
    wall = time.perf_counter() - t0
    report = run.report()
    report["total_wall_s"] = round(wall, 2)
    if steering is not None:
        from echo_core.steer_cli import write_timeline_text

        extra["timeline_file"] = write_timeline_text(args.out, report["timeline_text"])
        extra["steering"] = report["steering"]
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=1))
    print_memory_summary(report, timeline)
    saved = scenes.save(run.run)
    for path in saved:
        print(f"  saved scene: {path}", file=sys.stderr)
    print(json.dumps({"out": str(args.out), "sheet": str(sheet_path), "frames": timeline.video_frames,
                      "seconds": round(timeline.video_frames / bundle.fps, 2), "memory": policy,
                      "wall_s": round(wall, 1), **({"saved_scenes": saved} if saved else {}), **extra}))
    return report


def _scene_options(args: argparse.Namespace, timeline: Any) -> Any:
    """Saved scenes to load and where to save the demo's (named demo-N unless --scene-names says otherwise)."""
    from echo_core.scenes_cli import scene_options

    if args.save_scenes is not None and args.scene_names is None:
        args.scene_names = ",".join(f"{i + 1}=demo-{i + 1}" for i in range(len(timeline.scenes)))
    return scene_options(args, timeline)


def print_memory_summary(report: dict[str, Any], timeline: Any) -> None:
    chunks = report["chunk_reports"]
    print(f"memory report ({report['policy']}): {report['chunks']} chunks, peak cache {report['peak_cache_tokens']} "
          f"tokens ({report['peak_cache_mb']} MB), generation {report['wall_s']:.1f} s "
          f"({report['wall_s'] / max(1, len(chunks)):.2f} s/chunk)")
    for r in chunks:
        tr = r.get("transition")
        if not tr:
            continue
        print(f"  chunk {r['chunk'] + 1}: {tr.get('mode')} into scene {r['scene'] + 1} - memory: {tr.get('memory')} "
              f"(0-based scene index), RoPE jump {tr.get('rope_jump')}")
    if "pool_bytes" in (chunks[-1] if chunks else {}):
        print(f"  scene pool: {chunks[-1]['pool_size']} scenes, {chunks[-1]['pool_bytes'] / 2**10:.1f} KiB")
