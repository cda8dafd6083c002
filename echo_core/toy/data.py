"""Training windows for the toy model: short multi-scene latent sequences laid out the way the caches lay them out.

A window holds up to 21 latent frames (Self-Forcing's attention window) in blocks: frames of one block attend to
their own and earlier blocks. Every frame carries its temporal RoPE position, the prompt it was generated under
and whether it is memory (always clean context, never trained on). Kinds of windows:

* single  - one scene, contiguous (positions 0..20): generate a scene, continue it from its own past;
* cut     - scene A, then an unrelated scene B (new details): a new prompt must not copy the old scene;
* smooth  - scene A, then the same objects and background with new motions, objects continuing where they were;
* revisit - A, B, then A again with A's details: they must come back from A's earlier frames;
* memory  - 1-3 loose memory frames, then blocks at a RoPE jump, as Echo-Forcing rebuilds its cache at a switch:
            a recall frame of the same scene (recall, jump 0-6), a frame of another scene (hard cut, jump 45 or
            small), or the chain's first frame plus the last two frames (smooth, no jump).
"Time" below counts latent frames of a scene's own clock; latent frame j shows video frame 4j. Scenes are drawn
with the world's own primitives (pattern, landmarks, shapes, motions), but their unprompted details come from
the scene's first-block noise, not from a world seed: the landmark positions always, the object starts too with
details="noise" (random starts otherwise); see "noise-seeded details" and `new_scene` below.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from echo_core.toy.grammar import COLOURS, SHAPES_V2, ObjectSpec, SceneSpec, describe, smooth_variant, world_spec
from echo_core.toy.world import (
    DARK_SHADE,
    LANDMARK_RGB,
    BackgroundDetails,
    Geometry,
    ObjectDetails,
    _trajectory,
    _wrap_delta,
    background_details,
    coverage,
    landmark_mask,
    object_details,
    pattern_marks,
    shape_half_extent,
    shape_sdf,
)

WINDOW = 21
BLOCK = 3
PAD_BLOCK = 10_000  # padding frames: they may attend to everything, nothing attends to them, no loss
KINDS = {"single": 0.30, "cut": 0.14, "smooth": 0.14, "revisit": 0.17, "memory": 0.25}
# Data modes. "layouts": every kind above, Echo-Forcing's cache layouts included (memory frames, RoPE jumps):
# a model taught Echo's layouts. "self_forcing": only what Self-Forcing trains on - contiguous windows of one
# scene at any point of its clock and prompt switches inside a window (hard cuts, smooth switches), positions
# always contiguous; no memory frames, no revisits, no position jumps. The rolling cache's attention sink is a
# test-time device in Self-Forcing and is not trained either. Echo-Forcing is then tested training-free.
MODE_KINDS: dict[str, dict[str, float]] = {
    "layouts": KINDS,
    "self_forcing": {"single": 0.5, "cut": 0.25, "smooth": 0.25},
}
MAX_TIME = 480  # latent frames of a scene's clock a window may start at (2 minutes at 16 fps)


# ------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Segment:
    """A stretch of one scene with explicit details: background (pattern phase, landmarks) and object starts.

    Drawn objects ("copies") are at `starts` (pixels) at latent time `origin` and move by the world's rules from
    there; copy k draws `spec.objects[copies[k]]` (default: one copy per object)."""

    spec: SceneSpec
    background: BackgroundDetails
    starts: tuple[tuple[float, float], ...]
    directions: tuple[tuple[float, float], ...]
    origin: int = 0
    copies: tuple[int, ...] | None = None

    @property
    def drawn(self) -> tuple[int, ...]:
        return self.copies if self.copies is not None else tuple(range(len(self.spec.objects)))

    @classmethod
    def from_world(cls, spec: SceneSpec, seed: int, size: int = 48) -> "Segment":
        """The world's own clip for `seed` (render_segment then equals world.render_clip's keyframes)."""
        dets = object_details(spec, seed)
        return cls(spec, background_details(seed), tuple((d.start[0] * size, d.start[1] * size) for d in dets),
                   tuple(d.direction for d in dets))


def _centres(seg: Segment, times: torch.Tensor, size: int, fps: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Object centres (px) at latent times `times` (latent frame j shows video frame 4j), by the world's motion."""
    geo = Geometry(size, size)
    seconds = (4 * times - 4 * seg.origin).to(torch.float64) / fps
    return [_trajectory(seg.spec.objects[k], ObjectDetails((x0 / size, y0 / size), direction), geo, seconds)
            for k, (x0, y0), direction in zip(seg.drawn, seg.starts, seg.directions)]


def _rgb(values: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(3, 1, 1)


def render_segment(seg: Segment, times: torch.Tensor, size: int = 48, fps: float = 16) -> torch.Tensor:
    """Keyframes of `seg` at latent times `times` -> [T, 3, size, size], drawn like world.render_clip."""
    geo = Geometry(size, size)
    marks = pattern_marks(seg.spec.pattern, seg.background.phase, seg.background.vertical_stripes, geo)
    light = _rgb(COLOURS[seg.spec.background])
    image = light * (1 - marks) + light * DARK_SHADE * marks
    lm = landmark_mask(seg.background, geo)
    image = image * (1 - lm) + _rgb(LANDMARK_RGB) * lm
    frames = image.expand(len(times), 3, size, size).clone()
    ys = torch.arange(size, dtype=torch.float32).view(-1, 1).expand(size, size)
    xs = torch.arange(size, dtype=torch.float32).view(1, -1).expand(size, size)
    for k, (cx, cy) in zip(seg.drawn, _centres(seg, times, size, fps)):
        obj = seg.spec.objects[k]
        dx = _wrap_delta(xs - cx.float().view(-1, 1, 1), size)
        dy = _wrap_delta(ys - cy.float().view(-1, 1, 1), size)
        alpha = coverage(shape_sdf(obj.shape, dx, dy, geo.radius)).unsqueeze(1)
        frames = frames * (1 - alpha) + _rgb(COLOURS[obj.colour]) * alpha
    return frames.clamp_(0.0, 1.0)


def object_mask(seg: Segment, times: torch.Tensor, size: int = 48, fps: float = 16) -> torch.Tensor:
    """[T, size, size] coverage of the objects of `seg` at latent times `times`."""
    geo = Geometry(size, size)
    ys = torch.arange(size, dtype=torch.float32).view(-1, 1).expand(size, size)
    xs = torch.arange(size, dtype=torch.float32).view(1, -1).expand(size, size)
    mask = torch.zeros(len(times), size, size)
    for k, (cx, cy) in zip(seg.drawn, _centres(seg, times, size, fps)):
        dx = _wrap_delta(xs - cx.float().view(-1, 1, 1), size)
        dy = _wrap_delta(ys - cy.float().view(-1, 1, 1), size)
        mask = torch.maximum(mask, coverage(shape_sdf(seg.spec.objects[k].shape, dx, dy, geo.radius)))
    return mask


def continue_smoothly(seg: Segment, new_spec: SceneSpec, at_time: int, size: int = 48, fps: float = 16) -> Segment:
    """`new_spec` (same objects and background, new motions), every object starting where it is at `at_time`."""
    pos = _centres(seg, torch.tensor([at_time]), size, fps)
    starts = tuple((float(x[0]), float(y[0])) for x, y in pos)
    return Segment(new_spec, seg.background, starts, seg.directions, at_time, seg.copies)


# ------------------------------------------------------------------------------------ noise-seeded details
# A scene's unprompted details come from the noise of the first denoising step of its first chunk (t = 1000),
# the model's counterpart of a clip seed. The rules are translation-equivariant (a DiT with relative positions
# cannot know absolute positions from pure noise, only where the noise is) and token-local, which a small DiT
# learns within a few hundred steps: a landmark sits on every token whose noise is high in channel 0, a copy of
# object i on every token whose noise is high in channel i+1. Exactly one copy would need a global argmax over
# the tokens, which this model did not learn within the training budget; so a scene opens with 0-4 copies of
# each object (about 2.3 on average).
LANDMARK_THRESHOLD = 0.64  # on the token mean of channel 0 (std 0.5): ~10% of tokens, ~3.6 landmarks
OBJECT_THRESHOLD = 0.76  # on channels 1, 2: ~2.3 copies of each object; none in ~10% of openings
BOUNCE_DIRECTION = (math.cos(math.pi / 4), math.sin(math.pi / 4))
PHASE = (0.0, 0.0)  # pattern period = one token (8 px at 48 px), so the pattern is the same in every token


def token_features(noise: torch.Tensor) -> torch.Tensor:
    """Block noise [16, f, h, w] -> [16, h/2, w/2]: each channel's mean over a token's 2x2 pixels of frame 0."""
    return torch.nn.functional.avg_pool2d(noise[:, 0][None], 2)[0]


def details_from_noise(spec: SceneSpec, noise: torch.Tensor, size: int) -> Segment:
    """The scene `spec` whose landmarks and object starts are read from a block's first-step noise."""
    feat = token_features(noise)
    gh, gw = feat.shape[1:]
    rows, cols = torch.nonzero(feat[0] > LANDMARK_THRESHOLD, as_tuple=True)
    landmarks = tuple(((float(c) + 0.5) / gw, (float(r) + 0.5) / gh) for r, c in zip(rows, cols))
    starts, copies = [], []
    for i in range(len(spec.objects)):  # every token whose noise is high in channel i+1 draws object i
        for r, c in torch.nonzero(feat[1 + i] > OBJECT_THRESHOLD).tolist():
            starts.append(((c + 0.5) * size / gw, (r + 0.5) * size / gh))
            copies.append(i)
    return Segment(spec, BackgroundDetails(PHASE, True, landmarks), tuple(starts),
                   (BOUNCE_DIRECTION,) * len(starts), copies=tuple(copies))


def _noise(rng: np.random.Generator, size: int) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal((16, BLOCK, size // 4, size // 4)).astype(np.float32))


@dataclass
class Openings:
    """Scene-opening blocks alone (no context), for training the first denoising step."""

    segments: list[Segment]  # the scenes their noise implies
    noise: torch.Tensor  # [n, 16, 3, h, w] the first-step noise of each block
    texts: torch.Tensor  # [n, L, D]


def shape_spec(rng: np.random.Generator, world: str = "v1") -> SceneSpec:
    """One still object on a plain background: a scene that differs from its shape variants in the shape alone."""
    spec = world_spec(rng, world, max_objects=1)
    return SceneSpec((ObjectSpec(spec.objects[0].colour, spec.objects[0].shape),), spec.background)


def opening_blocks(rng: np.random.Generator, count: int, text_encoder, size: int = 48,
                   details: str = "noise",
                   spec_of: Callable[[np.random.Generator], SceneSpec] = world_spec) -> Openings:
    """Scene openings (`new_scene` for `details`) of scenes drawn by `spec_of`; with random details `noise` is
    independent of them."""
    segments, noises, texts = [], [], []
    for _ in range(count):
        spec = spec_of(rng)
        seg, noise = new_scene(rng, spec, size, details)
        noise = noise if noise is not None else _noise(rng, size)
        segments.append(seg)
        noises.append(noise)
        texts.append(text_encoder.encode(describe(spec)))
    return Openings(segments, torch.stack(noises), torch.stack(texts))


DETAILS = ("noise", "random", "landmarks", "anchored")
# Object starts (fractions of the frame) with details="anchored", by object count: apart by more than the widest
# world-v2 shapes (2 tokens), on either diagonal side of the centre.
ANCHORS: dict[int, tuple[tuple[float, float], ...]] = {1: ((0.5, 0.5),), 2: ((0.3, 0.35), (0.7, 0.65))}
_START_TRIES = 16


def _overlap_matters(spec: SceneSpec) -> bool:
    """Two objects of world v2 (its large shapes would often start on top of each other)."""
    return len(spec.objects) == 2 and all(o.shape in SHAPES_V2 for o in spec.objects)


def _boxes_overlap(spec: SceneSpec, starts: tuple[tuple[float, float], ...], geo: Geometry) -> bool:
    (x0, y0), (x1, y1) = starts
    (ax, ay), (bx, by) = (shape_half_extent(o.shape) for o in spec.objects)
    dx = abs(float(_wrap_delta(torch.tensor(x0 - x1), geo.width)))
    dy = abs(float(_wrap_delta(torch.tensor(y0 - y1), geo.height)))
    gap = 0.5 * geo.radius  # a little background between them
    return dx < (ax + bx) * geo.radius + gap and dy < (ay + by) * geo.radius + gap


def new_scene(rng: np.random.Generator, spec: SceneSpec, size: int,
              details: str = "noise") -> tuple[Segment, torch.Tensor | None]:
    """A scene starting now, with its first block's seed noise where details come from it.

    details: "noise" - landmarks and object copies read from the seed noise (the shipped recipe); "random" -
    drawn at random, no seed noise, one start per object (plain flow matching, sampled with the ODE);
    "landmarks" - landmarks read from the seed noise, one random start per object (flow matching in which the
    noise-to-landmark coupling holds at every noise level, so the ODE keeps it); "anchored" - the same
    landmarks, objects starting at fixed spots (`ANCHORS`), so a scene's first frame is one image per prompt
    and seed noise rather than a spread of layouts the model must choose among from pure noise."""
    if details not in DETAILS:
        raise ValueError(f"details must be one of {', '.join(DETAILS)}, got {details!r}")
    noise = _noise(rng, size) if details != "random" else None
    if details == "noise":
        return details_from_noise(spec, noise, size), noise
    geo = Geometry(size, size)
    if noise is not None:
        landmarks = details_from_noise(spec, noise, size).background.landmarks
    else:
        landmarks = background_details(int(rng.integers(2**31))).landmarks
    if details == "anchored":
        starts = tuple((x * size, y * size) for x, y in ANCHORS[len(spec.objects)])
        return Segment(spec, BackgroundDetails(PHASE, True, landmarks), starts,
                       (BOUNCE_DIRECTION,) * len(starts)), noise
    lo, hi = 1.1 * geo.radius, size - 1.1 * geo.radius
    starts = tuple((float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))) for _ in spec.objects)
    for _ in range(_START_TRIES if _overlap_matters(spec) else 0):  # world v2: start apart, as the world does
        if not _boxes_overlap(spec, starts, geo):
            break
        starts = tuple((float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))) for _ in spec.objects)
    return Segment(spec, BackgroundDetails(PHASE, True, landmarks), starts,
                   (BOUNCE_DIRECTION,) * len(starts)), noise


# --------------------------------------------------------------------------------------------- windows
@dataclass
class Window:
    images: torch.Tensor  # [F, 3, H, W] keyframes (F <= WINDOW; padding added by `collate`)
    positions: list[int]
    blocks: list[int]
    text_ids: list[int]  # index into prompts, per frame
    memory: list[bool]  # clean context frames (no noise, no loss)
    prompts: list[str]
    kind: str
    seed_noise: dict[int, torch.Tensor]  # first frame index of a scene-opening block -> its noise [16, 3, h, w]
    backgrounds: torch.Tensor  # [F, 3, H, W] the same frames without objects (context-fade augmentation)


class _Builder:
    def __init__(self, size: int, fps: float):
        self.size, self.fps = size, fps
        self.parts: list[torch.Tensor] = []
        self.positions: list[int] = []
        self.blocks: list[int] = []
        self.text_ids: list[int] = []
        self.memory: list[bool] = []
        self.prompts: list[str] = []
        self.seed_noise: dict[int, torch.Tensor] = {}
        self.backgrounds: list[torch.Tensor] = []

    def add(self, seg: Segment, times: list[int], *, position: int, block: int | None, memory: bool = False,
            seed_noise: torch.Tensor | None = None) -> int:
        """Append frames of `seg` at `times`; block None = one new block per 3 frames. Returns next position."""
        prompt = describe(seg.spec)
        if prompt not in self.prompts:
            self.prompts.append(prompt)
        tid = self.prompts.index(prompt)
        if seed_noise is not None:
            self.seed_noise[len(self.positions)] = seed_noise
        self.parts.append(render_segment(seg, torch.tensor(times), self.size, self.fps))
        empty = Segment(seg.spec, seg.background, (), (), copies=())
        still = render_segment(empty, torch.tensor(times[:1]), self.size)  # the background does not move
        self.backgrounds.append(still.expand(len(times), -1, -1, -1))
        first_block = (max(self.blocks) + 1) if self.blocks else 0
        for i in range(len(times)):
            self.positions.append(position + i)
            self.blocks.append(block if block is not None else first_block + i // BLOCK)
            self.text_ids.append(tid)
            self.memory.append(memory)
        return position + len(times)

    def build(self, kind: str) -> Window:
        return Window(torch.cat(self.parts), self.positions, self.blocks, self.text_ids, self.memory,
                      self.prompts, kind, self.seed_noise, torch.cat(self.backgrounds))


def _other_spec(rng: np.random.Generator, spec: SceneSpec, world: str = "v1") -> SceneSpec:
    while True:
        other = world_spec(rng, world)
        if other.appearance() != spec.appearance():
            return other


def sample_window(rng: np.random.Generator, size: int = 48, fps: float = 16, kind: str | None = None,
                  details: str = "noise", world: str = "v1", mode: str = "layouts") -> Window:
    """One training window drawn from `rng` (deterministic given the generator state).

    Every scene that opens inside the window opens at latent time 0 with `new_scene` details; a scene seen
    again (revisit, recall, smooth continuation) keeps the details it had."""
    if mode not in MODE_KINDS:
        raise ValueError(f"data mode {mode!r} is not known; use one of: {', '.join(MODE_KINDS)}")
    kinds = MODE_KINDS[mode]
    if kind is None:
        names = list(kinds)
        kind = names[int(rng.choice(len(names), p=np.array(list(kinds.values())) / sum(kinds.values())))]
    elif kind not in kinds:
        raise ValueError(f"window kind {kind!r} is not part of data mode {mode!r}; use one of: {', '.join(kinds)}")
    b = _Builder(size, fps)
    chunks = WINDOW // BLOCK
    a, a_noise = new_scene(rng, world_spec(rng, world), size, details)

    def span(t: int, n: int) -> list[int]:
        return list(range(t, t + n))

    if kind == "single" and mode == "self_forcing":  # a rolling window: the scene from any point of its clock
        start = int(rng.integers(0, MAX_TIME)) if rng.random() < 0.5 else 0
        b.add(a, span(start, WINDOW), position=0, block=None, seed_noise=a_noise)
    elif kind == "single":
        b.add(a, span(0, WINDOW), position=0, block=None, seed_noise=a_noise)
    elif kind == "cut":
        c1 = int(rng.integers(1, chunks))
        pos = b.add(a, span(0, c1 * BLOCK), position=0, block=None, seed_noise=a_noise)
        other, o_noise = new_scene(rng, _other_spec(rng, a.spec, world), size, details)
        b.add(other, span(0, (chunks - c1) * BLOCK), position=pos, block=None, seed_noise=o_noise)
    elif kind == "smooth":
        c1 = int(rng.integers(1, chunks))
        pos = b.add(a, span(0, c1 * BLOCK), position=0, block=None, seed_noise=a_noise)
        nxt = continue_smoothly(a, smooth_variant(a.spec, rng), c1 * BLOCK, size, fps)
        b.add(nxt, span(c1 * BLOCK, (chunks - c1) * BLOCK), position=pos, block=None)
    elif kind == "revisit":
        c1 = int(rng.integers(1, 4))
        c2 = int(rng.integers(1, chunks - c1))
        pos = b.add(a, span(0, c1 * BLOCK), position=0, block=None, seed_noise=a_noise)
        other, o_noise = new_scene(rng, _other_spec(rng, a.spec, world), size, details)
        pos = b.add(other, span(0, c2 * BLOCK), position=pos, block=None, seed_noise=o_noise)
        back = (c1 + c2) * BLOCK + int(rng.integers(0, 60))
        b.add(a, span(back, (chunks - c1 - c2) * BLOCK), position=pos, block=None)
    elif kind == "memory":
        _memory_window(b, rng, a, size, details, world)
    else:
        raise ValueError(f"unknown window kind {kind!r}; choose one of {', '.join(KINDS)}")
    return b.build(kind)


def _memory_window(b: _Builder, rng: np.random.Generator, a: Segment, size: int, details: str,
                   world: str = "v1") -> None:
    mode = rng.choice(3, p=[0.5, 0.3, 0.2])
    if mode == 0:  # recall: 1-3 early frames of the scene (a Scene Recall Frame), then the scene later on
        m = int(rng.integers(1, 4))
        times = sorted(int(t) for t in rng.choice(12, size=m, replace=False))
        pos = b.add(a, times, position=0, block=0, memory=True)
        jump = int(rng.integers(0, 7))
        later = 12 + int(rng.integers(0, MAX_TIME))
        b.add(a, list(range(later, later + 6 * BLOCK)), position=pos + jump, block=None)
    elif mode == 1:  # hard cut: a frame of the scene that ended, then a new scene far away in RoPE time
        pos = b.add(a, [int(rng.integers(0, MAX_TIME))], position=0, block=0, memory=True)
        jump = 45 if rng.random() < 0.7 else int(rng.integers(0, 7))
        other, o_noise = new_scene(rng, _other_spec(rng, a.spec, world), size, details)
        b.add(other, list(range(0, 6 * BLOCK)), position=pos + jump, block=None, seed_noise=o_noise)
    else:  # smooth: the chain's first frame and the last two frames of the old scene, then the new motions
        switch = 2 + int(rng.integers(0, 40))
        pos = b.add(a, [int(rng.integers(0, 12))], position=0, block=0, memory=True)
        pos = b.add(a, [switch - 2, switch - 1], position=pos, block=0, memory=True)
        nxt = continue_smoothly(a, smooth_variant(a.spec, rng), switch, b.size, b.fps)
        b.add(nxt, list(range(switch, switch + 6 * BLOCK)), position=pos, block=None)


# ------------------------------------------------------------------------------------------------ batch
@dataclass
class Batch:
    latents: torch.Tensor  # [B, 16, WINDOW, h, w] clean normalised latents (zeros on padding)
    positions: torch.Tensor  # [B, WINDOW] long
    blocks: torch.Tensor  # [B, WINDOW] long (PAD_BLOCK on padding)
    text_ids: torch.Tensor  # [B, WINDOW] long
    texts: torch.Tensor  # [B, S, text_len, text_dim]
    memory: torch.Tensor  # [B, WINDOW] bool
    valid: torch.Tensor  # [B, WINDOW] bool (not padding)
    seed_noise: torch.Tensor  # [B, 16, WINDOW, h, w] first-step noise of scene-opening blocks (zeros elsewhere)
    seeded: torch.Tensor  # [B, WINDOW] bool: frames of scene-opening blocks
    kinds: list[str]
    background: torch.Tensor  # [B, 16, WINDOW, h, w] latents of the same frames without objects
    objects: torch.Tensor  # [B, WINDOW, h, w] share of each latent cell's pixels covered by objects


def collate(windows: list[Window], codec, text_encoder) -> Batch:
    """Encode keyframes and prompts and pad every window to WINDOW frames."""
    n = len(windows)
    size = windows[0].images.shape[-1] // 4
    max_texts = max(len(w.prompts) for w in windows)
    latents = torch.zeros(n, 16, WINDOW, size, size)
    positions = torch.zeros(n, WINDOW, dtype=torch.long)
    blocks = torch.full((n, WINDOW), PAD_BLOCK, dtype=torch.long)
    text_ids = torch.zeros(n, WINDOW, dtype=torch.long)
    memory = torch.zeros(n, WINDOW, dtype=torch.bool)
    valid = torch.zeros(n, WINDOW, dtype=torch.bool)
    texts = torch.zeros(n, max_texts, text_encoder.text_len, text_encoder.text_dim)
    seed_noise = torch.zeros_like(latents)
    seeded = torch.zeros(n, WINDOW, dtype=torch.bool)
    background = torch.zeros_like(latents)
    objects = torch.zeros(n, WINDOW, size, size)
    for i, w in enumerate(windows):
        f = len(w.positions)
        if f > WINDOW:
            raise ValueError(f"window of kind {w.kind!r} has {f} frames, more than {WINDOW}")
        latents[i, :, :f] = codec.encode_images(w.images).permute(1, 0, 2, 3)
        background[i, :, :f] = codec.encode_images(w.backgrounds).permute(1, 0, 2, 3)
        drawn = ((w.images - w.backgrounds).abs().amax(1) > 1e-3).float()  # [f, H, W]
        objects[i, :f] = torch.nn.functional.avg_pool2d(drawn[:, None], 4)[:, 0]
        positions[i, :f] = torch.tensor(w.positions)
        positions[i, f:] = torch.arange(f, WINDOW) + (max(w.positions) + 1 - f)
        blocks[i, :f] = torch.tensor(w.blocks)
        text_ids[i, :f] = torch.tensor(w.text_ids)
        memory[i, :f] = torch.tensor(w.memory)
        valid[i, :f] = True
        for j, p in enumerate(w.prompts):
            texts[i, j] = text_encoder.encode(p)
        for f0, noise in w.seed_noise.items():
            seed_noise[i, :, f0:f0 + BLOCK] = noise
            seeded[i, f0:f0 + BLOCK] = True
    return Batch(latents, positions, blocks, text_ids, texts, memory, valid, seed_noise, seeded,
                 [w.kind for w in windows], background, objects)


def sample_batch(rng: np.random.Generator, batch: int, codec, text_encoder, size: int = 48,
                 details: str = "noise", world: str = "v1", mode: str = "layouts") -> Batch:
    return collate([sample_window(rng, size, details=details, world=world, mode=mode) for _ in range(batch)],
                   codec, text_encoder)


def fit_frames(rng: np.random.Generator, count: int, size: int = 48, world: str = "v1") -> torch.Tensor:
    """Keyframes of random scenes at random times, for fitting the codec: [count, 3, size, size]."""
    out = []
    for _ in range(count):
        seg, _ = new_scene(rng, world_spec(rng, world), size)
        out.append(render_segment(seg, torch.tensor([int(rng.integers(0, MAX_TIME))]), size))
    return torch.cat(out)
