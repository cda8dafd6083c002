"""`python -m echo_core generate ...`: chunked long-video generation from the command line (no ComfyUI)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

import torch

from echo_core.cache.kv_quant import check_kv_dtype
from echo_core.config import BaselineConfig, EchoConfig
from echo_core.errors import EchoError, InputError, quote
from echo_core.model.config import get_preset
from echo_core.preflight import DEFAULT_MAX_CHUNKS, MAX_CHUNKS_ENV, check_chunks, finite, max_chunks
from echo_core.run import POLICY_NAMES, PolicyLike, RunInputs, echo_config_for, start_run
from echo_core.safetensors_out import write_safetensors
from echo_core.sampler import SamplerConfig
from echo_core.scenes_cli import add_scene_flags, add_scenes_parser, scene_options
from echo_core.steer_cli import add_steer_flag, steering_from_args, write_timeline_text
from echo_core.text_standin import standin_embedding
from echo_core.timeline import OFFICIAL_TOTAL_LATENT_FRAMES, Timeline, TimelineError, parse_timeline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


MAX_TEXT_FILE_BYTES = 1_000_000  # a timeline file is a line of text; a larger file is not one
MAX_CONFIG_BYTES = 1_000_000


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
    p.add_argument("--kv-dtype", default=None, metavar="{model,float8_e4m3fn}",
                   help="how the KV cache stores keys and values: model (the model's dtype, default) or "
                        "float8_e4m3fn (fp8 with a scale per token per head: about half the cache)")
    p.add_argument("--seed", type=int, default=0, help="0 to 2**64 - 1")
    p.add_argument("--width", type=int, default=None, help="video width in pixels (multiple of 16)")
    p.add_argument("--height", type=int, default=None, help="video height in pixels (multiple of 16)")
    p.add_argument("--frames-per-chunk", type=int, default=None, help="3 chunk-wise (default), 1 frame-wise")
    p.add_argument("--steps", default="1000,750,500,250", help="denoising timesteps, comma separated")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, required=True, help="output latents (.safetensors)")
    p.add_argument("--report", type=Path, help="per-chunk JSON report")
    add_steer_flag(p)
    p.add_argument("--max-chunks", type=int, default=None,
                   help=f"refuse longer videos (default ${MAX_CHUNKS_ENV} or {DEFAULT_MAX_CHUNKS:,} chunks)")
    p.add_argument("--no-memory-check", action="store_true",
                   help="skip the check of the memory need against the device's free memory")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="print a traceback with every error")
    add_scene_flags(p)  # --scene-library, --scenes, --save-scenes, --scene-names (echo_core/scenes_cli.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m echo_core", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="print a traceback with every error")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    add_scenes_parser(sub)  # `scenes list|show|save`
    try:
        from echo_core.toy.demo import add_demo_parser
    except ImportError:  # the demo ships with the bundled toy model
        pass
    else:
        add_demo_parser(sub)
    from echo_core.batch.command import add_batch_parser  # batch generation (Ray only if --ray is given)

    add_batch_parser(sub)
    return parser


# ------------------------------------------------------------------------------------------------ checks
def _check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before a file is read or a model built; errors name the flag."""
    for flag, value in (("--width", args.width), ("--height", args.height)):
        if value is not None and (value < 16 or value % 16):
            raise CliError(flag, f"must be a positive multiple of 16, got {value}")
    if args.frames_per_chunk is not None and args.frames_per_chunk < 1:
        raise CliError("--frames-per-chunk", f"must be a positive number of latent frames (3 for chunk-wise "
                                             f"models such as Self-Forcing, 1 for frame-wise ones), got "
                                             f"{args.frames_per_chunk}")
    if not 0 <= args.seed < 2**64:
        raise CliError("--seed", f"must be a whole number from 0 to 2**64 - 1, got {quote(args.seed, 60)}")
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise CliError("--seconds", f"must be a positive number of seconds, got {args.seconds}")
    if args.seconds is not None and args.prompt is None:
        raise CliError("--seconds", "applies to --prompt; a timeline gives each scene its duration ([10s])")
    if args.total_latent_frames < 1:
        raise CliError("--total-latent-frames", f"must be a positive number of latent frames, got "
                                                f"{args.total_latent_frames}")
    if args.max_chunks is not None and args.max_chunks < 1:
        raise CliError("--max-chunks", f"must be >= 1, got {args.max_chunks}")
    _check_device(args.device)
    _check_output("--out", args.out)
    if args.report is not None:
        _check_output("--report", args.report)
        if args.report.resolve() == args.out.resolve():
            raise CliError("--report", "must differ from --out (the report would overwrite the latents)")
    for flag, path in (("--checkpoint", args.checkpoint), ("--text-embeds", args.text_embeds),
                       ("--timeline-file", args.timeline_file), ("--memory-config", args.memory_config)):
        if path is not None:
            _check_input_file(flag, path)


def _check_device(name: str) -> None:
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise CliError("--device", f"{quote(name, 60)} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise CliError("--device", f"{quote(name, 60)}: only cpu and cuda devices are supported")
    if not torch.cuda.is_available():
        raise CliError("--device", f"{quote(name, 60)}: this machine (or this PyTorch build) has no CUDA device; "
                                   "use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CliError("--device", f"{quote(name, 60)}: there are {torch.cuda.device_count()} CUDA device(s), "
                                   f"numbered from 0")


def _check_input_file(flag: str, path: Path) -> None:
    try:
        if not path.exists():
            raise CliError(flag, f"file not found: {quote(str(path))}")
        if path.is_dir():
            raise CliError(flag, f"{quote(str(path))} is a directory; give a file")
        if not os.access(path, os.R_OK):
            raise CliError(flag, f"{quote(str(path))} cannot be read (permission denied)")
    except OSError as e:  # e.g. a name too long for the file system
        raise CliError(flag, f"cannot use {quote(str(path))}: {e.strerror or e}") from None


def _check_output(flag: str, path: Path) -> None:
    """The output can be written: not a directory, its folder exists or can be made and is writable."""
    try:
        if path.is_dir():
            raise CliError(flag, f"{quote(str(path))} is a directory; give a file name")
        parent = path.parent
        for p in (parent, *parent.parents):
            if p.exists():
                if not p.is_dir():
                    raise CliError(flag, f"cannot create {quote(str(path))}: {quote(str(p))} is a file, not a folder")
                if not os.access(p, os.W_OK | os.X_OK):
                    raise CliError(flag, f"cannot write into {quote(str(p))} (permission denied)")
                break
    except OSError as e:
        raise CliError(flag, f"cannot use {quote(str(path))}: {e.strerror or e}") from None


def _read_text(flag: str, path: Path, limit: int) -> str:
    try:
        size = path.stat().st_size
        if size > limit:
            raise CliError(flag, f"{quote(str(path))} is {size:,} bytes; expected a short text file "
                                 f"(at most {limit:,} bytes)")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(flag, f"{quote(str(path))} is not UTF-8 text") from None
    except OSError as e:
        raise CliError(flag, f"cannot read {quote(str(path))}: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------ inputs
def _load_model(args: argparse.Namespace) -> tuple[Any, Any, int | None]:
    dtype = DTYPES[args.dtype]
    if args.preset:
        from echo_core.model.wan import CausalWanModel

        cfg = get_preset("tiny" if args.preset == "tiny-random" else "wan2.1-t2v-1.3b")
        torch.manual_seed(0)
        return CausalWanModel(cfg).to(device=args.device, dtype=dtype).eval(), cfg, None
    from echo_core.model.loading import load_causal_wan

    try:
        model, info = load_causal_wan(args.checkpoint, dtype=dtype, device=args.device)
    except EchoError as e:
        raise CliError("--checkpoint", e.detail) from None
    except (ValueError, OSError, RuntimeError, KeyError, TypeError) as e:  # CheckpointError, shapes, reading
        raise CliError("--checkpoint", _one_line(e)) from None
    return model.eval(), info.config, info.frames_per_chunk


def _timeline(args: argparse.Namespace, fpc: int) -> Timeline:
    text, flag = _timeline_text(args)
    try:
        return parse_timeline(text, frames_per_chunk=fpc, total_latent_frames=args.total_latent_frames)
    except TimelineError as exc:
        raise exc.relabel("--total-latent-frames" if exc.field == "total_latent_frames" else flag) from None


def _timeline_text(args: argparse.Namespace) -> tuple[str, str]:
    """The timeline as text and the flag it came from."""
    if args.prompt is not None:
        if "[" in args.prompt or "|" in args.prompt:
            raise CliError("--prompt", "one plain prompt; use --timeline for scenes with [10s] tags and '|'")
        if not args.prompt.strip():
            raise CliError("--prompt", "is empty; describe the video, e.g. --prompt 'a cat on a sofa'")
        text = f"{args.prompt}[{args.seconds if args.seconds is not None else 10}s]"
        flag = "--prompt"
    elif args.timeline is not None:
        text, flag = args.timeline, "--timeline"
    else:
        flag = "--timeline-file"
        lines = [ln for ln in _read_text(flag, args.timeline_file, MAX_TEXT_FILE_BYTES).splitlines() if ln.strip()]
        if not lines:
            raise CliError(flag, f"{quote(str(args.timeline_file))} is empty; its first line must be a timeline, "
                                 "e.g. 'a cat[10s] | a dog[8s#]'")
        text = lines[0].strip()
    return text, flag


def _contexts(args: argparse.Namespace, timeline: Timeline, cfg: Any) -> list[torch.Tensor]:
    if args.text_embeds is None:
        if not args.preset:
            raise CliError("--text-embeds", "required with --checkpoint (umT5 embeddings; the standalone CLI does not "
                                            "run the 5.7B text encoder). Use --preset tiny-random for a smoke run.")
        return [standin_embedding(s.prompt, cfg.text_dim, cfg.text_len) for s in timeline.scenes]
    from echo_core.model.checkpoint_io import read_weights_file

    try:
        tensors, _ = read_weights_file(args.text_embeds)
    except (ValueError, OSError, RuntimeError) as e:
        raise CliError("--text-embeds", _one_line(e)) from None
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
        if not isinstance(t, torch.Tensor) or not torch.is_floating_point(t):
            kind = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
            raise CliError("--text-embeds", f"scene {i + 1} embedding is {kind}, expected floating-point numbers")
        t = t[None] if t.ndim == 2 else t
        if t.ndim != 3 or t.shape[0] != 1 or t.shape[-1] != cfg.text_dim or t.shape[1] < 1:
            raise CliError("--text-embeds", f"scene {i + 1} embedding has shape {tuple(t.shape)}, "
                                            f"expected [L, {cfg.text_dim}] or [1, L, {cfg.text_dim}]")
        if not finite(t):
            raise CliError("--text-embeds", f"scene {i + 1} embedding holds NaN or infinite values; re-encode the "
                                            "prompt")
        out.append(t.float())
    return out


def _kv_dtype(args: argparse.Namespace) -> str | None:
    """--kv-dtype checked before the model loads (None: not given)."""
    if args.kv_dtype is None:
        return None
    try:
        return check_kv_dtype(args.kv_dtype, "--kv-dtype")
    except EchoError as e:
        raise CliError("--kv-dtype", e.detail) from None


def _with_kv_dtype(policy: PolicyLike, kv_dtype: str | None, frames_per_chunk: int) -> PolicyLike:
    """The policy storing K/V as --kv-dtype says (a name becomes its config; an EchoConfig keeps its own
    kv_dtype unless the flag is given)."""
    if kv_dtype is None:
        return policy
    if isinstance(policy, EchoConfig):
        return dataclasses.replace(policy, kv_dtype=kv_dtype)
    if policy == "echo":
        return dataclasses.replace(echo_config_for(frames_per_chunk), kv_dtype=kv_dtype)
    return BaselineConfig(str(policy), kv_dtype)


def _policy(args: argparse.Namespace) -> PolicyLike:
    if args.memory_config is None:
        return args.memory
    if args.memory != "echo":
        raise CliError("--memory-config", f"an EchoConfig applies to --memory echo, not {args.memory}")

    text = _read_text("--memory-config", args.memory_config, MAX_CONFIG_BYTES)
    try:
        return EchoConfig.from_json(text)
    except EchoError as e:
        raise CliError("--memory-config", f"{e.field}: {e.detail}" if e.field else e.detail) from None
    except (TypeError, ValueError, RecursionError) as e:  # JSON of the wrong shape (a list where a number goes)
        raise CliError("--memory-config", f"not an EchoConfig ({_one_line(e)})") from None


def _routing_features(args: argparse.Namespace, contexts: Sequence[torch.Tensor], cfg: Any) -> Any:
    """Similarity-routing features (spec §7). The official mode re-encodes the prompts with common words removed;
    with the stand-in encoder we do the same, with precomputed embeddings we can only pool each scene's own."""
    if args.preset:
        return lambda texts: [standin_embedding(t, cfg.text_dim, 64)[0] for t in texts]
    return tuple(contexts)


def _flag(field: str, args: argparse.Namespace) -> str:
    """The command-line flag for a field named by the core."""
    if field.startswith("--"):
        return field  # already a flag (--steer's errors name the line or the edit)
    text_flag = "--prompt" if args.prompt is not None else ("--timeline" if args.timeline is not None
                                                              else "--timeline-file")
    if field.startswith("memory.") and args.memory_config is None:
        return "--frames-per-chunk"  # the official layout only fails for a frames-per-chunk it cannot tile
    table = {"width": "--width", "height": "--height", "seed": "--seed", "steps": "--steps",
             "frames_per_chunk": "--frames-per-chunk", "memory": "--memory", "routing": "--memory-config",
             "model": "--checkpoint" if args.checkpoint else "--preset", "timeline": text_flag,
             "total_latent_frames": "--total-latent-frames", MAX_CHUNKS_ENV: MAX_CHUNKS_ENV,
             "start_latent": "--checkpoint", "kv_dtype": "--kv-dtype"}
    if field == "timeline" and args.text_embeds is not None:
        return text_flag
    return table.get(field, "--memory-config" if "." in field else (field or "generate"))


def run_generate(args: argparse.Namespace) -> dict[str, Any]:
    _check_args(args)
    if args.max_chunks is None:
        max_chunks()  # a bad $ECHO_FORCING_MAX_CHUNKS is reported before the model loads
    policy = _policy(args)
    kv_dtype = _kv_dtype(args)
    model, cfg, file_fpc = _load_model(args)
    fpc = args.frames_per_chunk if args.frames_per_chunk is not None else (file_fpc or 3)
    policy = _with_kv_dtype(policy, kv_dtype, fpc)
    timeline = _timeline(args, fpc)
    try:
        check_chunks(timeline.total_chunks, fpc, args.max_chunks, fps=timeline.fps)
    except EchoError as e:
        raise e.relabel(_flag(e.field, args)) from None
    default_px = (64, 64) if args.preset == "tiny-random" else (480, 832)
    height = args.height if args.height is not None else default_px[0]
    width = args.width if args.width is not None else default_px[1]
    try:
        steps = tuple(float(s) for s in args.steps.split(","))
    except ValueError:
        raise CliError("--steps", f"{quote(args.steps, 80)} is not a list of timesteps; write decreasing numbers in "
                                  "(0, 1000] separated by commas, e.g. 1000,750,500,250") from None
    try:
        if not all(math.isfinite(t) for t in steps):
            raise ValueError(f"timesteps must be finite numbers, got {quote(args.steps, 80)}")
        sampler_cfg = SamplerConfig(denoising_steps=steps, frames_per_chunk=fpc)
    except ValueError as exc:
        raise CliError("--steps", _one_line(exc)) from None
    contexts = _contexts(args, timeline, cfg)
    scenes = scene_options(args, timeline)  # saved scenes loaded, save folder checked: before the run
    routing = _routing_features(args, contexts, cfg)
    encode = (lambda prompts: [standin_embedding(p, cfg.text_dim, cfg.text_len) for p in prompts]) \
        if args.preset else None  # precomputed embeddings (--text-embeds) cannot encode a steered prompt
    steering = steering_from_args(args, _timeline_text(args)[0], encode, routing if callable(routing) else None)
    try:
        inputs = RunInputs(timeline, tuple(contexts), (cfg.in_dim, height // 8, width // 8), seed=args.seed,
                           sampler=sampler_cfg, patch=tuple(cfg.patch_size[1:]),
                           routing_features=routing, device=args.device,
                           max_chunks=args.max_chunks, saved_scenes=scenes.scenes, steering=steering)
        run = start_run(model, policy, inputs, check_memory=not args.no_memory_check)
    except EchoError as e:
        raise e.relabel(_flag(e.field, args)) from None
    latents = []
    try:
        for res in run:
            latents.append(res.latents.cpu())
            print(f"chunk {res.index + 1}/{run.timeline.total_chunks} scene {res.report['scene'] + 1} "
                  f"{res.report['wall_s']:.2f}s cache {res.report['cache_tokens']} tokens", file=sys.stderr)
    except EchoError as e:
        raise e.relabel(_flag(e.field, args)) from None
    finally:
        run.close()
    video = torch.cat(latents, dim=2)
    report = run.report()
    timeline = run.timeline  # as generated (steering may have amended it)
    summary = {"out": str(args.out), "latent_shape": list(video.shape), "chunks": len(latents),
               "timeline": timeline.to_dict(), "memory": report["policy"], "kv_dtype": run.kv_dtype,
               "seed": args.seed,
               "scenes": report["scenes"], "budget": report["budget"], "chunk_reports": report["chunk_reports"],
               "saved_scenes": scenes.save(run)}
    report_text = json.dumps(summary, indent=1, default=str) if args.report else None
    _save_latents(args.out, video, timeline, args)
    if steering is not None:
        summary["steering"], summary["timeline_text"] = report["steering"], report["timeline_text"]
        summary["timeline_file"] = write_timeline_text(args.out, report["timeline_text"])
        report_text = json.dumps(summary, indent=1, default=str) if args.report else None
    if report_text is not None:
        _write_atomic("--report", args.report, report_text)
    return summary


def _save_latents(path: Path, video: torch.Tensor, timeline: Timeline, args: argparse.Namespace) -> None:
    meta = {"timeline": json.dumps(timeline.to_dict()), "seed": str(args.seed), "memory": args.memory,
            "format": "latents [B, C, F, H, W], Wan2.1 model space (decode with the Wan 2.1 VAE)"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, {"latents": video}, meta)  # sorted header: same seed, same bytes; atomic
    except OSError as e:
        raise CliError("--out", f"cannot write {quote(str(path))}: {e.strerror or e}") from None


def _write_atomic(flag: str, path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise CliError(flag, f"cannot write {quote(str(path))}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def _one_line(e: BaseException, limit: int = 600) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints them and exits 2
    debug = bool(getattr(args, "debug", False))
    try:
        if args.command == "generate":
            summary = run_generate(args)
            print(json.dumps({k: v for k, v in summary.items() if k not in ("chunk_reports", "timeline", "budget")}))
        else:
            args.handler(args)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except EchoError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        if debug:
            traceback.print_exc()
        print("error: out of memory; lower --width/--height, shorten the video or choose --memory rolling",
              file=sys.stderr)
        return 2
    except Exception as exc:  # a bug, not a user error: say so, and how to get the details
        if debug:
            traceback.print_exc()
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            print("error: out of GPU memory; lower --width/--height or choose --memory rolling", file=sys.stderr)
        else:
            print(f"error: internal error ({type(exc).__name__}: {_one_line(exc, 300)}); rerun with --debug for the "
                  "traceback and report it", file=sys.stderr)
        return 2
    return 0
