"""The attention window's K/V storage, one [B, H, W*S, D] pair per layer, and the frame edits replayed on it.

Slot j holds tokens [j*S, (j+1)*S). Within a chunk only the chunk's own rows (its slots, from the plan's
`current_start`) are rewritten, by every forward call; everything else changes between chunks only: frame moves
when the window rolls, the compressed region on the chunk's first call, the rebuild at a switch, the eviction of
old memory. Per-token weights live with the decay (decay.py), the layout with the memory (memory.py).

With kv_dtype "float8_e4m3fn" the window stores K and V in fp8 with one float32 scale per token per head
(kv_quant), both on the compute device (no key offload: at 0.52x of the model dtype the pair costs less than the
model-dtype values plus the rotated-key memo). Frame moves copy values with their scales (no re-rounding); a read
dequantises the span once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from echo_core.cache.kv_quant import MODEL, SCALE_DTYPE, check_kv_dtype, dequantize, quantize, storage_dtype
from echo_core.cache.placement import GPU, HOST, host_zeros, put


@dataclass
class FramesKV:
    """K/V of whole frames for one layer: [B, H, frames*S, D] each, in the model's dtype; each on the compute
    device ("gpu") or the offload device ("host")."""

    k: torch.Tensor
    v: torch.Tensor
    k_place: str = GPU
    v_place: str = GPU
    ks: torch.Tensor | None = None  # fp8 storage: float32 scales [B, H, frames*S] of k and v (None: model dtype)
    vs: torch.Tensor | None = None

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v] + [t for t in (self.ks, self.vs) if t is not None]

    def placed(self) -> list[tuple[str, torch.Tensor]]:
        scales = [(GPU, t) for t in (self.ks, self.vs) if t is not None]
        return [(self.k_place, self.k), (self.v_place, self.v)] + scales


@dataclass(frozen=True)
class Move:
    """Copy one frame into slot `dst`: from cache slot `src` (from_source False) or anchor-source frame `src`."""

    dst: int
    src: int
    from_source: bool = False


def frames_like(like: torch.Tensor, frames: int, s: int, k_host: torch.device | None = None,
                v_host: torch.device | None = None) -> FramesKV:
    """Zeroed storage for `frames` frames, shaped after a call's k [B, H, L, D] (dtype and device included);
    keys and/or values on a host device instead when given."""
    b, h, _, d = like.shape
    shape = (b, h, frames * s, d)

    def zeros(host: torch.device | None) -> torch.Tensor:
        return like.new_zeros(shape) if host is None else host_zeros(shape, like.dtype, host)

    return FramesKV(zeros(k_host), zeros(v_host), GPU if k_host is None else HOST, GPU if v_host is None else HOST)


class Window:
    """The attention window of every layer (allocated at the layer's first call). With a `host` device the raw
    keys live there (the model's rotated copy, the context memo, is their only device copy during a chunk) and the
    values stay on the compute device; the chunk's own keys reach the host on its commit pass."""

    def __init__(self, num_layers: int, frames: int, kv_dtype: str = MODEL):
        self.frames = frames
        self.layers: list[FramesKV | None] = [None] * num_layers
        self.host: torch.device | None = None
        self.kv_dtype = check_kv_dtype(kv_dtype)
        self.dtype: torch.dtype | None = None  # the model's K/V dtype, what fp8 reads return

    @property
    def quantized(self) -> bool:
        return self.kv_dtype != MODEL

    def allocate(self, layer: int, like: torch.Tensor, s: int) -> None:
        self.dtype = like.dtype
        if not self.quantized:
            self.layers[layer] = frames_like(like, self.frames, s, k_host=self.host)
            return
        b, h, _, d = like.shape
        store = storage_dtype(self.kv_dtype, like.device)
        shape = (b, h, self.frames * s, d)
        self.layers[layer] = FramesKV(
            torch.zeros(shape, dtype=store, device=like.device), torch.zeros(shape, dtype=store, device=like.device),
            ks=torch.zeros(shape[:3], dtype=SCALE_DTYPE, device=like.device),
            vs=torch.zeros(shape[:3], dtype=SCALE_DTYPE, device=like.device))

    def allocated(self) -> list[FramesKV]:
        return [kv for kv in self.layers if kv is not None]

    def get(self, layer: int) -> FramesKV:
        kv = self.layers[layer]
        if kv is None:
            raise RuntimeError(f"layer {layer} has no window yet")
        return kv

    def batch(self) -> int:
        return self.allocated()[0].k.shape[0]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Tokens [start, start + L) take k/v [B, H, L, D] (the chunk's own rows, or the compressed region)."""
        kv = self.get(layer)
        if kv.ks is not None:
            _store(kv, slice(start, start + k.shape[2]), k, v)
            return
        put(kv.k[:, :, start:start + k.shape[2]], k)
        kv.v[:, :, start:start + v.shape[2]] = v

    def write_own(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor, commit: bool) -> None:
        """The chunk's own rows. Offloaded keys go down on the commit pass only (the one the next chunk keeps;
        the denoising calls' keys reach attention through the memo)."""
        kv = self.get(layer)
        if kv.ks is not None:
            _store(kv, slice(start, start + k.shape[2]), k, v)
            return
        if self.host is None or commit:
            put(kv.k[:, :, start:start + k.shape[2]], k)
        kv.v[:, :, start:start + v.shape[2]] = v

    def view(self, layer: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `tokens` keys and values in the model dtype: views of the model-dtype store, or one
        dequantisation of the fp8 span (a new tensor the caller may edit)."""
        kv = self.get(layer)
        if kv.ks is None or kv.vs is None or self.dtype is None:
            return kv.k[:, :, :tokens], kv.v[:, :, :tokens]
        return (dequantize(kv.k[:, :, :tokens], kv.ks[:, :, :tokens], self.dtype),
                dequantize(kv.v[:, :, :tokens], kv.vs[:, :, :tokens], self.dtype))

    def readable(self) -> Iterator[FramesKV | None]:
        """Each layer's window as model-dtype K/V (fp8: dequantised one layer at a time, as the caller iterates)."""
        for layer, kv in enumerate(self.layers):
            if kv is None or kv.ks is None:
                yield kv
            else:
                yield FramesKV(*self.view(layer, kv.k.shape[2]))

    def apply_moves(self, moves: list[Move], s: int, source: Sequence[FramesKV | None]) -> None:
        """Replay a layout plan's frame moves; `source[layer]` is that layer's anchor source."""
        for layer, kv in enumerate(self.layers):
            if kv is None:
                continue
            for mv in moves:
                dst, src = slice(mv.dst * s, (mv.dst + 1) * s), slice(mv.src * s, (mv.src + 1) * s)
                frm = source[layer] if mv.from_source else kv
                if frm is None:
                    raise RuntimeError(f"layer {layer}: an anchor re-insertion without an anchor source")
                # moves go leftwards in ascending order, so each source is read before it is overwritten
                if kv.ks is not None and kv.vs is not None and frm.ks is None:  # a model-dtype anchor source
                    _store(kv, dst, frm.k[:, :, src], frm.v[:, :, src])
                    continue
                put(kv.k[:, :, dst], frm.k[:, :, src])
                put(kv.v[:, :, dst], frm.v[:, :, src])
                if kv.ks is not None and kv.vs is not None and frm.ks is not None and frm.vs is not None:
                    kv.ks[:, :, dst], kv.vs[:, :, dst] = frm.ks[:, :, src], frm.vs[:, :, src]

    def rebuild(self, frames: int, memory_frames: int, old_recent: int, s: int,
                memory: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None) -> None:
        """At a switch (§6.3): the last `old_recent` of `frames` frames move behind `memory_frames` head slots;
        `memory[layer]` (if given) fills slot 0, otherwise slot 0 keeps what it holds."""
        n, r, o = frames, memory_frames, old_recent
        for layer, kv in enumerate(self.layers):
            if kv is None:
                continue
            old_k, old_v = kv.k[:, :, (n - o) * s:n * s].clone(), kv.v[:, :, (n - o) * s:n * s].clone()
            kv.k[:, :, r * s:(r + o) * s], kv.v[:, :, r * s:(r + o) * s] = old_k, old_v
            if kv.ks is not None and kv.vs is not None:
                old_ks, old_vs = kv.ks[:, :, (n - o) * s:n * s].clone(), kv.vs[:, :, (n - o) * s:n * s].clone()
                kv.ks[:, :, r * s:(r + o) * s], kv.vs[:, :, r * s:(r + o) * s] = old_ks, old_vs
            mem = None if memory is None else memory[layer]
            if mem is not None and kv.ks is not None:
                _store(kv, slice(0, s), mem[0].to(kv.k.device), mem[1].to(kv.v.device))
            elif mem is not None:
                kv.k[:, :, :s] = mem[0].to(kv.k.device, kv.k.dtype, non_blocking=True)
                kv.v[:, :, :s] = mem[1].to(kv.v.device, kv.v.dtype, non_blocking=True)

    def drop_head(self, drop: int, frames: int, s: int) -> None:
        """Remove `drop` of `frames` frames at the window head; the rest moves to the front."""
        for kv in self.allocated():
            for t in kv.tensors():
                t[:, :, :(frames - drop) * s] = t[:, :, drop * s:frames * s].clone()

    def release(self) -> None:
        self.layers = [None] * len(self.layers)


def _store(kv: FramesKV, rows: slice, k: torch.Tensor, v: torch.Tensor) -> None:
    """Quantise k/v [B, H, L, D] into rows `rows` of an fp8 window layer (values and scales)."""
    if kv.ks is None or kv.vs is None:
        raise RuntimeError("_store needs an fp8 window layer")
    for data, scale, x in ((kv.k, kv.ks, k), (kv.v, kv.vs, v)):
        q, sc = quantize(x)
        data[:, :, rows], scale[:, :, rows] = q, sc
