"""Recall of a saved scene (scene library) on the bundled toy model: the memory benchmark's saved-scene rows.

For each held-out bench timeline (A, A', B, C, then a recall of X = A or B) under Echo-Forcing with the node
defaults:

* in run: the timeline itself (the benchmark's echo run: same seed and sampler); X's recall fidelity as the
  benchmark measures it (`mq.recall_fidelity` of the recalled scene to X's first appearance);
* saved, after a cut: X is exported from that run, written to a scene file and read back; a new video
  "C [s@saved] | X [s]" (same seed) recalls it by name after the same scene C;
* saved, opening: a new video "[@saved] X [s]" (same seed) opens on the saved scene.

Fidelity is measured against the first run's first appearance of X in all three, so the rows differ only by
where the recall frame came from and by the noise of the recalled chunks (the new videos are shorter, so their
chunks draw other noise): "equal within noise" means the saved rows fall within the spread of the in-run values.

    python bench/mq_saved_scene.py --out bench/results/saved_scene.md   # these rows alone (about 2 minutes)
    python bench/mq_saved_scene.py --timelines 2                         # a reduced run

(bench/memory_quality.py calls run_saved_scene_bench and appends the rows to its report.)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

for _path in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:
        sys.path.append(_path)

import mq_metrics as mq  # noqa: E402

from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.scene_library import load_scene, save_scene  # noqa: E402
from echo_core.session import MemorySpec  # noqa: E402
from echo_core.toy.grammar import describe  # noqa: E402
from echo_core.toy.loader import ToyBundle  # noqa: E402
from echo_core.toy.scenes import start_toy_scene_run  # noqa: E402

VARIANTS = ("in run", "saved, after a cut", "saved, opening")


def _render(bundle: ToyBundle, text: str, seed: int, sampler: SamplerConfig, saved=()) -> tuple[Any, mq.RunFrames]:
    run = start_toy_scene_run(bundle, text, saved=saved, policy=MemorySpec(), seed=seed, sampler=sampler)
    frames, ranges = [], []
    with torch.inference_mode():
        for chunk in run:
            ranges.append((chunk.first_frame, chunk.first_frame + chunk.frames.shape[0]))
            frames.append(chunk.frames)
    return run, mq.RunFrames(torch.cat(frames), ranges, run.run.reports)


def saved_scene_metrics(bundle: ToyBundle, tl: Any, sampler: SamplerConfig, folder: Path) -> dict[str, Any]:
    """Recall fidelity of X in run, from a saved file after a cut, and from a saved file at the opening, for one
    bench timeline (`memory_quality.BenchTimeline`)."""
    run, frames = _render(bundle, tl.text, tl.seed, sampler)
    timeline = run.timeline
    chunks = [(s.start_chunk, s.end_chunk) for s in timeline.scenes]
    ref = frames.scene_frames(*chunks[tl.recall_source])
    target = tl.specs[-1]
    out = {"in run": mq.recall_fidelity(frames.scene_frames(*chunks[-1]), target, ref)}
    path = save_scene(run.run.saved_scenes({tl.recall_source: "saved"})[0], folder / f"timeline{tl.index}.safetensors")
    saved = load_scene(path)
    out["file_mb"] = path.stat().st_size / 2**20
    seconds = f"{tl.seconds:g}s"
    texts = {"saved, after a cut": f"{describe(tl.specs[3])} [{seconds}@saved] | {describe(target)} [{seconds}]",
             "saved, opening": f"[@saved] {describe(target)} [{seconds}]"}
    for variant, text in texts.items():
        run2, frames2 = _render(bundle, text, tl.seed, sampler, [saved])
        last = run2.timeline.scenes[-1]
        out[variant] = mq.recall_fidelity(frames2.scene_frames(last.start_chunk, last.end_chunk), target, ref)
        memory = run2.report()["scenes"][-1].get("memory", "")
        assert "saved scene 'saved'" in memory, memory  # the recall really read the file's scene
    return out


def summarise(per_timeline: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over timelines, per variant."""
    table = {}
    for v in VARIANTS:
        xs = [t[v] for t in per_timeline]
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else float("nan")
        table[v] = {"recall_fidelity": mean, "sd": sd, "timelines": len(xs)}
    return table


def markdown(table: dict[str, dict[str, float]], file_mb: float,
             per_timeline: list[dict[str, Any]] | None = None) -> list[str]:
    """The saved-scene rows of the benchmark report (and, given `per_timeline`, the values per timeline)."""
    lines = ["", "## Recall of a saved scene (scene library)", "",
             "Echo-Forcing's recall fidelity of the recalled scene X (as above) when its recall frame comes from this "
             "video's pool (in run, the echo row), or from a scene file written by that run and read back into a "
             "new video (same seed) that recalls it after scene C, or opens on it (`[@name]`). Equal within noise "
             "means the saved rows lie within the in-run spread over timelines.", "",
             "| recall frame from | recall fidelity | sd over timelines | timelines |", "|---|---|---|---|"]
    for v, r in table.items():
        sd = "-" if math.isnan(r["sd"]) else f"{r['sd']:.3f}"
        lines.append(f"| {v} | {r['recall_fidelity']:.3f} | {sd} | {r['timelines']} |")
    if per_timeline:
        lines += ["", "Per timeline: " + "; ".join(
            f"{i + 1}: " + " / ".join(f"{t[v]:.2f}" for v in VARIANTS) for i, t in enumerate(per_timeline))
            + f" ({' / '.join(VARIANTS)})."]
    lines += ["", f"Scene file size on the toy model: {file_mb * 1024:.1f} KB (Wan2.1 1.3B at 832x480 in bf16: "
                  "287.5 MB = 0.29 GB per scene, one recall frame of K and V per layer)."]
    return lines


def run_saved_scene_bench(bundle: ToyBundle, timelines: list[Any], sampler: SamplerConfig, log=print
                          ) -> dict[str, Any]:
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for tl in timelines:
            rows.append(saved_scene_metrics(bundle, tl, sampler, Path(tmp)))
            log(f"saved scene: timeline {tl.index + 1}/{len(timelines)} ({time.perf_counter() - t0:.0f} s)")
    return {"per_timeline": rows, "table": summarise(rows), "file_mb": rows[0]["file_mb"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    from dataclasses import replace

    from memory_quality import FULL, make_timelines

    from echo_core.toy.loader import load_toy_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timelines", type=int, default=FULL.timelines, help="held-out bench timelines (default 10)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: the model's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows (markdown) and a .json beside")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_toy_model()
    sampler = bundle.sampler_config
    if args.steps is not None:
        sampler = replace(sampler, denoising_steps=tuple(1000.0 * (args.steps - i) / args.steps
                                                         for i in range(args.steps)))
    timelines = make_timelines(args.timelines, FULL.scene_seconds, FULL.seed)
    result = run_saved_scene_bench(bundle, timelines, sampler, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = "\n".join(markdown(result["table"], result["file_mb"], result["per_timeline"]))
    print(text)
    if args.out is not None:
        head = (f"`python bench/mq_saved_scene.py --timelines {args.timelines}` - {args.timelines} of the "
                f"benchmark's {FULL.timelines} held-out timelines, {len(sampler.denoising_steps)} denoising steps per "
                f"chunk, {args.threads} torch thread(s), {result['wall_s']:.0f} s.\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(head + text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({**result, "timelines": [tl.text for tl in timelines]},
                                                            indent=1))
    print(f"wall {result['wall_s']} s, {len(sampler.denoising_steps)} steps per chunk", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
