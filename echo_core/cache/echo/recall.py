"""Scene recall frames and the scene pool (spec §4).

A finished scene is summarised, per layer, by one frame-sized K/V map whose token p still belongs to spatial
location p: its frames 0, 4, 8 (official sampling) are scored per location against the scene's mean query and
fused (`score_weighted`: 90 % first frame + 10 % softmax blend; `token_select`: best frame per location).
The pool keeps, per scene, that recall frame ("compress") and/or the scene's first frame ("select"), bounded to
the newest `pool_max_size` scenes. Entries are stored in the model's dtype on `device` (official: float32 on CPU).
Saved scenes of the scene library (echo_core.scene_library, the files) are pre-loaded as named entries before a
run starts: only a recall reaches them (by name or by routing), they are never the "newest" memory of a smooth
switch or a hard cut, and the size bound does not evict them.
`SceneRecorder` collects, while a scene runs, what its recall frame is fused from and its first frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from echo_core.cache.placement import GPU, HOST, host_copy
from echo_core.config import EchoConfig

LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # one (k, v) [B, H, S, D] per layer


def recall_scores(keys: torch.Tensor, q_mean: torch.Tensor) -> torch.Tensor:
    """σ [B, F, S] = mean over heads of Σ_d K[b, h, f, s, d] q̄[h, d] for candidate keys [B, H, F, S, D]
    (raw keys, no RoPE, no 1/√D, as officially)."""
    return torch.einsum("bhfsd,hd->bfs", keys.float(), q_mean.float()) / keys.shape[1]


def fuse_recall_frame(keys: torch.Tensor, values: torch.Tensor, q_mean: torch.Tensor, *, mode: str,
                      base_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One recall frame (k, v) [B, H, S, D] float32 from candidate frames [B, H, F, S, D] (frame 0 first).

    score_weighted (needs >= 2 frames): K̂ = β K_0 + (1 - β) Σ_f softmax_f(σ)_f K_f (same weights for V);
    token_select, or a single candidate: K̂_p = K_{argmax_f σ_fp, p}."""
    if keys.shape[2] == 0:
        raise ValueError("a recall frame needs at least one candidate frame")
    sigma = recall_scores(keys, q_mean)  # [B, F, S]
    kf, vf = keys.float(), values.float()
    if mode == "score_weighted" and keys.shape[2] >= 2:
        alpha = torch.softmax(sigma, dim=1)[:, None, :, :, None]  # [B, 1, F, S, 1]
        k_mix, v_mix = (alpha * kf).sum(dim=2), (alpha * vf).sum(dim=2)
        return (base_weight * kf[:, :, 0] + (1 - base_weight) * k_mix,
                base_weight * vf[:, :, 0] + (1 - base_weight) * v_mix)
    if mode not in ("score_weighted", "token_select"):
        raise ValueError(f"recall frame mode must be 'score_weighted' or 'token_select', got {mode!r}")
    best = sigma.argmax(dim=1)  # [B, S]
    idx = best[:, None, None, :, None].expand(-1, keys.shape[1], 1, -1, keys.shape[-1])
    return kf.gather(2, idx).squeeze(2), vf.gather(2, idx).squeeze(2)


@dataclass
class PoolEntry:
    scene_index: int
    select: LayerKV | None = None  # the scene's first latent frame
    compress: LayerKV | None = None  # the scene recall frame
    name: str | None = None  # a saved scene's name (pre-loaded from the library; read-only tensors)

    @property
    def saved(self) -> bool:
        return self.name is not None

    def layers(self, kind: str) -> LayerKV | None:
        return self.select if kind == "select" else self.compress

    def nbytes(self) -> int:
        total = 0
        for kv in (self.select or []) + (self.compress or []):
            total += sum(t.numel() * t.element_size() for t in kv)
        return total


@dataclass
class ScenePool:
    """Finished scenes' memories, newest last, at most `max_size` entries; plus the smooth-chain anchors."""

    max_size: int = 64
    device: torch.device | str = "cpu"
    entries: list[PoolEntry] = field(default_factory=list)
    # Smooth transitions keep re-using the memory of the first scene of the current smooth chain (§4.3).
    select_anchor: LayerKV | None = None
    compress_anchor: LayerKV | None = None
    select_anchor_scene: int | None = None
    compress_anchor_scene: int | None = None

    def store(self, layers: LayerKV) -> LayerKV:
        """Copy per-layer tensors into pool storage (pool device; dtype kept = the model's dtype)."""
        return [(k.to(self.device, copy=True), v.to(self.device, copy=True)) for k, v in layers]

    def entry(self, scene_index: int) -> PoolEntry:
        for e in self.entries:
            if e.scene_index == scene_index:
                return e
        e = PoolEntry(scene_index)
        self.entries.append(e)
        in_run = [x for x in self.entries if not x.saved]
        if len(in_run) > self.max_size:  # keep the newest max_size scenes of this run (saved scenes stay)
            dropped = {id(x) for x in in_run[:-self.max_size]}
            self.entries = [x for x in self.entries if id(x) not in dropped]
        return e

    def preload(self, scene_index: int, name: str, compress: LayerKV | None, select: LayerKV | None) -> PoolEntry:
        """A saved scene, as is (no copy: pool entries are never written to), before the run's own scenes."""
        if any(e.scene_index == scene_index or e.name == name for e in self.entries):
            raise ValueError(f"the pool already holds scene {scene_index} or a saved scene named {name!r}")
        e = PoolEntry(scene_index, select, compress, name)
        self.entries.append(e)
        return e

    def named(self, name: str) -> PoolEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def add(self, scene_index: int, kind: str, layers: LayerKV) -> LayerKV:
        stored = self.store(layers)
        e = self.entry(scene_index)
        if kind == "select":
            e.select = stored
        else:
            e.compress = stored
        return stored

    def with_kind(self, kind: str) -> list[PoolEntry]:
        return [e for e in self.entries if e.layers(kind) is not None]

    def newest(self, kind: str) -> PoolEntry | None:
        """The run's newest scene with this kind of memory (saved scenes are only recalled)."""
        found = [e for e in self.with_kind(kind) if not e.saved]
        return found[-1] if found else None

    def get(self, scene_index: int, kind: str) -> PoolEntry | None:
        for e in self.entries:
            if e.scene_index == scene_index and e.layers(kind) is not None:
                return e
        return None

    def reset_smooth_anchors(self) -> None:
        self.select_anchor = self.compress_anchor = None
        self.select_anchor_scene = self.compress_anchor_scene = None

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)


@dataclass
class SceneLayer:
    """One layer's record of the running scene."""

    dtype: torch.dtype  # the window's dtype, in which the recall frame is pooled
    q_sum: torch.Tensor | None = None  # Σ q [H, D] float32 over the scene's commit passes (recall frames only)
    candidates: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # scene frame -> (k, v)
    first: tuple[torch.Tensor, torch.Tensor] | None = None  # the scene's first frame; kept past a switch
    kv_place: str = GPU  # where candidates and the first frame live (read at scene events only)

    def tensors(self) -> list[torch.Tensor]:
        return [t for _, t in self.placed()]

    def placed(self) -> list[tuple[str, torch.Tensor]]:
        out = [] if self.q_sum is None else [(GPU, self.q_sum)]
        for kv in list(self.candidates.values()) + ([self.first] if self.first else []):
            out.extend((self.kv_place, t) for t in kv)
        return out


class SceneRecorder:
    """What the running scene leaves behind (§4.2-§4.3): the frames and query sum its recall frame is fused from,
    and its first frame; both are pooled, the first frame after the scene's first chunk, the recall frame when
    the scene ends."""

    def __init__(self, num_layers: int, config: EchoConfig, pool: ScenePool):
        self.pool = pool
        self.frames = config.recall_frames
        self.recall = config.needs_recall_frames
        self.select = config.needs_select_frames
        self.sampled = frozenset(self.frames.sampled_frames()) if self.recall else frozenset()
        self.layers: list[SceneLayer | None] = [None] * num_layers
        self.scene: int | None = None
        self.finished = False
        self.q_count = 0  # queries summed into every layer's q_sum
        self.host: torch.device | None = None  # candidates and first frame may live there

    def allocate(self, layer: int, like: torch.Tensor, s: int) -> None:
        q_sum = torch.zeros(like.shape[1], like.shape[3], dtype=torch.float32, device=like.device) \
            if self.recall else None
        self.layers[layer] = SceneLayer(like.dtype, q_sum, kv_place=GPU if self.host is None else HOST)

    def _keep(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone() if self.host is None else host_copy(t, self.host)

    def allocated(self) -> list[SceneLayer]:
        return [sl for sl in self.layers if sl is not None]

    def first_frame(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        sl = self.layers[layer]
        return None if sl is None else sl.first

    def first_frames(self) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        return [self.first_frame(i) for i in range(len(self.layers))]

    def record(self, layer: int, local: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int,
               first: bool) -> None:
        """Commit pass of a chunk whose first frame is scene frame `local`."""
        sl = self.layers[layer]
        if sl is None:
            return
        if sl.q_sum is not None:
            sl.q_sum += q.float().sum(dim=(0, 2))
            for j in range(k.shape[2] // s):
                if local + j in self.sampled:
                    sl.candidates[local + j] = (self._keep(k[:, :, j * s:(j + 1) * s]),
                                                self._keep(v[:, :, j * s:(j + 1) * s]))
        if first:
            sl.first = (self._keep(k[:, :, :s]), self._keep(v[:, :, :s]))

    def end_chunk(self, queries: int, first: bool, scene_end: bool) -> None:
        """After a committed chunk of `queries` query tokens (batch included)."""
        self.q_count += queries
        if first:
            self._pool_first_frame()
        if scene_end:
            self.finish()

    def start(self, scene: int) -> None:
        """A new scene: statistics start over (the old first frame stays until the new one is captured)."""
        for sl in self.allocated():
            if sl.q_sum is not None:
                sl.q_sum.zero_()
            sl.candidates.clear()
        self.q_count = 0
        self.scene = scene
        self.finished = False

    def _pool_first_frame(self) -> None:
        if not self.select or self.scene is None:
            return
        layers = [sl.first for sl in self.allocated() if sl.first is not None]
        stored = self.pool.add(self.scene, "select", layers)
        if self.pool.select_anchor is None:
            self.pool.select_anchor, self.pool.select_anchor_scene = stored, self.scene

    def finish(self) -> None:
        """Fuse the ending scene's recall frame per layer and pool it (§4.2)."""
        self.finished = True
        if not self.recall or self.q_count == 0 or self.scene is None:
            return
        layers = []
        for sl in self.allocated():
            frames = sorted(sl.candidates)
            if not frames or sl.q_sum is None:
                return
            dev = sl.q_sum.device  # fused where the scene's queries were summed (copied up from the host)
            keys = torch.stack([sl.candidates[f][0] for f in frames], dim=2).to(dev, non_blocking=True)
            values = torch.stack([sl.candidates[f][1] for f in frames], dim=2).to(dev, non_blocking=True)
            k, v = fuse_recall_frame(keys, values, sl.q_sum / self.q_count, mode=self.frames.mode,
                                     base_weight=self.frames.base_frame_weight)
            layers.append((k.to(sl.dtype), v.to(sl.dtype)))
        stored = self.pool.add(self.scene, "compress", layers)
        if self.pool.compress_anchor is None:
            self.pool.compress_anchor, self.pool.compress_anchor_scene = stored, self.scene

    def release(self) -> None:
        self.layers = [None] * len(self.layers)
