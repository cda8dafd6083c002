"""One generation run, assembled from immutable specs: what the ComfyUI nodes (and any other front end) hand over.

The specs are frozen and hold no run state, so a host may cache and share them between runs. Everything
mutable - the KV cache, the scene pool, the recall router's features, text K/V - is created inside
`run_session` and released when its generator finishes, fails or is closed (an interrupt).

`ModuleModel` runs the causal forward over any module tree with Wan2.1's submodule names and hyper-parameter
attributes (our `CausalWanModel`, the original Wan `WanModel`, ComfyUI's `WanModel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from echo_core.config import (
    DecayConfig,
    EchoConfig,
    HierarchicalMemoryConfig,
    RecallFrameConfig,
    RopeJumpConfig,
    RoutingConfig,
)
from echo_core.model.config import WanConfig
from echo_core.model.wan import TextState, causal_forward, encode_text
from echo_core.policies import make_cache
from echo_core.routing import filter_common_tokens
from echo_core.sampler import ChunkResult, SamplerConfig, ScenePlan, generate
from echo_core.timeline import Timeline, TimelineError, TransitionMode, parse_timeline

TRANSITION_MODES = ("smooth", "hardcut", "recall")
POLICIES = ("echo", "rolling", "full")


class SpecError(ValueError):
    """A user-facing setting that cannot work; `field` names the input to fix."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


# --------------------------------------------------------------------------------------------- model
class ModuleModel:
    """Adapts a Wan-named module tree to the sampler's CausalModel protocol."""

    def __init__(self, module: nn.Module, cfg: WanConfig):
        self.module, self.cfg = module, cfg

    def encode_text(self, context: torch.Tensor) -> TextState:
        return encode_text(self.module, self.cfg, context)

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, text: TextState, cache: Any) -> torch.Tensor:
        return causal_forward(self.module, self.cfg, x, t, text, cache)


def wan_config_of(module: nn.Module) -> WanConfig:
    """WanConfig of a module exposing Wan's hyper-parameters as attributes (`cfg`, or dim/num_heads/... directly)."""
    cfg = getattr(module, "cfg", None)
    if isinstance(cfg, WanConfig):
        return cfg
    names = ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim", "text_len",
             "eps", "qk_norm", "cross_attn_norm")
    missing = [n for n in names + ("patch_size",) if not hasattr(module, n)]
    if missing:
        raise SpecError("model", f"{type(module).__name__} is not a Wan2.1 DiT (no {', '.join(missing)})")
    values = {n: getattr(module, n) for n in names}
    values["patch_size"] = tuple(int(p) for p in module.patch_size)
    if values["in_dim"] != values["out_dim"]:
        raise SpecError("model", f"a text-to-video Wan2.1 DiT is needed; this one takes {values['in_dim']} input "
                                 f"channels for {values['out_dim']} output channels (image-to-video or control model)")
    return WanConfig(**values)


# --------------------------------------------------------------------------------------------- timeline
@dataclass(frozen=True, eq=False)
class TimelineSpec:
    """A timeline text with one text embedding per scene. Parsed again per run because chunk counts depend on the
    model's frames per chunk; `validate` parses once with 3 frames per chunk to report errors early."""

    text: str
    fps: float = 16.0
    default_mode: str = "smooth"
    contexts: tuple[torch.Tensor, ...] = ()  # per scene, [1, L, text_dim]
    routing_contexts: tuple[torch.Tensor, ...] = ()  # per scene, prompt with common words removed (similarity)
    routing: RoutingConfig = field(default_factory=RoutingConfig)

    def parse(self, frames_per_chunk: int = 3) -> Timeline:
        try:
            return parse_timeline(self.text, fps=self.fps, frames_per_chunk=frames_per_chunk,
                                  default_mode=self.default_mode)
        except TimelineError as e:
            name = "fps" if e.field == "fps" else "timeline"
            raise SpecError(name, str(e)) from None

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(s.prompt for s in self.parse().scenes)

    def with_routing(self, routing: RoutingConfig) -> "TimelineSpec":
        return replace(self, routing=routing)


def encode_timeline(text: str, fps: float, default_mode: str,
                    encode: Callable[[Sequence[str]], Sequence[torch.Tensor]],
                    encode_routing: Callable[[Sequence[str]], Sequence[torch.Tensor]] | None = None) -> TimelineSpec:
    """Parse `text` (errors name the scene) and encode each scene's prompt, plus the routing prompts when some
    transition may recall (similarity routing compares prompts without the words most scenes share; those are
    not prompts a strict encoder must accept, hence the separate `encode_routing`)."""
    if default_mode not in TRANSITION_MODES:
        raise SpecError("default_transition", f"{default_mode!r} is not one of {', '.join(TRANSITION_MODES)}")
    spec = TimelineSpec(text, float(fps), default_mode)
    timeline = spec.parse()
    prompts = [s.prompt for s in timeline.scenes]
    contexts = tuple(_as_context(c, i) for i, c in enumerate(encode(prompts)))
    routing: tuple[torch.Tensor, ...] = ()
    if any(t.mode is TransitionMode.RECALL for t in timeline.transitions) or default_mode == "recall":
        routing = tuple(_as_context(c, i) for i, c in enumerate((encode_routing or encode)(
            filter_common_tokens(prompts))))
    return replace(spec, contexts=contexts, routing_contexts=routing)


def _as_context(c: torch.Tensor, i: int) -> torch.Tensor:
    c = c[None] if c.ndim == 2 else c
    if c.ndim != 3 or c.shape[0] != 1:
        raise SpecError("clip", f"scene {i + 1}: the text encoder gave shape {tuple(c.shape)}, expected [1, L, D]")
    return c.detach()


def recall_routing(method: str, scene: int | None, threshold: float, num_scenes: int) -> RoutingConfig:
    """Routing for every recall transition without an inline '@N': `scene` (1-based) by hand, or automatic."""
    if method not in ("similarity", "idf"):
        raise SpecError("routing", f"{method!r} is not one of similarity, idf")
    ids: tuple[int, ...] = ()
    if scene is not None:
        if not 1 <= scene <= num_scenes:
            raise SpecError("scene", f"scene {scene} does not exist; the timeline has scenes 1 to {num_scenes}")
        ids = tuple([scene] * num_scenes)
    return RoutingConfig(method=method, manual_recall_scene_ids=ids, threshold=threshold if threshold > 0 else None)


# --------------------------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemorySpec:
    """Scene-memory settings in the node's terms; `echo_config` maps them onto EchoConfig for a frames-per-chunk."""

    policy: str = "echo"
    anchor_frames: int = 12
    compressed_frames: int = 3
    recent_frames: int = 3
    pool_max_size: int = 64
    recall_frame_mode: str = "score_weighted"
    rope_position_mode: str = "local"
    keep_origin_positions: bool = False
    hardcut_rope_jump: int = 45
    recall_rope_jump_max: int = 6
    decay: tuple[tuple[str, DecayConfig], ...] = ()  # per transition mode, overriding the official defaults

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SpecError("policy", f"{self.policy!r} is not one of {', '.join(POLICIES)}")
        for mode, _ in self.decay:
            if mode not in TRANSITION_MODES:
                raise SpecError("transition", f"{mode!r} is not one of {', '.join(TRANSITION_MODES)}")

    def window_frames(self, frames_per_chunk: int) -> int:
        return self.anchor_frames + self.compressed_frames + self.recent_frames + frames_per_chunk

    def echo_config(self, frames_per_chunk: int, routing: RoutingConfig = RoutingConfig()) -> EchoConfig:
        base = EchoConfig()
        memory = HierarchicalMemoryConfig(
            window_frames=self.window_frames(frames_per_chunk), frames_per_chunk=frames_per_chunk,
            anchor_frames=self.anchor_frames, compressed_frames=self.compressed_frames,
            recent_frames=self.recent_frames, rolling_cycle=max(1, 12 // frames_per_chunk),
            rope_position_mode=self.rope_position_mode,
            compressed_keep_origin_positions=self.keep_origin_positions)
        recall_frames = RecallFrameConfig(mode=self.recall_frame_mode, pool_max_size=self.pool_max_size)
        modes = {m: base.mode(m) for m in TRANSITION_MODES}
        modes["hardcut"] = replace(modes["hardcut"], rope_jump=RopeJumpConfig("fixed", self.hardcut_rope_jump))
        modes["recall"] = replace(modes["recall"], rope_jump=replace(modes["recall"].rope_jump,
                                                                     max_value=self.recall_rope_jump_max))
        for mode, decay in self.decay:
            modes[mode] = replace(modes[mode], decay=decay)
        return EchoConfig(memory=memory, recall_frames=recall_frames, routing=routing, **modes)

    def budget(self, cfg: WanConfig, height: int, width: int, frames_per_chunk: int = 3,
               bytes_per_value: int = 2) -> dict[str, Any]:
        """K/V held while a chunk is generated: window frames x tokens per frame x layers x (K and V)."""
        tokens_per_frame = cfg.tokens_per_frame(height // 8, width // 8)
        if self.policy == "echo":
            frames: int | None = self.window_frames(frames_per_chunk)
        elif self.policy == "rolling":
            frames = 21
        else:
            frames = None  # grows with the video
        per_frame = 2 * cfg.num_layers * tokens_per_frame * cfg.dim * bytes_per_value
        out: dict[str, Any] = {"policy": self.policy, "tokens_per_frame": tokens_per_frame,
                               "mb_per_frame": round(per_frame / 2**20, 2)}
        if frames is not None:
            out.update(window_frames=frames, cache_tokens=frames * tokens_per_frame,
                       cache_mb=round(frames * per_frame / 2**20, 1))
        if self.policy == "echo":  # one fused recall frame per finished scene, at most pool_max_size scenes
            out["pool_mb_per_scene"] = round(per_frame / 2**20, 2)
            out["pool_max_scenes"] = self.pool_max_size
        return out


def with_decay(spec: "DecaySpec | None", mode: str, decay: DecayConfig) -> "DecaySpec":
    """A new decay table with `mode` set (earlier settings for the other modes kept)."""
    if mode not in TRANSITION_MODES:
        raise SpecError("transition", f"{mode!r} is not one of {', '.join(TRANSITION_MODES)}")
    entries = dict(spec.entries if spec is not None else ())
    entries[mode] = decay
    return DecaySpec(tuple(sorted(entries.items())))


@dataclass(frozen=True)
class DecaySpec:
    entries: tuple[tuple[str, DecayConfig], ...] = ()


# --------------------------------------------------------------------------------------------- run
def sampler_config(steps: int, frames_per_chunk: int, shift: float = 5.0,
                   base: SamplerConfig | None = None) -> SamplerConfig:
    """`steps` evenly spaced timesteps from 1000 down (4 -> 1000, 750, 500, 250: Self-Forcing's schedule).
    base: the sampler a model was made for (its re-noise kind and warp are kept; the step count is replaced)."""
    if steps < 1:
        raise SpecError("steps", f"must be >= 1, got {steps}")
    ts = tuple(1000.0 * (steps - i) / steps for i in range(steps))
    if base is not None:
        return replace(base, denoising_steps=ts, frames_per_chunk=frames_per_chunk)
    return SamplerConfig(denoising_steps=ts, shift=shift, frames_per_chunk=frames_per_chunk)


@dataclass(frozen=True)
class RunPlan:
    timeline: Timeline
    latent_shape: tuple[int, int, int]
    frames_per_chunk: int

    @property
    def total_chunks(self) -> int:
        return self.timeline.total_chunks


def plan_run(timeline: TimelineSpec, cfg: WanConfig, frames_per_chunk: int, height: int, width: int,
             spatial_compression: int = 8) -> RunPlan:
    step = spatial_compression * cfg.patch_size[1]
    if height % step or width % step:
        raise SpecError("width" if width % step else "height",
                        f"width and height must be multiples of {step}, got {width}x{height}")
    if len(timeline.contexts) != len(timeline.parse().scenes):
        raise SpecError("timeline", "the timeline has no text embeddings for its scenes; connect a text encoder")
    parsed = timeline.parse(frames_per_chunk)
    return RunPlan(parsed, (cfg.in_dim, height // spatial_compression, width // spatial_compression),
                   frames_per_chunk)


def run_session(model: Any, cfg: WanConfig, timeline: TimelineSpec, memory: MemorySpec | None, plan: RunPlan, *,
                seed: int, sampler: SamplerConfig, start_latents: torch.Tensor | None = None,
                device: torch.device | str = "cpu",
                on_step: Callable[[int, int], None] | None = None) -> Iterator[ChunkResult]:
    """Generate every chunk of `plan`; all run state lives in this generator and is released when it ends."""
    memory = memory or MemorySpec()
    fpc = plan.frames_per_chunk
    router = None
    if memory.policy == "echo":
        router = _router(plan.timeline, timeline)
        cache = make_cache("echo", cfg.num_layers, echo_config=memory.echo_config(fpc, timeline.routing),
                           router=router)
    elif memory.policy == "rolling":  # Self-Forcing's baseline as the core defines it (21-frame window, 3 sink)
        cache = make_cache("rolling", cfg.num_layers)
    else:
        cache = make_cache("full", cfg.num_layers)
    contexts = [c.to(device) for c in timeline.contexts]
    try:
        with torch.no_grad():
            yield from generate(model, cache, contexts, ScenePlan.from_timeline(plan.timeline),
                                latent_shape=plan.latent_shape, seed=seed, config=sampler,
                                patch=cfg.patch_size[1:], start_latents=start_latents, device=device,
                                on_step=on_step)
    finally:
        cache.release()
        del cache, router, contexts


def _router(parsed: Timeline, spec: TimelineSpec) -> Any:
    from echo_core.routing import RecallRouter

    routing = spec.routing
    if routing.method == "similarity" and not spec.routing_contexts:
        if any(t.mode is TransitionMode.RECALL for t in parsed.transitions):
            raise SpecError("routing", "similarity routing needs the prompts' embeddings; re-run the Prompt Timeline "
                                       "node or choose idf routing")
        return None
    routing_contexts = list(spec.routing_contexts)

    def encode(texts: Sequence[str]) -> list[torch.Tensor]:  # features for this timeline's scenes, in order
        return [c[0] for c in routing_contexts]

    return RecallRouter.from_timeline(parsed, method=routing.method, encode=encode, threshold=routing.threshold)


def memory_report(reports: Sequence[dict[str, Any]], plan: RunPlan, memory: MemorySpec | None) -> dict[str, Any]:
    """JSON-able summary of a run's cache use plus the per-chunk reports."""
    peak = max((r.get("cache_bytes", 0) for r in reports), default=0)
    return {
        "policy": (memory or MemorySpec()).policy,
        "chunks": len(reports),
        "frames_per_chunk": plan.frames_per_chunk,
        "latent_frames": len(reports) * plan.frames_per_chunk,
        "scenes": [{"prompt": s.prompt, "chunks": s.num_chunks} for s in plan.timeline.scenes],
        "peak_cache_mb": round(peak / 2**20, 3),
        "peak_cache_tokens": max((r.get("cache_tokens", 0) for r in reports), default=0),
        "wall_s": round(math.fsum(r.get("wall_s", 0.0) for r in reports), 3),
        "chunk_reports": [_jsonable(r) for r in reports],
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 64 else f"tensor{tuple(value.shape)}"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
