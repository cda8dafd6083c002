"""The toy world's prompt language: a small fixed grammar of plain-English scene prompts.

A prompt names one or two coloured shapes, how each moves, and a coloured, patterned background:
"a red circle moving right and a yellow square bouncing on a blue striped background".
Everything a prompt does NOT say (landmark positions, pattern phase, start positions) comes from the clip's
seed, see `world.hidden_details`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

# Bright object / background colours (RGB in [0, 1]); picked so every pair, their darker pattern shades and
# the black landmarks stay >= 0.3 apart in RGB, which keeps them separable under noise and blur.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.15, 0.15),
    "orange": (1.00, 0.55, 0.10),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.75, 0.25),
    "cyan": (0.10, 0.80, 0.85),
    "blue": (0.15, 0.30, 0.95),
    "purple": (0.60, 0.20, 0.80),
    "white": (0.95, 0.95, 0.95),
}
# Two worlds share the grammar and differ in their shapes. World v1's shapes differ by a few corner pixels at
# radius 7 px, below the toy model's 8-pixel tokens; world v2's differ in size and aspect at token scale
# (see world.shape_sdf), so a 1-3 M-parameter model can learn them on CPU. Every shape word parses and renders;
# a world decides which shapes are sampled (training data, evaluation, benchmark) and which are near misses.
SHAPES_V1: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross")
SHAPES_V2: tuple[str, ...] = ("dot", "block", "pillar", "bar")
WORLDS: dict[str, tuple[str, ...]] = {"v1": SHAPES_V1, "v2": SHAPES_V2}
ALL_SHAPES: tuple[str, ...] = SHAPES_V1 + SHAPES_V2
SHAPES = SHAPES_V1  # the shapes sampled by default (world v1)
PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")
MOTIONS: tuple[str, ...] = ("static", "left", "right", "up", "down", "bounce")
MAX_OBJECTS = 2

# Canonical motion phrases (describe) and every accepted way of saying them (parse).
_MOTION_PHRASE = {
    "static": "standing still",
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "bounce": "bouncing",
}
_MOVE_VERBS = ("moving", "moves", "move", "going", "goes")
_DIRECTIONS = ("left", "right", "up", "down")
_BOUNCE_WORDS = ("bouncing", "bounces", "bounce")
_STATIC_WORDS = ("static", "still", "standing", "stands", "resting")
_FILLER = ("a", "an", "the", "one", "around", "is")
_JOIN_WORDS = ("and", "on", "background")

VOCAB: tuple[str, ...] = tuple(
    sorted(
        set(COLOURS)
        | set(ALL_SHAPES)
        | set(PATTERNS)
        | set(_MOVE_VERBS)
        | set(_DIRECTIONS)
        | set(_BOUNCE_WORDS)
        | set(_STATIC_WORDS)
        | set(_FILLER)
        | set(_JOIN_WORDS)
    )
)


@dataclass(frozen=True)
class ObjectSpec:
    """One foreground object: a coloured shape and how it moves."""

    colour: str
    shape: str
    motion: str = "static"

    def __post_init__(self) -> None:
        _check_member("ObjectSpec.colour", self.colour, tuple(COLOURS))
        _check_member("ObjectSpec.shape", self.shape, ALL_SHAPES)
        _check_member("ObjectSpec.motion", self.motion, MOTIONS)


@dataclass(frozen=True)
class SceneSpec:
    """Everything a prompt determines: 1-2 objects (drawn in order, last on top) and the background."""

    objects: tuple[ObjectSpec, ...]
    background: str
    pattern: str = "plain"

    def __post_init__(self) -> None:
        if not isinstance(self.objects, tuple) or not all(isinstance(o, ObjectSpec) for o in self.objects):
            raise TypeError("SceneSpec.objects must be a tuple of ObjectSpec")
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"SceneSpec.objects must hold 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        _check_member("SceneSpec.background", self.background, tuple(COLOURS))
        _check_member("SceneSpec.pattern", self.pattern, PATTERNS)
        looks = [(o.colour, o.shape) for o in self.objects]
        if len(set(looks)) < len(looks):
            raise ValueError(
                "SceneSpec.objects holds two identical objects (same colour and shape); "
                "change the colour or shape of one"
            )
        for obj in self.objects:
            if obj.colour == self.background:
                raise ValueError(
                    f"a {obj.colour} {obj.shape} on a {self.background} background would be invisible: "
                    "give the object a colour different from the background"
                )

    def appearance(self) -> tuple:
        """What a single frame can show: background and the multiset of (colour, shape), motion left out."""
        return (self.background, self.pattern, tuple(sorted((o.colour, o.shape) for o in self.objects)))


def world_shapes(world: str) -> tuple[str, ...]:
    """The shapes world `world` ("v1" or "v2") samples."""
    if world not in WORLDS:
        raise ValueError(f"world = {world!r} is not known; use one of: {', '.join(WORLDS)}")
    return WORLDS[world]


def shape_family(shape: str) -> tuple[str, ...]:
    """The shapes of the world `shape` belongs to: its near misses are drawn from these."""
    return SHAPES_V2 if shape in SHAPES_V2 else SHAPES_V1


def _check_member(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{field} = {value!r} is not allowed; use one of: {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------- parsing


def parse_prompt(text: str) -> SceneSpec:
    """Parse a scene prompt; raises ValueError naming the offending word and the allowed ones."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("prompt is empty: write e.g. 'a red circle moving right on a blue striped background'")
    words = re.findall(r"[a-z]+", text.lower())
    unknown = [w for w in words if w not in VOCAB]
    if unknown:
        raise ValueError(
            f"unknown word {unknown[0]!r} in prompt {text!r}; allowed words: {', '.join(VOCAB)}"
        )
    if "on" not in words:
        raise ValueError(
            f"prompt {text!r} has no background: end it with 'on a <colour> [<pattern>] background', "
            f"colours: {', '.join(COLOURS)}; patterns: {', '.join(PATTERNS)}"
        )
    cut = len(words) - 1 - words[::-1].index("on")
    object_words, background_words = words[:cut], words[cut + 1 :]
    background, pattern = _parse_background(background_words, text)
    phrases: list[list[str]] = [[]]
    for w in object_words:
        if w == "and":
            phrases.append([])
        else:
            phrases[-1].append(w)
    phrases = [p for p in phrases if p]
    if not 1 <= len(phrases) <= MAX_OBJECTS:
        raise ValueError(f"prompt {text!r} names {len(phrases)} objects; a scene holds 1 to {MAX_OBJECTS}")
    objects = tuple(_parse_object(p, text) for p in phrases)
    return SceneSpec(objects=objects, background=background, pattern=pattern)


def _parse_background(words: list[str], text: str) -> tuple[str, str]:
    colours = [w for w in words if w in COLOURS]
    patterns = [w for w in words if w in PATTERNS]
    stray = [w for w in words if w not in COLOURS and w not in PATTERNS and w not in _FILLER + ("background",)]
    if stray:
        raise ValueError(f"word {stray[0]!r} does not belong in the background part of {text!r}")
    if len(colours) != 1:
        raise ValueError(
            f"the background of {text!r} needs exactly one colour (got {len(colours)}); "
            f"colours: {', '.join(COLOURS)}"
        )
    if len(patterns) > 1:
        raise ValueError(f"the background of {text!r} has {len(patterns)} patterns; give at most one")
    return colours[0], patterns[0] if patterns else "plain"


def _parse_object(words: list[str], text: str) -> ObjectSpec:
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in ALL_SHAPES]
    if len(colours) != 1 or len(shapes) != 1:
        phrase = " ".join(words)
        raise ValueError(
            f"object {phrase!r} in {text!r} needs exactly one colour and one shape; "
            f"colours: {', '.join(COLOURS)}; shapes: {', '.join(ALL_SHAPES)}"
        )
    rest = [w for w in words if w not in COLOURS and w not in ALL_SHAPES and w not in _FILLER]
    return ObjectSpec(colour=colours[0], shape=shapes[0], motion=_parse_motion(rest, " ".join(words)))


def _parse_motion(words: list[str], phrase: str) -> str:
    if not words:
        return "static"
    directions = [w for w in words if w in _DIRECTIONS]
    kinds = {
        "move": any(w in _MOVE_VERBS for w in words) or bool(directions),
        "bounce": any(w in _BOUNCE_WORDS for w in words),
        "static": any(w in _STATIC_WORDS for w in words),
    }
    stray = [w for w in words if w not in _MOVE_VERBS + _DIRECTIONS + _BOUNCE_WORDS + _STATIC_WORDS]
    if stray or sum(kinds.values()) != 1 or (kinds["move"] and len(directions) != 1):
        raise ValueError(
            f"cannot read the motion of {phrase!r}; say one of: "
            + ", ".join(repr(p) for p in _MOTION_PHRASE.values())
        )
    if kinds["move"]:
        return directions[0]
    return "bounce" if kinds["bounce"] else "static"


def describe(spec: SceneSpec) -> str:
    """Canonical prompt of a spec; parse_prompt(describe(s)) == s."""
    objects = " and ".join(
        f"{_article(o.colour)} {o.colour} {o.shape} {_MOTION_PHRASE[o.motion]}" for o in spec.objects
    )
    pattern = "" if spec.pattern == "plain" else f" {spec.pattern}"
    return f"{objects} on {_article(spec.background)} {spec.background}{pattern} background"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------- sampling


def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))


def world_spec(rng: np.random.Generator | int, world: str = "v1", *, max_objects: int = MAX_OBJECTS) -> SceneSpec:
    """A random scene of world `world`. World v2 also gives two objects different colours: its larger objects
    would otherwise merge into one patch of colour where they touch."""
    return sample_spec(rng, max_objects=max_objects, shapes=world_shapes(world), distinct_colours=world == "v2")


def sample_spec(rng: np.random.Generator | int, *, max_objects: int = MAX_OBJECTS,
                shapes: tuple[str, ...] = SHAPES, distinct_colours: bool = False) -> SceneSpec:
    """A random valid scene of shapes `shapes`; objects differ from the background and each other in colour or
    shape (in colour with distinct_colours)."""
    rng = _as_rng(rng)
    names = list(COLOURS)
    background = names[rng.integers(len(names))]
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    n = int(rng.integers(1, max_objects + 1))
    objects: list[ObjectSpec] = []
    while len(objects) < n:
        colour = names[rng.integers(len(names))]
        shape = shapes[rng.integers(len(shapes))]
        if colour == background or any((o.colour, o.shape) == (colour, shape) for o in objects):
            continue
        if distinct_colours and any(o.colour == colour for o in objects):
            continue
        objects.append(ObjectSpec(colour, shape, MOTIONS[rng.integers(len(MOTIONS))]))
    return SceneSpec(objects=tuple(objects), background=background, pattern=pattern)


def smooth_variant(spec: SceneSpec, rng: np.random.Generator | int) -> SceneSpec:
    """Same objects and background, new motions (at least one object changes): a 'smooth' transition."""
    rng = _as_rng(rng)
    changed = int(rng.integers(len(spec.objects)))
    objects = []
    for i, obj in enumerate(spec.objects):
        choices = [m for m in MOTIONS if m != obj.motion] if i == changed else list(MOTIONS)
        objects.append(replace(obj, motion=choices[rng.integers(len(choices))]))
    return replace(spec, objects=tuple(objects))
