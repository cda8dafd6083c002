"""Memory quality of the cache policies on the bundled toy model, measured side by side in one run.

Held-out 5-scene timelines drawn from a fixed seed with the toy grammar (none of them is the demo's or a test's):

    A --smooth--> A' (same objects, new motions) --hard cut--> B --hard cut--> C --recall--> A or B (alternating)

run with the same model, seeds and sampler under: Self-Forcing's rolling window with sink ("rolling"), flush on
switch ("flush", Infinity-RoPE / LongLive+Flush style), Echo-Forcing ("echo") and Echo-Forcing with each
mechanism switched off in turn ("echo-no-hier": plain 18-frame recent window inside Echo, no anchors or
compressed history; "echo-no-recall": no scene recall frame inserted at any switch; "echo-no-decay": the inserted
memory fades at the fixed mid-range rate of its mode instead of per-location difference-aware rates). Policies
advance chunk by chunk in alternation so per-chunk times see the same machine conditions. A 2-minute
single-prompt run per policy measures long-run stability. Echo's recall of a saved scene (scene library: the
recalled scene saved to a file and recalled in a new video) gets its own rows (mq_saved_scene.py). Writes
memory_quality.md / .png / .json.

    python bench/memory_quality.py            # full run (about 5-10 minutes on 2 CPU cores)
    python bench/memory_quality.py --quick    # a small end-to-end run (tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

for _path in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:  # appended, not prepended: never shadow a host's top-level modules (ComfyUI's nodes)
        sys.path.append(_path)

import mq_metrics as mq  # noqa: E402
from mq_figure import draw_figure  # noqa: E402
from mq_report import write_markdown  # noqa: E402
from mq_saved_scene import markdown as saved_scene_markdown  # noqa: E402
from mq_saved_scene import run_saved_scene_bench  # noqa: E402

from echo_core.cache.kv_quant import FLOAT8  # noqa: E402
from echo_core.config import BaselineConfig, EchoConfig  # noqa: E402
from echo_core.run import PolicyLike  # noqa: E402
from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.session import MemorySpec  # noqa: E402
from echo_core.toy.demo import DEMO_TIMELINE  # noqa: E402
from echo_core.toy.grammar import SceneSpec, describe, sample_spec, smooth_variant  # noqa: E402
from echo_core.toy.loader import ToyBundle, load_toy_model  # noqa: E402
from echo_core.toy.run import start_toy_run, timeline_spec  # noqa: E402
from echo_core.toy.scorer import chance_level  # noqa: E402

BENCH_SEED = 4_815_162  # held out: evaluate.py uses 20_240_611, tests and the demo use fixed prompts
POLICIES = ("rolling", "flush", "echo", "echo-no-hier", "echo-no-recall", "echo-no-decay")
MODES = ("smooth", "hardcut", "hardcut", "recall")  # transitions into scenes 2..5
MARKERS = {"smooth": "", "hardcut": "#", "recall": "@"}  # outgoing markers (official semantics)


@dataclass(frozen=True)
class Settings:
    timelines: int = 10  # alternate recall targets: 5 recall scene 1, 5 recall scene 3
    scene_seconds: float = 7.0
    long_seconds: float = 120.0
    stability_seconds: float = 30.0
    window_seconds: float = 2.0  # contamination / continuity window after a switch
    steps: int | None = None  # denoising steps per chunk; None = the toy model's own
    seed: int = BENCH_SEED
    saved_scene: bool = True  # Echo's recall of a saved scene (mq_saved_scene.py)


FULL = Settings()
QUICK = Settings(timelines=1, scene_seconds=2.25, long_seconds=7.5, stability_seconds=2.25, window_seconds=1.0,
                 steps=3, saved_scene=False)  # the saved-scene rows have their own quick test


@dataclass(frozen=True)
class BenchTimeline:
    index: int
    specs: tuple[SceneSpec, ...]  # one per scene
    recall_source: int  # 0-based scene the last scene recalls
    seconds: float
    seed: int

    @property
    def text(self) -> str:
        parts = []
        for i, spec in enumerate(self.specs):
            marker = MARKERS[MODES[i]] if i < len(MODES) else ""
            parts.append(f"{describe(spec)} [{self.seconds:g}s{marker}]")
        return " | ".join(parts)


def make_timelines(n: int, seconds: float, seed: int = BENCH_SEED) -> list[BenchTimeline]:
    out = []
    for k in range(n):
        rng = np.random.default_rng(seed + k)
        a = sample_spec(rng)
        scenes = [a, smooth_variant(a, rng)]
        while len(scenes) < 4:  # B and C: new appearances
            s = sample_spec(rng)
            if s.appearance() not in {x.appearance() for x in scenes}:
                scenes.append(s)
        source = 0 if k % 2 == 0 else 2  # recall the first scene (also the sink of rolling/flush) or B
        scenes.append(scenes[source])
        tl = BenchTimeline(k, tuple(scenes), source, seconds, seed + 100 * k)
        assert tl.text != DEMO_TIMELINE
        out.append(tl)
    return out


# ------------------------------------------------------------------------------------------------ policies
def echo_config(name: str, fpc: int, routing: Any) -> EchoConfig:
    """The node's default Echo settings, or one mechanism switched off."""
    if name == "echo-no-hier":  # no anchors, no compressed history: a plain recent window inside Echo
        return MemorySpec(anchor_frames=0, compressed_frames=0, recent_frames=21 - fpc).echo_config(fpc, routing)
    cfg = MemorySpec().echo_config(fpc, routing)
    if name == "echo-no-recall":  # no scene recall frame (nor first frame) inserted at any switch
        return replace(cfg, **{m: replace(cfg.mode(m), use_old_memory=False) for m in ("smooth", "hardcut", "recall")})
    if name == "echo-no-decay":  # fixed rate at the middle of each mode's range instead of difference-aware rates
        modes = {}
        for m in ("smooth", "hardcut", "recall"):
            d = cfg.mode(m).decay
            fixed = d if d.strategy == "fixed" else replace(d, strategy="fixed",
                                                            fixed_rate=round((d.min_rate + d.max_rate) / 2, 4))
            modes[m] = replace(cfg.mode(m), decay=fixed)
        return replace(cfg, **modes)
    return cfg


def policy_of(name: str, bundle: ToyBundle, routing: Any) -> PolicyLike:
    """A policy by its row name; a "-fp8" suffix stores its K/V in fp8 (kv_dtype float8_e4m3fn, bench/kv_fp8.py)."""
    base, fp8 = (name[:-4], True) if name.endswith("-fp8") else (name, False)
    if base in ("rolling", "flush"):
        return BaselineConfig(base, FLOAT8) if fp8 else base
    cfg = echo_config(base, bundle.frames_per_chunk, routing)
    return replace(cfg, kv_dtype=FLOAT8) if fp8 else cfg


def run_policies(bundle: ToyBundle, text: str, names: tuple[str, ...], seed: int,
                 sampler: SamplerConfig) -> dict[str, mq.RunFrames]:
    """Generate `text` under every policy, one chunk of each in turn; decode as it streams."""
    spec = timeline_spec(bundle, text)
    runs = {name: start_toy_run(bundle, spec, policy=policy_of(name, bundle, spec.routing), seed=seed,
                                sampler=sampler) for name in names}
    streams = {name: iter(run) for name, run in runs.items()}
    collected: dict[str, tuple[list[torch.Tensor], list[tuple[int, int]]]] = {name: ([], []) for name in names}
    with torch.inference_mode():
        for _ in range(next(iter(runs.values())).timeline.total_chunks):
            for name, stream in streams.items():
                chunk = next(stream)
                frames, ranges = collected[name]
                ranges.append((chunk.first_frame, chunk.first_frame + chunk.frames.shape[0]))
                frames.append(chunk.frames)
    out = {}
    for name, run in runs.items():
        run.close()
        frames, ranges = collected[name]
        out[name] = mq.RunFrames(torch.cat(frames), ranges, run.run.reports)
    return out


# ------------------------------------------------------------------------------------------------ metrics
def score_timeline(tl: BenchTimeline, runs: dict[str, mq.RunFrames], other_seed: torch.Tensor, bundle: ToyBundle,
                   st: Settings, chunks: list[tuple[int, int]]) -> dict[str, Any]:
    """Per-policy metrics of one timeline. `chunks`: [first, end) chunk of every scene."""
    window = int(round(st.window_seconds * bundle.fps))
    out: dict[str, Any] = {}
    cands = {i: mq.candidate_set(s, [o for o in tl.specs if o.appearance() != s.appearance()], tl.seed + i)
             for i, s in enumerate(tl.specs)}
    target = tl.specs[-1]
    for name, run in runs.items():
        m: dict[str, Any] = {"switch": [], "contamination": [], "continuity": [], "cut_curves": [], "carryover": []}
        for i, mode in enumerate(MODES, start=1):
            first, end = chunks[i]
            if mode == "smooth":
                m["continuity"].append(mq.continuity(run, first, end, tl.specs[i], window))
                continue
            k, hit = mq.switch_response(run, first, end, tl.specs[i], cands[i])
            m["switch"].append({"mode": mode, "chunks": k, "reached": hit})
            if mode == "hardcut":
                m["contamination"].append(mq.contamination(run, first, end, tl.specs[i - 1], cands[i], window))
                old_last = run.scene_frames(*chunks[i - 1])[-4:]
                m["carryover"].append(mq.detail_carryover(run, first, end, tl.specs[i], old_last, window))
                m["cut_curves"].append(mq.accuracy_curve(run.scene_frames(first, end), cands[i], tl.specs[i]))
        ref = run.scene_frames(*chunks[tl.recall_source])
        recalled = run.scene_frames(*chunks[-1])
        m["recall_fidelity"] = mq.recall_fidelity(recalled, target, ref)
        m["recall_vs_other_seed"] = mq.recall_fidelity(recalled, target, other_seed)
        m["recall_curve"] = [float(x) for x in mq.detail_curve(recalled, target, ref)]
        # How much a policy's video differs from Echo's at all: tells an inert ablation from an insensitive metric.
        if "echo" in runs:
            m["frames_vs_echo"] = float((run.frames - runs["echo"].frames).abs().mean())
        routed = [r["transition"].get("routing", {}) for r in run.reports if r.get("transition")]
        routed = [r for r in routed if r]
        if routed:
            m["routed_scene"] = routed[-1].get("scene")
        out[name] = m
    out["chance_gt"] = chance_level(target, height=bundle.height, width=bundle.width, base_seed=tl.seed)
    return out


def scene_chunks(bundle: ToyBundle, text: str) -> list[tuple[int, int]]:
    parsed = timeline_spec(bundle, text).parse(bundle.frames_per_chunk)
    return [(s.start_chunk, s.end_chunk) for s in parsed.scenes]


def summarise(per_timeline: list[dict[str, Any]], long: dict[str, Any], runs_meta: dict[str, Any],
              timelines: list[BenchTimeline], names: tuple[str, ...] = POLICIES) -> dict[str, dict[str, Any]]:
    table = {}
    for name in names:
        rows = [t[name] for t in per_timeline]
        switches = [s for r in rows for s in r["switch"]]
        first = [r["recall_fidelity"] for r, tl in zip(rows, timelines) if tl.recall_source == 0]
        later = [r["recall_fidelity"] for r, tl in zip(rows, timelines) if tl.recall_source != 0]
        routed = [r.get("routed_scene") == tl.recall_source for r, tl in zip(rows, timelines) if "routed_scene" in r]
        table[name] = {
            "switch_response_chunks": mq.mean([s["chunks"] for s in switches]),
            "switch_missed": sum(not s["reached"] for s in switches),
            "switches": len(switches),
            "contamination": mq.mean([c for r in rows for c in r["contamination"]]),
            "continuity": mq.mean([c for r in rows for c in r["continuity"]]),
            "detail_carryover": mq.mean([c for r in rows for c in r["carryover"]]),
            "recall_fidelity": mq.mean([r["recall_fidelity"] for r in rows]),
            "recall_fidelity_first_scene": mq.mean(first),
            "recall_fidelity_later_scene": mq.mean(later),
            "recall_vs_other_seed": mq.mean([r["recall_vs_other_seed"] for r in rows]),
            "routing_correct": (sum(routed) / len(routed)) if routed else None,
            "frames_vs_echo": mq.mean([r["frames_vs_echo"] for r in rows if "frames_vs_echo" in r]),
            "stability_first": long[name]["first"],
            "stability_last": long[name]["last"],
            "stability_drop": long[name]["drop"],
            **runs_meta[name],
        }
    return table


def _cost(meta: dict[str, dict[str, list]], name: str, run: mq.RunFrames) -> None:
    m = meta.setdefault(name, {"wall": [], "cache": [], "pool": []})
    m["wall"] += [r["wall_s"] for r in run.reports]
    m["cache"] += [r.get("cache_bytes", 0) for r in run.reports]
    m["pool"] += [r.get("pool_bytes", 0) for r in run.reports]


# ------------------------------------------------------------------------------------------------ main
def run_benchmark(st: Settings, out_dir: Path, weights: Path | None = None, log=print) -> dict[str, Any]:
    t_start = time.perf_counter()
    bundle = load_toy_model(weights)
    sampler = bundle.sampler_config
    if st.steps is not None:
        sampler = replace(sampler, denoising_steps=tuple(1000.0 * (st.steps - i) / st.steps for i in range(st.steps)))
    timelines = make_timelines(st.timelines, st.scene_seconds, st.seed)
    per_timeline, cost, strips = [], {}, {}
    for tl in timelines:
        chunks = scene_chunks(bundle, tl.text)
        runs = run_policies(bundle, tl.text, POLICIES, tl.seed, sampler)
        # The recalled scene generated on its own from another seed: how far chance alone gets.
        solo = run_policies(bundle, f"{describe(tl.specs[-1])} [{st.scene_seconds:g}s]", ("rolling",),
                            tl.seed + 7, sampler)["rolling"].frames
        per_timeline.append(score_timeline(tl, runs, solo, bundle, st, chunks))
        for name, run in runs.items():
            _cost(cost, name, run)
        if tl.index == 0:
            strips = {name: run.frames for name, run in runs.items()}
            strips["_chunks"] = chunks  # type: ignore[assignment]
            strips["_ranges"] = runs["echo"].chunk_ranges  # type: ignore[assignment]
        log(f"timeline {tl.index + 1}/{len(timelines)} done ({time.perf_counter() - t_start:.0f} s)")
    rng = np.random.default_rng(st.seed - 1)
    long_spec = sample_spec(rng)
    long_runs = run_policies(bundle, f"{describe(long_spec)} [{st.long_seconds:g}s]", POLICIES, st.seed - 1, sampler)
    cands = mq.candidate_set(long_spec, [], st.seed - 2)
    window = int(round(st.stability_seconds * bundle.fps))
    long = {name: mq.stability(run.frames, cands, long_spec, window) for name, run in long_runs.items()}
    for name, run in long_runs.items():
        _cost(cost, name, run)
    log(f"long runs done ({time.perf_counter() - t_start:.0f} s)")
    meta = {name: {"chunk_ms": 1000 * mq.mean(c["wall"]), "cache_kb": max(c["cache"]) / 1024,
                   "pool_kb": max(c["pool"]) / 1024, "chunks_timed": len(c["wall"])} for name, c in cost.items()}
    table = summarise(per_timeline, long, meta, timelines)
    saved_scene = run_saved_scene_bench(bundle, timelines, sampler, log) if st.saved_scene else None
    chance = mq.mean([t["chance_gt"] for t in per_timeline])
    result = {
        "settings": st.__dict__, "policies": list(POLICIES), "table": table, "chance_gt": chance,
        "timelines": [{"text": tl.text, "seed": tl.seed, "recall_source": tl.recall_source} for tl in timelines],
        "long_run": {"prompt": describe(long_spec), "seconds": st.long_seconds},
        "per_timeline": per_timeline, "torch_threads": torch.get_num_threads(),
        "sampler_steps": len(sampler.denoising_steps), "wall_s": round(time.perf_counter() - t_start, 1),
        "saved_scene": saved_scene,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory_quality.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, out_dir / "memory_quality.md")
    if saved_scene is not None:
        with open(out_dir / "memory_quality.md", "a") as f:
            f.write("\n".join(saved_scene_markdown(saved_scene["table"], saved_scene["file_mb"])) + "\n")
    draw_figure(result, strips, timelines[0], bundle.fps, out_dir / "memory_quality.png")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short timeline, few steps (end-to-end check)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--weights", type=Path, default=None, help="toy weights folder (default: bundled)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (fixed, for reproducible numbers)")
    ap.add_argument("--timelines", type=int, default=None, help="override the number of held-out timelines")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    st = QUICK if args.quick else FULL
    if args.timelines is not None:
        if args.timelines < 1:
            ap.error(f"--timelines must be >= 1, got {args.timelines}")
        st = replace(st, timelines=args.timelines)
    result = run_benchmark(st, args.out, args.weights, log=lambda s: print(s, file=sys.stderr, flush=True))
    print((args.out / "memory_quality.md").read_text())
    print(f"wall {result['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
