"""Steering a run between chunks (echo_core.steering, steer_timeline, steer_control): edits parse and validate,
the written-back text schedules to exactly the generated chunks, and a steered run equals a batch run of its
final text with the same seed (amending the future never changes chunks already generated)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from echo_core.errors import EchoError, InputError
from echo_core.run import RunInputs, start_run
from echo_core.sampler import SamplerConfig
from echo_core.steer_control import Steering
from echo_core.steer_timeline import LiveTimeline, seconds_text
from echo_core.steering import Edit, parse_edit, read_steer_script
from echo_core.text_standin import standin_embedding
from echo_core.timeline import parse_script, parse_timeline

TL = "a red fox runs [3s] | a blue bird sings [3s#] ; fox | bird"
SAMPLER = SamplerConfig(denoising_steps=(1000.0, 500.0))


def _encode(dim: int):
    return lambda prompts: [standin_embedding(p, dim, 16) for p in prompts]


def _inputs(model, text: str, steering: Steering | None = None, seed: int = 5) -> RunInputs:
    timeline = parse_timeline(text)
    enc = _encode(model.cfg.text_dim)
    return RunInputs(timeline, tuple(enc([s.prompt for s in timeline.scenes])), (16, 4, 4), seed=seed,
                     sampler=SAMPLER, steering=steering,
                     routing_features=lambda texts: [standin_embedding(t, model.cfg.text_dim, 16)[0] for t in texts])


def _steering(model, script=(), **kw) -> Steering:
    enc = _encode(model.cfg.text_dim)
    return Steering(encode=enc, encode_routing=enc, script=script, text=kw.pop("text", TL), **kw)


# ------------------------------------------------------------------------------------------------ parsing
def test_edits_parse_and_bad_fields_are_named():
    assert parse_edit({"action": "cut", "prompt": " a  cat ", "seconds": 2}) == Edit("cut", "a cat", 2.0)
    assert parse_edit({"action": "recall", "scene": "auto", "prompt": "x"}).scene == "auto"
    cases = [({"action": "jump"}, "action"), ({"action": "cut", "prompt": "x"}, "seconds"),
             ({"action": "cut", "prompt": "a | b", "seconds": 1}, "prompt"),
             ({"action": "recall", "scene": 0}, "scene"),
             ({"action": "edit", "scene": 2}, "prompt"),
             ({"action": "append", "prompt": "x", "seconds": -1}, "seconds"),
             ({"action": "append", "prompt": "x", "seconds": 1, "transition": "wipe"}, "transition"),
             ({"action": "stop", "scene": 1}, "scene")]
    for body, field in cases:
        with pytest.raises(InputError) as e:
            parse_edit(body)
        assert e.value.field == field, body
    # an automatic recall needs the prompt it routes by: a script line is refused as written, a live edit inline
    auto = parse_edit({"action": "recall", "scene": "auto"})
    with pytest.raises(InputError) as e:
        parse_edit({"action": "recall", "scene": "auto", "chunk": 3}, scripted=True)
    assert e.value.field == "prompt"
    with pytest.raises(InputError) as e:
        LiveTimeline.from_timeline(parse_timeline(TL)).amend(auto, boundary=2)
    assert e.value.field == "prompt"


def test_script_lines_are_named_in_errors():
    edits = read_steer_script('{"chunk": 2, "action": "cut", "prompt": "a cat", "seconds": 1}\n\n'
                              '# comment\n{"chunk": 3, "action": "stop"}\n')
    assert [e.chunk for e in edits] == [2, 3]
    with pytest.raises(InputError, match=r"^steer line 2: scene: "):
        read_steer_script('{"chunk": 1, "action": "stop"}\n{"chunk": 2, "action": "recall", "scene": -1}')
    with pytest.raises(InputError, match=r"^steer line 1: chunk: "):
        read_steer_script('{"action": "stop"}')
    with pytest.raises(InputError, match=r"^steer line 2: chunk: .*chunk order"):
        read_steer_script('{"chunk": 4, "action": "stop"}\n{"chunk": 2, "action": "stop"}')


# ------------------------------------------------------------------------------------------------ text
@pytest.mark.parametrize("fps", [16.0, 24.0, 15.0, 7.0, 29.97])
def test_seconds_text_schedules_to_exact_chunks(fps):
    for chunks in (1, 2, 3, 7, 13, 100):
        s = float(seconds_text(chunks, fps, 4, 3))
        assert max(1, int(s * fps / 12)) == chunks


def test_live_text_round_trips_and_edits_touch_only_the_future():
    tl = parse_timeline(TL)  # 4 + 4 chunks
    live = LiveTimeline.from_timeline(tl)
    assert live.schedule().total_chunks == tl.total_chunks
    cut = live.amend(Edit("cut", "a green frog", 1.5), boundary=2)
    assert [s.chunks for s in cut.scenes] == [2, 2, 4] and cut.text().endswith("; fox |  | bird")
    back = parse_script(cut.text()).schedule()
    assert [(s.prompt, s.num_chunks) for s in back.scenes] == [("a red fox runs", 2), ("a green frog", 2),
                                                               ("a blue bird sings", 4)]
    assert [t.mode.value for t in back.transitions] == ["hardcut", "smooth"]  # the [3s#] on the last scene is ignored
    recall = cut.amend(Edit("recall", scene=1), boundary=3)
    assert recall.scenes[2].recall_source == 0 and "[0.75s@1]" in recall.text()
    with pytest.raises(InputError, match="has started") as e:
        cut.amend(Edit("edit", "x", scene=2), boundary=3)
    assert e.value.field == "scene"
    with pytest.raises(InputError, match="has not finished"):
        live.amend(Edit("recall", scene=2), boundary=1)
    with pytest.raises(InputError, match="nothing has been generated"):
        live.amend(Edit("cut", "x", 1.0), boundary=0)
    stopped = live.amend(Edit("stop"), boundary=5)
    assert stopped.total_chunks == 5 and parse_script(stopped.text()).schedule().total_chunks == 5


def test_smooth_needs_a_smooth_default():
    live = LiveTimeline.from_timeline(parse_timeline(TL, default_mode="hardcut"), default_mode="hardcut")
    with pytest.raises(InputError) as e:
        live.amend(Edit("smooth", "x", 1.0), boundary=1).schedule()
    assert e.value.field == "transition"


# ------------------------------------------------------------------------------------------------ runs
def _assert_batch_equal(model, steered_latents, text, seed=5):
    batch, rep = start_run(model, "echo", _inputs(model, text, seed=seed)).collect()
    assert batch.shape == steered_latents.shape
    assert torch.equal(batch, steered_latents)
    return rep


def test_scripted_steered_run_equals_batch_run_of_its_text(model):
    script = read_steer_script('{"chunk": 2, "action": "cut", "prompt": "a green frog jumps", "seconds": 1.5}\n'
                               '{"chunk": 5, "action": "recall", "scene": 1, "seconds": 1.5}\n')
    steering = _steering(model, script)
    latents, rep = start_run(model, "echo", _inputs(model, TL, steering)).collect()
    log = rep["steering"]
    assert [(e["action"], e["requested_at_chunk"], e["applied_at_chunk"]) for e in log] == [("cut", 2, 2),
                                                                                            ("recall", 5, 5)]
    text = rep["timeline_text"]
    # the cut ends scene 1 after 2 chunks; the frog's 2 chunks pass, the bird's scene starts at chunk 4 and the
    # recall at chunk 5 ends it after one chunk
    assert [s["prompt"] for s in rep["scenes"]] == ["a red fox runs", "a green frog jumps", "a blue bird sings",
                                                    "a red fox runs"]
    assert [s["start_chunk"] for s in rep["scenes"]] == [0, 2, 4, 5]
    assert rep["scenes"][3].get("recall_source") == 1 and rep["replay_exact"] is True
    batch_rep = _assert_batch_equal(model, latents, text)
    assert batch_rep["chunks"] == rep["chunks"] == 7
    # the video before the first edit is the unsteered video's: amending the future left the past alone
    plain, _ = start_run(model, "echo", _inputs(model, TL)).collect()
    assert torch.equal(plain[:, :, :6], latents[:, :, :6]) and not torch.equal(plain[:, :, 6:9], latents[:, :, 6:9])


def test_unsteered_run_writes_back_its_own_text(model):
    steering = _steering(model)
    latents, rep = start_run(model, "echo", _inputs(model, TL, steering)).collect()
    assert rep["timeline_text"] == TL and rep["steering"] == []
    _assert_batch_equal(model, latents, TL)


def test_live_edits_apply_at_the_next_chunk_and_wait_for_appended_scenes(model):
    steering = _steering(model, when_ends="wait", wait_seconds=60)
    run = start_run(model, "echo", _inputs(model, TL, steering))
    answers, chunks, states = [], [], []

    def later() -> None:  # another thread, as the HTTP route: append a scene, then stop once the run waits
        answers.append(steering.submit(Edit("append", "a red fox sleeps", 1.5, transition="cut")))
        while steering.status()["state"] != "waiting":
            time.sleep(0.005)
        states.append(steering.status())
        steering.submit(Edit("stop"))

    for result in run:
        chunks.append(result.latents)
        if result.index == 1:  # chunk 2 has not begun: the cut applies there
            answers.append(steering.submit(Edit("cut", "a green frog jumps", 1.5)))
        if result.index == 3:  # the bird's scene starts at chunk 4: it may still change
            answers.append(steering.submit(Edit("edit", "a blue bird flies", 2.25, scene=3)))
        if result.index == 6:
            threading.Thread(target=later, daemon=True).start()
    latents = torch.cat(chunks, dim=2)
    rep = run.report()
    assert [a["applies_at_chunk"] for a in answers[:3]] == [2, 4, 7]
    assert [(e["action"], e["requested_at_chunk"], e["applied_at_chunk"]) for e in rep["steering"]] == [
        ("cut", 2, 2), ("edit", 4, 4), ("append", 7, 7), ("stop", 9, 9)]  # between chunks: the next one
    assert states[0]["chunk"] == 9 and states[0]["total_chunks"] == 9 and states[0]["scene_index"] == 3
    assert [s["prompt"] for s in rep["scenes"]] == ["a red fox runs", "a green frog jumps", "a blue bird flies",
                                                    "a red fox sleeps"]
    assert rep["chunks"] == 9 and steering.status()["state"] == "done"
    with pytest.raises(InputError):
        steering.submit(Edit("append", "x", 1.0))
    _assert_batch_equal(model, latents, rep["timeline_text"])


def test_bad_live_edit_is_refused_and_the_run_goes_on(model):
    steering = _steering(model)
    run = start_run(model, "echo", _inputs(model, TL, steering))
    chunks = []
    for result in run:
        chunks.append(result.latents)
        if result.index == 0:
            with pytest.raises(InputError) as e:
                steering.submit(Edit("recall", scene=2))
            assert e.value.field == "scene"
            with pytest.raises(EchoError) as e:
                steering.submit(Edit("append", "x", 86_400.0))  # past the chunk limit
            assert e.value.field == "timeline"
    assert len(chunks) == 8 and run.report()["steering"] == []


def test_script_edit_past_the_end_is_an_error(model):
    steering = _steering(model, read_steer_script('{"chunk": 20, "action": "stop"}'))
    with pytest.raises(InputError, match=r"^steer edit at chunk 20 \(stop\): chunk: the video ended after 8 chunks"):
        start_run(model, "echo", _inputs(model, TL, steering)).collect()
