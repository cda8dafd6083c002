"""Input checks of the Echo-Forcing nodes, kept out of the node files (which hold schemas and marshalling).

ComfyUI 0.3.75 does not check V3 COMBO values, and a node's `validate_inputs` that takes an input turns off the
host's own min/max check of that input, so every check a node relies on is made here, by name: choices,
finite numbers, text lengths. Errors are `NodeInputError(input, what to do)`, quoting at most ~200 characters
of what the user typed.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from echo_core.errors import EchoError, quote

from ._host import NodeInputError

MAX_TIMELINE_CHARS = 100_000  # as the timeline route: a timeline is a few lines of text


def choice(field: str, value: Any, options: Sequence[str]) -> str:
    """`value` if it is one of `options`, else a NodeInputError naming the input and the options."""
    if isinstance(value, str) and value in options:
        return value
    shown = ", ".join(repr(o) for o in options[:12]) + (f" ... ({len(options)} in all)" if len(options) > 12 else "")
    raise NodeInputError(field, f"{quote(value)} is not one of {shown}")


def number(field: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    """A finite number within [low, high] (NaN passes ComfyUI's own min/max comparisons, so it is checked here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NodeInputError(field, f"must be a finite number, got {quote(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise NodeInputError(field, f"must lie in [{low}, {high}], got {value}")
    return float(value)


def timeline_text(value: Any) -> str:
    if not isinstance(value, str):
        raise NodeInputError("timeline", f"must be text, got {type(value).__name__}")
    if len(value) > MAX_TIMELINE_CHARS:
        raise NodeInputError("timeline", f"is {len(value):,} characters long; a timeline may have at most "
                                         f"{MAX_TIMELINE_CHARS:,} (it starts {quote(value[:60])})")
    return value


def frames_per_chunk(value: Any, options: Sequence[str], auto: int) -> int:
    """The sampler's / loader's frames-per-chunk choice as a number ("auto" -> `auto`)."""
    value = choice("frames_per_chunk", value, options)
    return auto if value == "auto" else int(value.split()[0])


def validation_message(check, *args: Any) -> bool | str:
    """For `validate_inputs`: True, or the error's text (ComfyUI shows it under the input)."""
    try:
        check(*args)
    except EchoError as e:
        return str(e)
    return True


def budget_line(budget: dict[str, Any], width: int, height: int) -> str:
    """The Scene Memory Cache node's one-line budget: everything on the GPU by component (the model's rotated
    keys included), the window, what Echo keeps on the host (offloaded state, the pool per scene)."""
    if "gpu_mb" not in budget:
        return (f"all frames x {budget['tokens_per_frame']} tokens: {budget['mb_per_frame']} MB of K/V per latent "
                f"frame at {width}x{height}, growing with the video")
    dtype = budget["kv_dtype"] if budget.get("kv_storage", "model") == "model" else \
        f"{budget['kv_dtype']}, K/V stored as {budget['kv_storage']}"
    line = (f"GPU {budget['gpu_mb']} MB at {width}x{height} ({dtype}): window {budget['window_frames']} "
            f"frames x {budget['tokens_per_frame']} tokens = {budget['cache_mb']} MB of K/V")
    parts = {k: v for k, v in budget.get("gpu_components_mb", {}).items() if v >= 0.1}
    if parts:
        line += "; on the GPU " + ", ".join(f"{k.replace('_', ' ')} {v} MB" for k, v in parts.items())
    host = {k: v for k, v in budget.get("host_components_mb", {}).items() if v >= 0.1}
    if host:
        line += f"; host {budget['host_mb']} MB: " + ", ".join(f"{k.replace('_', ' ')} {v} MB" for k, v in host.items())
    if "pool_mb_per_scene" in budget:
        line += (f"; host pool: {budget['pool_mb_per_scene']} MB per finished scene, host at most "
                 f"{budget['host_max_mb']} MB ({budget['pool_max_scenes']} scenes)")
    return line


def model_kv_dtype(model: Any) -> Any:
    """The K/V dtype of an ARModel (its weights' compute dtype), or None for the default (bf16)."""
    if model is None:
        return None
    from echo_core.preflight import kv_dtype_of

    return kv_dtype_of(getattr(model.patcher, "model", None))


# Core field -> the sampler input through which the user sets it.
_SAMPLER_FIELDS = {"memory.frames_per_chunk": "frames_per_chunk", "routing": "timeline", "scene": "timeline",
                   "fps": "timeline", "clip": "timeline", "start_latents": "start_latent",
                   "kv_dtype": "memory"}  # set on Scene Memory Cache


def node_error(e: EchoError) -> NodeInputError:
    """A core error re-homed under the sampler input the user can change."""
    field = _SAMPLER_FIELDS.get(e.field, "memory" if e.field.startswith(("memory.", "recall", "smooth.", "hardcut."))
                                else e.field or "model")
    detail = e.detail if field == e.field or e.field in ("fps", "clip") else f"{e.detail} ({e.field})"
    if e.field == "scene":
        detail = f"{e.detail} (Recall Scene node, input 'scene')"
    return NodeInputError(field, detail)


# EchoConfig paths -> Scene Memory Cache inputs.
_MEMORY_FIELDS = {"memory.anchor_frames": "anchor_frames", "memory.compressed_frames": "compressed_frames",
                  "memory.recent_frames": "recent_frames", "memory.rope_position_mode": "rope_position_mode",
                  "memory.compressed_keep_origin_positions": "keep_origin_positions",
                  "recall_frames.mode": "compression_mode", "recall_frames.pool_max_size": "recall_pool_size",
                  "hardcut.rope_jump.value": "hardcut_rope_jump", "recall.rope_jump.max_value": "recall_rope_jump_max",
                  "recall.rope_jump.min_value": "recall_rope_jump_max"}


def memory_error(e: EchoError, window: int) -> NodeInputError:
    """A Scene Memory Cache / Decay Settings error under the node input to change (the layout's derived fields,
    window_frames and rolling_cycle, are explained in terms of the inputs)."""
    if e.field in ("memory.rolling_cycle", "memory.window_frames", "memory.frames_per_chunk"):
        return NodeInputError("recent_frames", f"the window (anchor + compressed + recent frames + the chunk) holds "
                                               f"{window} latent frames; {e.detail}. Raise recent_frames so that the "
                                               "window holds at least the 12-frame anchor period")
    field = _MEMORY_FIELDS.get(e.field) or e.field.split(".")[-1] or "memory"
    return NodeInputError(field, e.detail)


def memory_choices(policy: Any, compression_mode: Any, rope_position_mode: Any,
                   kv_dtype: Any = "model") -> None:
    from echo_core.cache.kv_quant import KV_DTYPES

    choice("policy", policy, ("echo", "rolling", "full"))
    choice("kv_dtype", kv_dtype, KV_DTYPES)
    choice("compression_mode", compression_mode, ("score_weighted", "token_select"))
    choice("rope_position_mode", rope_position_mode, ("local", "tail"))


def loader_inputs(weight_dtype: Any, frames_per_chunk_value: Any, lora_strength: Any, dtypes: Sequence[str],
                  frames: Sequence[str]) -> int:
    """Load AR Video Model's choices; returns frames per chunk (0 = auto)."""
    choice("weight_dtype", weight_dtype, dtypes)
    number("lora_strength", lora_strength, -4.0, 4.0)
    return frames_per_chunk(frames_per_chunk_value, frames, 0)


def recall_inputs(source: Any, routing: Any, threshold: Any) -> None:
    choice("source", source, ("auto", "scene number"))
    choice("routing", routing, ("similarity", "idf"))
    number("threshold", threshold, 0.0, 1.0)
