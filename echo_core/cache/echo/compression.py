"""Drift-gated phase compression of the history (spec §2.6): which past tokens fill the compressed region.

Each history token gets the logit a calibrated mean query would give it under RoPE at a few plausible temporal
distances, plus an amplitude-compensation bonus gated by how far the current queries drifted from the
calibration. Everything is expressed on raw (un-rotated) keys viewed as complex pairs `k[2j] + i k[2j+1]`.

Restated score (official `_compute_pc_scores`, h_mode "generate"), for token n, head h, offset o:
    s = Σ_j Re( q̄_hj · conj(k̃_nhj) · e^{i ω_j (Δ_n + o)} ) + g · Σ_j (ā_hj − |q̄_hj|) · |k̃_nhj|
with ω_j the temporal RoPE frequencies (0 on spatial pairs), Δ_n = a_last + 1 − a_n, then mean (or max) over
offsets and heads. Because Re(w · conj(k̃)) = w_re k_re + w_im k_im, the first sum is a dot product of the raw
key with a per-frame weight vector: scoring is one small matmul per history frame instead of a cosine per
(token, head, pair, offset).

`HistoryRing` holds the state: the scene's last W committed frames per layer (the candidates), the query sums
of the calibration window, and where each selected token came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from echo_core.cache.echo.memory import SlotInfo
from echo_core.cache.placement import GPU, HOST, host_zeros, put
from echo_core.config import HierarchicalMemoryConfig
from echo_core.model.rope import axis_frequencies, axis_pairs


def pair_moduli(x: torch.Tensor) -> torch.Tensor:
    """|x[2j] + i x[2j+1]| for every pair: [..., D] -> [..., D/2] (float32)."""
    return torch.linalg.vector_norm(x.float().unflatten(-1, (-1, 2)), dim=-1)


def temporal_frequencies(head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """ω per pair [D/2] float64: Wan's temporal band frequencies, 0 for the spatial pairs (not rotated in Δt)."""
    t_pairs = axis_pairs(head_dim)[0]
    omega = torch.zeros(head_dim // 2, dtype=torch.float64)
    omega[:t_pairs] = axis_frequencies(t_pairs, theta)
    return omega.to(device)


def query_sums(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibration contributions of queries [B, H, L, D]: (Σ q [H, D], Σ |q̃| [H, D/2]) in float32.

    Σ q in real coordinates is Σ q̃ (real and imaginary parts interleaved)."""
    qf = q.float()
    return qf.sum(dim=(0, 2)), pair_moduli(qf).sum(dim=(0, 2))


def drift_gate(q_mean: torch.Tensor, q_now: torch.Tensor, lam: float) -> torch.Tensor:
    """g = exp(-λ (1 - cos(vec q̄, vec mean(q_now)))) as a 0-dim float32 tensor (no host sync).

    `q_mean` [H, D] is the calibrated mean query; `q_now` [B, H, L, D] this call's queries."""
    cur = q_now.float().mean(dim=(0, 2)).flatten()
    ref = q_mean.float().flatten()
    cos = (cur @ ref) / (cur.norm() * ref.norm()).clamp_min(1e-12)
    return torch.exp(-lam * (1.0 - cos))


def frame_weights(q_mean: torch.Tensor, distances: torch.Tensor, offsets: Sequence[int], omega: torch.Tensor,
                  average_offsets: bool) -> torch.Tensor:
    """Per-frame key weights W [F, O, H, D] (O = 1 when averaged): Re/Im of q̄ · e^{i ω (Δ_f + o)} interleaved."""
    qc = q_mean.double().unflatten(-1, (-1, 2))
    q_re, q_im = qc[..., 0], qc[..., 1]  # [H, J]
    offs = torch.as_tensor(list(offsets), dtype=torch.float64, device=q_mean.device)
    angle = (distances.double()[:, None, None] + offs[None, :, None]) * omega.to(q_mean.device)[None, None, :]
    cos, sin = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]  # [F, O, 1, J]
    w = torch.stack((q_re * cos - q_im * sin, q_re * sin + q_im * cos), dim=-1).flatten(-2)  # [F, O, H, D]
    if average_offsets:
        w = w.mean(dim=1, keepdim=True)
    return w.float()


def phase_scores(keys: torch.Tensor, distances: torch.Tensor, q_mean: torch.Tensor, q_abs_mean: torch.Tensor, *,
                 offsets: Sequence[int], omega: torch.Tensor, gate: torch.Tensor | None,
                 amplitude_compensation: bool, fusion: str = "mean",
                 max_float_bytes: int = 64 << 20) -> torch.Tensor:
    """Scores [F, S] (float32, averaged over the batch) for history keys [B, H, F, S, D].

    `distances` [F]: Δ of each history frame; `q_mean` [H, D] real-coded q̄; `q_abs_mean` [H, D/2] ā;
    `gate`: drift gate (0-dim tensor) or None for 1; `fusion`: "mean" or "max" over (offsets, heads)."""
    if fusion not in ("mean", "max"):
        raise ValueError(f"fusion must be 'mean' or 'max', got {fusion!r}")
    b, h, f, s, d = keys.shape
    w = frame_weights(q_mean, distances, offsets, omega, average_offsets=fusion == "mean")  # [F, O, H, D]
    bonus = None
    if amplitude_compensation:
        spread = (q_abs_mean.float() - pair_moduli(q_mean)).clamp_min(0)  # E|q̃| - |E q̃| >= 0, [H, J]
        bonus = spread if gate is None else spread * gate
    out = torch.empty(f, s, dtype=torch.float32, device=keys.device)
    per_frame = b * h * s * d * 4
    group = max(1, min(f, max_float_bytes // max(per_frame, 1)))
    for i in range(0, f, group):  # frame groups bound the float32 copy of the keys
        kf = keys[:, :, i:i + group].float()  # [B, H, G, S, D]
        if fusion == "mean":  # the mean over heads commutes with the dot products: contract (h, d) at once
            fused = torch.einsum("bhgsd,ghd->bgs", kf, w[i:i + group, 0]) / h
            if bonus is not None:
                fused = fused + torch.einsum("bhgsj,hj->bgs", pair_moduli(kf), bonus) / h
        else:
            per = torch.einsum("bhgsd,gohd->bgsoh", kf, w[i:i + group])
            if bonus is not None:
                per = per + torch.einsum("bhgsj,hj->bgsh", pair_moduli(kf), bonus)[:, :, :, None, :]
            fused = per.amax(dim=(3, 4))
        out[i:i + group] = fused.mean(dim=0)
    return out


def select_tokens(scores: torch.Tensor, excluded: torch.Tensor, counts: torch.Tensor, order: torch.Tensor,
                  top_c: int, max_reuse: int) -> torch.Tensor:
    """Indices of the `top_c` best tokens, in history order (ascending `order`).

    Flattened inputs [N]: `excluded` marks tokens that may not be chosen (recent frames, empty ring slots);
    tokens already chosen `max_reuse` times are excluded as well. As officially, if fewer than `top_c` tokens
    remain eligible, the best excluded ones fill the rest (their score is -inf)."""
    masked = scores.masked_fill(excluded | (counts >= max_reuse), float("-inf"))
    top = torch.topk(masked, min(top_c, masked.numel()), sorted=False).indices
    return top[torch.argsort(order[top])]


def origin_positions(k_pos: torch.Tensor, start: int, spatial: torch.Tensor, cols: int) -> torch.Tensor:
    """Key positions [L, 3] with the compressed tokens from token `start` on at their origin (row, column)."""
    own = k_pos.clone()
    own[start:start + spatial.numel(), 1] = spatial // cols
    own[start:start + spatial.numel(), 2] = spatial % cols
    return own


# per-token ring frame, excluded flag, history order; per-frame distance Δ; number of filled ring slots
Selection = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]


@dataclass
class RingLayer:
    """One layer's history ring and query calibration, and where its compressed tokens came from."""

    k: torch.Tensor  # [B, H, W*S, D] the last W committed frames (raw keys), by ring slot (host when offloaded)
    v: torch.Tensor
    counts: torch.Tensor  # [W*S] int32, times each ring token was selected
    q_sum: torch.Tensor  # Σ q [H, D] float32 over the calibration window
    abs_sum: torch.Tensor  # Σ |q̃| [H, D/2] float32
    origin_frames: torch.Tensor | None = None  # [M*S] origin frame of each compressed token (-1 unknown)
    origin_spatial: torch.Tensor | None = None  # [M*S] origin in-frame index

    kv_place: str = GPU

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v, self.counts, self.q_sum, self.abs_sum]

    def placed(self) -> list[tuple[str, torch.Tensor]]:
        return [(self.kv_place, self.k), (self.kv_place, self.v), (GPU, self.counts), (GPU, self.q_sum),
                (GPU, self.abs_sum)]


@dataclass(frozen=True)
class RingChunk:
    """A chunk's part in the ring: the ring slots of its frames and its role in the calibration (§2.6b)."""

    slots: tuple[int, ...]
    calibrate: bool  # inside the scene's first window of clock frames: its queries calibrate q̄
    ready_after: bool  # the calibration is complete once this chunk is committed


class HistoryRing:
    """The last W committed frames of the scene, from which the compressed region is re-selected whenever the
    window rolls, and the query calibration that scores them (§2.6). Per-layer tensors only when the memory
    has a compressed region; the frame bookkeeping (and the `calibrated` report) runs regardless."""

    def __init__(self, num_layers: int, cfg: HierarchicalMemoryConfig):
        self.cfg = cfg
        self.layers: list[RingLayer | None] = [None] * num_layers
        self.frames: list[int | None] = [None] * cfg.window_frames  # absolute frame in each ring slot
        self.next = 0  # ring slot of the next committed frame
        self.calib_count = 0  # queries summed into every layer's q_sum
        self.calibrated = False
        self._omega: torch.Tensor | None = None
        self._selection: dict[str, Selection] = {}  # device -> selection inputs, until the ring changes
        self.host: torch.device | None = None  # read once per rolled chunk (scoring): its K/V may live there

    def allocate(self, layer: int, like: torch.Tensor, s: int) -> None:
        if self.cfg.compressed_frames == 0:
            return
        b, h, _, d = like.shape
        n = self.cfg.window_frames * s
        if self.host is None:
            k, v = like.new_zeros((b, h, n, d)), like.new_zeros((b, h, n, d))
        else:
            k, v = host_zeros((b, h, n, d), like.dtype, self.host), host_zeros((b, h, n, d), like.dtype, self.host)
        self.layers[layer] = RingLayer(k, v, torch.zeros(n, dtype=torch.int32, device=like.device),
                                       torch.zeros(h, d, dtype=torch.float32, device=like.device),
                                       torch.zeros(h, d // 2, dtype=torch.float32, device=like.device),
                                       kv_place=GPU if self.host is None else HOST)

    def allocated(self) -> list[RingLayer]:
        return [rl for rl in self.layers if rl is not None]

    @property
    def ready(self) -> bool:
        """A selection is possible: the calibration is complete and the ring holds frames."""
        return self.calibrated and any(f is not None for f in self.frames)

    def plan(self, clock: int, frames: int) -> RingChunk:
        w = self.cfg.window_frames
        return RingChunk(tuple((self.next + j) % w for j in range(frames)), calibrate=clock + frames <= w,
                         ready_after=clock + frames >= w)

    def seed_origins(self, region: list[SlotInfo], s: int) -> None:
        """Before a first selection the compressed region holds whole frames (stale ones, or none)."""
        for rl in self.allocated():
            if rl.origin_frames is None:
                rl.origin_frames = torch.tensor([-1 if i.frame is None else i.frame for i in region],
                                                device=rl.counts.device).repeat_interleave(s)
                rl.origin_spatial = torch.arange(len(region) * s, device=rl.counts.device) % s

    def origin_spatial(self, layer: int) -> torch.Tensor | None:
        rl = self.layers[layer]
        return None if rl is None else rl.origin_spatial

    def select(self, layer: int, q: torch.Tensor, s: int, staged: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-select the compressed tokens (§2.6c-d) for this call's queries [B, H, L, D]; returns their ring K/V
        [B, H, n, D] in history order and records their origin and reuse. `staged`: the ring's K/V copied to the
        compute device when they live on the host."""
        m, w = self.cfg, self.cfg.window_frames
        rl = self.layers[layer]
        if rl is None or rl.origin_frames is None or rl.origin_spatial is None:
            raise RuntimeError(f"layer {layer}: compression before its ring and compressed region exist")
        frames, excluded, order, dist, n_valid = self._selection_inputs(q.device, s)
        if self._omega is None or self._omega.device != q.device:
            self._omega = temporal_frequencies(q.shape[-1], m.rope_theta, q.device)
        q_mean = rl.q_sum / self.calib_count
        q_abs = rl.abs_sum / self.calib_count
        gate = drift_gate(q_mean, q, m.drift_gate_lambda) if (m.use_drift_gate and
                                                              m.use_amplitude_compensation) else None
        ring_k, ring_v = staged if staged is not None else (rl.k, rl.v)
        b, h, _, d = ring_k.shape
        scores = phase_scores(ring_k.view(b, h, w, s, d), dist, q_mean, q_abs, offsets=m.offsets, omega=self._omega,
                              gate=gate, amplitude_compensation=m.use_amplitude_compensation, fusion=m.fusion)
        idx = select_tokens(scores.flatten(), excluded, rl.counts, order, min(m.compressed_frames * s, n_valid * s),
                            m.topc_max_reuse)
        rl.counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.int32))
        rl.origin_frames[:idx.numel()] = frames[idx // s]
        rl.origin_spatial[:idx.numel()] = idx % s
        return ring_k.index_select(2, idx), ring_v.index_select(2, idx)

    def _selection_inputs(self, device: torch.device, s: int) -> Selection:
        """Per-token ring frame, exclusion (recent frames, empty slots), history order and per-frame distance;
        the same for every layer until the ring changes."""
        key = str(device)
        if key not in self._selection:
            valid = [f for f in self.frames if f is not None]
            last = max(valid)
            frames = torch.tensor([-1 if f is None else f for f in self.frames], device=device)
            excluded = torch.tensor([f is None or f > last - self.cfg.recent_frames for f in self.frames],
                                    device=device)
            spatial = torch.arange(s, device=device)
            order = (frames[:, None] * s + spatial[None]).flatten()
            dist = (last + 1 - frames).double()
            self._selection[key] = (frames, excluded.repeat_interleave(s), order, dist, len(valid))
        return self._selection[key]

    def record(self, layer: int, chunk: RingChunk, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               s: int) -> None:
        """Commit pass: the chunk's frames enter the ring (fresh reuse counts); its queries may calibrate."""
        rl = self.layers[layer]
        if rl is None:
            return
        for j, slot in enumerate(chunk.slots):
            put(rl.k[:, :, slot * s:(slot + 1) * s], k[:, :, j * s:(j + 1) * s])
            put(rl.v[:, :, slot * s:(slot + 1) * s], v[:, :, j * s:(j + 1) * s])
            rl.counts[slot * s:(slot + 1) * s] = 0
        if chunk.calibrate:
            qs, qa = query_sums(q)
            rl.q_sum += qs
            rl.abs_sum += qa

    def commit(self, chunk: RingChunk, start_frame: int, queries: int) -> None:
        """After a committed chunk of `queries` query tokens (batch included) starting at `start_frame`."""
        for j, slot in enumerate(chunk.slots):
            self.frames[slot] = start_frame + j
        self.next = (self.next + len(chunk.slots)) % self.cfg.window_frames
        self._selection.clear()
        if chunk.calibrate:
            self.calib_count += queries
        if chunk.ready_after and self.calib_count > 0:
            self.calibrated = True

    def reset(self) -> None:
        """A new scene: empty ring, no calibration, compressed region of unknown origin."""
        for rl in self.allocated():
            rl.q_sum.zero_()
            rl.abs_sum.zero_()
            rl.origin_frames = rl.origin_spatial = None
        self.frames = [None] * self.cfg.window_frames
        self.next = 0
        self._selection.clear()
        self.calib_count, self.calibrated = 0, False

    def report(self, rolled: bool) -> dict[str, Any]:
        rl = self.layers[0]
        if rl is None or rl.origin_frames is None or not rolled:
            return {}
        return {"compressed_source_frames": [f for f in torch.unique(rl.origin_frames).tolist() if f >= 0]}

    def release(self) -> None:
        self.layers = [None] * len(self.layers)
