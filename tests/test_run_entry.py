"""The one entry into a run (echo_core.run): policies in every form, noise replay, per-step x0, total length, and
the front ends (CLI, nodes, toy demo, benches) all coming in through it."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echo_core.cache.echo.policy import EchoCache
from echo_core.cli import main
from echo_core.config import ConfigError, EchoConfig
from echo_core.run import PolicyContext, RunInputs, echo_config_for, start_run
from echo_core.sampler import SamplerConfig
from echo_core.session import MemorySpec
from echo_core.text_standin import standin_embedding
from echo_core.timeline import parse_timeline

ROOT = Path(__file__).resolve().parents[1]
TL = "a red fox runs [1s#] | a blue bird sings [1s@] | the red fox runs again [1s]"
SAMPLER = SamplerConfig(denoising_steps=(1000.0, 500.0))


def _inputs(model, text=TL, **kw) -> RunInputs:
    timeline = parse_timeline(text, total_latent_frames=kw.pop("total_latent_frames", 672))
    contexts = tuple(standin_embedding(s.prompt, model.cfg.text_dim, 16) for s in timeline.scenes)
    if "seed" not in kw and timeline.total_chunks > 8:  # schedule checks only: no run
        return RunInputs(timeline, contexts, (16, 4, 4), sampler=SAMPLER)
    return RunInputs(timeline, contexts, (16, 4, 4), seed=kw.pop("seed", 3), sampler=SAMPLER,
                     routing_features=lambda texts: [standin_embedding(t, model.cfg.text_dim, 16)[0] for t in texts],
                     **kw)


def test_every_policy_form_gives_the_same_echo_run(model):
    by_name, rep = start_run(model, "echo", _inputs(model)).collect()
    by_config, _ = start_run(model, EchoConfig(), _inputs(model)).collect()
    by_spec, _ = start_run(model, MemorySpec().policy_for(3), _inputs(model)).collect()

    def factory(ctx: PolicyContext) -> EchoCache:
        return EchoCache(ctx.num_layers, echo_config_for(ctx.frames_per_chunk), router=ctx.router(EchoConfig().routing))

    by_factory, _ = start_run(model, factory, _inputs(model)).collect()
    assert torch.equal(by_name, by_config) and torch.equal(by_name, by_spec) and torch.equal(by_name, by_factory)
    assert by_name.shape == (1, 16, 12, 4, 4) and rep["chunks"] == 4 and rep["policy"] == "echo"
    rolling, _ = start_run(model, "rolling", _inputs(model)).collect()
    assert not torch.equal(rolling, by_name)


def test_report_lists_each_scene_with_its_transition_and_recall(model):
    run = start_run(model, "echo", _inputs(model))
    _, rep = run.collect()
    assert [s.get("transition") for s in rep["scenes"]] == [None, "hardcut", "recall"]
    assert rep["scenes"][1]["rope_jump"] == 45 and rep["scenes"][2]["recall_source"] == 1
    assert rep["s_per_chunk"] > 0 and rep["peak_cache_mb"] > 0
    assert run.cache.nbytes() == 0  # released at the end of the stream


def test_noise_source_replays_the_seeded_draws_and_changes_the_run_when_different(model):
    draws: list[torch.Tensor] = []
    gen = torch.Generator().manual_seed(3)

    def recording(shape):
        draws.append(torch.randn(shape, generator=gen))
        return draws[-1]

    seeded, _ = start_run(model, "echo", _inputs(model)).collect()
    recorded, _ = start_run(model, "echo", _inputs(model), noise=recording).collect()
    assert torch.equal(seeded, recorded) and len(draws) == 4 * 2  # chunks x (initial noise + one re-noise)
    replay = iter(draws)
    replayed, _ = start_run(model, "echo", _inputs(model, seed=99), noise=lambda shape: next(replay)).collect()
    assert torch.equal(replayed, seeded)  # the seed does not matter when the noise is given
    halved, _ = start_run(model, "echo", _inputs(model), noise=lambda s: 0.5 * torch.randn(s)).collect()
    assert not torch.allclose(halved, seeded)
    with pytest.raises(ValueError, match="noise source returned shape"):
        start_run(model, "echo", _inputs(model), noise=lambda s: torch.zeros(1)).collect()


def test_per_step_callback_receives_each_steps_x0(model):
    seen: list[tuple[int, int, torch.Tensor]] = []
    latents, _ = start_run(model, "rolling", _inputs(model), on_x0=lambda c, s, x0: seen.append((c, s, x0))).collect()
    assert [(c, s) for c, s, _ in seen] == [(c, s) for c in range(4) for s in range(2)]
    assert torch.equal(seen[-1][2], latents[:, :, -3:])  # the last step's x0 is the chunk
    assert not torch.equal(seen[-2][2], latents[:, :, -3:])


def test_total_length_applies_to_timelines_without_durations(model):
    assert _inputs(model, "a fox", total_latent_frames=12).timeline.total_chunks == 4
    two = _inputs(model, "a fox | a bird").timeline  # official --num_output_frames; 21 chunks for a scene without
    assert two.latent_frames == 672 and [s.num_chunks for s in two.scenes] == [21, 203]
    assert _inputs(model, "a fox [1s] | a bird [1s]", total_latent_frames=300).timeline.total_chunks == 3


def test_inputs_and_policy_errors_name_the_field(model):
    inputs = _inputs(model)
    with pytest.raises(ValueError, match="^timeline: "):
        RunInputs(inputs.timeline, inputs.contexts[:1], (16, 4, 4))
    with pytest.raises(ValueError, match="^memory: unknown memory policy"):
        start_run(model, "lru", inputs)
    with pytest.raises(ValueError, match="^memory.frames_per_chunk: "):
        start_run(model, echo_config_for(1), inputs)


# ------------------------------------------------------------------------------------------------ config defects
@pytest.mark.parametrize("config, field", [
    ({"recall_frames": {"base_frame_weight": math.nan}}, "recall_frames.base_frame_weight"),
    ({"smooth": {"decay": {"min_rate": math.nan}}}, "smooth.decay.min_rate"),
    ({"memory": {"drift_gate_lambda": math.nan}}, "memory.drift_gate_lambda"),
    ({"memory": {"rope_theta": math.nan}}, "memory.rope_theta"),
    ({"routing": {"threshold": math.nan}}, "routing.threshold"),
    ({"hardcut": {"use_old_memory": "no"}}, "hardcut.use_old_memory"),
    ({"memory": {"use_drift_gate": 0}}, "memory.use_drift_gate"),
    ({"routing": {"manual_recall_scene_ids": 3}}, "routing.manual_recall_scene_ids"),
    ({"memory": {"offsets": 4}}, "memory.offsets"),
])
def test_bad_config_values_name_the_dotted_field(config, field):
    with pytest.raises(ConfigError) as e:
        EchoConfig.from_json(json.dumps(config))  # NaN goes through JSON as the literal NaN
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


def test_config_that_is_not_json_is_a_config_error():
    with pytest.raises(ConfigError, match="^EchoConfig: not valid JSON"):
        EchoConfig.from_json("{routing: idf}")


# ------------------------------------------------------------------------------------------------ CLI
CLI_TL = "a red fox runs [1s#] | a blue bird sings [1s@] | a red fox runs again [1s]"


def _cli(tmp_path: Path, name: str, *extra: str) -> dict:
    report = tmp_path / f"{name}.json"
    rc = main(["generate", "--preset", "tiny-random", "--timeline", CLI_TL, "--steps", "1000",
               "--out", str(tmp_path / f"{name}.safetensors"), "--report", str(report), *extra])
    assert rc == 0
    return json.loads(report.read_text())


def test_cli_memory_config_routing_reaches_the_router(tmp_path):
    """The bug the one entry point removed: --memory-config's routing was read from attributes EchoConfig does not
    have and silently ignored (a recall routed by similarity at 0.93 despite a 0.99 threshold)."""
    default = _cli(tmp_path, "default")
    cfg = tmp_path / "idf.json"
    cfg.write_text(json.dumps({"routing": {"method": "idf", "threshold": 0.99}}))
    idf = _cli(tmp_path, "idf", "--memory-config", str(cfg))

    def routing(report):
        return next(r["transition"]["routing"] for r in report["chunk_reports"]
                    if (r.get("transition") or {}).get("routing"))

    assert routing(default)["reason"] == "similarity" and default["scenes"][2]["recall_source"] == 1
    assert routing(idf)["reason"] == "below_threshold" and "recall_source" not in idf["scenes"][2]
    assert idf["memory"] == default["memory"] == "echo"
    assert routing(idf)["score"] < 0.99


def test_cli_outputs_are_byte_identical_for_the_same_seed(tmp_path):
    """Each run in its own process: safetensors' own writer orders metadata differently per process."""
    digests = []
    for i in range(2):
        out = tmp_path / f"v{i}.safetensors"
        subprocess.run([sys.executable, "-m", "echo_core", "generate", "--preset", "tiny-random", "--timeline",
                        CLI_TL, "--steps", "1000", "--seed", "7", "--out", str(out)], cwd=ROOT, check=True,
                       capture_output=True)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert not list(tmp_path.glob("*.partial"))


# ------------------------------------------------------------------------------------------------ one door
FRONT_ENDS = ["nodes/sampler.py", "echo_core/cli.py", "echo_core/toy/run.py", "bench/chunk_cost.py",
              "bench/memory_overhead.py"]
DOOR = {"start_run", "start_toy_run"}
BYPASS = {"generate", "sample_video", "EchoCache", "RollingCache", "FlushCache", "full_cache", "make_cache",
          "RecallRouter"}


def _names(path: Path) -> tuple[set[str], set[str]]:
    """(names called, names imported from echo_core) in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    called = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree)
              if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(
        "echo_core") for a in n.names}
    return called, imported


@pytest.mark.parametrize("path", FRONT_ENDS + ["bench/memory_quality.py", "echo_core/toy/demo.py",
                                               "echo_core/toy/evaluate.py"])
def test_front_ends_come_in_through_the_one_entry_point(path):
    called, imported = _names(ROOT / path)
    assert not (called | imported) & BYPASS, f"{path} builds its own cache, router or chunk loop"
    if path in FRONT_ENDS + ["bench/memory_quality.py", "echo_core/toy/demo.py"]:
        assert called & DOOR, f"{path} does not call the entry point"


def test_a_node_style_run_parses_the_timeline_text_once(model, monkeypatch):
    import echo_core.session as session
    from echo_core.session import encode_timeline, plan_run

    calls = []
    real = session.parse_script
    monkeypatch.setattr(session, "parse_script", lambda text: calls.append(text) or real(text))
    spec = encode_timeline(TL, 16, "smooth", lambda ps: [standin_embedding(p, model.cfg.text_dim, 16) for p in ps])
    plan = plan_run(spec, model.cfg, 3, 32, 32)
    start_run(model, MemorySpec().policy_for(3, spec.routing), plan.inputs(spec, seed=1, sampler=SAMPLER)).collect()
    assert calls == [TL]
