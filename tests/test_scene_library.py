"""Scene library (issue 18): saved scene files, recall of a saved scene by name / routing / at the opening, and
hostile files.

The round trips compare a run that recalls scene A from a saved file with a run where A was generated earlier in
the same video and recalled from the in-run pool. What a recall reads, and why the two runs are equal by
construction:

* the memory inserted: A's recall frame per layer - the saved file holds exactly the tensors of run 1's pool;
* the RoPE jump (similarity strategy): the similarities of the destination prompt to every pool candidate - the
  saved scene's prompt joins the router's prompts, so with an encoder function the common-word filter and the
  features are those of run 1 when the prompt multisets are equal (run 1: A, B, A'; run 2: B, A' + saved A);
* the candidates' order (first on ties): saved scenes precede the run's own in the pool, as A preceded B;
* the noise of the compared chunks: run 2 replays run 1's draws for the same scenes (`Replay`);
* nothing else: a recall switch rebuilds the window from [recall frame] alone (no old recent frames), resets
  the history ring, calibration, anchor source and decay, and queries sit at scene-local times.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from echo_core.errors import EchoError, SpecError
from echo_core.model.config import get_preset
from echo_core.model.fingerprint import weights_fingerprint
from echo_core.model.wan import CausalWanModel
from echo_core.run import RunInputs, start_run
from echo_core.sampler import SamplerConfig
from echo_core.scene_library import (
    SceneFileError,
    list_library,
    load_library,
    load_scene,
    save_scene,
    scene_bytes,
)
from echo_core.text_standin import standin_embedding
from echo_core.timeline import parse_timeline

A, B = "a red fox runs in the snow", "a blue bird sings on a branch"
A2 = "the red fox runs in the snow again"
SAMPLER = SamplerConfig(denoising_steps=(1000.0, 500.0))


@pytest.fixture(scope="module")
def tiny(one_thread):
    torch.manual_seed(0)
    return CausalWanModel(get_preset("tiny")).eval()


class Recorder:
    """Seeded noise that keeps every draw (run 1)."""

    def __init__(self, seed: int):
        self.gen, self.draws = torch.Generator().manual_seed(seed), []

    def __call__(self, shape):
        self.draws.append(torch.randn(shape, generator=self.gen))
        return self.draws[-1]


class Replay:
    """Run 2's noise: its chunk c gets run 1's draws of chunk `chunks[c]` (the same count of draws per chunk)."""

    def __init__(self, rec: Recorder, run1_chunks: int, chunks: list[int]):
        assert len(rec.draws) % run1_chunks == 0
        self.rec, self.per_chunk, self.chunks, self.n = rec, len(rec.draws) // run1_chunks, chunks, 0

    def __call__(self, shape):
        c, j = divmod(self.n, self.per_chunk)
        self.n += 1
        return self.rec.draws[self.chunks[c] * self.per_chunk + j]


def _inputs(model, text, saved=(), *, latent=(16, 4, 4), seed=3, sampler=SAMPLER, encode=None, **kw) -> RunInputs:
    cfg = model.cfg
    tl = parse_timeline(text, total_latent_frames=None, frames_per_chunk=sampler.frames_per_chunk)
    ctx = tuple(standin_embedding(s.prompt, cfg.text_dim, 16) for s in tl.scenes)
    encode = encode or (lambda texts: [standin_embedding(t, cfg.text_dim, 16)[0] for t in texts])
    return RunInputs(tl, ctx, latent, seed=seed, sampler=sampler, routing_features=encode,
                     saved_scenes=tuple(saved), **kw)


def _chunks_of(report) -> list[tuple[int, int]]:
    return [(s["start_chunk"], s["start_chunk"] + s["chunks"]) for s in report["scenes"]]


def _round_trip(model, tmp_path, marker: str, **kw):
    """Run 1: A | B | A' recalling A (`marker` '@1' by hand or '@' routed); A saved and loaded back. Run 2: B | A'
    with A pre-loaded, recalling it ('@fox' by name or '@' routed). Returns the two A' latents and reports."""
    rec = Recorder(3)
    run1 = start_run(model, "echo", _inputs(model, f"{A} [1.5s#] | {B} [1.5s{marker}] | {A2} [1.5s]", **kw),
                     noise=rec)
    lat1, rep1 = run1.collect()
    fox = load_scene(save_scene(run1.saved_scenes({0: "fox"})[0], tmp_path / "fox.safetensors"))
    (_, _), (b0, b1), (a0, a1) = _chunks_of(rep1)
    text2 = f"{B} [1.5s{'@fox' if marker == '@1' else marker}] | {A2} [1.5s]"
    run2 = start_run(model, "echo", _inputs(model, text2, [fox], **kw),
                     noise=Replay(rec, rep1["chunks"], list(range(b0, b1)) + list(range(a0, a1))))
    lat2, rep2 = run2.collect()
    f = lat1.shape[2] // rep1["chunks"]
    return lat1[:, :, a0 * f:], lat2[:, :, (b1 - b0) * f:], rep1, rep2


@pytest.mark.parametrize("marker", ["@1", "@"])
def test_a_saved_scene_recalls_exactly_like_the_in_run_scene(tiny, tmp_path, marker):
    in_run, saved, rep1, rep2 = _round_trip(tiny, tmp_path, marker)
    assert in_run.shape == saved.shape and torch.equal(in_run, saved)
    assert rep1["scenes"][2]["recall_source"] == 1 and rep2["scenes"][1]["recall_saved_scene"] == "fox"
    assert rep1["scenes"][2]["rope_jump"] == rep2["scenes"][1]["rope_jump"]
    assert "saved scene 'fox'" in rep2["scenes"][1]["memory"]


def test_a_video_can_open_with_a_saved_scene_as_after_a_recall_switch(tiny):
    """[@fox] A' equals the A' of 'A | A'' recalling A: the opening starts from [recall frame] like a switch."""
    rec = Recorder(5)
    run1 = start_run(tiny, "echo", _inputs(tiny, f"{A} [1.5s@1] | {A2} [1.5s]"), noise=rec)
    lat1, rep1 = run1.collect()
    fox = run1.saved_scenes({0: "fox"})[0]  # in memory, no file: the same tensors
    (_, _), (a0, a1) = _chunks_of(rep1)
    run2 = start_run(tiny, "echo", _inputs(tiny, f"[@fox] {A2} [1.5s]", [fox]),
                     noise=Replay(rec, rep1["chunks"], list(range(a0, a1))))
    lat2, rep2 = run2.collect()
    assert torch.equal(lat1[:, :, a0 * 3:], lat2)
    assert rep2["scenes"][0]["transition"] == "recall" and rep2["scenes"][0]["recall_saved_scene"] == "fox"
    assert rep2["chunk_reports"][0]["layout"][0].startswith("M:recall frame of saved scene")


def test_routing_chooses_among_saved_and_in_run_scenes_and_hardcuts_ignore_saved_ones(tiny):
    run = start_run(tiny, "echo", _inputs(tiny, f"{A} [1.5s#] | {B} [1.5s]"))
    run.collect()
    fox, bird = run.saved_scenes({0: "fox", 1: "bird"})
    # A hard cut takes the scene that just ended, never a saved one; the routed recall finds the fox.
    text = f"a grey cat sleeps [1.5s#] | a blue bird flies [1.5s@] | {A2} [1.5s]"
    rep = start_run(tiny, "echo", _inputs(tiny, text, [fox, bird])).collect()[1]
    assert rep["scenes"][1]["memory"] == "recall frame of scene 0"
    assert rep["scenes"][2].get("recall_saved_scene") == "fox"
    scores = rep["chunk_reports"][rep["scenes"][2]["start_chunk"]]["transition"]["routing"]["candidates"]
    assert scores == [3, 4, 0, 1]  # saved scenes first (index = timeline scenes + position), then the run's


def test_file_round_trip_is_bit_exact_and_the_size_is_the_formula(tiny, tmp_path):
    run = start_run(tiny, "echo", _inputs(tiny, f"{A} [1.5s#] | {B} [1.5s]", sampler=SAMPLER))
    run.collect()
    scene = run.saved_scenes({1: "bird"})[0]
    path = save_scene(scene, tmp_path / "bird.safetensors")
    back = load_scene(path)
    assert all(torch.equal(x, y) for x, y in zip(scene.tensors().values(), back.tensors().values()))
    assert back.meta == scene.meta and back.meta.kinds == ("compress",)  # first frames: only if a mode uses them
    assert back.meta.model_fingerprint == weights_fingerprint(tiny, tiny.cfg)
    assert back.meta.source["scene"] == 2 and back.meta.source["seed"] == 3 and back.prompt == B
    assert save_scene(scene, tmp_path / "again.safetensors").read_bytes() == path.read_bytes()  # reproducible
    kv = scene_bytes(tiny.cfg, (16, 4, 4), (2, 2), torch.float32, back.meta.kinds)
    assert back.nbytes() == kv + back.routing_feature.numel() * 4
    # Wan2.1 1.3B at 832x480, bf16, the recall frame alone: 0.29 GB per scene (issue target <= 0.3 GB).
    assert scene_bytes(get_preset("wan2.1-t2v-1.3b"), (16, 60, 104)) == 287_539_200
    assert load_scene(path, name="robin").name == "robin"
    assert [m.name for _, m in list_library(tmp_path)] == ["bird", "bird"]
    with pytest.raises(EchoError, match="two scene files are named 'bird'"):
        load_library(tmp_path)


# ------------------------------------------------------------------------------------------------ refusals
@pytest.fixture(scope="module")
def saved_fox(tiny, tmp_path_factory):
    run = start_run(tiny, "echo", _inputs(tiny, f"{A} [1.5s#] | {B} [1.5s]"))
    run.collect()
    path = tmp_path_factory.mktemp("lib") / "fox.safetensors"
    return save_scene(run.saved_scenes({0: "fox"})[0], path)


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _refused(model, path: Path, text=f"{B} [1.5s@fox] | {A2} [1.5s]", latent=(16, 4, 4), **kw) -> SceneFileError:
    """Loading or starting a run with the file fails before any chunk, with a SceneFileError."""
    with pytest.raises(SceneFileError) as e:
        start_run(model, "echo", _inputs(model, text, [load_scene(path)], latent=latent, **kw))
    return e.value


def test_a_scene_for_other_weights_an_other_architecture_grid_or_chunk_size_is_refused(tiny, saved_fox):
    torch.manual_seed(1)
    other = CausalWanModel(get_preset("tiny")).eval()
    assert _refused(other, saved_fox).key == "model_fingerprint"
    wider = CausalWanModel(replace(get_preset("tiny"), num_heads=4)).eval()
    assert _refused(wider, saved_fox).key == "model.num_heads"
    e = _refused(tiny, saved_fox, latent=(16, 8, 4))
    assert e.key == "latent_grid" and "2x2 token grid" in str(e) and "4x2" in str(e)
    one = SamplerConfig(denoising_steps=(1000.0,), frames_per_chunk=1)
    assert _refused(tiny, saved_fox, sampler=one).key == "frames_per_chunk"


def test_a_name_the_run_has_not_loaded_is_an_error_before_the_first_chunk(tiny, saved_fox):
    with pytest.raises(SpecError, match="'lake', which is not loaded; load it \\(loaded: \\['fox'\\]\\)"):
        start_run(tiny, "echo", _inputs(tiny, f"{B} [1.5s@lake] | {A2} [1.5s]", [load_scene(saved_fox)]))
    with pytest.raises(SpecError, match="'fox', which is not loaded"):
        start_run(tiny, "echo", _inputs(tiny, f"[@fox] {A2} [1.5s]"))
    with pytest.raises(SpecError, match=r"opens with a recall of a saved scene \(\[@\]\) but no saved scene"):
        start_run(tiny, "echo", _inputs(tiny, f"[@] {A2} [1.5s]"))
    fox = load_scene(saved_fox)
    contexts = tuple(standin_embedding(p, 32, 16) for p in (B, A2))  # precomputed embeddings, not an encoder
    narrow = replace(fox, routing_feature=torch.ones(7))
    with pytest.raises(SpecError, match="'fox' has a 7-wide routing embedding, this run's are 32-wide"):
        start_run(tiny, "echo", replace(_inputs(tiny, f"{B} [1.5s@fox] | {A2} [1.5s]", [narrow]),
                                        routing_features=contexts))
    # Baselines have no pool: they ignore saved scenes and names, as they ignore recalls.
    start_run(tiny, "rolling", _inputs(tiny, f"{B} [1.5s@lake] | {A2} [1.5s]")).close()


def test_hostile_and_broken_files_are_refused_without_running_anything(tiny, saved_fox, tmp_path):
    marker = tmp_path / "executed"
    boom = _Boom()
    boom.marker = marker
    bad = {
        "pickle.safetensors": pickle.dumps({"compress.0.k": boom}),
        "torchsave.safetensors": None,
        "truncated.safetensors": saved_fox.read_bytes()[:-100],
        "padded.safetensors": saved_fox.read_bytes() + b"\0" * 8,
        "empty.safetensors": b"",
        "huge_header.safetensors": struct.pack("<Q", 1 << 40) + b"{}",
    }
    for name, data in bad.items():
        path = tmp_path / name
        if data is None:
            torch.save({"compress.0.k": boom}, path)
        else:
            path.write_bytes(data)
        with pytest.raises(SceneFileError) as e:
            load_scene(path)
        assert str(path) in str(e.value)
    assert not marker.exists()  # nothing was unpickled

    def rewrite(name: str, meta_edit=None, tensor_edit=None) -> Path:
        from safetensors.torch import load_file, safe_open

        from echo_core.safetensors_out import write_safetensors

        with safe_open(str(saved_fox), framework="pt") as f:
            meta = dict(f.metadata())
        tensors = load_file(str(saved_fox))
        (meta_edit or (lambda m: None))(meta)
        (tensor_edit or (lambda t: None))(tensors)
        write_safetensors(tmp_path / name, tensors, meta)
        return tmp_path / name

    cases = {
        "format": rewrite("a.safetensors", lambda m: m.update(format="something-else")),
        "format_version": rewrite("b.safetensors", lambda m: m.update(format_version="99")),
        "model": rewrite("c.safetensors", lambda m: m.update(model="[1, 2]")),
        "name": rewrite("d.safetensors", lambda m: m.update(name="../../etc")),
        "tensors": rewrite("e.safetensors", tensor_edit=lambda t: t.pop("compress.1.v")),
        "latent_shape": rewrite("f.safetensors", lambda m: m.update(latent_shape="[16, 8, 4]")),
        "model_fingerprint": rewrite("g.safetensors", lambda m: m.update(model_fingerprint="x")),
    }
    for key, path in cases.items():
        with pytest.raises(SceneFileError) as e:
            load_scene(path)
        assert e.value.key == ("tensors" if key == "latent_shape" else key), (key, str(e.value))
    nan = rewrite("nan.safetensors", tensor_edit=lambda t: t["compress.0.k"].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(SceneFileError, match="NaN"):
        load_scene(nan)
    listed = dict((p.name, m) for p, m in list_library(tmp_path))
    assert isinstance(listed["pickle.safetensors"], SceneFileError) and listed["f.safetensors"].name == "fox"


def test_export_needs_a_finished_run(tiny):
    run = start_run(tiny, "echo", _inputs(tiny, f"{A} [1.5s#] | {B} [1.5s]"))
    next(iter(run))
    with pytest.raises(RuntimeError, match="still going"):
        run.saved_scenes()
    run.close()  # an interrupted run keeps its finished scenes
    assert [s.name for s in run.saved_scenes()] == []
    with pytest.raises(SpecError, match="left no memory"):
        run.saved_scenes({1: "bird"})


# ------------------------------------------------------------------------------------------------ real geometry
def test_opening_recall_round_trip_at_the_real_token_geometry_in_bf16(tmp_path):
    """1560 tokens per frame (832x480: a 30x52 grid), 3-frame chunks, 128-dim heads, bf16 K/V; one layer."""
    cfg = replace(get_preset("wan2.1-t2v-1.3b"), num_layers=1, dim=256, num_heads=2, ffn_dim=256, text_len=16)
    torch.manual_seed(0)
    model = CausalWanModel(cfg).eval().to(torch.bfloat16)
    sampler = SamplerConfig(denoising_steps=(1000.0,))
    kw = dict(latent=(16, 60, 104), sampler=sampler)
    t0 = time.perf_counter()
    rec = Recorder(7)
    run1 = start_run(model, "echo", _inputs(model, f"{A} [0.75s@1] | {A2} [0.75s]", **kw), noise=rec)
    lat1, rep1 = run1.collect()
    path = save_scene(run1.saved_scenes({0: "fox"})[0], tmp_path / "fox.safetensors")
    fox = load_scene(path)
    assert fox.compress[0][0].shape == (1, 2, 1560, 128) and fox.compress[0][0].dtype == torch.bfloat16
    run2 = start_run(model, "echo", _inputs(model, f"[@fox] {A2} [0.75s]", [fox], **kw),
                     noise=Replay(rec, rep1["chunks"], [1]))
    lat2, rep2 = run2.collect()
    assert rep1["chunks"] == 2 and torch.equal(lat1[:, :, 3:], lat2)
    assert rep2["scenes"][0]["rope_jump"] == rep1["scenes"][1]["rope_jump"]
    assert json.loads(json.dumps(rep2["scenes"]))[0]["recall_saved_scene"] == "fox"
    assert time.perf_counter() - t0 < 120
