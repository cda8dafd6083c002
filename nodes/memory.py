"""Scene Memory Cache and Decay Settings: the Echo-Forcing KV-cache layout and its difference-aware decay.

Owns: the node inputs and their mapping onto echo_core.session.MemorySpec / DecayConfig (whose defaults are the
official ones). The cache budget shown on the node is computed by MemorySpec.budget.
"""

from __future__ import annotations

import json

from comfy_api.latest import io

from echo_core.config import DecayConfig
from echo_core.errors import EchoError
from echo_core.model.config import get_preset
from echo_core.session import MemorySpec, with_decay

from . import checks, types
from ._host import ARModel, NodeInputError
from .checks import budget_line, memory_error, model_kv_dtype

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
                             tooltip="Finished scenes kept for recall (one fused recall frame each)."),
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
                io.Int.Input("budget_width", default=832, min=16, max=4096, step=16, optional=True),
                io.Int.Input("budget_height", default=480, min=16, max=4096, step=16, optional=True),
            ],
            outputs=[types.Memory.Output(display_name="memory"), io.String.Output(display_name="budget")],
        )

    @classmethod
    def validate_inputs(cls, policy: str = "echo", compression_mode: str = "score_weighted",
                        rope_position_mode: str = "local") -> bool | str:
        return checks.validation_message(checks.memory_choices, policy, compression_mode, rope_position_mode)

    @classmethod
    def execute(cls, policy: str, anchor_frames: int, compressed_frames: int, recent_frames: int,
                recall_pool_size: int, compression_mode: str, rope_position_mode: str, keep_origin_positions: bool,
                hardcut_rope_jump: int, recall_rope_jump_max: int, decay=None, budget_model: ARModel | None = None,
                budget_width: int = 832, budget_height: int = 480) -> io.NodeOutput:
        checks.memory_choices(policy, compression_mode, rope_position_mode)
        try:
            spec = MemorySpec(policy, anchor_frames, compressed_frames, recent_frames, recall_pool_size,
                              compression_mode, rope_position_mode, keep_origin_positions, hardcut_rope_jump,
                              recall_rope_jump_max, decay.entries if decay is not None else ())
            fpc = budget_model.frames_per_chunk if budget_model is not None else 3
            if policy == "echo":
                spec.echo_config(fpc)  # validates the layout now rather than at sampling time
            cfg = budget_model.config if budget_model is not None else get_preset("wan2.1-t2v-1.3b")
            budget = spec.budget(cfg, budget_height, budget_width, fpc, kv_dtype=model_kv_dtype(budget_model))
        except EchoError as e:
            window = anchor_frames + compressed_frames + recent_frames
            raise _fail(e, window + (budget_model.frames_per_chunk if budget_model is not None else 3)) from None
        text = json.dumps(budget)
        shown = budget_line(budget, budget_width, budget_height)
        return io.NodeOutput(spec, text, ui={"text": [shown]})


class DecaySettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULT_DECAY
        return io.Schema(
            node_id="EchoDecaySettings",
            display_name="Decay Settings",
            category=types.CATEGORY,
            description="Difference-aware decay of the memory carried across one kind of scene switch. Chain one "
                        "node per transition mode. Official: smooth diff 0.80-0.95 clear after 5; hardcut fixed 1.0 "
                        "first weight 0.8 clear after 1; recall diff 0.55-0.90 clear after 5.",
            inputs=[
                io.Combo.Input("transition", options=["smooth", "hardcut", "recall"], default="smooth"),
                io.Combo.Input("strategy", options=["diff", "fixed"], default=d.strategy,
                               tooltip="diff: rate from how different the new scene is; fixed: fixed_rate."),
                io.Float.Input("min_rate", default=d.min_rate, min=0.0, max=1.0, step=0.01),
                io.Float.Input("max_rate", default=d.max_rate, min=0.0, max=1.0, step=0.01),
                io.Float.Input("fixed_rate", default=d.fixed_rate, min=0.0, max=1.0, step=0.01),
                io.Float.Input("first_chunk_weight", default=d.first_block_weight, min=0.01, max=1.0, step=0.01),
                io.Int.Input("clear_after_chunks", default=d.clear_after_blocks, min=1, max=1000),
                io.Combo.Input("target", options=["old_memory", "old_recall", "old_recent"], default=d.target),
                types.Decay.Input("decay", optional=True, tooltip="Settings of the other modes, kept."),
            ],
            outputs=[types.Decay.Output(display_name="decay")],
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
