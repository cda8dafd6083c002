"""fp8 KV storage: the `kv_dtype` setting, per-token-per-head quantisation and a preallocated K or V buffer.

`kv_dtype` names how a cache stores keys and values: "model" (the dtype the model computes K/V in, stored as is)
or "float8_e4m3fn" (one byte per element plus one float32 scale per token per head). Attention still runs in the
model dtype through scaled_dot_product_attention: a cache dequantises a whole span with one vectorised call
(`KVBuffer.read`) and hands the result to the model, which rotates the keys (they are cached pre-RoPE) and attends.

Scales are float32, shape [B, H, L] (one per token per head, amax over head_dim / 448). Why float32: it is 4 bytes
per 128-byte head row at Wan's head_dim (3 % over the fp8 payload, K/V at 0.52x of bf16), it has bf16's exponent
range (an fp16 scale underflows for quiet tokens, amax / 448 < 6e-5) and it is exact, so the only error is the
e4m3 rounding of the values (relative error at most 2**-4 of the token's amax per head).

How a cache uses it (rolling.py and flush.py do; the Echo window keeps its own fp8 + scale tensors the same
way, echo/window.py):
* one `KVBuffer(shape, model_dtype, device, kv_dtype)` per frame-sized K or V store, built lazily from the first
  k/v it sees (`storage_dtype` refuses fp8 on a device that cannot hold it);
* `write_blocks(starts, size, k)` puts a chunk's frames into their slots (quantised once per chunk);
* `read(n, exact=blocks(starts, size, k))` once per span per call gives the KVSpan's keys (values likewise);
* `take(index)` / `put(start, rows)` move rows between slots or stores with their scales (no re-rounding);
* `nbytes()` is what the budget's `stored_frame_bytes` predicts; a cache that implements fp8 says so in a
  class attribute `kv_dtypes = KV_DTYPES` (echo_core.run.check_echo_kv_dtype reads EchoCache's).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch

from echo_core.errors import ConfigError, quote

MODEL = "model"
FLOAT8 = "float8_e4m3fn"
KV_DTYPES = (MODEL, FLOAT8)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
SCALE_DTYPE = torch.float32
SCALE_BYTES = 4
_TINY = torch.finfo(torch.float32).tiny  # floor of a scale: an all-zero row quantises to zeros, not NaN


def check_kv_dtype(value: object, field: str = "kv_dtype") -> str:
    """The setting as given if it is a known name, else ConfigError naming `field` and the choices."""
    if not isinstance(value, str) or value not in KV_DTYPES:
        raise ConfigError(field, f"{quote(value)} is not one of {', '.join(KV_DTYPES)}; use 'model' to store K/V "
                                 "in the model's dtype or 'float8_e4m3fn' for an fp8 cache")
    return value


def storage_dtype(kv_dtype: str, device: torch.device | str | None = None, field: str = "kv_dtype"
                  ) -> torch.dtype | None:
    """torch dtype the cache stores K/V in: None for "model" (whatever the model computes), float8_e4m3fn for
    fp8 once this torch and `device` (if given) can cast to and from it; otherwise ConfigError naming `field`."""
    check_kv_dtype(kv_dtype, field)
    if kv_dtype == MODEL:
        return None
    dtype = getattr(torch, FLOAT8, None)
    if dtype is None:
        raise ConfigError(field, f"this torch ({torch.__version__}) has no float8_e4m3fn; upgrade torch (2.1 or "
                                 "newer) or set kv_dtype to 'model'")
    if device is not None and not _device_casts_fp8(torch.device(device).type):
        raise ConfigError(field, f"the {torch.device(device).type} device cannot store float8_e4m3fn tensors; set "
                                 "kv_dtype to 'model' or run on a CUDA GPU or the CPU")
    return dtype


@lru_cache(maxsize=None)
def _device_casts_fp8(device_type: str) -> bool:
    try:  # a round trip is all the cache needs (no fp8 matmul): e.g. MPS has no float8 at all
        probe = torch.full((2,), 3.0, device=device_type).to(torch.float8_e4m3fn).to(torch.float32)
        return bool(probe.eq(3.0).all())
    except (RuntimeError, TypeError, AssertionError):
        return False


def element_bytes(kv_dtype: str, model_itemsize: int, head_dim: int) -> float:
    """Bytes one stored K (or V) element costs, scales included: the budget's counterpart of `KVBuffer.nbytes`."""
    check_kv_dtype(kv_dtype)
    if kv_dtype == MODEL:
        return float(model_itemsize)
    return 1.0 + SCALE_BYTES / head_dim


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (fp8 values [..., D], float32 scales [...]): one scale per row (per token per head for
    head-major K/V), scale = amax / 448, so every row uses the whole e4m3 range."""
    xf = x.to(torch.float32)
    scale = xf.abs().amax(dim=-1).clamp_min(_TINY * FP8_MAX) / FP8_MAX
    q = (xf / scale[..., None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp8 values [..., D] and their row scales [...] -> `dtype`. Multiplies in `dtype` when it has float32's
    exponent range (bf16, fp32: no transient float32 copy of the span), else in float32 (fp16 would flush tiny
    scales to zero)."""
    work = dtype if dtype in (torch.float32, torch.bfloat16, torch.float64) else torch.float32
    out = q.to(work) * scale.to(work)[..., None]
    return out if out.dtype == dtype else out.to(dtype)


class KVBuffer:
    """A preallocated K (or V) store [B, H, capacity, D] in the model dtype or in fp8 with row scales.

    `write(start, x)` stores rows [start, start + L) of x [B, H, L, D] (quantised if fp8); `read(stop)` returns
    rows [start, stop) in `dtype`: a view for the model dtype (no copy, the exact numbers written), one
    vectorised dequantisation for fp8. `take(index)` / `put(start, rows)` move whole rows (fp8 values and their
    scales together) without a round trip through the model dtype."""

    def __init__(self, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device | str,
                 kv_dtype: str = MODEL) -> None:
        self.dtype = dtype  # what reads return: the model's K/V dtype
        self.kv_dtype = check_kv_dtype(kv_dtype)
        store = storage_dtype(kv_dtype, device)
        self.data = torch.zeros(shape, dtype=store or dtype, device=device)
        self.scale = torch.zeros(shape[:3], dtype=SCALE_DTYPE, device=device) if store is not None else None

    @property
    def quantized(self) -> bool:
        return self.scale is not None

    @property
    def capacity(self) -> int:
        return self.data.shape[2]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def write(self, start: int, x: torch.Tensor) -> None:
        end = start + x.shape[2]
        if self.scale is None:
            self.data[:, :, start:end] = x
        else:
            q, s = quantize(x)
            self.data[:, :, start:end] = q
            self.scale[:, :, start:end] = s

    def write_blocks(self, starts: Sequence[int], size: int, x: torch.Tensor) -> None:
        """Block j of x (rows [j * size, (j + 1) * size)) goes to rows [starts[j], starts[j] + size): a chunk's
        frames into their slots, quantised once for the whole chunk."""
        if self.scale is None:
            for j, a in enumerate(starts):
                self.data[:, :, a:a + size] = x[:, :, j * size:(j + 1) * size]
            return
        q, s = quantize(x)
        for j, a in enumerate(starts):
            self.data[:, :, a:a + size] = q[:, :, j * size:(j + 1) * size]
            self.scale[:, :, a:a + size] = s[:, :, j * size:(j + 1) * size]

    def read(self, stop: int, start: int = 0, exact: Sequence[tuple[int, torch.Tensor]] = ()) -> torch.Tensor:
        """Rows [start, stop) in the model dtype. fp8: one dequantisation of the whole span, then the rows in
        `exact` ((row, x [B, H, L, D]) pairs, e.g. the running chunk's fresh K/V) replaced by their unrounded
        values, so only what was cached before carries fp8 rounding. The model dtype stores those rows as they
        are already (they were just written), so its read is the buffer's view, untouched."""
        if self.scale is None:
            return self.data[:, :, start:stop]
        out = dequantize(self.data[:, :, start:stop], self.scale[:, :, start:stop], self.dtype)
        for row, x in exact:
            out[:, :, row - start:row - start + x.shape[2]] = x
        return out

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows `index` as stored (values, scales or None): index_select copies, so a later `put` may overlap."""
        scale = None if self.scale is None else self.scale.index_select(2, index)
        return self.data.index_select(2, index), scale

    def put(self, start: int, rows: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        values, scale = rows
        end = start + values.shape[2]
        self.data[:, :, start:end] = values
        if self.scale is not None and scale is not None:
            self.scale[:, :, start:end] = scale

    def grown(self, capacity: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
              ) -> "KVBuffer":
        """A buffer of `capacity` rows (reading as `dtype`, on `device`; default this one's) holding this one's
        first min(capacity, self.capacity) rows, copied as stored (fp8 values and scales are not re-rounded)."""
        b, h, _, d = self.data.shape
        out = KVBuffer((b, h, capacity, d), dtype or self.dtype, device or self.device, self.kv_dtype)
        keep = min(capacity, self.capacity)
        out.data[:, :, :keep] = self.data[:, :, :keep]
        if self.scale is not None and out.scale is not None:
            out.scale[:, :, :keep] = self.scale[:, :, :keep]
        return out

    def nbytes(self) -> int:
        extra = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.data.numel() * self.data.element_size() + extra


def blocks(starts: Sequence[int], size: int, x: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(starts[j], block j of x) for a chunk's frames: the `exact` rows of `KVBuffer.read`."""
    return [(a, x[:, :, j * size:(j + 1) * size]) for j, a in enumerate(starts)]
