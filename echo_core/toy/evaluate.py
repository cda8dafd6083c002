"""Quality bar of the toy model: `python -m echo_core.toy.evaluate [--prompts 8] [--out eval.json]`.

* single-scene 30 s runs: the scorer must name the prompted scene on >= 90% of frames. The scorer chooses among
  the prompted scene, near misses (one attribute changed: background colour, pattern, an object's shape or colour,
  an object added or dropped) and random scenes, and must see every prompted object, so a frame only counts if
  the details the prompt names are right;
* a 2-minute run must not collapse: accuracy over its last 30 s within 10 points of its first 30 s.
Reported beside the bar: background and object presence, and motion (each object's motion word read back from
its track by `scorer.motion_of` over the whole clip, against the prompted one).
Prompts and seeds are drawn from fixed generators, disjoint from the demo's and the tests' prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from echo_core.toy.grammar import (
    COLOURS,
    PATTERNS,
    SHAPES_V2,
    ObjectSpec,
    SceneSpec,
    describe,
    shape_family,
    world_spec,
)
from echo_core.toy.loader import ToyBundle, load_toy_model
from echo_core.toy.run import render_timeline
from echo_core.toy.scorer import identify_scene, motion_of, object_presence

EVAL_SEED = 20_240_611


def near_misses(spec: SceneSpec) -> list[SceneSpec]:
    """Valid scenes that differ from `spec` in one thing a single frame shows."""
    out: list[SceneSpec] = []
    first = spec.objects[0]
    tries: list[Any] = [
        lambda: replace(spec, background=_next(list(COLOURS), spec.background, {o.colour for o in spec.objects})),
        lambda: replace(spec, pattern=_next(list(PATTERNS), spec.pattern)),
        lambda: replace(spec, objects=(replace(first, shape=_next(list(shape_family(first.shape)), first.shape)),)
                        + spec.objects[1:]),
        lambda: replace(spec, objects=(replace(first, colour=_next(list(COLOURS), first.colour, {spec.background})),)
                        + spec.objects[1:]),
    ]
    if len(spec.objects) == 2:
        tries.append(lambda: replace(spec, objects=spec.objects[:1]))
    else:
        extra = next(c for c in COLOURS if c not in (spec.background, first.colour))
        tries.append(lambda: replace(spec, objects=spec.objects + (ObjectSpec(extra, first.shape),)))
    for make in tries:
        try:
            out.append(make())
        except ValueError:  # an invalid combination (e.g. duplicate objects): skip that near miss
            pass
    return out


def _next(options: list[str], current: str, avoid: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    i = options.index(current)
    for k in range(1, len(options)):
        cand = options[(i + k) % len(options)]
        if cand not in avoid:
            return cand
    return current


def world_of(spec: SceneSpec) -> str:
    """The world whose shapes `spec` uses (its random rivals come from the same world)."""
    return "v2" if spec.objects[0].shape in SHAPES_V2 else "v1"


def candidates(spec: SceneSpec, rng: np.random.Generator, n_random: int = 8) -> list[SceneSpec]:
    """The prompted scene first, then near misses and random scenes, all with distinct appearances."""
    out, seen = [spec], {spec.appearance()}
    world = world_of(spec)
    for c in near_misses(spec) + [world_spec(rng, world) for _ in range(4 * n_random)]:
        if c.appearance() not in seen and len(out) < 1 + 5 + n_random:
            out.append(c)
            seen.add(c.appearance())
    return out


def scene_accuracy(frames: torch.Tensor, spec: SceneSpec, rng: np.random.Generator) -> torch.Tensor:
    """[T] bool: the scorer names `spec` among its candidates and sees every object of it. (Object presence is
    required too: a frame without objects ties the prompted scene with its shape/colour near misses.)"""
    idx, _ = identify_scene(frames, candidates(spec, rng))
    return (idx == 0) & object_presence(frames, spec).all(1)


def background_accuracy(frames: torch.Tensor, spec: SceneSpec) -> torch.Tensor:
    """[T] bool: among scenes with the same objects but another background colour or pattern, the scorer names
    the prompted one (the part of a scene this model draws reliably)."""
    used = {o.colour for o in spec.objects}
    cands = [spec] + [replace(spec, background=c) for c in COLOURS if c != spec.background and c not in used]
    cands += [replace(spec, pattern=p) for p in PATTERNS if p != spec.pattern]
    idx, _ = identify_scene(frames, cands)
    return idx == 0


def eval_prompts(n: int, seed: int = EVAL_SEED, world: str = "v1") -> list[SceneSpec]:
    """Held-out prompts of `world` (training draws its prompts from other generators)."""
    rng = np.random.default_rng(seed)
    return [world_spec(rng, world) for _ in range(n)]


def single_scene(bundle: ToyBundle, spec: SceneSpec, *, seconds: float, seed: int, policy: str,
                 rng: np.random.Generator) -> dict[str, Any]:
    t0 = time.perf_counter()
    frames, report = render_timeline(bundle, f"{describe(spec)}[{seconds}s]", policy=policy, seed=seed)
    gen_s = time.perf_counter() - t0
    ok = scene_accuracy(frames, spec, rng).float()
    background = float(background_accuracy(frames, spec).float().mean())
    objects = float(object_presence(frames, spec).float().mean())
    # Each object's motion word read back from its track (the best-matching position per frame, whole clip).
    moved = [m == o.motion for m, o in zip(motion_of(frames, spec, fps=bundle.fps), spec.objects)]
    per_30s = [round(float(ok[i:i + 30 * bundle.fps].mean()), 4) for i in range(0, len(ok), 30 * bundle.fps)]
    return {"prompt": describe(spec), "seconds": seconds, "frames": int(ok.numel()),
            "accuracy": round(float(ok.mean()), 4), "accuracy_per_30s": per_30s,
            "background_accuracy": round(background, 4), "object_presence": round(objects, 4),
            "motion_correct": round(sum(moved) / len(moved), 4),
            "first_30s": per_30s[0], "last_30s": round(float(ok[-30 * bundle.fps:].mean()), 4),
            "generate_s": round(gen_s, 1), "chunk_s": round(report["s_per_chunk"], 3)}


def evaluate(bundle: ToyBundle, *, prompts: int = 8, long_runs: int = 1, policy: str = "echo",
             seconds: float = 30.0, long_seconds: float = 120.0, log=print) -> dict[str, Any]:
    rng = np.random.default_rng(EVAL_SEED + 1)
    specs = eval_prompts(prompts + long_runs, world=bundle.world)
    singles = []
    for i, spec in enumerate(specs[:prompts]):
        r = single_scene(bundle, spec, seconds=seconds, seed=1000 + i, policy=policy, rng=rng)
        log(f"single {i + 1}/{prompts}: scene {r['accuracy']:.3f}, background {r['background_accuracy']:.3f}, "
            f"objects present {r['object_presence']:.3f}, motion {r['motion_correct']:.2f}  {r['prompt']}")
        singles.append(r)
    longs = []
    for i, spec in enumerate(specs[prompts:]):
        r = single_scene(bundle, spec, seconds=long_seconds, seed=2000 + i, policy=policy, rng=rng)
        r["drop"] = round(r["first_30s"] - r["last_30s"], 4)
        log(f"long {i + 1}/{long_runs}: first 30 s {r['first_30s']:.3f}, last 30 s {r['last_30s']:.3f}  "
            f"{r['prompt']}")
        longs.append(r)
    mean_single = float(np.mean([r["accuracy"] for r in singles])) if singles else float("nan")
    return {
        "policy": policy,
        "world": bundle.world,
        "data_mode": bundle.data_mode,
        "scene_accuracy": round(mean_single, 4),
        "single_scene_accuracy": round(mean_single, 4),
        "single_scene_min": min((r["accuracy"] for r in singles), default=None),
        "background_accuracy": round(float(np.mean([r["background_accuracy"] for r in singles])), 4) if singles
        else None,
        "object_presence": round(float(np.mean([r["object_presence"] for r in singles])), 4) if singles else None,
        # share of prompted objects whose read-back motion word is the prompted one (not part of the bar)
        "motion_accuracy": round(float(np.mean([r["motion_correct"] for r in singles])), 4) if singles else None,
        "single_scene_pass": bool(mean_single >= 0.9),
        "long_run_pass": all(r["drop"] <= 0.10 for r in longs),
        "singles": singles,
        "long_runs": longs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m echo_core.toy.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=None, help="weights folder (default: the bundled weights)")
    p.add_argument("--prompts", type=int, default=8, help="single-scene 30 s runs")
    p.add_argument("--long-runs", type=int, default=1, help="2-minute runs")
    p.add_argument("--policy", default="echo", choices=["echo", "rolling", "full"])
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--json", action="store_true", help="print only the summary, as one JSON object")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each single-scene run")
    p.add_argument("--warm-start", type=float, default=None,
                   help="sample with this warm start instead of the weights' own (timestep; 0 = off)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance instead of the weights'")
    p.add_argument("--guidance-above", type=float, default=None, help="guide only the steps above this timestep")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    bundle = load_toy_model(args.weights)
    overrides = {k: v for k, v in (("warm_start", args.warm_start), ("guidance", args.guidance),
                                   ("guidance_above", args.guidance_above)) if v is not None}
    try:
        bundle = bundle.with_sampler(**overrides)
    except ValueError as e:
        p.error(f"sampler settings: {e}")
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    if args.prompts < 1 or args.long_runs < 0 or not args.seconds > 0:
        p.error("--prompts must be >= 1, --long-runs >= 0 and --seconds > 0")
    res = evaluate(bundle, prompts=args.prompts, long_runs=args.long_runs, policy=args.policy,
                   seconds=args.seconds, log=log)
    res["sampler_overrides"] = overrides
    summary = {k: v for k, v in res.items() if k not in ("singles", "long_runs")}
    print(json.dumps(summary))
    if args.out is not None:
        args.out.write_text(json.dumps(res, indent=1))
    return 0 if res["single_scene_pass"] and res["long_run_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
