"""Scene Memory Cache and Decay Settings: the Echo-Forcing KV-cache layout and its difference-aware decay.

Owns: the node inputs and their mapping onto echo_core.session.MemorySpec / DecayConfig (whose defaults are the
official ones). The cache budget shown on the node comes from the core formula through nodes/budget.py, which the
front end also calls while the settings change.
"""

from __future__ import annotations

import json

from comfy_api.latest import io

from echo_core.cache.kv_quant import KV_DTYPES
from echo_core.config import DecayConfig
from echo_core.errors import EchoError
from echo_core.session import with_decay

from . import checks, types
from ._host import ARModel, NodeInputError
from .budget import budget_text, cache_budget, memory_spec, model_geometry
from .checks import memory_error

DEFAULT_DECAY = DecayConfig()  # smooth transition's official values


def _fail(e: EchoError, window: int = 0) -> NodeInputError:
    return memory_error(e, window)

class SceneMemoryCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoSceneMemoryCache",
            display_name="Scene Memory Cache",
            category=types.CATEGORY,
            description="Hierarchical KV memory: anchor frames | compressed history | recent frames | current chunk, "
                        "plus a pool of finished scenes for recall. Shows the cache budget for the chosen size.",
            inputs=[
                io.Combo.Input("policy", options=["echo", "rolling", "full"], default="echo",
                               tooltip="echo: Echo-Forcing memory. rolling: Self-Forcing's sink + 21-frame window "
                                       "(baseline). full: keep every frame (grows without bound)."),
                io.Int.Input("anchor_frames", default=12, min=0, max=64, tooltip="Latent frames of scene anchors."),
                io.Int.Input("compressed_frames", default=3, min=0, max=64,
                             tooltip="Latent frames of compressed history (best-scoring tokens of evicted frames)."),
                io.Int.Input("recent_frames", default=3, min=1, max=64,
                             tooltip="Latent frames of recent history. Window = anchors + compressed + recent + chunk "
                                     "(official 12 + 3 + 3 + 3 = 21; frame-wise models: recent 5)."),
                io.Int.Input("recall_pool_size", default=64, min=1, max=1024,
                             tooltip="Finished scenes kept for recall (one fused recall frame each, on the host)."),
                io.Combo.Input("compression_mode", options=["score_weighted", "token_select"],
                               default="score_weighted", tooltip="How a finished scene's frames fuse into its recall "
                                                                 "frame."),
                io.Combo.Input("rope_position_mode", options=["local", "tail"], default="local",
                               tooltip="Relative RoPE: slot s at time s (local) or keys ending at the window's end."),
                io.Boolean.Input("keep_origin_positions", default=False,
                                 tooltip="Compressed tokens keep their own (row, column) RoPE coordinates."),
                io.Int.Input("hardcut_rope_jump", default=45, min=0, max=1000,
                             tooltip="Temporal RoPE offset of the first chunk after a hard cut."),
                io.Int.Input("recall_rope_jump_max", default=6, min=0, max=1000,
                             tooltip="Largest temporal RoPE offset of a recall (scaled by the routing score)."),
                types.Decay.Input("decay", optional=True, tooltip="Decay Settings per transition mode."),
                types.ARVideoModel.Input("budget_model", optional=True,
                                         tooltip="Model the budget is computed for (default Wan2.1 1.3B, bf16)."),
                io.Int.Input("budget_width", default=0, min=0, max=4096, step=16, optional=True,
                             tooltip="Width the budget is computed for. 0 = auto: the budget model's native size "
                                     "(Wan2.1: 832)."),
                io.Int.Input("budget_height", default=0, min=0, max=4096, step=16, optional=True,
                             tooltip="Height the budget is computed for. 0 = auto: the budget model's native size "
                                     "(Wan2.1: 480)."),
                io.Combo.Input("kv_dtype", options=list(KV_DTYPES), default="model", optional=True,
                               tooltip="How the cache stores keys and values. model: the model's dtype. "
                                       "float8_e4m3fn: fp8 with a scale per token per head, about half the cache "
                                       "(attention still runs in the model's dtype)."),
            ],
            outputs=[types.Memory.Output(display_name="memory",
                                         tooltip="Memory settings for the Echo-Forcing Sampler's memory input."),
                     io.String.Output(display_name="budget",
                                      tooltip="JSON: the core's cache budget for these settings (tokens, MB per "
                                              "frame, window and recall pool).")],
        )

    @classmethod
    def validate_inputs(cls, policy: str = "echo", compression_mode: str = "score_weighted",
                        rope_position_mode: str = "local", kv_dtype: str = "model") -> bool | str:
        return checks.validation_message(checks.memory_choices, policy, compression_mode, rope_position_mode,
                                         kv_dtype)

    @classmethod
    def execute(cls, policy: str, anchor_frames: int, compressed_frames: int, recent_frames: int,
                recall_pool_size: int, compression_mode: str, rope_position_mode: str, keep_origin_positions: bool,
                hardcut_rope_jump: int, recall_rope_jump_max: int, decay=None, budget_model: ARModel | None = None,
                budget_width: int = 0, budget_height: int = 0, kv_dtype: str = "model") -> io.NodeOutput:
        checks.memory_choices(policy, compression_mode, rope_position_mode, kv_dtype)
        values = dict(policy=policy, anchor_frames=anchor_frames, compressed_frames=compressed_frames,
                      recent_frames=recent_frames, recall_pool_size=recall_pool_size,
                      compression_mode=compression_mode, rope_position_mode=rope_position_mode,
                      keep_origin_positions=keep_origin_positions, hardcut_rope_jump=hardcut_rope_jump,
                      recall_rope_jump_max=recall_rope_jump_max, kv_dtype=kv_dtype)
        fpc = budget_model.frames_per_chunk if budget_model is not None else 3
        try:
            spec = memory_spec(values, decay.entries if decay is not None else ())
            if budget_model is not None:
                label, cfg, native = budget_model.name or "the connected model", budget_model.config, \
                    budget_model.native_size
            else:
                label, cfg, native = model_geometry(None)
            height, width = budget_height or native[0], budget_width or native[1]
            budget = cache_budget(spec, cfg, height, width, fpc)
        except EchoError as e:
            raise _fail(e, anchor_frames + compressed_frames + recent_frames + fpc) from None
        return io.NodeOutput(spec, json.dumps(budget), ui={"text": [budget_text(budget, label, width, height)]})

class DecaySettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULT_DECAY
        return io.Schema(
            node_id="EchoDecaySettings",
            display_name="Decay Settings",
            category=types.CATEGORY,
            description="Difference-aware decay of the memory carried across one kind of scene switch. Chain one "
                        "node per transition mode; picking a mode loads its official values. Official: smooth diff "
                        "0.80-0.95 clear after 5; hardcut fixed 1.0 first weight 0.8 clear after 1; recall diff "
                        "0.55-0.90 clear after 5.",
            inputs=[
                io.Combo.Input("transition", options=["smooth", "hardcut", "recall"], default="smooth",
                               tooltip="The kind of scene switch these settings apply to. Choosing one in the editor "
                                       "sets the values below to that mode's official ones."),
                io.Combo.Input("strategy", options=["diff", "fixed"], default=d.strategy,
                               tooltip="diff: rate from how different the new scene is; fixed: fixed_rate."),
                io.Float.Input("min_rate", default=d.min_rate, min=0.0, max=1.0, step=0.01,
                               tooltip="diff: decay rate per chunk for the most different scenes."),
                io.Float.Input("max_rate", default=d.max_rate, min=0.0, max=1.0, step=0.01,
                               tooltip="diff: decay rate per chunk for the most similar scenes."),
                io.Float.Input("fixed_rate", default=d.fixed_rate, min=0.0, max=1.0, step=0.01,
                               tooltip="fixed: decay rate per chunk (1.0 keeps the weight)."),
                io.Float.Input("first_chunk_weight", default=d.first_block_weight, min=0.01, max=1.0, step=0.01,
                               tooltip="Attention weight of the carried memory in the first chunk after the switch."),
                io.Int.Input("clear_after_chunks", default=d.clear_after_blocks, min=1, max=1000,
                             tooltip="Chunks after the switch when the carried memory is dropped."),
                io.Combo.Input("target", options=["old_memory", "old_recall", "old_recent"], default=d.target,
                               tooltip="Which carried frames decay: the old scene's memory, the recalled frame or "
                                       "the old recent frames."),
                types.Decay.Input("decay", optional=True, tooltip="Settings of the other modes, kept."),
            ],
            outputs=[types.Decay.Output(display_name="decay",
                                        tooltip="Decay per transition mode: into another Decay Settings or the Scene "
                                                "Memory Cache's decay input.")],
        )

    @classmethod
    def execute(cls, transition: str, strategy: str, min_rate: float, max_rate: float, fixed_rate: float,
                first_chunk_weight: float, clear_after_chunks: int, target: str, decay=None) -> io.NodeOutput:
        try:
            cfg = DecayConfig(target=target, strategy=strategy, min_rate=min_rate, max_rate=max_rate,
                              fixed_rate=fixed_rate, first_block_weight=first_chunk_weight,
                              clear_after_blocks=clear_after_chunks)
            return io.NodeOutput(with_decay(decay, transition, cfg))
        except EchoError as e:
            raise _fail(e) from None
