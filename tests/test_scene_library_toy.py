"""The scene library on the bundled toy model (exact round trip, recall fidelity of a saved scene, the demo's
--save-scenes / --sequel) and from the command line (generate --save-scenes / --scene-library, scenes list|show|
save, errors)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from echo_core.cli import main
from echo_core.scene_library import load_scene, save_scene

ROOT = Path(__file__).resolve().parents[1]
A = "a red circle moving right on a blue striped background"
B = "a yellow triangle moving up and a white square standing still on a green checkered background"
A2 = "a red circle bouncing on a blue striped background"


@pytest.fixture(scope="module")
def bundle(one_thread):
    from echo_core.toy import load_toy_model

    b = load_toy_model()
    return b.with_sampler(denoising_steps=(1000.0, 500.0, 250.0))


class _Recorder:
    def __init__(self, seed):
        self.gen, self.draws = torch.Generator().manual_seed(seed), []

    def __call__(self, shape):
        self.draws.append(torch.randn(shape, generator=self.gen))
        return self.draws[-1]


def test_bundled_model_recalls_a_saved_scene_exactly_like_the_in_run_scene(bundle, tmp_path):
    """Run 1: A | B | A' recalling A; run 2: B | A' recalling the saved A by name, same noise for B and A'."""
    from echo_core.toy.scenes import start_toy_scene_run

    rec = _Recorder(11)
    run1 = start_toy_scene_run(bundle, f"{A} [1.5s#] | {B} [1.5s@1] | {A2} [1.5s]", noise=rec)
    lat1, rep1 = run1.run.collect()
    saved = load_scene(save_scene(run1.run.saved_scenes({0: "stripes"})[0], tmp_path / "stripes.safetensors"))
    per_chunk = len(rec.draws) // rep1["chunks"]
    replay = iter([d for c in (2, 3, 4, 5) for d in rec.draws[c * per_chunk:(c + 1) * per_chunk]])
    run2 = start_toy_scene_run(bundle, f"{B} [1.5s@stripes] | {A2} [1.5s]", saved=[saved],
                               noise=lambda shape: next(replay))
    lat2, rep2 = run2.run.collect()
    assert [s["chunks"] for s in rep1["scenes"]] == [2, 2, 2] and rep2["scenes"][1]["recall_saved_scene"] == "stripes"
    assert torch.equal(lat1[:, :, 12:], lat2[:, :, 6:])


def _bench():
    path = ROOT / "bench" / "memory_quality.py"
    if "memory_quality_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("memory_quality_bench", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["memory_quality_bench"] = module
        spec.loader.exec_module(module)  # puts bench/ on sys.path
    return sys.modules["memory_quality_bench"]


def test_recall_fidelity_of_a_saved_scene_matches_in_run_recall(bundle):
    """Reduced saved-scene rows of the memory benchmark (2 short timelines, 3 steps): the recall frame from a file
    gives the scene's details back as well as the in-run recall frame, far above the chance level."""
    bench = _bench()
    import mq_saved_scene

    from echo_core.toy.scorer import chance_level

    timelines = bench.make_timelines(2, 2.25, bench.BENCH_SEED)
    result = mq_saved_scene.run_saved_scene_bench(bundle, timelines, bundle.sampler_config, log=lambda s: None)
    table = result["table"]
    in_run = table["in run"]["recall_fidelity"]
    chance = sum(chance_level(t.specs[-1], height=bundle.height, width=bundle.width, base_seed=t.seed)
                 for t in timelines) / len(timelines)
    for variant in ("saved, after a cut", "saved, opening"):
        saved = table[variant]["recall_fidelity"]
        assert math.isfinite(saved) and abs(saved - in_run) < 0.15, (variant, saved, in_run)
        assert saved > chance + 0.3, (variant, saved, chance)
    lines = mq_saved_scene.markdown(table, result["file_mb"])
    assert any(line.startswith("| saved, opening |") for line in lines)


def test_demo_saves_its_scenes_and_the_sequel_opens_on_them(tmp_path, capsys):
    lib = tmp_path / "scenes"
    three = f"{A} [1s#] | {A2} [1s#] | {B} [1s]"
    assert main(["demo", "--out", str(tmp_path / "a.mp4"), "--timeline", three, "--steps", "1", "--scale", "1",
                 "--save-scenes", str(lib)]) == 0
    assert sorted(p.name for p in lib.iterdir()) == ["demo-1.safetensors", "demo-2.safetensors",
                                                     "demo-3.safetensors"]
    report = tmp_path / "sequel.json"
    assert main(["demo", "--sequel", "--scene-library", str(lib), "--out", str(tmp_path / "b.mp4"), "--steps", "1",
                 "--scale", "1", "--report", str(report)]) == 0
    scenes = json.loads(report.read_text())["scenes"]
    assert [s.get("recall_saved_scene") for s in scenes] == ["demo-1", None, "demo-3"]
    assert (tmp_path / "b.mp4").stat().st_size > 0
    assert main(["demo", "--sequel", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "--sequel: recalls the first demo's saved scenes" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ CLI
def _gen(tmp_path, timeline, *extra) -> int:
    return main(["generate", "--preset", "tiny-random", "--timeline", timeline, "--steps", "1000,500",
                 "--out", str(tmp_path / "v.safetensors"), *extra])


def test_cli_saves_lists_shows_imports_and_recalls_scenes(tmp_path, capsys):
    lib = tmp_path / "lib"
    assert _gen(tmp_path, "a red fox runs [1s#] | a blue bird sings [1s]", "--save-scenes", str(lib),
                "--scene-names", "1=fox,2=bird") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["saved_scenes"] == [str(lib / "fox.safetensors"), str(lib / "bird.safetensors")]
    assert main(["scenes", "list", str(lib), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["bird", "fox"] and rows[1]["prompt"] == "a red fox runs"
    assert main(["scenes", "show", "fox", "--library", str(lib)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["grid"] == [4, 4] and shown["kinds"] == ["compress"] and shown["tensor_count"] == 5
    assert shown["kv_bytes"] == 2 * 2 * 16 * 64 * 4 + 32 * 4  # K, V x 2 layers x 16 tokens x dim 64, fp32; feature
    assert main(["scenes", "save", str(lib / "fox.safetensors"), "--library", str(lib), "--name", "vixen"]) == 0
    assert load_scene(lib / "vixen.safetensors").name == "vixen"
    report = tmp_path / "r.json"
    assert _gen(tmp_path, "[@vixen] the red fox runs again [1s@bird] | a blue bird [1s]", "--scene-library", str(lib),
                "--scenes", "vixen,bird", "--report", str(report)) == 0
    scenes = json.loads(report.read_text())["scenes"]
    assert [s["recall_saved_scene"] for s in scenes] == ["vixen", "bird"]


@pytest.mark.parametrize("extra, needle", [
    (["--scene-library", "{lib}", "--scenes", "lynx"], "--scene-library: no saved scene named 'lynx'"),
    ([], "--scene-library: the timeline recalls saved scene(s) 'fox': give the folder"),
    (["--scenes", "fox"], "--scenes: choose saved scenes from a folder"),
    (["--scene-library", "{lib}", "--width", "128"], "scene_library: saved scene 'fox' was saved for a 4x4 token grid"),
    (["--scene-library", "{lib}", "--save-scenes", "{lib}", "--scene-names", "1=fox"], "--save-scenes: "),
    (["--scene-library", "{lib}", "--save-scenes", "{lib}", "--scene-names", "1=9x"], "--scene-names: '9x' is not"),
])
def test_cli_scene_errors_stop_before_the_run(tmp_path, capsys, extra, needle):
    lib = tmp_path / "lib"
    assert _gen(tmp_path, "a red fox runs [1s]", "--save-scenes", str(lib), "--scene-names", "1=fox") == 0
    capsys.readouterr()
    extra = [x.format(lib=lib) for x in extra]
    assert _gen(tmp_path, "[@fox] a red fox [1s]", *extra) == 2
    assert needle in capsys.readouterr().err
    (lib / "broken.safetensors").write_bytes(b"PK\x03\x04 a zip")
    assert _gen(tmp_path, "[@fox] a red fox [1s]", "--scene-library", str(lib)) == 2
    assert "not a scene file (a zip archive (torch.save))" in capsys.readouterr().err
