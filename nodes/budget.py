"""The cache budget shown on Scene Memory Cache, and the official decay values Decay Settings starts from.

`cache_budget` is the one place the plugin asks the core what a memory layout costs (today
echo_core.session.MemorySpec.budget; switch it to echo_core/budget.py here when that lands). The node's execute
and the HTTP route the front end calls while settings change (web/js/echo_panels.js) both go through it, so the
number drawn live and the one the node outputs after a run cannot disagree.

    POST /echo_forcing/budget          {"policy": "echo", "anchor_frames": 12, ..., "budget_width": 0,
                                        "budget_height": 0, "model_name": "...", "frames_per_chunk": "auto",
                                        "kv_dtype": "model" (optional: older front ends omit it)}
        -> {"budget": {...core formula...}, "text": "...", "model": "...", "width": 832, "height": 480}
    GET  /echo_forcing/decay_defaults  -> {"smooth": {"strategy": "diff", ...}, "hardcut": {...}, "recall": {...}}

Bad settings answer HTTP 200 with {"error": {"message", "field"}} (drawn on the node), a malformed request 400.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import lru_cache
from typing import Any, Mapping

# Absolute imports, as the node files: the MemorySpec made here goes to the sampler, which must see the same class
# (the plugin's __init__ puts the repository root on sys.path).
from echo_core.config import ConfigError, EchoConfig
from echo_core.model.config import WanConfig, get_preset
from echo_core.session import MemorySpec, SpecError

from .timeline_route import register_with_host

BUDGET_ROUTE = "/echo_forcing/budget"
DECAY_ROUTE = "/echo_forcing/decay_defaults"
TOY_MODEL = "echo-forcing-toy (bundled demo)"  # Load AR Video Model's entry for the bundled demo model
WAN_LABEL = "Wan2.1 1.3B"
WAN_SIZE = (480, 832)  # (height, width): the sampler's and the budget's `auto` size for Wan models
BYTES_PER_VALUE = 2  # bf16 / fp16 K/V

# Scene Memory Cache input -> MemorySpec field, in MemorySpec's order.
MEMORY_INPUTS = {
    "policy": "policy", "anchor_frames": "anchor_frames", "compressed_frames": "compressed_frames",
    "recent_frames": "recent_frames", "recall_pool_size": "pool_max_size", "compression_mode": "recall_frame_mode",
    "rope_position_mode": "rope_position_mode", "keep_origin_positions": "keep_origin_positions",
    "hardcut_rope_jump": "hardcut_rope_jump", "recall_rope_jump_max": "recall_rope_jump_max",
}
# Decay Settings input -> DecayConfig field.
DECAY_INPUTS = {"strategy": "strategy", "min_rate": "min_rate", "max_rate": "max_rate", "fixed_rate": "fixed_rate",
                "first_chunk_weight": "first_block_weight", "clear_after_chunks": "clear_after_blocks",
                "target": "target"}


class BudgetRequestError(ValueError):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def memory_spec(values: Mapping[str, Any], decay: tuple = ()) -> MemorySpec:
    """MemorySpec from Scene Memory Cache input values (the node and the route share this mapping)."""
    missing = [k for k in MEMORY_INPUTS if k not in values]
    if missing:
        raise BudgetRequestError(missing[0], f"missing; the request needs {', '.join(MEMORY_INPUTS)}")
    spec = MemorySpec(**{field: values[name] for name, field in MEMORY_INPUTS.items()}, decay=decay,
                      kv_dtype=values.get("kv_dtype", "model"))  # optional: workflows older than the input
    return spec


def cache_budget(spec: MemorySpec, cfg: WanConfig, height: int, width: int, frames_per_chunk: int) -> dict[str, Any]:
    """THE call into the core budget formula (K/V held while a chunk is generated, and the recall pool)."""
    if spec.policy == "echo":
        spec.echo_config(frames_per_chunk)  # validates the layout (a window too small for a chunk, ...)
    return spec.budget(cfg, height, width, frames_per_chunk, bytes_per_value=BYTES_PER_VALUE)


def budget_text(b: Mapping[str, Any], model: str, width: int, height: int) -> str:
    """The node's budget line: everything on the GPU by component (nodes/checks.budget_line), for `model`."""
    from .checks import budget_line

    if "gpu_mb" in b:
        return budget_line(dict(b), width, height) + f" [{model}]"
    head = f"{model} at {width}x{height}, bf16" + (f" (cache in {b['kv_storage']})"
                                                   if b.get("kv_storage", "model") != "model" else "")
    if "cache_tokens" not in b:
        return (f"{head}: keeps every frame, {b['tokens_per_frame']} tokens and {b['mb_per_frame']} MB per latent "
                f"frame; grows with the video")
    text = (f"{head}: window {b['window_frames']} frames x {b['tokens_per_frame']} tokens = {b['cache_tokens']} "
            f"tokens, {b['cache_mb']} MB K/V")
    if "pool_max_scenes" in b:
        text += f"; recall pool {b['pool_mb_per_scene']} MB per scene, up to {b['pool_max_scenes']} scenes (host)"
    return text


@lru_cache(maxsize=1)
def _toy_geometry() -> tuple[WanConfig, tuple[int, int]]:
    """The bundled demo model's config and native (height, width), from its files' metadata (no weights read)."""
    from safetensors import safe_open

    from echo_core.toy import loader as toy

    with safe_open(str(toy.WEIGHTS_DIR / toy.ASSETS_FILE), framework="pt") as f:
        height, width = json.loads((f.metadata() or {}).get("toy.resolution", "[48, 48]"))
    return get_preset("toy"), (int(height), int(width))


def model_geometry(model_name: str | None) -> tuple[str, WanConfig, tuple[int, int]]:
    """(label, config, native size) the budget is computed for when only a model file name is known."""
    if model_name == TOY_MODEL:
        cfg, size = _toy_geometry()
        return "bundled demo model", cfg, size
    return WAN_LABEL, get_preset("wan2.1-t2v-1.3b"), WAN_SIZE


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BudgetRequestError(name, f"must be a whole number, got {value!r}") from None


def budget_response(params: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for the front end's live budget; no aiohttp needed, so tests call it directly."""
    if not isinstance(params, Mapping):
        return 400, {"error": {"message": "the request body must be a JSON object", "field": "body"}}
    try:
        values = dict(params)
        for name in ("anchor_frames", "compressed_frames", "recent_frames", "recall_pool_size", "hardcut_rope_jump",
                     "recall_rope_jump_max"):
            if name in values:
                values[name] = _int(values, name, 0)
        values["keep_origin_positions"] = bool(values.get("keep_origin_positions", False))
        spec = memory_spec(values)
        label, cfg, (native_h, native_w) = model_geometry(params.get("model_name"))
        width = _int(params, "budget_width", 0) or native_w
        height = _int(params, "budget_height", 0) or native_h
        fpc_choice = str(params.get("frames_per_chunk", "auto"))
        fpc = 3 if fpc_choice == "auto" else _int({"frames_per_chunk": fpc_choice.split()[0]}, "frames_per_chunk", 3)
        budget = cache_budget(spec, cfg, height, width, fpc)
    except BudgetRequestError as e:
        return 400, {"error": {"message": str(e), "field": e.field}}
    except (SpecError, ConfigError) as e:
        field = str(getattr(e, "field", "memory")).split(".")[-1]
        return 200, {"error": {"message": str(e), "field": field}}
    return 200, {"budget": budget, "text": budget_text(budget, label, width, height), "model": label,
                 "width": width, "height": height, "frames_per_chunk": fpc}


def decay_defaults() -> dict[str, dict[str, Any]]:
    """Official decay values per transition mode, in Decay Settings' input names (echo_core.config.EchoConfig)."""
    official = EchoConfig()
    out = {}
    for mode in ("smooth", "hardcut", "recall"):
        cfg = asdict(official.mode(mode).decay)
        out[mode] = {name: cfg[field] for name, field in DECAY_INPUTS.items()}
    return out


async def handle_budget(request: Any) -> Any:
    from aiohttp import web

    try:
        params = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        params = None
    status, body = budget_response(params)
    return web.json_response(body, status=status)


async def handle_decay_defaults(request: Any) -> Any:
    from aiohttp import web

    return web.json_response(decay_defaults())


def register(routes: Any) -> None:
    routes.post(BUDGET_ROUTE)(handle_budget)
    routes.get(DECAY_ROUTE)(handle_decay_defaults)


REGISTERED = register_with_host(register, "_echo_forcing_budget_routes")
