"""Ground truth from pixels for the toy world: which scene a frame shows, whether a recalled scene brought
back its seed-specific details, whether the objects survived a transition and how they move.

Everything starts from a per-pixel posterior over the world's small palette (object colours, their darker
pattern shades, black landmarks). Scenes are scored by analysis-by-synthesis over the unknowns a prompt
leaves open: the background term takes the best of all pattern phases, each object term the best of all
positions (a matched filter, computed by FFT so wrapping objects are handled for free). This keeps the
scorer independent of the seed and robust to the blur and noise of a generative model.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .grammar import COLOURS, SceneSpec, shape_family
from .world import (
    DARK_SHADE,
    LANDMARK_RGB,
    Geometry,
    background_details,
    coverage,
    landmark_mask,
    pattern_marks,
    render_clip,
    shape_half_extent,
    shape_sdf,
)

_NAMES = tuple(COLOURS)
_N = len(_NAMES)
# Palette rows: bright colours, their dark pattern shades, and the landmark black.
_DARK, _LANDMARK = _N, 2 * _N
_PALETTE = torch.tensor(
    [COLOURS[c] for c in _NAMES] + [tuple(DARK_SHADE * v for v in COLOURS[c]) for c in _NAMES] + [LANDMARK_RGB]
)
_COLOUR_SIGMA = 0.1  # width of the colour posterior; about the noise we must tolerate
_PRESMOOTH = 0.8  # Gaussian sigma (pixels) applied before reading colours: averages noise out
_AREA_WEIGHT = 0.5
_AREA_SEEN = 0.8  # share of an object's true area its colour posterior recovers after blur
_TEMPERATURE = 0.05  # of scene scores -> confidences
_PRESENT_MIN = 0.35  # matched-filter response above which an object counts as present
_CHUNK = 96  # frames per block, to bound memory
_OPENING = 3  # pixels: colour patches thinner than this do not count towards a colour's area


# --------------------------------------------------------------------------------------- pixel analysis


def _check_frames(frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames must be a [T, 3, H, W] tensor in [0, 1], got {shape}")
    return frames.detach().float().cpu()


def _gaussian_blur(frames: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with circular padding (the world wraps)."""
    radius = max(1, math.ceil(2.5 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = frames.shape[1]
    out = F.pad(frames, (radius, radius, 0, 0), mode="circular")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="circular")
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def palette_posterior(frames: torch.Tensor) -> torch.Tensor:
    """[T, K, H, W]: per-pixel probability of each palette entry (bright colours, dark shades, black)."""
    frames = _check_frames(frames)
    out = []
    for block in frames.split(_CHUNK):
        x = _gaussian_blur(block, _PRESMOOTH)
        d2 = ((x.unsqueeze(1) - _PALETTE.view(1, -1, 3, 1, 1)) ** 2).sum(2)
        out.append(torch.softmax(-d2 / (2 * _COLOUR_SIGMA**2), dim=1))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------- templates


_TEMPLATE_BLUR = 1.1  # templates are blurred about as much as a pre-smoothed, degraded frame


def _blur_map(m: torch.Tensor, sigma: float) -> torch.Tensor:
    return _gaussian_blur(m.reshape(-1, 1, *m.shape[-2:]), sigma).reshape(m.shape)


@lru_cache(maxsize=16)
def _pattern_templates(pattern: str, height: int, width: int) -> torch.Tensor:
    """[n_phases, H*W]: expected light-minus-dark map for every phase (and stripe orientation) a seed can pick."""
    geo = Geometry(height, width)
    p = geo.period
    phases = [(i / p, j / p) for i in range(p) for j in range(p)] if pattern != "plain" else [(0.0, 0.0)]
    orientations = (True, False) if pattern == "striped" else (True,)
    marks = torch.stack([pattern_marks(pattern, ph, v, geo) for ph in phases for v in orientations])
    return torch.unique(_blur_map(1 - 2 * marks, _TEMPLATE_BLUR).flatten(1), dim=0)


@lru_cache(maxsize=32)
def _shape_template(
    shape: str, height: int, width: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """FFTs of (zero-mean blurred shape template, window) and the template's squared norm, centred at (0, 0)."""
    geo = Geometry(height, width)
    ys = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    xs = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    dy = torch.remainder(ys + height / 2, height) - height / 2  # wrapped offsets from pixel (0, 0)
    dx = torch.remainder(xs + width / 2, width) - width / 2
    fx, fy = shape_half_extent(shape)
    half_x, half_y = math.ceil(fx * geo.radius + 1.5), math.ceil(fy * geo.radius + 1.5)
    window = ((dx.abs() <= half_x) & (dy.abs() <= half_y)).float()
    cover = _blur_map(coverage(shape_sdf(shape, dx, dy, geo.radius)), sigma) * window
    tmpl = (cover - cover.sum() / window.sum()) * window
    return torch.fft.rfft2(tmpl), torch.fft.rfft2(window), float((tmpl**2).sum()), float(window.sum())


@lru_cache(maxsize=32)
def _shape_area(shape: str, height: int, width: int) -> float:
    geo = Geometry(height, width)
    r = torch.arange(-math.ceil(2 * geo.radius), math.ceil(2 * geo.radius) + 1, dtype=torch.float32)
    return float(coverage(shape_sdf(shape, r.view(1, -1), r.view(-1, 1), geo.radius)).sum())


def _colour_areas(post: torch.Tensor) -> torch.Tensor:
    """[T, N]: pixels on which each bright colour is the majority (posterior > 0.5), the colour-area evidence."""
    mask = (post[:, :_N] > 0.5).float()
    if _OPENING > 1:  # a morphological opening drops thin bands: the mixed colours along edges (red next to
        # yellow reads as orange) and between pattern shades, which are no object of that colour
        k, pad = _OPENING, _OPENING // 2
        eroded = -F.max_pool2d(F.pad(-mask, (pad, pad, pad, pad), mode="circular"), k, 1)
        mask = F.max_pool2d(F.pad(eroded, (pad, pad, pad, pad), mode="circular"), k, 1)
    return mask.sum((2, 3))


def _correlate(m_fft: torch.Tensor, kernel_fft: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Circular cross-correlation (the world wraps) from precomputed FFTs."""
    return torch.fft.irfft2(m_fft * kernel_fft.conj(), s=shape[-2:])


def _object_response_map(post: torch.Tensor, colour: str, shape: str) -> torch.Tensor:
    """[T, H, W]: shape fidelity x presence of a `colour` `shape` centred at each pixel.

    Fidelity is the normalised cross-correlation of the colour map with the blurred shape (it tells a circle
    from a square of the same colour); presence is the least-squares amplitude of the template, clipped to
    [0, 1] (it is ~0 where the colour is absent, where a normalised correlation of pure noise is not).
    """
    m = post[:, _NAMES.index(colour)]
    m_fft, m2_fft = torch.fft.rfft2(m), torch.fft.rfft2(m * m)
    tmpl_fft, window_fft, tmpl_energy, n = _shape_template(shape, m.shape[-2], m.shape[-1], _TEMPLATE_BLUR)
    cross = _correlate(m_fft, tmpl_fft, m.shape)
    s1 = _correlate(m_fft, window_fft, m.shape)
    var = (_correlate(m2_fft, window_fft, m.shape) - s1 * s1 / n).clamp_min(1e-6)
    ncc = cross / (math.sqrt(tmpl_energy) * var.sqrt())
    presence = (2 * cross / tmpl_energy).clamp(0, 1)
    return ncc.clamp_min(0) * presence


def _object_response(post: torch.Tensor, colour: str, shape: str) -> torch.Tensor:
    """[T]: best response over all positions, ~1 for the right shape in that colour, ~0 if the colour is absent."""
    return _object_response_map(post, colour, shape).flatten(1).amax(1)


def _background_response(post: torch.Tensor, colour: str, pattern: str) -> torch.Tensor:
    """[T]: 1 - half the mean squared error of the best-fitting phase; ~1 right, <= ~0.5 wrong."""
    i = _NAMES.index(colour)
    delta = (post[:, i] - post[:, _DARK + i]).flatten(1)
    tmpl = _pattern_templates(pattern, post.shape[-2], post.shape[-1])
    mse = (delta**2).mean(1, keepdim=True) - 2 * delta @ tmpl.T / delta.shape[1] + (tmpl**2).mean(1)
    return 1 - 0.5 * mse.amin(1)


# -------------------------------------------------------------------------------------- scene identity


def scene_scores(frames: torch.Tensor, candidates: Sequence[SceneSpec]) -> torch.Tensor:
    """[T, C] evidence that each frame shows each candidate's appearance (higher is better)."""
    if not candidates:
        raise ValueError("candidates is empty: pass the SceneSpecs the frames may show")
    seen: dict[tuple, int] = {}
    for j, spec in enumerate(candidates):
        if not isinstance(spec, SceneSpec):
            raise TypeError(f"candidates[{j}] must be a SceneSpec, got {type(spec).__name__}")
        key = spec.appearance()
        if key in seen:
            raise ValueError(
                f"candidates[{seen[key]}] and candidates[{j}] look the same in a single frame (they differ "
                "at most in motion); merge them, or use motion_of to tell their motions apart"
            )
        seen[key] = j
    post = palette_posterior(frames)
    h, w = post.shape[-2:]
    unit = math.pi * Geometry(h, w).radius ** 2  # one circle's area, the unit of the colour-area term
    observed = _colour_areas(post)
    cache: dict[tuple, torch.Tensor] = {}
    columns = []
    for spec in candidates:
        bg_key = ("bg", spec.background, spec.pattern)
        if bg_key not in cache:
            cache[bg_key] = _background_response(post, spec.background, spec.pattern)
        score = cache[bg_key].clone()
        for obj in spec.objects:
            key = ("obj", obj.colour, obj.shape)
            if key not in cache:
                cache[key] = _object_response(post, obj.colour, obj.shape)
            score += cache[key] - 0.5
        # Each object colour should cover about its shapes' area: this explains away colours the candidate
        # lacks (else a one-object candidate ties with a two-object frame containing its object) and
        # catches a second object of a colour already present.
        expected = torch.zeros(_N)
        for obj in spec.objects:
            expected[_NAMES.index(obj.colour)] += _AREA_SEEN * _shape_area(obj.shape, h, w)
        keep = [i for i, c in enumerate(_NAMES) if c != spec.background]
        score -= _AREA_WEIGHT * (observed[:, keep] - expected[keep]).abs().sum(1) / unit
        columns.append(score)
    return torch.stack(columns, 1)


def identify_scene(
    frames: torch.Tensor, candidates: Sequence[SceneSpec]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which candidate each frame shows, from pixels only: (indices [T] long, confidences [T] in (0, 1])."""
    scores = scene_scores(frames, candidates)
    probs = torch.softmax(scores / _TEMPERATURE, dim=1)
    conf, idx = probs.max(1)
    return idx, conf


# ------------------------------------------------------------------------------------- seed details


def _detail_maps(frames: torch.Tensor, spec: SceneSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(landmark map, light-minus-dark map, background weight), each [T, H, W]."""
    post = palette_posterior(frames)
    i = _NAMES.index(spec.background)
    weight = post[:, i] + post[:, _DARK + i]
    return post[:, _LANDMARK], post[:, i] - post[:, _DARK + i], weight


def _reference_maps(
    spec: SceneSpec, reference: int | torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if isinstance(reference, torch.Tensor):
        ref = reference.unsqueeze(0) if reference.dim() == 3 else reference
        if ref.shape[-2:] != (height, width):
            raise ValueError(f"reference is {tuple(ref.shape[-2:])} but frames are {(height, width)}: match them")
        lm, delta, weight = _detail_maps(ref, spec)
        return lm.mean(0), delta.mean(0), weight.mean(0)
    if not isinstance(reference, (int, np.integer)):
        raise TypeError("reference must be the reference clip's seed (int) or its frame(s) [3,H,W] / [N,3,H,W]")
    geo = Geometry(height, width)
    det = background_details(int(reference))
    lm = landmark_mask(det, geo)
    marks = pattern_marks(spec.pattern, det.phase, det.vertical_stripes, geo)
    return lm, 1 - 2 * marks, 1 - lm


def detail_match(frames: torch.Tensor, spec: SceneSpec, reference: int | torch.Tensor) -> torch.Tensor:
    """[T] in [0, 1]: how well each frame's seed-specific details match the reference clip's.

    `reference` is the reference clip's seed (ground truth) or frames of it ([3,H,W] or [N,3,H,W], e.g. the
    last frames generated before the scene was left). Two parts: landmark placement (F1 of the black-landmark
    maps with two pixels of tolerance) and, for patterned backgrounds, the pattern's phase (weighted normalised
    correlation of the light/dark maps, negative clipped to 0); the score is their mean.
    """
    frames = _check_frames(frames)
    h, w = frames.shape[-2:]
    lm, delta, weight = _detail_maps(frames, spec)
    lm_ref, delta_ref, weight_ref = _reference_maps(spec, reference, h, w)
    # Two pixels of tolerance: blur and resampling shrink a landmark's confident core by about that much.
    dil = lambda m: F.max_pool2d(m.unsqueeze(-3), 5, 1, 2).squeeze(-3)  # noqa: E731
    recall = (lm_ref * dil(lm)).sum((-2, -1)) / lm_ref.sum().clamp_min(1e-6)
    precision = (lm * dil(lm_ref)).sum((-2, -1)) / lm.sum((-2, -1)).clamp_min(1e-6)
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-6)
    if spec.pattern == "plain":
        return f1.clamp(0, 1)
    m = weight * weight_ref
    msum = m.sum((-2, -1), keepdim=True).clamp_min(1e-6)
    a = delta - (m * delta).sum((-2, -1), keepdim=True) / msum
    b = delta_ref - (m * delta_ref).sum((-2, -1), keepdim=True) / msum
    ncc = (m * a * b).sum((-2, -1)) / ((m * a * a).sum((-2, -1)) * (m * b * b).sum((-2, -1))).sqrt().clamp_min(1e-6)
    return (0.5 * (f1 + ncc.clamp_min(0))).clamp(0, 1)


def chance_level(
    spec: SceneSpec,
    n_seeds: int = 8,
    *,
    num_frames: int = 4,
    height: int = 64,
    width: int = 64,
    base_seed: int = 0,
) -> float:
    """Mean detail_match of clips of the SAME spec with other seeds: the baseline a recall must beat."""
    if n_seeds < 2:
        raise ValueError(f"n_seeds must be >= 2 to compare different seeds, got {n_seeds}")
    seeds = [base_seed * 1_000_003 + 7919 * k + 1 for k in range(n_seeds)]
    total = 0.0
    for k, seed in enumerate(seeds):
        other = seeds[(k + 1) % n_seeds]
        frames = render_clip(spec, other, num_frames, height=height, width=width)
        total += float(detail_match(frames, spec, seed).mean())
    return total / n_seeds


# ------------------------------------------------------------------------------------ objects, motion


def object_presence(frames: torch.Tensor, spec: SceneSpec) -> torch.Tensor:
    """[T, n_objects] bool: the object's colour shows its shape, and no other shape fits that colour better.

    Shapes compete on the matched-filter response minus the colour-area mismatch, the same evidence
    `scene_scores` uses (a blurred square alone fits a circle template about as well as a square one).
    """
    post = palette_posterior(frames)
    h, w = post.shape[-2:]
    unit = math.pi * Geometry(h, w).radius ** 2
    areas = _colour_areas(post)
    columns = []
    for i, obj in enumerate(spec.objects):
        observed = areas[:, _NAMES.index(obj.colour)]
        twins = [o for j, o in enumerate(spec.objects) if j != i and o.colour == obj.colour]
        same_colour = sum(_shape_area(o.shape, h, w) for o in twins)

        def fit(shape: str) -> tuple[torch.Tensor, torch.Tensor]:
            resp = _object_response(post, obj.colour, shape)
            expected = _AREA_SEEN * (same_colour + _shape_area(shape, h, w))
            return resp, resp - _AREA_WEIGHT * (observed - expected).abs() / unit

        own, own_fit = fit(obj.shape)
        rivals = torch.stack([fit(s)[1] for s in shape_family(obj.shape) if s != obj.shape], 1).amax(1)
        columns.append((own >= _PRESENT_MIN) & (own_fit >= rivals))
    return torch.stack(columns, 1)


def object_colour_area(frames: torch.Tensor, spec: SceneSpec) -> torch.Tensor:
    """[T, n_objects]: pixels in each object's colour over the area its shape covers (1 = about the right size;
    objects of one colour share their pixels, so their areas add up). Says whether an object is drawn at all,
    whatever its shape: 0 = gone, far above 1 = its colour floods the frame."""
    post = palette_posterior(frames)
    h, w = post.shape[-2:]
    areas = _colour_areas(post)
    columns = []
    for obj in spec.objects:
        true = sum(_shape_area(o.shape, h, w) for o in spec.objects if o.colour == obj.colour)
        columns.append(areas[:, _NAMES.index(obj.colour)] / true)
    return torch.stack(columns, 1)


def object_identity(frames: torch.Tensor, spec: SceneSpec) -> float:
    """Share of frames in which all of the spec's objects (colour + shape) are present."""
    return float(object_presence(frames, spec).all(1).float().mean())


def object_tracks(frames: torch.Tensor, spec: SceneSpec) -> torch.Tensor:
    """[T, n_objects, 2]: (x, y) pixel position of each object's best matched-filter response."""
    post = palette_posterior(frames)
    h, w = post.shape[-2:]
    tracks = []
    for obj in spec.objects:
        flat = _object_response_map(post, obj.colour, obj.shape).flatten(1).argmax(1)
        tracks.append(torch.stack([flat % w, flat // w], 1).float())
    return torch.stack(tracks, 1)


def motion_of(frames: torch.Tensor, spec: SceneSpec, *, fps: float = 16) -> list[str]:
    """Estimated motion word of each object (static, left, right, up, down, bounce) over the frames."""
    frames = _check_frames(frames)
    if frames.shape[0] < 3:
        raise ValueError(f"motion_of needs at least 3 frames, got {frames.shape[0]}")
    h, w = frames.shape[-2:]
    expected = Geometry(h, w).speed / fps  # pixels per frame of any moving object
    tracks = object_tracks(frames, spec)
    step = tracks[1:] - tracks[:-1]
    step[..., 0] = torch.remainder(step[..., 0] + w / 2, w) - w / 2
    step[..., 1] = torch.remainder(step[..., 1] + h / 2, h) - h / 2
    path = torch.cat([torch.zeros_like(step[:1]), step.cumsum(0)])  # unwrapped across edge wraps
    lag = min(8, frames.shape[0] - 1)  # velocities over several frames: argmax jitter of +-1 px averages out
    velocity = (path[lag:] - path[:-lag]) / lag
    words = []
    for i in range(len(spec.objects)):
        v = velocity[:, i]
        mag = v.abs().mean(0)  # per-axis mean speed
        net = v.mean(0)
        if float(mag.max()) < 0.35 * expected:
            words.append("static")
        elif float(mag.min()) > 0.35 * expected:
            words.append("bounce")  # both axes move: only bouncing objects travel diagonally
        elif float(mag[0]) > float(mag[1]):
            words.append("right" if float(net[0]) > 0 else "left")
        else:
            words.append("down" if float(net[1]) > 0 else "up")
    return words


# ------------------------------------------------------------------------------------------ robustness


def degrade(
    frames: torch.Tensor,
    *,
    noise: float = 0.1,
    blur_sigma: float = 1.0,
    resample: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Imitate a generative model's losses: Gaussian blur, down-up resampling, additive Gaussian noise."""
    out = _check_frames(frames)
    if blur_sigma > 0:
        out = _gaussian_blur(out, blur_sigma)
    if resample > 1:
        size = out.shape[-2:]
        out = F.interpolate(out, scale_factor=1 / resample, mode="area")
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(0, 1)
