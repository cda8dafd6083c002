"""Checks a run must pass before its first chunk: total length, and memory against what the device has free.

`check_run` is called by `echo_core.run.start_run` (so the CLI, the sampler node, the demo and the benches are all
covered) before any cache, noise or output is allocated. The memory need comes from the budget formula
(echo_core.budget): the policy's cache and a rough peak of one forward call on the compute device; the scene pool
and the finished latents on the host. Available memory: CUDA `torch.cuda.mem_get_info` (plus what torch's
allocator has reserved but not used), CPU `MemAvailable` of /proc/meminfo. On a CPU run both needs come out of
the same RAM. Where the free memory cannot be read (another OS, an unknown device) only the length is checked.
$ECHO_FORCING_MAX_MEMORY (e.g. "8G") caps what a run may use below what is free (shared machines, tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from echo_core.budget import Budget, PolicySpec, human, policy_budget
from echo_core.config import EchoConfig
from echo_core.errors import SpecError

DEFAULT_MAX_CHUNKS = 20_000  # 60,000 latent frames at 3 per chunk: about 4 hours of 16 fps video
MAX_CHUNKS_ENV = "ECHO_FORCING_MAX_CHUNKS"
MAX_MEMORY_ENV = "ECHO_FORCING_MAX_MEMORY"  # e.g. "8G": a run may use at most this much of any memory
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def memory_cap() -> int | None:
    """$ECHO_FORCING_MAX_MEMORY in bytes (suffixes K, M, G, T; binary), or None."""
    raw = os.environ.get(MAX_MEMORY_ENV, "").strip()
    if not raw:
        return None
    unit = raw[-1].upper() if raw[-1].isalpha() else ""
    try:
        value = float(raw[:-1] if unit else raw) * _UNITS[unit]
    except (KeyError, ValueError):
        value = float("nan")
    if not value >= 1:  # NaN included
        raise SpecError(MAX_MEMORY_ENV, f"must be a number of bytes, optionally with K, M, G or T, e.g. 8G; got "
                                        f"{raw[:40]!r}")
    return int(value)


def _capped(available: int | None) -> int | None:
    cap = memory_cap()
    if cap is None:
        return available
    return cap if available is None else min(available, cap)


def max_chunks() -> int:
    """The limit on chunks per run: $ECHO_FORCING_MAX_CHUNKS, or DEFAULT_MAX_CHUNKS."""
    raw = os.environ.get(MAX_CHUNKS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_CHUNKS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SpecError(MAX_CHUNKS_ENV, f"must be a whole number >= 1, got {raw[:40]!r}")
    return value


def check_chunks(total_chunks: int, frames_per_chunk: int, limit: int | None = None, fps: float = 16.0,
                 field: str = "timeline") -> None:
    """Refuse a video longer than the chunk limit (each chunk keeps its latents until the run ends)."""
    limit = max_chunks() if limit is None else limit
    if total_chunks > limit:
        seconds = (total_chunks * frames_per_chunk * 4) / fps
        raise SpecError(field, f"the video has {total_chunks:,} chunks (about {_duration(seconds)} at {fps:g} fps), "
                               f"more than the limit of {limit:,} chunks per run; shorten the scenes, or raise the "
                               f"limit ({MAX_CHUNKS_ENV}, or --max-chunks on the command line)")


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def check_recalls(timeline: Any, config: EchoConfig, field: str = "scene") -> None:
    """Every recall with a scene chosen by hand (inline '@N' or the routing's manual ids) must name a scene that is
    finished, and still in the pool, when the recall starts: refused now, not after minutes of generating."""
    from echo_core.timeline import TransitionMode

    pool = config.recall_frames.pool_max_size
    for t in timeline.transitions:
        if t.mode is not TransitionMode.RECALL:
            continue
        inline = t.recall_source is not None
        source = t.recall_source if inline else config.routing.manual_source(t.to_scene)
        if source is None:
            continue
        where = "the timeline's '@" + str(source + 1) + "'" if inline else f"recall of scene {source + 1}"
        if not 0 <= source < t.to_scene:
            raise SpecError("timeline" if inline else field,
                            f"{where} into scene {t.to_scene + 1}: scene {source + 1} is not finished by then; "
                            f"recall one of scenes 1 to {t.to_scene}")
        if t.to_scene - source > pool:
            raise SpecError("timeline" if inline else field,
                            f"{where} into scene {t.to_scene + 1}: the scene pool keeps the last {pool} scenes, "
                            f"so scene {source + 1} is gone by then; raise the recall pool size to "
                            f"{t.to_scene - source} or recall a later scene")


# ------------------------------------------------------------------------------------------------- devices
def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_available_bytes(device: torch.device | str) -> int | None:
    """Free bytes on `device`: CUDA free memory plus the allocator's reserved-but-unused bytes; CPU MemAvailable;
    None where unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + max(cached, 0))
    if dev.type == "cpu":
        return host_available_bytes()
    return None


def check_kv_dtype(kv_dtype: str, device: torch.device | str, field: str = "kv_dtype") -> None:
    """The cache's K/V storage must be a known setting that this torch and `device` can hold (fp8 needs both)."""
    from echo_core.cache.kv_quant import storage_dtype

    storage_dtype(kv_dtype, device, field)


def kv_dtype_of(model: Any) -> torch.dtype:
    """The dtype a model computes K/V in (its first block's q weight; bf16 for fp8 weights; for packed GGUF blocks
    the adapter's `packed_dtype`; float32 if unknown)."""
    from echo_core.model.wan import compute_dtype, packed_weights_dtype

    module = getattr(model, "module", model)
    try:
        w = module.blocks[0].self_attn.q.weight
    except (AttributeError, IndexError, TypeError):
        return torch.float32
    with packed_weights_dtype(getattr(model, "packed_dtype", torch.float32)):
        return compute_dtype(w)


# ------------------------------------------------------------------------------------------------- the check
@dataclass(frozen=True)
class MemoryNeed:
    budget: Budget
    device: str
    device_bytes: int  # cache + working memory on the compute device
    host_bytes: int  # scene pool + finished latents on the host
    device_available: int | None
    host_available: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "device_bytes": self.device_bytes, "host_bytes": self.host_bytes,
                "device_available": self.device_available, "host_available": self.host_available}


def memory_need(cfg: Any, policy: PolicySpec, *, latent_shape: tuple[int, int, int],
                frames_per_chunk: int, total_frames: int, scenes: int, device: torch.device | str,
                kv_dtype: torch.dtype, guidance: bool = False) -> MemoryNeed:
    c, h, w = latent_shape
    dev = torch.device(device)
    budget = policy_budget(cfg, h, w, frames_per_chunk, policy, kv_dtype=kv_dtype, total_frames=total_frames,
                           spatial_compression=1, guidance=guidance, offload=dev.type == "cuda")
    latents = total_frames * c * h * w * 4  # float32 chunks kept until the end, then concatenated once
    host = budget.host_bytes(scenes) + 2 * latents
    return MemoryNeed(budget, str(dev), budget.gpu_bytes + budget.context_bytes + budget.activation_bytes, host,
                      _capped(device_available_bytes(dev)), _capped(host_available_bytes()))


def check_memory(need: MemoryNeed, *, width: int, height: int, field: str = "width") -> None:
    """Refuse a run whose memory need exceeds what is free (CPU runs: device and host needs together)."""
    b = need.budget
    what = (f"at {width}x{height} the {b.policy} memory ({b.layers} layers, {b.tokens_per_frame:,} tokens per "
            f"latent frame, {b.kv_dtype})")
    fix = "lower width/height"
    if b.policy == "full" or (b.policy == "echo" and not b.host):  # offloaded Echo holds less than rolling
        fix += ", or choose the rolling memory (a 21-frame window)" if b.policy == "full" else \
            ", or choose the rolling memory (window only: " + human(b.window_bytes) + ")"
    if b.kv_storage == "model" and b.policy in ("rolling", "flush"):
        fix += ", or store the cache in fp8 (kv_dtype float8_e4m3fn, about half the cache)"
    cap = memory_cap()
    if cap is not None:
        fix += f" (${MAX_MEMORY_ENV} caps a run at {human(cap)})"
    if need.device.startswith("cpu"):
        total = need.device_bytes + need.host_bytes
        if need.host_available is not None and total > need.host_available:
            raise SpecError(field, f"{what} needs {human(total)} of RAM ({_parts(need)}) but "
                                   f"{human(need.host_available)} are available; {fix}")
        return
    if need.device_available is not None and need.device_bytes > need.device_available:
        raise SpecError(field, f"{what} needs {human(need.device_bytes)} on {need.device} (cache "
                               f"{human(b.gpu_bytes)} + rotated context {human(b.context_bytes)} + working memory "
                               f"{human(b.activation_bytes)}) but "
                               f"{human(need.device_available)} are free; {fix}")
    if need.host_available is not None and need.host_bytes > need.host_available:
        raise SpecError(field, f"{what} needs {human(need.host_bytes)} of host RAM (offloaded cache, scene pool "
                               f"and finished latents) but {human(need.host_available)} are available; shorten "
                               f"the video or lower width/height")


def _parts(need: MemoryNeed) -> str:
    b = need.budget
    return (f"cache {human(b.gpu_bytes)}, rotated context {human(b.context_bytes)}, working memory "
            f"{human(b.activation_bytes)}, scene pool and finished latents {human(need.host_bytes)}")


def pixel_size(latent_shape: tuple[int, int, int], spatial_compression: int) -> tuple[int, int]:
    """(width, height) in pixels of a latent frame (for messages)."""
    _, h, w = latent_shape
    return w * spatial_compression, h * spatial_compression


def finite(t: torch.Tensor) -> bool:
    """Whether every value of `t` is finite (NaN / inf inputs only make NaN videos)."""
    return bool(torch.isfinite(t).all()) if torch.is_floating_point(t) else True


def total_latent_frames(total_chunks: int, frames_per_chunk: int, prefill_frames: int = 0) -> int:
    return prefill_frames + total_chunks * frames_per_chunk


__all__ = ["DEFAULT_MAX_CHUNKS", "MAX_CHUNKS_ENV", "MAX_MEMORY_ENV", "MemoryNeed", "check_chunks", "check_kv_dtype",
           "check_memory", "check_recalls", "device_available_bytes", "finite", "host_available_bytes", "kv_dtype_of",
           "max_chunks", "memory_cap", "memory_need", "pixel_size", "total_latent_frames"]
