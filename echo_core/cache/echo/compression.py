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
"""

from __future__ import annotations

from typing import Sequence

import torch

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
