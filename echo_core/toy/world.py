"""The toy world: deterministic procedural clips from a SceneSpec and a seed.

The prompt fixes colours, shapes, motions and the pattern kind. The seed fixes what only memory can bring
back when a scene is recalled: four black landmarks in the background, the pattern's phase (and the stripes'
orientation), and the objects' start positions / bounce angles. Background details depend on the seed
alone, so a `smooth_variant` of a scene rendered with the same seed keeps its background.

Every position is a closed-form function of the absolute frame index, so any frame range renders the same
pixels as the corresponding slice of a longer clip. Geometry is defined in fractions of the frame, so the
same seed gives the same layout at every resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .grammar import (  # noqa: F401  (re-exported: world.py is the toy world's front door)
    ALL_SHAPES,
    COLOURS,
    MAX_OBJECTS,
    MOTIONS,
    PATTERNS,
    SHAPES,
    SHAPES_V1,
    SHAPES_V2,
    VOCAB,
    WORLDS,
    ObjectSpec,
    SceneSpec,
    describe,
    parse_prompt,
    sample_spec,
    shape_family,
    smooth_variant,
    world_shapes,
)

DARK_SHADE = 0.55  # pattern marks are the background colour scaled by this
LANDMARK_RGB = (0.06, 0.06, 0.06)
NUM_LANDMARKS = 4
OBJECT_RADIUS = 0.15  # of min(H, W)
LANDMARK_HALF = 0.05  # half side of a landmark square, of min(H, W)
SPEED = 0.25  # of min(H, W) per second: 1 px/frame at 64 px and 16 fps
_OVERLAP_TRIES = 48


@dataclass(frozen=True)
class Geometry:
    """Pixel sizes derived from the resolution."""

    height: int
    width: int

    @property
    def size(self) -> int:
        return min(self.height, self.width)

    @property
    def radius(self) -> float:
        return OBJECT_RADIUS * self.size

    @property
    def landmark_half(self) -> float:
        return max(1.5, LANDMARK_HALF * self.size)

    @property
    def period(self) -> int:
        """Pattern period in pixels (even, so stripes and checks have equal light and dark halves)."""
        return max(6, 2 * round(self.size / 12))

    @property
    def speed(self) -> float:
        return SPEED * self.size


@dataclass(frozen=True)
class BackgroundDetails:
    """Seed-specific background: pattern phase/orientation and landmark centres (fractions of W, H)."""

    phase: tuple[float, float]  # fractions of the period, x and y
    vertical_stripes: bool
    landmarks: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ObjectDetails:
    """Seed-specific object state: start centre (fractions of W, H) and unit direction for bouncing."""

    start: tuple[float, float]
    direction: tuple[float, float]


def background_details(seed: int) -> BackgroundDetails:
    rng = np.random.default_rng([int(seed), 0])
    phase = (float(rng.random()), float(rng.random()))
    vertical = bool(rng.random() < 0.5)
    points: list[tuple[float, float]] = []
    while len(points) < NUM_LANDMARKS:  # spread out so each landmark is measurable on its own
        p = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)))
        if all(math.hypot(p[0] - q[0], p[1] - q[1]) >= 0.22 for q in points):
            points.append(p)
    return BackgroundDetails(phase=phase, vertical_stripes=vertical, landmarks=tuple(points))


def object_details(spec: SceneSpec, seed: int) -> tuple[ObjectDetails, ...]:
    """Start states; of several random draws, keep the one whose objects overlap least over 16 s."""
    rng = np.random.default_rng([int(seed), 1])
    geo = Geometry(256, 256)  # overlap is judged in frame fractions, so independent of the resolution
    t = torch.arange(0, 16.0, 0.25)
    best, best_overlap = None, math.inf
    for _ in range(_OVERLAP_TRIES if len(spec.objects) > 1 else 1):
        draw = []
        for obj in spec.objects:
            lo, hi = OBJECT_RADIUS * 1.1, 1 - OBJECT_RADIUS * 1.1
            start = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
            angle = float(rng.uniform(math.radians(30), math.radians(60)) + rng.integers(4) * math.pi / 2)
            draw.append(ObjectDetails(start, (math.cos(angle), math.sin(angle))))
        if len(spec.objects) == 1:
            return tuple(draw)
        (x0, y0), (x1, y1) = (_trajectory(o, d, geo, t) for o, d in zip(spec.objects, draw))
        dx = _wrap_delta(x0 - x1, geo.width)
        dy = _wrap_delta(y0 - y1, geo.height)
        if all(o.shape in SHAPES_V2 for o in spec.objects):  # boxes of different aspects: test the boxes
            (ax, ay), (bx, by) = (shape_half_extent(o.shape) for o in spec.objects)
            near_x = dx.abs() < (ax + bx + 0.2) * geo.radius
            near_y = dy.abs() < (ay + by + 0.2) * geo.radius
            overlap = float((near_x & near_y).float().mean())
        else:
            overlap = float((dx.hypot(dy) < 2.2 * geo.radius).float().mean())
        if overlap < best_overlap:
            best, best_overlap = tuple(draw), overlap
        if overlap == 0.0:
            break
    assert best is not None
    return best


def _wrap_delta(d: torch.Tensor, n: int) -> torch.Tensor:
    return torch.remainder(d + n / 2, n) - n / 2


def _reflect(s: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Triangle wave that bounces s between lo and hi."""
    span = hi - lo
    u = torch.remainder(s - lo, 2 * span)
    return lo + span - (u - span).abs()


def _trajectory(
    obj: ObjectSpec, det: ObjectDetails, geo: Geometry, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Object centre in pixels at times t (seconds)."""
    x0 = torch.full_like(t, det.start[0] * geo.width)
    y0 = torch.full_like(t, det.start[1] * geo.height)
    v = geo.speed * t
    if obj.motion == "left":
        return torch.remainder(x0 - v, geo.width), y0
    if obj.motion == "right":
        return torch.remainder(x0 + v, geo.width), y0
    if obj.motion == "up":
        return x0, torch.remainder(y0 - v, geo.height)
    if obj.motion == "down":
        return x0, torch.remainder(y0 + v, geo.height)
    if obj.motion == "bounce":  # bounce off the walls where the shape's edge (not its centre) meets them
        fx, fy = shape_half_extent(obj.shape)
        rx, ry = fx * geo.radius, fy * geo.radius
        x = _reflect(x0 + v * det.direction[0], rx, geo.width - rx)
        y = _reflect(y0 + v * det.direction[1], ry, geo.height - ry)
        return x, y
    return x0, y0


def object_trajectories(
    spec: SceneSpec, seed: int, frames: torch.Tensor, *, height: int = 64, width: int = 64, fps: float = 16
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ground-truth centres (x, y in pixels) of each object at the given absolute frame indices."""
    geo = Geometry(height, width)
    t = frames.to(torch.float64) / fps
    return [_trajectory(o, d, geo, t) for o, d in zip(spec.objects, object_details(spec, seed))]


# ---------------------------------------------------------------------------------------------- shapes


# World v2's shapes, as half sizes (x, y) in units of the object radius r (7.2 px at 48 px, where a token of
# the toy model is 8 px): a dot covers about one token, a block 2x2 tokens, a pillar 1x2, a bar 2x1. They
# differ in size and aspect at token scale, where world v1's differ by a few corner pixels.
V2_HALF_SIZES: dict[str, tuple[float, float]] = {
    "dot": (0.6, 0.6),
    "block": (1.1, 1.1),
    "pillar": (0.55, 1.1),
    "bar": (1.1, 0.55),
}


def shape_half_extent(shape: str) -> tuple[float, float]:
    """Half width and half height of a shape's bounding box in units of r (world v1 shapes: 1, 1)."""
    return V2_HALF_SIZES.get(shape, (1.0, 1.0))


def shape_sdf(shape: str, dx: torch.Tensor, dy: torch.Tensor, r: float) -> torch.Tensor:
    """Signed distance (pixels, negative inside) to a shape of radius r centred at the origin, y down."""
    if shape == "dot":
        return dx.hypot(dy) - V2_HALF_SIZES["dot"][0] * r
    if shape in V2_HALF_SIZES:  # axis-aligned rectangles
        hx, hy = V2_HALF_SIZES[shape]
        return torch.maximum(dx.abs() - hx * r, dy.abs() - hy * r)
    if shape == "circle":
        return dx.hypot(dy) - r
    if shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - r
    if shape == "ring":
        return (dx.hypot(dy) - 0.725 * r).abs() - 0.275 * r
    if shape == "cross":
        arm, half = 0.95 * r, 0.3 * r
        a = torch.maximum(dx.abs() - arm, dy.abs() - half)
        b = torch.maximum(dx.abs() - half, dy.abs() - arm)
        return torch.minimum(a, b)
    if shape == "triangle":  # apex up at (0, -r), base at y = 0.8 r, half base 0.95 r
        ex, ey = 0.95 * r, 1.8 * r
        n = math.hypot(ex, ey)
        side = (dx.abs() * ey - (dy + r) * ex) / n
        return torch.maximum(side, dy - 0.8 * r)
    raise ValueError(f"shape {shape!r} is not allowed; use one of: {', '.join(ALL_SHAPES)}")


def coverage(sdf: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage: sub-pixel motion stays smooth instead of jumping pixel by pixel."""
    return (0.5 - sdf).clamp(0.0, 1.0)


def _grid(geo: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(geo.height, dtype=torch.float32).view(-1, 1).expand(geo.height, geo.width)
    xs = torch.arange(geo.width, dtype=torch.float32).view(1, -1).expand(geo.height, geo.width)
    return xs, ys


def pattern_marks(
    pattern: str, phase: tuple[float, float], vertical_stripes: bool, geo: Geometry
) -> torch.Tensor:
    """[H, W] in [0, 1]: where the darker shade of the background is painted."""
    xs, ys = _grid(geo)
    p = geo.period
    x = xs + round(phase[0] * p)
    y = ys + round(phase[1] * p)
    half = p // 2
    if pattern == "plain":
        return torch.zeros(geo.height, geo.width)
    if pattern == "striped":
        return (torch.div(x if vertical_stripes else y, half, rounding_mode="floor") % 2).float()
    if pattern == "checkered":
        cells = torch.div(x, half, rounding_mode="floor") + torch.div(y, half, rounding_mode="floor")
        return (cells % 2).float()
    if pattern == "dotted":
        dx = torch.remainder(x, p) - (p - 1) / 2
        dy = torch.remainder(y, p) - (p - 1) / 2
        return coverage(dx.hypot(dy) - 0.32 * p)
    raise ValueError(f"pattern {pattern!r} is not allowed; use one of: {', '.join(PATTERNS)}")


def landmark_mask(details: BackgroundDetails, geo: Geometry) -> torch.Tensor:
    """[H, W] coverage of the seed's landmarks."""
    xs, ys = _grid(geo)
    mask = torch.zeros(geo.height, geo.width)
    for fx, fy in details.landmarks:
        sdf = torch.maximum((xs - fx * geo.width).abs(), (ys - fy * geo.height).abs()) - geo.landmark_half
        mask = torch.maximum(mask, coverage(sdf))
    return mask


def _rgb(colour: str | tuple[float, float, float]) -> torch.Tensor:
    values = COLOURS[colour] if isinstance(colour, str) else colour
    return torch.tensor(values, dtype=torch.float32).view(3, 1, 1)


@lru_cache(maxsize=64)
def _background_cached(background: str, pattern: str, seed: int, height: int, width: int) -> torch.Tensor:
    geo = Geometry(height, width)
    det = background_details(seed)
    marks = pattern_marks(pattern, det.phase, det.vertical_stripes, geo)
    light = _rgb(background)
    image = light * (1 - marks) + light * DARK_SHADE * marks
    lm = landmark_mask(det, geo)
    return image * (1 - lm) + _rgb(LANDMARK_RGB) * lm


def render_background(spec: SceneSpec, seed: int, *, height: int = 64, width: int = 64) -> torch.Tensor:
    """[3, H, W] background of the clip (pattern and landmarks, no objects)."""
    _check_size(height, width)
    return _background_cached(spec.background, spec.pattern, int(seed), height, width).clone()


def _check_size(height: int, width: int) -> None:
    if not (isinstance(height, int) and isinstance(width, int)) or min(height, width) < 16:
        raise ValueError(f"height and width must be integers >= 16, got {height}x{width}")


def render_clip(
    spec: SceneSpec,
    seed: int,
    num_frames: int,
    *,
    height: int = 64,
    width: int = 64,
    fps: float = 16,
    start_frame: int = 0,
) -> torch.Tensor:
    """Frames start_frame .. start_frame + num_frames - 1 of the clip, [T, 3, H, W] float32 in [0, 1]."""
    if not isinstance(spec, SceneSpec):
        raise TypeError(f"spec must be a SceneSpec (use parse_prompt), got {type(spec).__name__}")
    if not isinstance(num_frames, int) or num_frames < 0:
        raise ValueError(f"num_frames must be an integer >= 0, got {num_frames!r}")
    if not isinstance(start_frame, int) or start_frame < 0:
        raise ValueError(f"start_frame must be an integer >= 0, got {start_frame!r}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps!r}")
    _check_size(height, width)
    geo = Geometry(height, width)
    frames = render_background(spec, seed, height=height, width=width).expand(num_frames, 3, height, width)
    frames = frames.clone()
    if num_frames == 0:
        return frames
    xs, ys = _grid(geo)
    index = torch.arange(start_frame, start_frame + num_frames)
    centres = object_trajectories(spec, seed, index, height=height, width=width, fps=fps)
    for obj, (cx, cy) in zip(spec.objects, centres):
        # Distances wrap around the frame, so a wrapping object leaves one edge as it enters the other.
        dx = _wrap_delta(xs - cx.float().view(-1, 1, 1), width)
        dy = _wrap_delta(ys - cy.float().view(-1, 1, 1), height)
        alpha = coverage(shape_sdf(obj.shape, dx, dy, geo.radius)).unsqueeze(1)
        frames = frames * (1 - alpha) + _rgb(obj.colour) * alpha
    return frames.clamp_(0.0, 1.0)
