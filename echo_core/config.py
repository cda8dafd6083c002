"""Echo-Forcing configuration: frozen dataclasses whose defaults are the official ones.

Sources (spec): §2.2 (`pc_config`, hierarchical memory), §4 (`compress_candidates`, scene recall frames, pool),
§5 (decay), §6.5 and Appendix C (`configs/interactive.yaml` modes). Deliberate differences from the yaml:

* Sizes are in latent frames and generalised: the official code hard-codes 3 frames per chunk and 1560 tokens
  per frame; here frames per chunk is `HierarchicalMemoryConfig.frames_per_chunk` and tokens per frame come from
  the chunk grid at run time. The layout must tile the window exactly:
  `anchor_frames + compressed_frames + recent_frames + frames_per_chunk == window_frames`.
  For frame-wise models (1 frame per chunk) use `HierarchicalMemoryConfig.for_frames_per_chunk(1)`: it keeps the
  window, anchor and compressed sizes and gives the freed frames to the recent region (12 + 3 + 5 + 1 = 21), and
  keeps the ping-pong period at 12 frames (rolling_cycle 12).
* `fusion: "sum"` (official spelling, behaves as mean) is accepted as an alias of "mean".
* The hard-cut yaml sets `use_old_recent: true` but the official code ignores it for hard cuts; our default is
  False (same behaviour), and our code honours the flag for every mode.
* `rope_jump.strategy = "similarity"` is only meaningful for recall (it needs a routing score): elsewhere it is
  rejected.
* `compressed_keep_origin_positions` (ours, off by default): compressed-history tokens keep their original
  (row, column) RoPE coordinates instead of those of the slot they are packed into (spec §3.4 / §11 item 9).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from echo_core.cache.kv_quant import check_kv_dtype
from echo_core.errors import ConfigError, quote

__all__ = [
    "ConfigError",
    "DecayConfig",
    "BaselineConfig",
    "EchoConfig",
    "HierarchicalMemoryConfig",
    "RecallFrameConfig",
    "RopeJumpConfig",
    "RoutingConfig",
    "TransitionConfig",
]


def _choice(path: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(path, f"{quote(value)} is not one of {', '.join(allowed)}")


def _int_at_least(path: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(path, f"must be an integer >= {low}, got {quote(value)}")


def _is_number(value: Any) -> bool:
    """A finite int or float (bools and NaN/inf are not numbers a setting can take)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _flag(path: str, value: Any) -> None:
    # JSON true/false only: a string such as "no" is truthy and would silently mean the opposite
    if not isinstance(value, bool):
        raise ConfigError(path, f"must be true or false, got {quote(value)}")


def _unit(path: str, value: Any, *, open_low: bool = False) -> None:
    if not _is_number(value):
        raise ConfigError(path, f"must be a number in {'(0' if open_low else '[0'}, 1], got {quote(value)}")
    if value > 1 or value < 0 or (open_low and value == 0):
        raise ConfigError(path, f"must lie in {'(0' if open_low else '[0'}, 1], got {value}")


class _Serial:
    """to_dict / from_dict / JSON for nested frozen dataclasses; unknown keys are errors naming the key."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _Serial):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], _path: str = ""):
        prefix = _path or cls.__name__
        if not isinstance(data, Mapping):
            raise ConfigError(prefix, f"expected a mapping, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in fields:
                raise ConfigError(f"{prefix}.{key}", f"unknown key; known keys: {', '.join(fields)}")
            current = getattr(defaults, key)
            if isinstance(current, _Serial):
                value = type(current).from_dict(value, f"{prefix}.{key}")
            elif isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls._build(kwargs, prefix)

    @classmethod
    def _build(cls, kwargs: dict[str, Any], prefix: str):
        try:
            return cls(**kwargs)
        except ConfigError as e:
            if e.field.startswith(prefix) or not prefix:
                raise
            raise e.relabel(f"{prefix}.{e.field.split('.', 1)[-1]}") from None

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(cls.__name__, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return cls.from_dict(data)


@dataclass(frozen=True)
class HierarchicalMemoryConfig(_Serial):
    """Spec §2.2-§2.6: the 21-frame window split into anchors | compressed history | recent | current chunk."""

    window_frames: int = 21
    frames_per_chunk: int = 3
    anchor_frames: int = 12  # official `sink_frames` (with PC enabled)
    compressed_frames: int = 3
    recent_frames: int = 3
    rolling_cycle: int = 4  # ping-pong period in chunks; period = rolling_cycle * frames_per_chunk frames
    use_amplitude_compensation: bool = True
    use_drift_gate: bool = True
    drift_gate_lambda: float = 3.0
    fusion: str = "mean"  # over offsets and heads: "mean" (official "sum") or "max"
    offsets: tuple[int, ...] = (1, 2, 4, 8, 16)
    topc_max_reuse: int = 8
    rope_position_mode: str = "local"  # "local": slot s -> time s; "tail": keys end at window_frames - 1
    rope_theta: float = 10000.0  # must match the model's RoPE base (phase score frequencies)
    compressed_keep_origin_positions: bool = False  # ours (spec §3.4 fix); official False

    def __post_init__(self) -> None:
        p = "memory"
        _int_at_least(f"{p}.window_frames", self.window_frames, 1)
        _int_at_least(f"{p}.frames_per_chunk", self.frames_per_chunk, 1)
        _int_at_least(f"{p}.anchor_frames", self.anchor_frames, 0)
        _int_at_least(f"{p}.compressed_frames", self.compressed_frames, 0)
        _int_at_least(f"{p}.recent_frames", self.recent_frames, 1)
        _int_at_least(f"{p}.rolling_cycle", self.rolling_cycle, 1)
        _int_at_least(f"{p}.topc_max_reuse", self.topc_max_reuse, 1)
        total = self.anchor_frames + self.compressed_frames + self.recent_frames + self.frames_per_chunk
        if total != self.window_frames:
            raise ConfigError(
                f"{p}.window_frames",
                f"anchor_frames ({self.anchor_frames}) + compressed_frames ({self.compressed_frames}) + "
                f"recent_frames ({self.recent_frames}) + frames_per_chunk ({self.frames_per_chunk}) = {total} "
                f"must equal window_frames ({self.window_frames}); change recent_frames or window_frames "
                "(HierarchicalMemoryConfig.for_frames_per_chunk(n) derives a consistent layout)")
        if 0 < self.anchor_frames < self.frames_per_chunk:
            raise ConfigError(f"{p}.anchor_frames", f"must be 0 or >= frames_per_chunk ({self.frames_per_chunk}), "
                                                     f"got {self.anchor_frames}: each chunk re-inserts a chunk of "
                                                     "anchor frames")
        if self.anchor_period > self.window_frames:
            raise ConfigError(f"{p}.rolling_cycle", f"rolling_cycle * frames_per_chunk = {self.anchor_period} "
                                                    f"must not exceed window_frames ({self.window_frames}): the "
                                                    "ping-pong source is the scene's first window")
        for name in ("use_amplitude_compensation", "use_drift_gate", "compressed_keep_origin_positions"):
            _flag(f"{p}.{name}", getattr(self, name))
        if not _is_number(self.drift_gate_lambda) or self.drift_gate_lambda < 0:
            raise ConfigError(f"{p}.drift_gate_lambda", f"must be a number >= 0, got {quote(self.drift_gate_lambda)}")
        if self.fusion == "sum":  # official spelling; the code treats anything but "max" as mean
            object.__setattr__(self, "fusion", "mean")
        _choice(f"{p}.fusion", self.fusion, ("mean", "max"))
        offsets_ok = isinstance(self.offsets, tuple) and self.offsets and all(
            not isinstance(o, bool) and isinstance(o, int) and o >= 0 for o in self.offsets)
        if not offsets_ok:
            raise ConfigError(f"{p}.offsets", f"must be a non-empty list of integers >= 0, got {quote(self.offsets)}")
        _choice(f"{p}.rope_position_mode", self.rope_position_mode, ("local", "tail"))
        if not _is_number(self.rope_theta) or self.rope_theta <= 1:
            raise ConfigError(f"{p}.rope_theta", f"must be a number > 1, got {quote(self.rope_theta)}")

    @property
    def anchor_period(self) -> int:
        """Ping-pong period P in frames (official 3 * 4 = 12): anchors replay the scene's first P frames."""
        return self.rolling_cycle * self.frames_per_chunk

    @classmethod
    def for_frames_per_chunk(cls, frames: int, **overrides: Any) -> HierarchicalMemoryConfig:
        """Official sizes adapted to `frames` per chunk: window 21, anchors 12, compressed 3, recent takes the
        rest (recent + current = 6 frames as officially), ping-pong period 12 frames when it divides evenly."""
        base = cls()
        recent = base.window_frames - base.anchor_frames - base.compressed_frames - frames
        if recent < 1:
            raise ConfigError("memory.frames_per_chunk", f"{frames} frames per chunk leave no recent frame in a "
                                                          f"{base.window_frames}-frame window")
        cycle = max(1, base.anchor_frames // frames)  # period = anchor_frames when frames divides it
        kwargs: dict[str, Any] = dict(frames_per_chunk=frames, recent_frames=recent, rolling_cycle=cycle)
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass(frozen=True)
class RecallFrameConfig(_Serial):
    """Spec §4: scene recall frames (`compress_candidates`) and the scene pool."""

    mode: str = "score_weighted"  # or "token_select" ("stitch" is an official alias)
    storage_frames: int = 12  # scene-local frames eligible as candidates
    source_frames: int = 12  # <= 0: all stored frames may be sampled
    stride: int = 4  # sampled frames 0, stride, 2*stride, ...
    base_frame_weight: float = 0.9  # weight of the scene's first frame in score_weighted
    pool_max_size: int = 64

    def __post_init__(self) -> None:
        p = "recall_frames"
        if self.mode == "stitch":
            object.__setattr__(self, "mode", "token_select")
        _choice(f"{p}.mode", self.mode, ("score_weighted", "token_select"))
        _int_at_least(f"{p}.storage_frames", self.storage_frames, 1)
        if isinstance(self.source_frames, bool) or not isinstance(self.source_frames, int):
            raise ConfigError(f"{p}.source_frames",
                              f"must be an integer (<= 0 means all), got {quote(self.source_frames)}")
        _int_at_least(f"{p}.stride", self.stride, 1)
        _unit(f"{p}.base_frame_weight", self.base_frame_weight)
        _int_at_least(f"{p}.pool_max_size", self.pool_max_size, 1)

    def sampled_frames(self, available: int | None = None) -> list[int]:
        """Scene-local frames fused into the recall frame (official: 0, 4, 8)."""
        limit = self.storage_frames if available is None else min(self.storage_frames, available)
        if self.source_frames > 0:
            limit = min(limit, self.source_frames)
        return list(range(0, max(limit, 0), self.stride))


@dataclass(frozen=True)
class DecayConfig(_Serial):
    """Spec §5: how the memory inserted at a switch fades and when it is dropped."""

    target: str = "old_memory"  # "old_memory" | "old_recall" | "old_recent"
    strategy: str = "diff"  # "diff" | "fixed"
    min_rate: float = 0.80
    max_rate: float = 0.95
    fixed_rate: float = 1.0
    first_block_weight: float = 1.0
    clear_after_blocks: int = 5

    def __post_init__(self) -> None:
        p = "decay"
        _choice(f"{p}.target", self.target, ("old_memory", "old_recall", "old_recent"))
        _choice(f"{p}.strategy", self.strategy, ("diff", "fixed"))
        _unit(f"{p}.min_rate", self.min_rate)
        _unit(f"{p}.max_rate", self.max_rate)
        if self.min_rate > self.max_rate:
            raise ConfigError(f"{p}.min_rate", f"min_rate ({self.min_rate}) must not exceed max_rate "
                                               f"({self.max_rate})")
        _unit(f"{p}.fixed_rate", self.fixed_rate)
        _unit(f"{p}.first_block_weight", self.first_block_weight, open_low=True)
        _int_at_least(f"{p}.clear_after_blocks", self.clear_after_blocks, 1)


@dataclass(frozen=True)
class RopeJumpConfig(_Serial):
    """Spec §3.3 / §7.3: temporal RoPE offset of the first chunk of a new scene."""

    strategy: str = "fixed"  # "fixed" | "similarity" (recall only)
    value: int = 0
    min_value: int = 0
    max_value: int = 6

    def __post_init__(self) -> None:
        p = "rope_jump"
        _choice(f"{p}.strategy", self.strategy, ("fixed", "similarity"))
        _int_at_least(f"{p}.value", self.value, 0)
        _int_at_least(f"{p}.min_value", self.min_value, 0)
        _int_at_least(f"{p}.max_value", self.max_value, 0)
        if self.min_value > self.max_value:
            raise ConfigError(f"{p}.min_value", f"min_value ({self.min_value}) must not exceed max_value "
                                                f"({self.max_value})")


@dataclass(frozen=True)
class TransitionConfig(_Serial):
    """Spec §6.3 / Appendix C `modes.*`: what a switch of one mode keeps and how it fades."""

    use_old_memory: bool = True
    old_memory_source: str = "compress"  # "compress" (recall frame) | "select" (first frame) | "resink" (slot 0)
    use_old_recent: bool = True
    old_recent_frames: int = 2
    decay: DecayConfig = field(default_factory=DecayConfig)
    rope_jump: RopeJumpConfig = field(default_factory=RopeJumpConfig)
    use_scene_local_timing: bool = True
    rope_position_mode: str | None = None  # None: keep memory.rope_position_mode

    def __post_init__(self) -> None:
        p = "transition"
        for name in ("use_old_memory", "use_old_recent", "use_scene_local_timing"):
            _flag(f"{p}.{name}", getattr(self, name))
        _choice(f"{p}.old_memory_source", self.old_memory_source, ("compress", "select", "resink"))
        _int_at_least(f"{p}.old_recent_frames", self.old_recent_frames, 0)
        if self.rope_position_mode is not None:
            _choice(f"{p}.rope_position_mode", self.rope_position_mode, ("local", "tail"))


def _smooth() -> TransitionConfig:
    return TransitionConfig(decay=DecayConfig(min_rate=0.80, max_rate=0.95, clear_after_blocks=5))


def _hardcut() -> TransitionConfig:
    return TransitionConfig(use_old_recent=False, old_recent_frames=0,
                            decay=DecayConfig(strategy="fixed", fixed_rate=1.0, first_block_weight=0.8,
                                              clear_after_blocks=1),
                            rope_jump=RopeJumpConfig(strategy="fixed", value=45))


def _recall() -> TransitionConfig:
    return TransitionConfig(use_old_recent=False, old_recent_frames=0,
                            decay=DecayConfig(min_rate=0.55, max_rate=0.90, clear_after_blocks=5),
                            rope_jump=RopeJumpConfig(strategy="similarity", min_value=0, max_value=6))


@dataclass(frozen=True)
class RoutingConfig(_Serial):
    """Spec §7: how a recall picks its source scene (the router itself lives in echo_core.routing)."""

    method: str = "similarity"  # "similarity" (official "Similar") | "idf"
    manual_recall_scene_ids: tuple[int, ...] = ()  # indexed by destination scene (0-based); values 1-based, <=0 auto
    threshold: float | None = None  # ours: below it nothing is recalled; official has none

    def __post_init__(self) -> None:
        method = self.method.strip().lower() if isinstance(self.method, str) else self.method
        if method == "similar":
            method = "similarity"
        object.__setattr__(self, "method", method)
        _choice("routing.method", self.method, ("similarity", "idf"))
        ids = self.manual_recall_scene_ids
        if not isinstance(ids, tuple) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise ConfigError("routing.manual_recall_scene_ids",
                              f"must be a list of integers (1-based scene numbers, 0 = automatic), got "
                              f"{quote(list(ids) if isinstance(ids, tuple) else ids)}")
        if self.threshold is not None and not _is_number(self.threshold):
            raise ConfigError("routing.threshold", f"must be a finite number or null (no threshold), got "
                                                   f"{quote(self.threshold)}")

    def manual_source(self, dest_scene: int) -> int | None:
        """0-based source scene requested for `dest_scene`, or None for automatic routing."""
        ids = self.manual_recall_scene_ids
        if 0 <= dest_scene < len(ids) and ids[dest_scene] > 0:
            return ids[dest_scene] - 1
        return None


@dataclass(frozen=True)
class EchoConfig(_Serial):
    """Everything the Echo-Forcing cache policy reads, with the official defaults."""

    memory: HierarchicalMemoryConfig = field(default_factory=HierarchicalMemoryConfig)
    recall_frames: RecallFrameConfig = field(default_factory=RecallFrameConfig)
    smooth: TransitionConfig = field(default_factory=_smooth)
    hardcut: TransitionConfig = field(default_factory=_hardcut)
    recall: TransitionConfig = field(default_factory=_recall)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    kv_dtype: str = "model"  # K/V storage (echo_core.cache.kv_quant): "model" or "float8_e4m3fn"

    def __post_init__(self) -> None:
        check_kv_dtype(self.kv_dtype, "kv_dtype")
        for name in ("smooth", "hardcut"):
            if getattr(self, name).rope_jump.strategy == "similarity":
                raise ConfigError(f"{name}.rope_jump.strategy", "'similarity' needs a routing score and is only "
                                                                 "available for recall; use 'fixed'")
        if self.recall.old_memory_source == "resink":
            raise ConfigError("recall.old_memory_source", "recall loads a pooled scene: use 'compress' or 'select'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], _path: str = "") -> EchoConfig:
        # Children validate with short paths ("decay.min_rate"); prefix them with where they sit in EchoConfig.
        if not isinstance(data, Mapping):
            raise ConfigError("EchoConfig", f"expected a mapping, got {type(data).__name__}")
        defaults = cls()
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in cls.__dataclass_fields__:
                raise ConfigError(key, f"unknown key; known keys: {', '.join(cls.__dataclass_fields__)}")
            if not isinstance(getattr(defaults, key), _Serial):  # a plain setting (kv_dtype): checked by cls()
                kwargs[key] = value
                continue
            child = type(getattr(defaults, key))
            base = getattr(defaults, key).to_dict()
            if isinstance(value, Mapping):  # partial mode dicts keep that mode's own defaults
                merged = {**base, **value}
                for sub, sub_value in value.items():
                    if isinstance(sub_value, Mapping) and isinstance(base.get(sub), dict):
                        merged[sub] = {**base[sub], **sub_value}
                value = merged
            kwargs[key] = _with_prefix(key, lambda v=value, c=child, k=key: c.from_dict(v, k))
        return cls(**kwargs)

    def mode(self, name: Any) -> TransitionConfig:
        """Per-mode settings for a TransitionMode or its string value."""
        key = str(getattr(name, "value", name)).lower()
        if key not in ("smooth", "hardcut", "recall"):
            raise ConfigError("transition.mode", f"{key!r} is not one of smooth, hardcut, recall")
        return getattr(self, key)

    @property
    def needs_recall_frames(self) -> bool:
        return any(self.mode(m).use_old_memory and self.mode(m).old_memory_source == "compress"
                   for m in ("smooth", "hardcut", "recall"))

    @property
    def needs_select_frames(self) -> bool:
        uses = any(self.mode(m).use_old_memory and self.mode(m).old_memory_source == "select"
                   for m in ("smooth", "hardcut", "recall"))
        return uses or any(self.mode(m).decay.target == "old_recent" for m in ("smooth", "hardcut", "recall"))


@dataclass(frozen=True)
class BaselineConfig(_Serial):
    """A baseline cache (echo_core.run.make_policy): "rolling" (Self-Forcing's sink + window), "flush" or "full",
    and how it stores K/V. The bare policy name means the same with kv_dtype "model"."""

    policy: str = "rolling"
    kv_dtype: str = "model"

    def __post_init__(self) -> None:
        _choice("policy", self.policy, ("rolling", "flush", "full"))
        check_kv_dtype(self.kv_dtype, "kv_dtype")


def _with_prefix(prefix: str, build):
    try:
        return build()
    except ConfigError as e:
        path = e.field
        tail = path.split(".", 1)[1] if "." in path else path
        if path.startswith(prefix + "."):
            raise
        raise e.relabel(f"{prefix}.{tail}") from None
