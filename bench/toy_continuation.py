"""Where the toy model loses its objects: its own roll-out, or continuing a perfect past?

    python bench/toy_continuation.py --weights DIR [--weights DIR2 ...] [--prompts 8] [--chunks 10]

For held-out prompts of the weights' world, object presence (the scorer's: every prompted object seen, with its
shape) per chunk of
* the rendered scene after the codec's round trip: the ceiling;
* a free roll-out: the sampler and Echo-Forcing cache, as `evaluate.py` runs it;
* teacher-forced continuation: chunk k is sampled by the same steps and re-noise rule, but its past is the
  rendered scene (encoded by the codec, drawn as the training data draws it: landmarks from the seed noise), so
  the model never sees its own output.
If teacher-forced presence is high and the roll-out's low, the model is hurt by its own output (exposure bias);
if both are low, it cannot continue a scene even from a perfect past. Writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from echo_core.toy.data import BLOCK, WINDOW, new_scene, render_segment  # noqa: E402
from echo_core.toy.evaluate import eval_prompts  # noqa: E402
from echo_core.toy.grammar import SceneSpec, describe  # noqa: E402
from echo_core.toy.loader import ToyBundle, load_toy_model  # noqa: E402
from echo_core.toy.run import render_timeline  # noqa: E402
from echo_core.toy.scorer import object_presence  # noqa: E402
from echo_core.toy.seqforward import window_forward, window_mask  # noqa: E402

SEED = 1000  # the evaluation's single-scene seeds
SETTABLE = ("warm_start", "guidance", "guidance_above")  # sampler settings --set may override


def rendered(bundle: ToyBundle, spec: SceneSpec, chunks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The scene as training draws it, encoded: latents [1, C, chunks*BLOCK, h, w] and its first block's noise."""
    seg, seed_noise = new_scene(np.random.default_rng(seed), spec, bundle.width, "landmarks")
    past = bundle.codec.encode_images(render_segment(seg, torch.arange(chunks * BLOCK), bundle.width))
    return past.permute(1, 0, 2, 3)[None], seed_noise


def decode(bundle: ToyBundle, latents: torch.Tensor) -> torch.Tensor:
    return bundle.codec.decode_images(latents[0].permute(1, 0, 2, 3))


def teacher_forced(bundle: ToyBundle, spec: SceneSpec, chunks: int, seed: int) -> torch.Tensor:
    """Keyframes [chunks*BLOCK, 3, H, W]: each chunk sampled from the rendered past (up to a window of it)."""
    past, seed_noise = rendered(bundle, spec, chunks, seed)
    text = bundle.text_encoder.encode_prompts([describe(spec)])[0].reshape(1, 1, -1, bundle.text_encoder.text_dim)
    cfg, g = bundle.sampler_config, torch.Generator().manual_seed(seed)
    tokens = (past.shape[-1] // 2) * (past.shape[-2] // 2)
    out = []
    for k in range(chunks):
        ctx = past[:, :, max(0, BLOCK * k - (WINDOW - BLOCK)):BLOCK * k]
        n = ctx.shape[2] + BLOCK
        mask = window_mask((torch.arange(n) // BLOCK)[None], tokens)
        ids, positions = torch.zeros(1, n, dtype=torch.long), torch.arange(n)[None]

        def velocity(x: torch.Tensor, t: float, prompt: torch.Tensor) -> torch.Tensor:
            tt = torch.cat([torch.zeros(ctx.shape[2]), torch.full((BLOCK,), t)])[None]
            return window_forward(bundle.model, torch.cat([ctx, x], 2), tt, prompt, ids, positions, mask)[:, :, -BLOCK:]

        noise = torch.randn((1, past.shape[1], BLOCK, *past.shape[3:]), generator=g)
        if k == 0 and seed_noise is not None:
            noise = seed_noise[None].clone()  # the scene's landmarks follow its first block's noise
        # as the sampler starts a chunk (the toy sampler's warm start continues from the last frame before it)
        x, steps = cfg.chunk_start(noise, ctx[:, :, -BLOCK:] if k else None, continues=k > 0)
        for i, t in enumerate(steps):
            v = velocity(x, t, text)
            if cfg.guidance != 1 and t > cfg.guidance_above:  # as sampler.generate guides: the empty prompt
                v_empty = velocity(x, t, torch.zeros_like(text))
                v = v_empty + cfg.guidance * (v - v_empty)
            x0 = x - t / cfg.num_train_timesteps * v
            if i + 1 < len(steps):
                nxt = steps[i + 1]
                target = cfg.renoise_target(x0, v, nxt, lambda: torch.randn(x.shape, generator=g))
                x = (1 - nxt / cfg.num_train_timesteps) * x0 + nxt / cfg.num_train_timesteps * target
        out.append(x0)
    return decode(bundle, torch.cat(out, 2))


def per_chunk(present: torch.Tensor, frames_per_chunk: int, chunks: int) -> list[float]:
    return [round(float(present[c * frames_per_chunk:(c + 1) * frames_per_chunk].float().mean()), 3)
            for c in range(chunks)]


def probe(bundle: ToyBundle, prompts: int, chunks: int) -> dict:
    rows = []
    video_per_chunk = 4 * BLOCK  # video frames a chunk adds (Wan's steady 4 per latent frame)
    for i, spec in enumerate(eval_prompts(prompts, world=bundle.world)):
        seconds = chunks * video_per_chunk / bundle.fps
        frames, _ = render_timeline(bundle, f"{describe(spec)}[{seconds}s]", policy="echo", seed=SEED + i)
        free = per_chunk(object_presence(frames, spec).all(1), video_per_chunk, chunks)
        with torch.inference_mode():
            keyframes = teacher_forced(bundle, spec, chunks, SEED + i)
        forced = per_chunk(object_presence(keyframes, spec).all(1), BLOCK, chunks)
        truth = decode(bundle, rendered(bundle, spec, chunks, SEED + i)[0])  # the ceiling: the codec's round trip
        ceiling = per_chunk(object_presence(truth, spec).all(1), BLOCK, chunks)
        rows.append({"prompt": describe(spec), "free": free, "teacher_forced": forced, "rendered": ceiling})
        print(f"{i + 1}/{prompts} free {np.mean(free):.2f}  teacher-forced {np.mean(forced):.2f}  "
              f"rendered {np.mean(ceiling):.2f}  {describe(spec)}", flush=True)
    keys = ("free", "teacher_forced", "rendered")
    mean = {k: [round(float(v), 3) for v in np.mean([r[k] for r in rows], 0)] for k in keys}
    return {"world": bundle.world, "data_mode": bundle.data_mode, "chunks": chunks, "per_chunk_mean": mean,
            **{f"{k}_mean": round(float(np.mean(mean[k])), 3) for k in keys},
            "teacher_forced_after_first_chunk": round(float(np.mean(mean["teacher_forced"][1:])), 3), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, action="append", required=True, help="weights folder (repeatable)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"override a sampler setting of the weights, one of {', '.join(SETTABLE)} (repeatable)")
    args = p.parse_args(argv)
    if args.prompts < 1 or args.chunks < 2:
        p.error("--prompts must be >= 1 and --chunks >= 2")
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in SETTABLE or not value:
            p.error(f"--set {item!r}: use FIELD=VALUE with FIELD one of {', '.join(SETTABLE)}")
        try:
            overrides[name] = float(value)
        except ValueError:
            p.error(f"--set {item!r}: {value!r} is not a number")
    torch.manual_seed(0)
    results = {}
    for w in args.weights:
        print(f"== {w}", flush=True)
        bundle = load_toy_model(w)
        try:
            bundle = bundle.with_sampler(**overrides)
        except ValueError as e:
            p.error(f"--set: {e}")
        results[str(w)] = {**probe(bundle, args.prompts, args.chunks), "sampler_overrides": overrides}
        r = results[str(w)]
        print(f"   free {r['free_mean']:.3f}, teacher-forced {r['teacher_forced_mean']:.3f} "
              f"(after the first chunk {r['teacher_forced_after_first_chunk']:.3f}), rendered {r['rendered_mean']:.3f}",
              flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
