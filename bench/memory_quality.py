"""Memory quality of the cache policies on the bundled toy model, measured side by side in one run.

Held-out 5-scene timelines drawn from a fixed seed with the toy grammar (none of them is the demo's or a test's):

    A --smooth--> A' (same objects, new motions) --hard cut--> B --hard cut--> C --recall--> A or B (alternating)

run with the same model, seeds and sampler under: Self-Forcing's rolling window with sink ("rolling"), flush on
switch ("flush", Infinity-RoPE / LongLive+Flush style), Echo-Forcing ("echo") and Echo-Forcing with each
mechanism switched off in turn ("echo-no-hier": plain 18-frame recent window inside Echo, no anchors or
compressed history; "echo-no-recall": no scene recall frame inserted at any switch; "echo-no-decay": the inserted
memory fades at the fixed mid-range rate of its mode instead of per-location difference-aware rates). Policies
advance chunk by chunk in alternation so per-chunk times see the same machine conditions. A 2-minute
single-prompt run per policy measures long-run stability. Two more timeline families make each mechanism
measurable: long single scenes (the hierarchy: do the scene's landmarks and objects survive once its first frames
have left the window?) and smooth switches that keep the background and one object but replace the other (the
decay: does the dropped object linger?). Every comparison is paired per timeline (same seeds), with a bootstrap
95% interval (mq_stats.py). Echo's recall of a saved scene (scene library: the recalled scene saved to a file and
recalled in a new video) gets its own rows (mq_saved_scene.py). Each model gets its own row set: by default the
two bundled ones (loader.BUNDLED_MODELS: "training-free", trained only as Self-Forcing is, the main subject, then
"layout-aware", trained on Echo's cache layouts too); --model label=folder names others, --weights runs one.
Writes memory_quality.md / .png / .json.

    python bench/memory_quality.py            # both bundled models (about 14 minutes each on 2 CPU cores)
    python bench/memory_quality.py --quick --weights echo_core/toy/weights   # a small end-to-end run (tests)
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
import mq_stats  # noqa: E402
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
from echo_core.toy.grammar import ObjectSpec, SceneSpec, describe, smooth_variant, world_shapes, world_spec  # noqa: E402
from echo_core.toy.loader import BUNDLED_MODELS, ToyBundle, load_toy_model  # noqa: E402
from echo_core.toy.run import start_toy_run, timeline_spec  # noqa: E402
from echo_core.toy.scorer import chance_level  # noqa: E402

BENCH_SEED = 4_815_162  # held out: evaluate.py uses 20_240_611, tests and the demo use fixed prompts
POLICIES = ("rolling", "flush", "echo", "echo-no-hier", "echo-no-recall", "echo-no-decay")
MODES = ("smooth", "hardcut", "hardcut", "recall")  # transitions into scenes 2..5
MARKERS = {"smooth": "", "hardcut": "#", "recall": "@"}  # outgoing markers (official semantics)


@dataclass(frozen=True)
class Settings:
    timelines: int = 30  # alternate recall targets: half recall scene 1, half recall scene 3
    scene_seconds: float = 3.0
    long_seconds: float = 60.0
    stability_seconds: float = 15.0
    window_seconds: float = 1.5  # contamination / continuity window after a switch
    hier_timelines: int = 3  # long single scenes (the hierarchy)
    hier_seconds: float = 45.0
    decay_timelines: int = 12  # smooth switches that drop one object (the decay)
    decay_seconds: float = 3.0
    steps: int | None = None  # denoising steps per chunk; None = the toy model's own
    seed: int = BENCH_SEED
    saved_scene: bool = True  # Echo's recall of a saved scene (mq_saved_scene.py)


FULL = Settings()
QUICK = Settings(timelines=1, scene_seconds=2.25, long_seconds=7.5, stability_seconds=2.25, window_seconds=1.0,
                 hier_timelines=1, hier_seconds=4.5, decay_timelines=1, decay_seconds=2.25,
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


def make_timelines(n: int, seconds: float, seed: int = BENCH_SEED, world: str = "v1") -> list[BenchTimeline]:
    out = []
    for k in range(n):
        rng = np.random.default_rng(seed + k)
        a = world_spec(rng, world)
        scenes = [a, smooth_variant(a, rng)]
        while len(scenes) < 4:  # B and C: new appearances
            s = world_spec(rng, world)
            if s.appearance() not in {x.appearance() for x in scenes}:
                scenes.append(s)
        source = 0 if k % 2 == 0 else 2  # recall the first scene (also the sink of rolling/flush) or B
        scenes.append(scenes[source])
        tl = BenchTimeline(k, tuple(scenes), source, seconds, seed + 100 * k)
        assert tl.text != DEMO_TIMELINE
        out.append(tl)
    return out


@dataclass(frozen=True)
class DecayTimeline:
    """A --smooth--> A*: same background and first object, the second object replaced by another one."""

    index: int
    before: SceneSpec
    after: SceneSpec
    gone: SceneSpec  # the dropped object alone on the shared background (what must not linger)
    seconds: float
    seed: int

    @property
    def text(self) -> str:
        return f"{describe(self.before)} [{self.seconds:g}s] | {describe(self.after)} [{self.seconds:g}s]"


def make_decay_timelines(n: int, seconds: float, seed: int = BENCH_SEED + 7_000, world: str = "v1"
                         ) -> list[DecayTimeline]:
    out: list[DecayTimeline] = []
    k = 0
    while len(out) < n:
        rng = np.random.default_rng(seed + k)
        k += 1
        a = world_spec(rng, world)
        if len(a.objects) != 2:
            continue
        keep, drop = a.objects
        shapes = world_shapes(world)
        colours = [c for c in ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
                   if c not in (a.background, keep.colour, drop.colour)]
        new = ObjectSpec(colours[int(rng.integers(len(colours)))], shapes[int(rng.integers(len(shapes)))],
                         drop.motion)
        after = SceneSpec((keep, new), a.background, a.pattern)
        gone = SceneSpec((ObjectSpec(drop.colour, drop.shape),), a.background, a.pattern)
        out.append(DecayTimeline(len(out), a, after, gone, seconds, seed + 100 * k))
    return out


def make_hier_timelines(n: int, seconds: float, seed: int = BENCH_SEED + 9_000, world: str = "v1"
                        ) -> list[tuple[SceneSpec, int, str]]:
    """Long single scenes: (spec, seed, timeline text)."""
    out = []
    for k in range(n):
        spec = world_spec(np.random.default_rng(seed + k), world)
        out.append((spec, seed + 100 * k, f"{describe(spec)} [{seconds:g}s]"))
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


# Metrics compared per timeline, and which direction is better.
METRICS = {
    "contamination": "lower", "detail_carryover": "lower", "switch_response": "lower", "continuity": "higher",
    "recall_fidelity": "higher", "linger": "lower", "late_detail": "higher", "late_objects": "higher",
}
BASELINE_PAIRS = (("echo", "rolling"), ("echo", "flush"))
ABLATIONS = ("echo-no-hier", "echo-no-recall", "echo-no-decay")


def run_families(bundle: ToyBundle, st: Settings, sampler: SamplerConfig, cost: dict, log,
                 t_start: float) -> dict[str, Any]:
    """The decay timelines (smooth switch dropping one object) and the long single scenes (hierarchy)."""
    window = int(round(st.window_seconds * bundle.fps))
    decay_tls = make_decay_timelines(st.decay_timelines, st.decay_seconds, world=bundle.world)
    decay = []
    for dt in decay_tls:
        first, end = scene_chunks(bundle, dt.text)[1]
        runs = run_policies(bundle, dt.text, POLICIES, dt.seed, sampler)
        decay.append({name: {"linger": mq.linger(run, first, end, dt.gone, window),
                             "continuity": mq.continuity(run, first, end, dt.after, window)}
                      for name, run in runs.items()})
        for name, run in runs.items():
            _cost(cost, name, run)
    log(f"decay timelines done ({time.perf_counter() - t_start:.0f} s)")
    hier_tls = make_hier_timelines(st.hier_timelines, st.hier_seconds, world=bundle.world)
    hier = []
    for spec, seed, text in hier_tls:
        runs = run_policies(bundle, text, POLICIES, seed, sampler)
        # First and last third at most: the first frames must have left every window before the last third.
        span = min(int(round(st.stability_seconds * bundle.fps)), next(iter(runs.values())).frames.shape[0] // 3)
        hier.append({name: mq.late_memory(run.frames, spec, span) for name, run in runs.items()})
        for name, run in runs.items():
            _cost(cost, name, run)
    log(f"long single scenes done ({time.perf_counter() - t_start:.0f} s)")
    return {"decay": decay, "hier": hier, "decay_timelines": decay_tls, "hier_timelines": hier_tls}


def timeline_values(per_timeline: list[dict[str, Any]], families: dict[str, Any]) -> dict[str, dict[str, list]]:
    """metric -> policy -> one value per timeline of the metric's family (None where a timeline has none)."""
    out: dict[str, dict[str, list]] = {m: {p: [] for p in POLICIES} for m in METRICS}
    for t in per_timeline:
        for p in POLICIES:
            r = t[p]
            out["contamination"][p].append(_mean_or_none(r["contamination"]))
            out["detail_carryover"][p].append(_mean_or_none(r["carryover"]))
            out["switch_response"][p].append(_mean_or_none([s["chunks"] for s in r["switch"]]))
            out["continuity"][p].append(_mean_or_none(r["continuity"]))
            out["recall_fidelity"][p].append(r["recall_fidelity"])
    for row in families["decay"]:
        for p in POLICIES:
            out["linger"][p].append(row[p]["linger"])
    for row in families["hier"]:
        for p in POLICIES:
            out["late_detail"][p].append(row[p]["detail"])
            out["late_objects"][p].append(row[p]["objects"])
    return out


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def compare(values: dict[str, dict[str, list]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Paired differences with bootstrap 95% intervals: echo minus each baseline, each ablation minus echo."""
    pairs = list(BASELINE_PAIRS) + [(a, "echo") for a in ABLATIONS]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for a, b in pairs:
        rows = {}
        for metric, better in METRICS.items():
            p = mq_stats.paired(values[metric][a], values[metric][b])
            rows[metric] = {**p.as_dict(), "better": better, "claim": mq_stats.claim(p, better)}
        out[f"{a} - {b}"] = rows
    return out


def _cost(meta: dict[str, dict[str, list]], name: str, run: mq.RunFrames) -> None:
    m = meta.setdefault(name, {"wall": [], "cache": [], "pool": []})
    m["wall"] += [r["wall_s"] for r in run.reports]
    m["cache"] += [r.get("cache_bytes", 0) for r in run.reports]
    m["pool"] += [r.get("pool_bytes", 0) for r in run.reports]


# ------------------------------------------------------------------------------------------------ main
def run_benchmark(st: Settings, out_dir: Path, weights: Path | None = None, log=print,
                  label: str | None = None) -> dict[str, Any]:
    t_start = time.perf_counter()
    bundle = load_toy_model(weights)
    sampler = bundle.sampler_config
    if st.steps is not None:
        sampler = replace(sampler, denoising_steps=tuple(1000.0 * (st.steps - i) / st.steps for i in range(st.steps)))
    timelines = make_timelines(st.timelines, st.scene_seconds, st.seed, bundle.world)
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
    families = run_families(bundle, st, sampler, cost, log, t_start)
    rng = np.random.default_rng(st.seed - 1)
    long_spec = world_spec(rng, bundle.world)
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
    values = timeline_values(per_timeline, families)
    for name in POLICIES:
        for key, rows in values.items():
            if key in ("linger", "late_detail", "late_objects"):
                table[name][key] = mq.mean([v for v in rows[name] if v is not None])
    paired = compare(values)
    saved_scene = run_saved_scene_bench(bundle, timelines, sampler, log) if st.saved_scene else None
    chance = mq.mean([t["chance_gt"] for t in per_timeline])
    result = {
        "settings": st.__dict__, "policies": list(POLICIES), "table": table, "chance_gt": chance,
        "model": {"world": bundle.world, "data_mode": bundle.data_mode, "weights": display_path(weights),
                  **({"label": label} if label is not None else {})},
        "paired": paired, "per_timeline_values": values,
        "decay_timelines": [dt.text for dt in families["decay_timelines"]],
        "hier_timelines": [text for _, _, text in families["hier_timelines"]],
        "timelines": [{"text": tl.text, "seed": tl.seed, "recall_source": tl.recall_source} for tl in timelines],
        "long_run": {"prompt": describe(long_spec), "seconds": st.long_seconds},
        "per_timeline": per_timeline, "torch_threads": torch.get_num_threads(),
        "sampler_steps": len(sampler.denoising_steps), "wall_s": round(time.perf_counter() - t_start, 1),
        "saved_scene": saved_scene,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory_quality.json").write_text(json.dumps(result, indent=1))
    write_report(result, out_dir / "memory_quality.md")
    draw_figure(result, strips, timelines[0], bundle.fps, out_dir / "memory_quality.png")
    return result


def write_report(result: dict[str, Any], path: Path) -> None:
    """One model's markdown: the table and intervals (mq_report), then the saved-scene rows when they were run."""
    write_markdown(result, path)
    saved = result.get("saved_scene")
    if saved is not None:
        with open(path, "a") as f:
            f.write("\n".join(saved_scene_markdown(saved["table"], saved["file_mb"])) + "\n")


def display_path(folder: Path | None) -> str:
    """A weights folder as the report shows it: relative to the repository when inside it (no machine paths)."""
    if folder is None:
        return "bundled"
    root = Path(__file__).resolve().parents[1]
    try:
        return str(Path(folder).resolve().relative_to(root))
    except ValueError:
        return str(folder)


def _model_arg(ap: argparse.ArgumentParser, text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        ap.error(f"--model must be LABEL=FOLDER (e.g. training-free=echo_core/toy/weights), got {text!r}")
    if not Path(folder).is_dir():
        ap.error(f"--model {label}: folder {folder!r} does not exist")
    return label, Path(folder)


def models_preface(results: dict[str, dict[str, Any]]) -> str:
    """Which model each row set comes from, main subject first (README quotes numbers by model)."""
    lines = ["# Memory quality of the cache policies, one row set per model", "",
             "Every number below belongs to the model named in its section's title:", ""]
    for i, (label, res) in enumerate(results.items()):
        m = res["model"]
        role = "main subject" if i == 0 else "second row set"
        taught = ("never shown Echo-Forcing's cache layouts" if m["data_mode"] == "self_forcing"
                  else "trained on Echo-Forcing's cache layouts too")
        lines.append(f"- **{label}** ({role}): `{m['weights']}`, world {m['world']}, data mode {m['data_mode']} "
                     f"({taught})")
    return "\n".join(lines)


def run_models(st: Settings, out_dir: Path, models: list[tuple[str, Path]], log) -> dict[str, Any]:
    """One row set per model: each model's run in out_dir/<label>/, one combined report in out_dir."""
    results, parts = {}, []
    for label, folder in models:
        log(f"model {label}: {folder}")
        res = run_benchmark(st, out_dir / label, folder, log=log, label=label)
        results[label] = res
        parts.append((out_dir / label / "memory_quality.md").read_text())
    total = round(sum(r["wall_s"] for r in results.values()), 1)
    combined = {"models": results, "wall_s": total}
    (out_dir / "memory_quality.json").write_text(json.dumps(combined, indent=1))
    (out_dir / "memory_quality.md").write_text("\n\n".join([models_preface(results)] + parts))
    first = out_dir / models[0][0] / "memory_quality.png"
    if first.exists():
        (out_dir / "memory_quality.png").write_bytes(first.read_bytes())
    return combined


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one short timeline, few steps (end-to-end check)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--weights", type=Path, default=None, help="one toy weights folder (one row set)")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=FOLDER",
                    help="a model to benchmark (repeatable): each gets its own row set in one report (default: "
                         + ", ".join(f"{k}={v.relative_to(Path(__file__).resolve().parents[1])}"
                                     for k, v in BUNDLED_MODELS.items()) + ")")
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
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    if args.weights is not None and args.model:
        ap.error("--weights runs one model and --model names several: give one of them")
    if args.weights is not None:
        result = run_benchmark(st, args.out, args.weights, log=log)
    else:
        models = [_model_arg(ap, m) for m in args.model] or list(BUNDLED_MODELS.items())
        result = run_models(st, args.out, models, log)
    print((args.out / "memory_quality.md").read_text())
    print(f"wall {result['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
