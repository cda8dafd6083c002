"""The toy world (echo_core.toy.world) and its pixel-level ground-truth scorer (echo_core.toy.scorer)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from echo_core.toy.grammar import ObjectSpec
from echo_core.toy.scorer import (
    chance_level,
    degrade,
    detail_match,
    identify_scene,
    motion_of,
    object_colour_area,
    object_identity,
)
from echo_core.toy.world import (
    COLOURS,
    PATTERNS,
    SHAPES,
    VOCAB,
    SceneSpec,
    describe,
    object_trajectories,
    parse_prompt,
    render_clip,
    sample_spec,
    smooth_variant,
)

EXAMPLE = "a red circle moving right and a yellow square bouncing on a blue striped background"


# ------------------------------------------------------------------------------------------- grammar


def test_parse_example_prompt():
    spec = parse_prompt(EXAMPLE)
    assert spec.background == "blue" and spec.pattern == "striped"
    assert [(o.colour, o.shape, o.motion) for o in spec.objects] == [
        ("red", "circle", "right"),
        ("yellow", "square", "bounce"),
    ]


def test_parse_describe_round_trip_and_vocab():
    rng = np.random.default_rng(0)
    for _ in range(200):
        spec = sample_spec(rng)
        text = describe(spec)
        assert parse_prompt(text) == spec
        assert set(text.split()) <= set(VOCAB)


def test_parse_accepts_variants():
    spec = parse_prompt("The green ring moves left, and a white cross on a plain purple background.")
    assert spec.pattern == "plain" and spec.background == "purple"
    assert [o.motion for o in spec.objects] == ["left", "static"]
    assert parse_prompt("an orange triangle bounces on a dotted cyan background").objects[0].motion == "bounce"


def test_unknown_word_error_names_word_and_allowed_words():
    with pytest.raises(ValueError) as err:
        parse_prompt("a red hexagon moving right on a blue background")
    msg = str(err.value)
    assert "'hexagon'" in msg and "circle" in msg and "striped" in msg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a red circle moving right", "background"),
        ("a red circle and a blue square and a green ring on a white background", "1 to 2"),
        ("a blue circle on a blue background", "invisible"),
        ("a red circle moving on a blue background", "motion"),
        ("a red circle and a red circle on a blue background", "identical"),
    ],
)
def test_bad_prompts_raise_clear_errors(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_prompt(text)


def test_smooth_variant_changes_only_motion():
    rng = np.random.default_rng(1)
    for _ in range(50):
        spec = sample_spec(rng)
        var = smooth_variant(spec, rng)
        assert var != spec
        assert var.appearance() == spec.appearance()
        assert [(o.colour, o.shape) for o in var.objects] == [(o.colour, o.shape) for o in spec.objects]


# ------------------------------------------------------------------------------------------- rendering


def test_render_is_deterministic_and_seed_dependent():
    spec = parse_prompt(EXAMPLE)
    a = render_clip(spec, 7, 20)
    assert a.shape == (20, 3, 64, 64) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, render_clip(spec, 7, 20))
    assert not torch.equal(a[0], render_clip(spec, 8, 1)[0])  # hidden details come from the seed


def test_render_is_continuous_across_start_frame():
    spec = parse_prompt(EXAMPLE)
    whole = render_clip(spec, 3, 100)
    split = torch.cat([render_clip(spec, 3, 50), render_clip(spec, 3, 37, start_frame=50),
                       render_clip(spec, 3, 13, start_frame=87)])
    assert torch.equal(whole, split)


def test_resolution_is_configurable():
    spec = parse_prompt(EXAMPLE)
    clip = render_clip(spec, 3, 4, height=48, width=96)
    assert clip.shape == (4, 3, 48, 96)
    with pytest.raises(ValueError, match="height"):
        render_clip(spec, 3, 4, height=8)


def test_motion_is_visible_within_a_second_but_smooth():
    for motion in ("left", "right", "up", "down", "bounce"):
        spec = SceneSpec(objects=(ObjectSpec("red", "circle", motion),), background="blue")
        (x, y), = object_trajectories(spec, 5, torch.arange(0, 17))
        steps_x = torch.remainder(x[1:] - x[:-1] + 32, 64) - 32
        steps_y = torch.remainder(y[1:] - y[:-1] + 32, 64) - 32
        step = steps_x.hypot(steps_y)
        assert float(step.sum()) >= 8.0, motion  # >= 1/8 of the frame in one second at 16 fps
        assert float(step.max()) <= 2.0, motion  # no jumps: well below the object's size
    static = SceneSpec(objects=(ObjectSpec("red", "circle", "static"),), background="blue")
    clip = render_clip(static, 5, 10)
    assert torch.equal(clip[0], clip[9])


def test_render_480_frames_is_fast():
    spec = parse_prompt(EXAMPLE)
    render_clip(spec, 1, 8)  # warm caches
    start = time.perf_counter()
    render_clip(spec, 2, 480)
    assert time.perf_counter() - start < 3.0  # ~0.1-0.3 s here; generous for loaded CI machines


# --------------------------------------------------------------------------------------------- scorer


def _variant(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec | None:
    """Change one attribute: background colour, pattern, an object's colour or shape, or the object count."""
    kind = int(rng.integers(5))
    colours = list(COLOURS)
    try:
        if kind == 0:
            return replace(spec, background=colours[rng.integers(len(colours))])
        if kind == 1:
            return replace(spec, pattern=PATTERNS[rng.integers(len(PATTERNS))])
        if kind in (2, 3):
            i = int(rng.integers(len(spec.objects)))
            obj = spec.objects[i]
            if kind == 2:
                obj = replace(obj, colour=colours[rng.integers(len(colours))])
            else:
                obj = replace(obj, shape=SHAPES[rng.integers(len(SHAPES))])
            return replace(spec, objects=spec.objects[:i] + (obj,) + spec.objects[i + 1 :])
        if len(spec.objects) == 2:
            return replace(spec, objects=spec.objects[:1])
        extra = ObjectSpec(colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))], "right")
        return replace(spec, objects=spec.objects + (extra,))
    except ValueError:
        return None


def _candidate_set(rng: np.random.Generator, n: int) -> list[SceneSpec]:
    """n scenes with distinct appearance, each a one-attribute change of an earlier one (they share a lot)."""
    out = [sample_spec(rng)]
    while len(out) < n:
        v = _variant(out[int(rng.integers(len(out)))], rng)
        if v is not None and v.appearance() not in {c.appearance() for c in out}:
            out.append(v)
    return out


def _identification_accuracy(trials: int, seed: int, **degradation) -> float:
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(trials):
        cands = _candidate_set(rng, int(rng.integers(4, 7)))
        frames, labels = [], []
        for j, spec in enumerate(cands):
            clip = render_clip(spec, int(rng.integers(1_000_000)), 4, start_frame=int(rng.integers(500)))
            frames.append(clip)
            labels += [j] * len(clip)
        idx, conf = identify_scene(degrade(torch.cat(frames), generator=gen, **degradation), cands)
        assert ((conf > 0) & (conf <= 1)).all()
        correct += int((idx == torch.tensor(labels)).sum())
        total += len(labels)
    return correct / total


def test_identify_scene_under_combined_degradation():
    # blur sigma 1 px, 2x down-up resampling and noise sigma 0.1, all at once
    assert _identification_accuracy(30, seed=11) >= 0.98


@pytest.mark.parametrize(
    "degradation",
    [dict(blur_sigma=0, resample=1), dict(noise=0, resample=1), dict(noise=0, blur_sigma=0)],
    ids=["noise", "blur", "resample"],
)
def test_identify_scene_under_each_degradation(degradation):
    assert _identification_accuracy(8, seed=12, **degradation) >= 0.98


def test_identify_scene_rejects_motion_only_differences():
    spec = parse_prompt(EXAMPLE)
    with pytest.raises(ValueError, match="motion"):
        identify_scene(render_clip(spec, 0, 1), [spec, smooth_variant(spec, 0)])


def test_detail_match_separates_seeds_on_degraded_frames():
    rng = np.random.default_rng(3)
    gen = torch.Generator().manual_seed(3)
    same, other, same_ref, other_ref = [], [], [], []
    for _ in range(12):
        spec = sample_spec(rng)
        seed = int(rng.integers(1_000_000))
        frames = degrade(render_clip(spec, seed, 4, start_frame=100), generator=gen)
        strangers = degrade(render_clip(spec, seed + 1, 4, start_frame=100), generator=gen)
        same.append(float(detail_match(frames, spec, seed).mean()))
        other.append(float(detail_match(strangers, spec, seed).mean()))
        reference = render_clip(spec, seed, 3, start_frame=7)  # frames of the earlier visit, not the seed
        same_ref.append(float(detail_match(frames, spec, reference).mean()))
        other_ref.append(float(detail_match(strangers, spec, reference).mean()))
    assert np.mean(same) >= 0.8 and np.mean(other) <= 0.4
    assert np.mean(same_ref) >= 0.8 and np.mean(other_ref) <= 0.4
    assert min(s - o for s, o in zip(same, other)) > 0.2  # every scene separates, not just on average


def test_chance_level_is_the_other_seed_baseline():
    for text in (EXAMPLE, "a white cross standing still on a green background"):
        spec = parse_prompt(text)
        chance = chance_level(spec, n_seeds=4)
        assert 0.0 <= chance <= 0.4
        own = float(detail_match(render_clip(spec, 5, 4), spec, 5).mean())
        assert own >= chance + 0.5


def test_object_identity_survives_smooth_transition_but_not_a_new_shape():
    gen = torch.Generator().manual_seed(4)
    spec = parse_prompt(EXAMPLE)
    variant = smooth_variant(spec, 4)
    frames = degrade(render_clip(variant, 9, 24)[::2], generator=gen)
    assert object_identity(frames, spec) >= 0.9
    swapped = replace(spec, objects=(replace(spec.objects[0], shape="triangle"), spec.objects[1]))
    assert object_identity(frames, swapped) <= 0.1
    recoloured = replace(spec, objects=(replace(spec.objects[0], colour="green"), spec.objects[1]))
    assert object_identity(frames, recoloured) <= 0.1


def test_motion_of_recovers_each_motion():
    gen = torch.Generator().manual_seed(5)
    for motion in ("static", "left", "right", "up", "down", "bounce"):
        spec = SceneSpec(objects=(ObjectSpec("yellow", "ring", motion), ObjectSpec("red", "cross", "static")),
                         background="purple", pattern="checkered")
        frames = degrade(render_clip(spec, 21, 24), generator=gen)
        assert motion_of(frames, spec) == [motion, "static"]


def test_object_colour_area_is_about_one_for_drawn_objects_and_zero_for_missing_ones():
    spec = parse_prompt("a red circle standing still and a red square moving left on a blue background")
    frames = render_clip(spec, 3, 6, height=48, width=48)
    area = object_colour_area(frames, spec)  # the two red objects share their pixels
    assert area.shape == (6, 2) and torch.allclose(area[:, 0], area[:, 1])
    assert bool(((area > 0.6) & (area < 1.2)).all())
    blank = render_clip(replace(spec, objects=(ObjectSpec("white", "circle"),)), 3, 6, height=48, width=48)
    assert float(object_colour_area(blank, spec).max()) < 0.05


def _v2_scene_accuracy(trials: int, seed: int, **degradation) -> float:
    """World v2 at the toy model's 48x48: the evaluation's own criterion (evaluate.scene_accuracy: the prompted
    scene named among near misses and random scenes, every object seen) on degraded rendered frames."""
    from echo_core.toy.evaluate import scene_accuracy
    from echo_core.toy.grammar import world_spec

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    hits = []
    for _ in range(trials):
        spec = world_spec(rng, "v2")
        clip = render_clip(spec, int(rng.integers(1_000_000)), 4, height=48, width=48,
                           start_frame=int(rng.integers(500)))
        hits.append(scene_accuracy(degrade(clip, generator=gen, **degradation), spec, rng))
    return float(torch.cat(hits).float().mean())


@pytest.mark.parametrize(
    "degradation",
    [dict(), dict(blur_sigma=0, resample=1), dict(noise=0, resample=1), dict(noise=0, blur_sigma=0)],
    ids=["combined", "noise", "blur", "resample"],
)
def test_world_v2_scorer_identifies_scenes_under_degradation(degradation):
    # the bar the model is held to (>= 90% of frames) is only meaningful if the scorer itself is near perfect
    assert _v2_scene_accuracy(60, seed=31, **degradation) >= 0.99


def test_world_v2_shapes_differ_at_token_scale():
    from echo_core.toy.grammar import SHAPES_V2, parse_prompt

    areas = {}
    for shape in SHAPES_V2:
        spec = parse_prompt(f"a white {shape} standing still on a blue background")
        frame = render_clip(spec, 0, 1, height=48, width=48)[0]
        body = (frame - torch.tensor(COLOURS["white"]).view(3, 1, 1)).abs().amax(0) < 0.05
        ys, xs = torch.nonzero(body, as_tuple=True)
        areas[shape] = (int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    # in 8-pixel tokens: dot ~1x1, block ~2x2, pillar ~1x2 (tall), bar ~2x1 (wide)
    assert all(7 <= w <= 10 and 7 <= h <= 10 for w, h in [areas["dot"]])
    assert all(15 <= v <= 17 for v in areas["block"])
    assert areas["pillar"][1] >= 15 and areas["pillar"][0] <= 9 and areas["bar"] == areas["pillar"][::-1]
