"""bench/memory_quality.py: the metrics on ground-truth clips, the held-out timelines, and the --quick run end to end
(all policies in the table, every metric in its range, same numbers twice)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "memory_quality.py"
POLICIES = ["rolling", "flush", "echo", "echo-no-hier", "echo-no-recall", "echo-no-decay"]


def _load():
    if "memory_quality_bench" in sys.modules:
        return sys.modules["memory_quality_bench"]
    spec = importlib.util.spec_from_file_location("memory_quality_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_quality_bench"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)  # puts bench/ on sys.path, so mq_metrics imports below
    return module


def _clips(specs_seeds, frames_each=24, size=48):
    """Concatenated ground-truth clips and their chunk ranges (12 frames per chunk)."""
    from echo_core.toy.world import render_clip

    frames = torch.cat([render_clip(s, seed, frames_each, height=size, width=size) for s, seed in specs_seeds])
    ranges = [(a, a + 12) for a in range(0, frames.shape[0], 12)]
    return frames, ranges


def test_metrics_on_ground_truth_clips():
    _load()
    import mq_metrics as mq

    from echo_core.toy.grammar import sample_spec, smooth_variant

    a = sample_spec(11)
    b = next(s for s in (sample_spec(12 + i) for i in range(50)) if s.appearance() != a.appearance())
    a2 = smooth_variant(a, 3)
    # A (2 chunks) -> B (2 chunks) cleanly: the cut shows B at once, nothing of A remains
    frames, ranges = _clips([(a, 5), (b, 6)])
    run = mq.RunFrames(frames, ranges)
    cands = mq.candidate_set(b, [a], seed=1)
    assert mq.switch_response(run, 2, 4, b, cands) == (0, True)
    assert mq.contamination(run, 2, 4, a, cands, window=24) == 0.0
    # a "cut" that keeps showing A: never reached, fully contaminated
    stuck = mq.RunFrames(torch.cat([frames[:24], frames[:24]]), ranges)
    assert mq.switch_response(stuck, 2, 4, b, cands) == (2, False)
    assert mq.contamination(stuck, 2, 4, a, cands, window=24) == 1.0
    # detail carry-over: B with A's seed (A's landmarks) copies them; B with its own seed does not
    copied = mq.RunFrames(_clips([(a, 5), (b, 5)])[0], ranges)
    assert mq.detail_carryover(copied, 2, 4, b, frames[20:24], window=24) > 0.8
    assert mq.detail_carryover(run, 2, 4, b, frames[20:24], window=24) < 0.4
    # a smooth variant keeps its objects; a cut to B does not keep A's
    smooth = mq.RunFrames(_clips([(a, 5), (a2, 5)])[0], ranges)
    assert mq.continuity(smooth, 2, 4, a2, window=24) == 1.0
    assert mq.continuity(run, 2, 4, a, window=24) < 0.5
    # recall fidelity: same seed's details match far better than another seed's
    same = mq.recall_fidelity(_clips([(a, 5)])[0], a, _clips([(a, 5)], 16)[0])
    other = mq.recall_fidelity(_clips([(a, 9)])[0], a, _clips([(a, 5)], 16)[0])
    assert same > 0.8 and other < same - 0.3
    st = mq.stability(torch.cat([frames[:24], frames[24:]]), mq.candidate_set(a, [], 2), a, window=24)
    assert st["first"] == 1.0 and st["last"] == 0.0 and st["drop"] == 1.0


def test_held_out_timelines():
    bench = _load()
    from echo_core.toy.demo import DEMO_TIMELINE
    from echo_core.toy.evaluate import EVAL_SEED

    assert bench.BENCH_SEED != EVAL_SEED
    tls = bench.make_timelines(4, 7.0)
    assert [t.text for t in tls] == [t.text for t in bench.make_timelines(4, 7.0)]  # fixed seed
    assert len({t.text for t in tls}) == 4 and DEMO_TIMELINE not in {t.text for t in tls}
    demo_prompts = {p.split("[")[0].strip() for p in DEMO_TIMELINE.split("|")}
    for t in tls:
        s = t.specs
        assert len(s) == 5 and "[7s]" in t.text and t.text.count("#]") == 2 and t.text.count("@]") == 1
        assert s[1].appearance() == s[0].appearance() and s[1] != s[0]  # smooth: same objects, new motion
        assert len({s[0].appearance(), s[2].appearance(), s[3].appearance()}) == 3  # cuts go somewhere new
        assert s[4] == s[t.recall_source] and t.recall_source in (0, 2)
        assert not demo_prompts & {p.split("[")[0].strip() for p in t.text.split("|")}
    assert {t.recall_source for t in tls} == {0, 2}


def _quick(out: Path) -> dict:
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--out", str(out),
                           "--weights", str(ROOT / "echo_core" / "toy" / "weights")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "memory_quality.json").read_text())


def test_quick_run_end_to_end(tmp_path):
    result = _quick(tmp_path / "a")
    table = result["table"]
    assert list(table) == POLICIES == result["policies"]
    scene_chunks = 3  # 2.25 s scenes at 12 video frames per chunk
    for name, r in table.items():
        assert 0 <= r["switch_response_chunks"] <= scene_chunks, name
        assert r["switches"] == 3 and 0 <= r["switch_missed"] <= 3
        for key in ("contamination", "detail_carryover", "continuity", "recall_fidelity", "recall_vs_other_seed",
                    "stability_first", "stability_last"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
        assert math.isclose(r["stability_drop"], r["stability_first"] - r["stability_last"], abs_tol=1e-9)
        assert r["chunk_ms"] > 0 and r["cache_kb"] > 0
        assert (r["routing_correct"] is None) == (name in ("rolling", "flush", "echo-no-recall"))
        assert (r["pool_kb"] > 0) == (name not in ("rolling", "flush", "echo-no-recall"))
    # echo against itself is 0; an ablation that changes nothing would be 0 too (no-recall never is: it inserts nothing)
    assert table["echo"]["frames_vs_echo"] == 0.0 and table["echo-no-recall"]["frames_vs_echo"] > 1e-3
    assert all(0.0 <= r["frames_vs_echo"] < 1.0 for r in table.values())
    # same window, same K/V bytes for the two baselines; Echo's chance level is the scorer's
    assert table["flush"]["cache_kb"] == table["rolling"]["cache_kb"]
    assert 0.0 < result["chance_gt"] < 0.6
    md = (tmp_path / "a" / "memory_quality.md").read_text()
    for name in POLICIES:
        assert f"| {name} |" in md
    for header in ("switch response", "contamination", "detail carry-over", "continuity", "recall fidelity",
                   "frames vs echo", "ms/chunk", "cache KB"):
        assert header in md
    assert "Verdict" in md and "chance" in md.lower()
    # every mechanism has a metric family, every comparison a paired interval, and the model is named
    for name, r in table.items():
        for key in ("linger", "late_detail", "late_objects"):
            assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
    assert set(result["paired"]) == {"echo - rolling", "echo - flush", "echo-no-hier - echo",
                                     "echo-no-recall - echo", "echo-no-decay - echo"}
    for rows in result["paired"].values():
        for metric, p in rows.items():
            assert p["n"] == 1 and p["lo"] <= p["mean"] <= p["hi"], metric
            assert p["claim"] == "no difference shown"  # one timeline supports no claim
    assert result["model"]["world"] == "v1" and result["model"]["data_mode"] == "layouts"
    assert "bootstrap 95% interval" in md and "linger" in md and "trained on Echo-Forcing's cache layouts" in md
    from PIL import Image

    with Image.open(tmp_path / "a" / "memory_quality.png") as img:
        assert img.width > 800 and img.height > 600
    # deterministic: a second run gives the same metrics (timing aside)
    again = _quick(tmp_path / "b")
    timing = ("chunk_ms",)
    for name in POLICIES:
        a = {k: v for k, v in table[name].items() if k not in timing}
        b = {k: v for k, v in again["table"][name].items() if k not in timing}
        assert a == b, name


def test_paired_intervals_claim_only_what_they_support():
    _load()
    import mq_stats

    rng = np.random.default_rng(0)
    base = rng.random(30)
    lower = mq_stats.paired(base - 0.05 - 0.01 * rng.random(30), base)
    assert lower.n == 30 and lower.lower == 30 and lower.hi < 0 and mq_stats.claim(lower, "lower") == "better"
    assert mq_stats.claim(lower, "higher") == "worse"
    noise = mq_stats.paired(base + rng.normal(0, 0.05, 30), base)
    assert noise.lo < noise.mean < noise.hi
    # one frame in 64 on a few timelines, tied elsewhere: the interval must not exclude 0 when signs are mixed
    mixed = mq_stats.paired([0.0, 1 / 64, -1 / 64, 0.0, 1 / 64, -1 / 64], [0.0] * 6)
    assert mixed.ties == 2 and mq_stats.claim(mixed, "lower") == "no difference shown"
    with_missing = mq_stats.paired([0.1, None, 0.3], [0.0, 0.5, float("nan")])
    assert with_missing.n == 1 and not with_missing.supports("higher")  # one timeline is no evidence
    with pytest.raises(ValueError, match="one entry per timeline"):
        mq_stats.paired([0.1], [0.1, 0.2])


def test_mechanism_timelines_and_their_metrics_on_ground_truth():
    bench = _load()
    import mq_metrics as mq

    from echo_core.toy.grammar import SHAPES_V2

    decay = bench.make_decay_timelines(6, 3.0, world="v2")
    assert [d.text for d in decay] == [d.text for d in bench.make_decay_timelines(6, 3.0, world="v2")]
    for d in decay:
        assert (d.after.background, d.after.pattern) == (d.before.background, d.before.pattern)
        assert d.after.objects[0] == d.before.objects[0] and d.after.objects[1] != d.before.objects[1]
        assert d.gone.objects[0].colour == d.before.objects[1].colour
        assert all(o.shape in SHAPES_V2 for o in d.before.objects + d.after.objects)
        assert d.text.count("|") == 1 and "#" not in d.text and "@" not in d.text  # a smooth switch
    hier = bench.make_hier_timelines(2, 45.0, world="v2")
    assert all(text.endswith("[45s]") for _, _, text in hier)
    # linger: 1 while the dropped object is still drawn after the switch, 0 once the new scene has replaced it
    d = decay[0]
    frames, ranges = _clips([(d.before, 5), (d.after, 5)])
    run = mq.RunFrames(frames, ranges)
    assert mq.linger(run, 2, 4, d.gone, window=24) == 0.0
    stuck = mq.RunFrames(torch.cat([frames[:24], frames[:24]]), ranges)
    assert mq.linger(stuck, 2, 4, d.gone, window=24) == 1.0
    # late memory: a long ground-truth scene keeps its details and objects; another seed's details do not match
    spec = hier[0][0]
    same = torch.cat([_clips([(spec, 3)])[0], _clips([(spec, 3)])[0]])
    other = torch.cat([_clips([(spec, 3)])[0], _clips([(spec, 99)])[0]])
    kept, lost = mq.late_memory(same, spec, 24), mq.late_memory(other, spec, 24)
    assert kept["objects"] == 1.0 and kept["detail"] > 0.8 and lost["detail"] < kept["detail"] - 0.3


def test_the_default_run_benchmarks_both_bundled_models_main_subject_first(monkeypatch, tmp_path):
    """No --model and no --weights: the training-free model's row set first, then the layout-aware one, and the
    combined report says which model each row set comes from."""
    bench = _load()
    from echo_core.toy.loader import BUNDLED_MODELS

    calls = []

    def fake_run(st, out_dir, weights, log=print, label=None):  # generation is tested by the --quick run above
        from echo_core.toy import load_toy_model

        calls.append(weights)
        b = load_toy_model(weights)
        out_dir.mkdir(parents=True, exist_ok=True)
        res = {"model": {"world": b.world, "data_mode": b.data_mode, "weights": str(weights), "label": label},
               "wall_s": 1.0}
        bench.write_report(res, out_dir / "memory_quality.md")
        return res

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    monkeypatch.setattr(bench, "write_markdown",
                        lambda res, path: path.write_text(f"# rows of {res['model']['label']}\n"))
    assert bench.main(["--out", str(tmp_path)]) == 0
    assert calls == list(BUNDLED_MODELS.values())
    md = (tmp_path / "memory_quality.md").read_text()
    assert md.index("**training-free** (main subject)") < md.index("**layout-aware** (second row set)")
    assert "data mode self_forcing (never shown Echo-Forcing's cache layouts)" in md
    assert md.index("# rows of training-free") < md.index("# rows of layout-aware")
    combined = json.loads((tmp_path / "memory_quality.json").read_text())
    assert list(combined["models"]) == ["training-free", "layout-aware"]
    with pytest.raises(SystemExit):  # one model or several, not both
        bench.main(["--out", str(tmp_path), "--weights", str(BUNDLED_MODELS["layout-aware"]),
                    "--model", f"x={BUNDLED_MODELS['layout-aware']}"])
