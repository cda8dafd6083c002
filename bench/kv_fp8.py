"""What an fp8 KV cache costs: the same seeded run with K/V stored in the model dtype and in float8_e4m3fn.

1. Latent deviation (max and mean |fp8 - model|) on
   * the tiny-random preset in bf16 at a real-ish token geometry (240x416 px: 390 tokens per latent frame, a
     quarter of Wan's 1560; 27 latent frames so the 21-frame window rolls over; `--full-size` for 480x832),
   * the bundled toy model on the benchmark's first held-out 5-scene timeline (fp32, its own sampler);
   with the cache's peak bytes of both (one run each, same process: the ratio, not the absolute).
2. The toy benchmark's metrics (bench/memory_quality.py, same held-out timelines, seeds and long run) for the
   model-dtype policy and its fp8 row, generated side by side chunk by chunk.

    python bench/kv_fp8.py                       # rolling vs rolling-fp8 (a few minutes on 2 CPU cores)
    python bench/kv_fp8.py --policies echo       # Echo vs Echo-fp8
    python bench/kv_fp8.py --quick               # toy parts on one short timeline (a busy shared CPU)

Writes kv_fp8.md / kv_fp8.json under --out (default bench/results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

for _path in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.append(_path)

import memory_quality as mqb  # noqa: E402
import mq_metrics as mq  # noqa: E402

from echo_core.cache.kv_quant import FLOAT8  # noqa: E402
from echo_core.config import EchoConfig  # noqa: E402
from echo_core.model.config import get_preset  # noqa: E402
from echo_core.model.wan import CausalWanModel  # noqa: E402
from echo_core.run import RunInputs, start_run  # noqa: E402
from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.text_standin import standin_embedding  # noqa: E402
from echo_core.timeline import parse_timeline  # noqa: E402
from echo_core.toy.loader import ToyBundle, load_toy_model  # noqa: E402
from echo_core.toy.run import start_toy_run, timeline_spec  # noqa: E402

METRICS = ("switch_response_chunks", "switch_missed", "contamination", "continuity", "detail_carryover",
           "recall_fidelity", "recall_vs_other_seed", "stability_first", "stability_last", "stability_drop",
           "chunk_ms", "cache_kb")


def _deviation(exact: torch.Tensor, fp8: torch.Tensor, fpc: int = 3) -> dict[str, float]:
    """Over the whole video, and on the second chunk alone: the first that reads fp8 context, before the
    autoregressive roll-out compounds the difference (a chunk made from other context conditions the next)."""
    d = (exact.float() - fp8.float()).abs()
    second = d[:, :, fpc:2 * fpc]
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "latent_std": float(exact.float().std()),
            "mean_rel": float(d.mean() / exact.float().abs().mean()), "chunk2_max_abs": float(second.max()),
            "chunk2_mean_abs": float(second.mean())}


def _tiny_policy(name: str) -> Any:
    """The tiny-random run's policy by row name: Echo with its default 3-frame memory (no toy bundle to ask)."""
    if name.startswith("echo"):
        return EchoConfig(kv_dtype=FLOAT8 if name.endswith("-fp8") else "model")
    return mqb.policy_of(name, None, None)  # type: ignore[arg-type]


def tiny_random(policy: str, full_size: bool) -> dict[str, Any]:
    """tiny preset, random weights (seed 0), bf16, one scene long enough for the window to roll over."""
    torch.manual_seed(0)
    model = CausalWanModel(get_preset("tiny")).eval().to(torch.bfloat16)
    height, width = (480, 832) if full_size else (240, 416)
    frames = 27  # 9 chunks: the 21-frame window is full from chunk 7 on
    timeline = parse_timeline("a red fox runs through the snow", total_latent_frames=frames)
    contexts = tuple(standin_embedding(s.prompt, model.cfg.text_dim, 16) for s in timeline.scenes)
    inputs = RunInputs(timeline, contexts, (16, height // 8, width // 8), seed=3,
                       sampler=SamplerConfig(denoising_steps=(1000.0, 750.0, 500.0, 250.0)))
    runs = {}
    for name in (policy, f"{policy}-fp8"):
        t0 = time.perf_counter()
        latents, report = start_run(model, _tiny_policy(name), inputs).collect()
        runs[name] = (latents, report, time.perf_counter() - t0)
    (a, ra, ta), (b, rb, tb) = runs.values()
    tokens = (height // 16) * (width // 16)
    return {"model": "tiny-random (bf16)", "size": f"{width}x{height}", "tokens_per_frame": tokens,
            "latent_frames": frames, **_deviation(a, b), "cache_bytes": ra["peak_gpu_bytes"],
            "cache_bytes_fp8": rb["peak_gpu_bytes"], "cache_ratio": rb["peak_gpu_bytes"] / ra["peak_gpu_bytes"],
            "wall_ratio": tb / ta}


def toy_latents(bundle: ToyBundle, policy: str, text: str, seed: int, sampler: SamplerConfig) -> dict[str, Any]:
    spec = timeline_spec(bundle, text)
    out = {}
    for name in (policy, f"{policy}-fp8"):
        run = start_toy_run(bundle, spec, policy=mqb.policy_of(name, bundle, spec.routing), seed=seed,
                            sampler=sampler)
        with torch.inference_mode():
            latents = torch.cat([c.result.latents.float().cpu() for c in run], dim=2)
        out[name] = (latents, run.report())
    (a, ra), (b, rb) = out.values()
    return {"model": "bundled toy (fp32)", "size": f"{bundle.width}x{bundle.height}",
            "tokens_per_frame": (bundle.height // 8) * (bundle.width // 8), "latent_frames": int(a.shape[2]),
            **_deviation(a, b), "cache_bytes": ra["peak_gpu_bytes"], "cache_bytes_fp8": rb["peak_gpu_bytes"],
            "cache_ratio": rb["peak_gpu_bytes"] / ra["peak_gpu_bytes"]}


def toy_metrics(bundle: ToyBundle, names: tuple[str, ...], st: mqb.Settings, sampler: SamplerConfig,
                log) -> dict[str, Any]:
    """memory_quality.run_benchmark's table for `names` only (no figure, no saved-scene rows)."""
    timelines = mqb.make_timelines(st.timelines, st.scene_seconds, st.seed)
    per_timeline, cost = [], {}
    t0 = time.perf_counter()
    for tl in timelines:
        chunks = mqb.scene_chunks(bundle, tl.text)
        runs = mqb.run_policies(bundle, tl.text, names, tl.seed, sampler)
        solo = mqb.run_policies(bundle, f"{mqb.describe(tl.specs[-1])} [{st.scene_seconds:g}s]", ("rolling",),
                                tl.seed + 7, sampler)["rolling"].frames
        per_timeline.append(mqb.score_timeline(tl, runs, solo, bundle, st, chunks))
        for name, run in runs.items():
            mqb._cost(cost, name, run)
        log(f"timeline {tl.index + 1}/{len(timelines)} ({time.perf_counter() - t0:.0f} s)")
    rng = mqb.np.random.default_rng(st.seed - 1)
    long_spec = mqb.sample_spec(rng)
    long_runs = mqb.run_policies(bundle, f"{mqb.describe(long_spec)} [{st.long_seconds:g}s]", names, st.seed - 1,
                                 sampler)
    cands = mq.candidate_set(long_spec, [], st.seed - 2)
    window = int(round(st.stability_seconds * bundle.fps))
    long = {name: mq.stability(run.frames, cands, long_spec, window) for name, run in long_runs.items()}
    for name, run in long_runs.items():
        mqb._cost(cost, name, run)
    first, second = names
    frames_dev = float((long_runs[first].frames - long_runs[second].frames).abs().mean())
    meta = {name: {"chunk_ms": 1000 * mq.mean(c["wall"]), "cache_kb": max(c["cache"]) / 1024,
                   "pool_kb": max(c["pool"]) / 1024, "chunks_timed": len(c["wall"])} for name, c in cost.items()}
    table = mqb.summarise(per_timeline, long, meta, timelines, names)
    return {"table": table, "long_run_mean_abs_frame_diff": frames_dev, "timelines": len(timelines),
            "settings": st.__dict__,
            "wall_s": round(time.perf_counter() - t0, 1)}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# fp8 KV cache (kv_dtype float8_e4m3fn) against the model-dtype cache", "",
             "Same seeded run twice in one process: K/V stored in the model dtype, then in fp8 e4m3 with one float32 "
             "scale per token per head (attention in the model dtype after one dequantisation per span). Produced "
             f"by `python bench/kv_fp8.py {result['args']}`.", "",
             "## Latent deviation", "",
             "| model | size | tokens/frame | latent frames | max abs | mean abs | mean rel | chunk 2 max abs | "
             "chunk 2 mean abs | latent std | cache bytes (model) | cache bytes (fp8) | fp8 / model |",
             "|" + "---|" * 13]
    for r in result["deviation"]:
        lines.append(f"| {r['model']} | {r['size']} | {r['tokens_per_frame']} | {r['latent_frames']} | "
                     f"{r['max_abs']:.3g} | {r['mean_abs']:.3g} | {r['mean_rel']:.2%} | {r['chunk2_max_abs']:.3g} | "
                     f"{r['chunk2_mean_abs']:.3g} | {r['latent_std']:.3g} | "
                     f"{r['cache_bytes']:,} | {r['cache_bytes_fp8']:,} | {r['cache_ratio']:.3f} |")
    m = result["metrics"]
    lines += ["", f"## Toy benchmark metrics ({m['timelines']} held-out timelines and the long run, as "
                  f"bench/memory_quality.py; scenes {m['settings']['scene_seconds']:g} s, long run "
                  f"{m['settings']['long_seconds']:g} s)", "", "| policy | " + " | ".join(METRICS) + " |",
              "|" + "---|" * (len(METRICS) + 1)]
    for name, row in m["table"].items():
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Long run, mean |frame difference| between the two rows: {m['long_run_mean_abs_frame_diff']:.4f} "
                  "(pixels in [0, 1]). chunk_ms are interleaved chunk by chunk in one run, so their ratio is "
                  "meaningful, not their absolute value. cache_kb for the toy model (head_dim 32) includes the "
                  "scales' 4/32 overhead; at Wan's head_dim 128 fp8 K/V are (1 + 4/128) / 2 = 0.516 of bf16.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policies", default="rolling", help="base policy compared with its fp8 row "
                    "(rolling, flush, echo)")
    ap.add_argument("--quick", action="store_true", help="toy parts with memory_quality's quick settings (one "
                                                         "short timeline, 3 steps)")
    ap.add_argument("--full-size", action="store_true", help="tiny-random at 480x832 (1560 tokens per frame)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timelines", type=int, default=None, help="held-out timelines (default memory_quality's 10)")
    ap.add_argument("--long-seconds", type=float, default=None, help="long single-prompt run (default 120 s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    policy = args.policies
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    deviation = [tiny_random(policy, args.full_size)]
    (args.out / "kv_fp8.partial.json").write_text(json.dumps(deviation, indent=1))  # minutes of work kept
    log(f"tiny-random done ({time.perf_counter() - t0:.0f} s)")
    bundle = load_toy_model()
    st = mqb.QUICK if args.quick else mqb.FULL
    if args.timelines is not None:
        st = replace(st, timelines=args.timelines)
    if args.long_seconds is not None:
        st = replace(st, long_seconds=args.long_seconds, stability_seconds=min(st.stability_seconds,
                                                                               args.long_seconds / 4))
    sampler = bundle.sampler_config
    if st.steps is not None:
        sampler = replace(sampler, denoising_steps=tuple(1000.0 * (st.steps - i) / st.steps for i in range(st.steps)))
    first = mqb.make_timelines(1, st.scene_seconds, st.seed)[0]
    deviation.append(toy_latents(bundle, policy, first.text, first.seed, sampler))
    log(f"toy latents done ({time.perf_counter() - t0:.0f} s)")
    (args.out / "kv_fp8.partial.json").write_text(json.dumps(deviation, indent=1))
    metrics = toy_metrics(bundle, (policy, f"{policy}-fp8"), st, sampler, log)
    result = {"args": " ".join(argv if argv is not None else sys.argv[1:]), "quick": args.quick, "policy": policy,
              "settings": st.__dict__, "deviation": deviation, "metrics": metrics,
              "torch_threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kv_fp8.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "kv_fp8.md").write_text(text)
    (args.out / "kv_fp8.partial.json").unlink(missing_ok=True)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
