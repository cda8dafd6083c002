"""Where a cache keeps each buffer ("gpu": the compute device, "host": the offload device) and how host buffers
reach the compute device without the hot path waiting on the bus.

A policy that offloads keeps its side state (read once per chunk or at scene events) and its raw window keys on
the host, in pinned memory when the compute device is CUDA, and copies them up one layer at a time: `Stager`
holds two device buffers per kind and fills layer i+1's while layer i computes (a side CUDA stream; on the CPU
a plain copy). On the CPU "host" and "gpu" are the same device; tests pass `offload="cpu"` to run the offloaded
path anyway and check placement through the declared places (`nbytes_by_place`), not through devices.
"""

from __future__ import annotations

from typing import Any

import torch

GPU, HOST = "gpu", "host"
PLACES = (GPU, HOST)


def resolve_offload(offload: Any, compute: torch.device) -> torch.device | None:
    """The host device for `offload` ("auto": pinned CPU when computing on CUDA, none otherwise; None/"none": keep
    everything on the compute device; a device: that device, even the CPU itself, for tests)."""
    if offload is None or offload is False or offload == "none":
        return None
    if offload == "auto":
        return torch.device("cpu") if compute.type == "cuda" else None
    return torch.device(offload)


def _pin(host: torch.device) -> bool:
    return host.type == "cpu" and torch.cuda.is_available()


def host_zeros(shape: tuple[int, ...], dtype: torch.dtype, host: torch.device) -> torch.Tensor:
    """Zeroed host storage (page-locked when a CUDA device exists, so copies to and from it run asynchronously)."""
    return torch.zeros(shape, dtype=dtype, device=host, pin_memory=_pin(host))


def host_copy(t: torch.Tensor, host: torch.device) -> torch.Tensor:
    """A host copy of `t`, made without blocking the caller (the host reads it only after `sync`)."""
    out = torch.empty(t.shape, dtype=t.dtype, device=host, pin_memory=_pin(host))
    out.copy_(t, non_blocking=True)
    return out


def put(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[...] = src across devices without blocking the caller (stream-ordered on CUDA)."""
    dst.copy_(src, non_blocking=True)


def sync(device: torch.device | None) -> None:
    """Wait for the copies down to the host before the host itself reads or edits what they wrote."""
    if device is not None and device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


class Stager:
    """Double-buffered device copies of per-layer host tensors, by kind ("window_k", "ring_k", ...).

    `prefetch(kind, layer, src, tokens)` starts copying `src` into the buffer of `layer % 2` (on CUDA a side stream that
    first waits for the work already queued, so the buffer's previous reader, layer - 2 or layer - 1, is done);
    `get(kind, layer, src, tokens)` returns that buffer once the copy is visible to the compute stream (it copies now if
    nothing was prefetched). The buffers are the only device memory the host state costs: two layers' worth."""

    def __init__(self) -> None:
        self._buffers: dict[str, list[torch.Tensor | None]] = {}
        self._pending: dict[tuple[str, int], Any] = {}  # (kind, layer) -> (tokens, CUDA event or None)
        self._stream: Any = None

    def _buffer(self, kind: str, layer: int, src: torch.Tensor, device: torch.device) -> torch.Tensor:
        bufs = self._buffers.setdefault(kind, [None, None])
        buf = bufs[layer % 2]
        if buf is None or buf.device != device or buf.dtype != src.dtype or buf.shape != src.shape:
            buf = torch.empty(src.shape, dtype=src.dtype, device=device)
            bufs[layer % 2] = buf
        return buf

    def prefetch(self, kind: str, layer: int, src: torch.Tensor, tokens: int, device: torch.device) -> None:
        """Start copying tokens [0, tokens) of `src` [B, H, N, D] (a host tensor) to the device."""
        dst = self._buffer(kind, layer, src, device)[:, :, :tokens]
        if device.type == "cuda":
            if self._stream is None:
                self._stream = torch.cuda.Stream(device)
            self._stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(self._stream):
                dst.copy_(src[:, :, :tokens], non_blocking=True)
                event = torch.cuda.Event()
                event.record(self._stream)
            self._pending[(kind, layer)] = (tokens, event)
        else:
            dst.copy_(src[:, :, :tokens])
            self._pending[(kind, layer)] = (tokens, None)

    def get(self, kind: str, layer: int, src: torch.Tensor, tokens: int, device: torch.device) -> torch.Tensor:
        """Tokens [0, tokens) of `src` on the device (prefetched, or copied now)."""
        if self._pending.get((kind, layer), (None,))[0] != tokens:
            self.prefetch(kind, layer, src, tokens, device)
        _, event = self._pending.pop((kind, layer))
        if event is not None:
            torch.cuda.current_stream(device).wait_event(event)
        return self._buffer(kind, layer, src, device)[:, :, :tokens]

    def scratch(self, kind: str, layer: int, src: torch.Tensor, tokens: int, device: torch.device) -> torch.Tensor:
        """The device buffer `get` would return, as it is (no copy): for calls that only write some rows of it."""
        return self._buffer(kind, layer, src, device)[:, :, :tokens]

    def forget(self) -> None:
        """Host buffers changed (a new chunk): nothing prefetched is valid any more."""
        self._pending.clear()

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for bufs in self._buffers.values() for b in bufs if b is not None)

    def release(self) -> None:
        self._buffers.clear()
        self._pending.clear()
