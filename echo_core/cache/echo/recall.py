"""Scene recall frames and the scene pool (spec §4).

A finished scene is summarised, per layer, by one frame-sized K/V map whose token p still belongs to spatial
location p: its frames 0, 4, 8 (official sampling) are scored per location against the scene's mean query and
fused (`score_weighted`: 90 % first frame + 10 % softmax blend; `token_select`: best frame per location).
The pool keeps, per scene, that recall frame ("compress") and/or the scene's first frame ("select"), bounded to
the newest `pool_max_size` scenes. Entries are stored in the model's dtype on `device` (official: float32 on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
        del self.entries[:-self.max_size]  # keep the newest max_size
        return e

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
        found = self.with_kind(kind)
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
