"""Metrics of the memory-quality benchmark, computed from decoded frames with the toy world's pixel scorer.

Every function takes the frames of one run plus what the timeline says (which scene each chunk belongs to, the
scene specs) and returns plain floats, so the benchmark can average them over timelines and policies.
Windows are in video frames; `fps` converts seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from echo_core.toy.evaluate import near_misses, world_of
from echo_core.toy.grammar import SceneSpec, world_spec
from echo_core.toy.scorer import detail_match, identify_scene, object_identity, object_presence

SWITCH_SHOWN = 0.5  # a chunk "shows" a scene when the scorer names it on at least half of its frames


@dataclass
class RunFrames:
    """The decoded video of one run and where each chunk's frames lie in it."""

    frames: torch.Tensor  # [T, 3, H, W]
    chunk_ranges: list[tuple[int, int]]  # [start, end) video frames per chunk
    reports: list[dict] = field(default_factory=list)

    def chunk_frames(self, chunk: int) -> torch.Tensor:
        a, b = self.chunk_ranges[chunk]
        return self.frames[a:b]

    def scene_frames(self, first_chunk: int, end_chunk: int) -> torch.Tensor:
        return self.frames[self.chunk_ranges[first_chunk][0]:self.chunk_ranges[end_chunk - 1][1]]

    def after(self, chunk: int, frames: int, end_chunk: int) -> torch.Tensor:
        """Up to `frames` video frames from the start of `chunk`, not beyond the end of `end_chunk - 1`."""
        a = self.chunk_ranges[chunk][0]
        return self.frames[a:min(a + frames, self.chunk_ranges[end_chunk - 1][1])]


def candidate_set(target: SceneSpec, others: list[SceneSpec], seed: int, n_random: int = 6) -> list[SceneSpec]:
    """The target first, then the timeline's other scenes, the target's near misses and random scenes, all with
    distinct appearances: a frame counts as the target only if everything the prompt names is right."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    world = world_of(target)
    for spec in [target] + others + near_misses(target) + [world_spec(rng, world) for _ in range(4 * n_random)]:
        if spec.appearance() not in seen and len(out) < 1 + len(others) + 5 + n_random:
            out.append(spec)
            seen.add(spec.appearance())
    return out


def shown(frames: torch.Tensor, candidates: list[SceneSpec], spec: SceneSpec) -> torch.Tensor:
    """[T] bool: the scorer names `spec` (whose appearance must be among the candidates) on each frame."""
    key = spec.appearance()
    index = next(i for i, c in enumerate(candidates) if c.appearance() == key)
    idx, _ = identify_scene(frames, candidates)
    return idx == index


def switch_response(run: RunFrames, first_chunk: int, end_chunk: int, spec: SceneSpec,
                    candidates: list[SceneSpec]) -> tuple[int, bool]:
    """Chunks generated after a switch before the first one that shows the new scene (0 = the first chunk
    already does), and whether one did at all (if not, the scene's chunk count is returned)."""
    for k, chunk in enumerate(range(first_chunk, end_chunk)):
        if float(shown(run.chunk_frames(chunk), candidates, spec).float().mean()) >= SWITCH_SHOWN:
            return k, True
    return end_chunk - first_chunk, False


def contamination(run: RunFrames, first_chunk: int, end_chunk: int, old: SceneSpec, candidates: list[SceneSpec],
                  window: int) -> float:
    """Share of the first `window` frames after a hard cut on which the scorer still names the old scene."""
    return float(shown(run.after(first_chunk, window, end_chunk), candidates, old).float().mean())


def continuity(run: RunFrames, first_chunk: int, end_chunk: int, spec: SceneSpec, window: int) -> float:
    """Share of the first `window` frames after a smooth switch that keep every object (colour and shape)."""
    return object_identity(run.after(first_chunk, window, end_chunk), spec)


def detail_carryover(run: RunFrames, first_chunk: int, end_chunk: int, new: SceneSpec, old_last: torch.Tensor,
                     window: int) -> float:
    """Landmark-placement match (F1, `detail_match` on a plain background) of the first `window` frames after a hard
    cut to the last frames of the scene before it: a new scene that copies the old one's unprompted details.
    Recall fidelity's counterpart: a policy that never forgets recalls perfectly and carries details over."""
    frames = run.after(first_chunk, window, end_chunk)
    return float(detail_match(frames, replace(new, pattern="plain"), old_last).mean())


def recall_fidelity(recalled: torch.Tensor, spec: SceneSpec, reference: torch.Tensor) -> float:
    """Mean seed-detail match (landmarks, pattern phase) of the recalled scene's frames to reference frames."""
    return float(detail_match(recalled, spec, reference).mean())


def accuracy_curve(frames: torch.Tensor, candidates: list[SceneSpec], spec: SceneSpec) -> list[float]:
    """Per-frame 0/1 'the scorer names spec', as floats (for curves averaged over switches)."""
    return shown(frames, candidates, spec).float().tolist()


def stability(frames: torch.Tensor, candidates: list[SceneSpec], spec: SceneSpec, window: int) -> dict[str, float]:
    """Scene accuracy over the first and the last `window` frames of a single-prompt run, and their drop."""
    ok = shown(frames, candidates, spec).float()
    first, last = float(ok[:window].mean()), float(ok[-window:].mean())
    return {"first": first, "last": last, "drop": first - last, "overall": float(ok.mean())}


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def detail_curve(frames: torch.Tensor, spec: SceneSpec, reference: torch.Tensor) -> list[float]:
    """Per-frame seed-detail match to the reference (for the recall curve)."""
    return detail_match(frames, spec, reference).tolist()


def late_memory(frames: torch.Tensor, spec: SceneSpec, window: int) -> dict[str, float]:
    """Long single scene: do its unprompted details and its objects survive once its first frames have left the
    attention window? `detail` = seed-detail match of the last `window` frames to the scene's own first
    `window` frames (`detail_match`); `objects` = share of the last `window` frames with every object present."""
    first, last = frames[:window], frames[-window:]
    return {"detail": float(detail_match(last, spec, first).mean()), "objects": object_identity(last, spec)}


def linger(run: RunFrames, first_chunk: int, end_chunk: int, gone: SceneSpec, window: int) -> float:
    """Share of the first `window` frames after a smooth switch on which an object the new scene dropped is
    still drawn (`gone`: a one-object spec of it on the shared background); lower is better."""
    return float(object_presence(run.after(first_chunk, window, end_chunk), gone)[:, 0].float().mean())
