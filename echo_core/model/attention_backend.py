"""The self-attention kernel behind one function: PyTorch SDPA, or an optional kernel the user already has.

`attend(q, k, v, mask)` takes head-major tensors [B, H, L, D] (keys may be longer than queries) and returns
[B, H, Lq, D]. Which kernel runs is a setting, read from a context variable so the model's signatures stay as
they are: the sampler enters `use(SamplerConfig.attention)` around its model calls.

    auto   exact kernels only: flash_attn's `flash_attn_func` if importable and the inputs fit, else SDPA.
           Inputs fit on CUDA, in fp16/bf16, without a mask and with a supported head size; anything else (CPU,
           fp32, the masked full-sequence forward) runs SDPA. SageAttention quantises Q/K, so it changes the
           numbers: it runs only when asked for by name.
    sdpa   torch.nn.functional.scaled_dot_product_attention (PyTorch picks flash / efficient / cuDNN / math).
    sage   SageAttention (INT8 Q/K, an approximation of exact attention); an error if it cannot run.
    flash  FlashAttention 2 (exact); an error if it cannot run.

`recording()` counts which kernel served each call (benchmarks report it); while recording under the profiler,
SDPA calls are also marked with `record_function("echo_attention.sdpa")`, so a profile tells the SDPA kernel of
the self-attention (flash / efficient / cuDNN / math) apart from that of the cross-attention.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import sys
import warnings
from collections import Counter
from types import ModuleType
from typing import Iterator

import torch
import torch.nn.functional as F

from echo_core.errors import SpecError

BACKENDS = ("auto", "sdpa", "sage", "flash")
KERNEL_MODULES = {"sage": "sageattention", "flash": "flash_attn"}
AUTO_KERNELS = ("flash",)  # what "auto" may pick: exact attention only
SDPA_RANGE = "echo_attention.sdpa"  # profiler range around SDPA calls made while recording
_HALF = (torch.float16, torch.bfloat16)
_MAX_HEAD_DIM = {"sage": 128, "flash": 256}

_SETTING: contextvars.ContextVar[str] = contextvars.ContextVar("echo_attention_backend", default="auto")
_RECORD: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("echo_attention_record", default=None)
_MISSING: set[str] = set()  # modules whose import failed once (not retried on every call)
_BROKEN: set[str] = set()  # kernels that raised under "auto": SDPA from then on, after one warning


def check_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise SpecError("attention", f"unknown attention kernel {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def current() -> str:
    """The setting in force here ("auto" unless a sampler or caller entered `use`)."""
    return _SETTING.get()


@contextlib.contextmanager
def use(backend: str) -> Iterator[None]:
    """Run the enclosed attention calls with `backend` (one of BACKENDS)."""
    token = _SETTING.set(check_name(backend))
    try:
        yield
    finally:
        _SETTING.reset(token)


@contextlib.contextmanager
def recording() -> Iterator[Counter]:
    """Count the kernel ("sdpa", "sage", "flash") that served each `attend` call inside the block."""
    counts: Counter = Counter()
    token = _RECORD.set(counts)
    try:
        yield counts
    finally:
        _RECORD.reset(token)


def kernel_module(kind: str) -> ModuleType | None:
    """The installed module of an optional kernel ("sage" or "flash"), or None when it is not importable."""
    name = KERNEL_MODULES[kind]
    if name in sys.modules:
        return sys.modules[name]  # None there means "blocked" (tests); never cached as missing
    if name in _MISSING:
        return None
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken build raising anything at import: treated as absent
        _MISSING.add(name)
        return None


def available() -> dict[str, bool]:
    """Which kernels this process could use (SDPA always)."""
    return {"sdpa": True, **{kind: kernel_module(kind) is not None for kind in KERNEL_MODULES}}


def _on_cuda(x: torch.Tensor) -> bool:  # a function of its own so CPU tests can stand in a CUDA device
    return x.device.type == "cuda"


def unfit_reason(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None) -> str | None:
    """Why kernel `kind` ("sage" / "flash") cannot take these inputs, or None when it can."""
    if kernel_module(kind) is None:
        return f"the {KERNEL_MODULES[kind]} package is not installed (pip install {KERNEL_MODULES[kind]})"
    if not _on_cuda(q):
        return f"it runs on CUDA only, the tensors are on {q.device.type}"
    if mask is not None:
        return "it takes no attention mask (this call has one)"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _HALF:
        return f"it needs float16 or bfloat16 inputs of one dtype, got {q.dtype}/{k.dtype}/{v.dtype}"
    if q.shape[-1] > _MAX_HEAD_DIM[kind] or q.shape[-1] % 8:
        return f"it takes head sizes up to {_MAX_HEAD_DIM[kind]} in multiples of 8, got {q.shape[-1]}"
    if q.shape[1] % k.shape[1]:
        return f"{q.shape[1]} query heads are not a multiple of {k.shape[1]} key heads"
    return None


def resolve(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            mask: torch.Tensor | None = None) -> str:
    """The kernel that `attend` runs for these inputs under `backend`: "sdpa", "sage" or "flash".
    Raises SpecError when an explicitly requested kernel cannot run them."""
    check_name(backend)
    if backend == "sdpa":
        return "sdpa"
    if backend in KERNEL_MODULES:
        why = unfit_reason(backend, q, k, v, mask)
        if why is not None:
            raise SpecError("attention", f"{backend!r} cannot run this attention: {why}; choose 'auto' (falls back "
                                         "to PyTorch SDPA) or 'sdpa'")
        return backend
    for kind in AUTO_KERNELS:
        if kind not in _BROKEN and unfit_reason(kind, q, k, v, mask) is None:
            return kind
    return "sdpa"


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
           backend: str | None = None) -> torch.Tensor:
    """Softmax attention of q [B, H, Lq, D] over k, v [B, H, Lk, D] (scale 1/sqrt(D)); mask [Lq, Lk] bool
    (True = may attend) or additive. backend None: the setting in force (`use`), "auto" by default."""
    setting = current() if backend is None else backend
    kind = resolve(setting, q, k, v, mask)
    counts = _RECORD.get()
    if kind != "sdpa":
        try:
            out = _sage(q, k, v) if kind == "sage" else _flash(q, k, v)
        except Exception as e:
            if setting != "auto":
                raise
            _BROKEN.add(kind)
            warnings.warn(f"attention kernel {kind!r} failed ({type(e).__name__}: {e}); using PyTorch SDPA from "
                          "now on", RuntimeWarning, stacklevel=2)
            kind = "sdpa"
        else:
            if counts is not None:
                counts[kind] += 1
            return out
    if counts is not None:
        counts["sdpa"] += 1
        if torch.autograd._profiler_enabled():  # the range costs ~10 us: only while recording under a profiler
            with torch.profiler.record_function(SDPA_RANGE):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sageattn in its "HND" layout, which is ours: [B, H, L, D] in and out."""
    mod = kernel_module("sage")
    q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
    return mod.sageattn(q, k, v, tensor_layout="HND", is_causal=False)  # type: ignore[union-attr]


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """flash_attn_func takes and returns [B, L, H, D]."""
    mod = kernel_module("flash")
    q, k, v = (_last_dim_contiguous(x.transpose(1, 2)) for x in (q, k, v))
    out = mod.flash_attn_func(q, k, v, dropout_p=0.0, causal=False)  # type: ignore[union-attr]
    return out.transpose(1, 2)
