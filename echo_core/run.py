"""THE entry into a run: a policy (or policy factory) plus the run's inputs -> a stream of chunks and a report.

Every caller comes in through `start_run`: the ComfyUI sampler node, the CLI, the toy demo and evaluation, the
benchmarks and the tests. It builds the recall router (`build_router`) and the cache policy (`make_policy`), runs
the sampler and keeps the per-chunk reports; all run state lives in the returned `Run` and is released when the
stream ends, fails or is closed (an interrupt). It is also a library to check other implementations against: it
takes an `EchoConfig` directly, an optional noise source (replay another implementation's draws), a per-step
callback that receives each step's x0, and a total length for timelines whose scenes lack durations.
Before anything is allocated `start_run` checks the run (echo_core.preflight: length, manual recalls, memory need
from echo_core.budget against the device's free memory); the report carries that budget beside the peaks.
Saved scenes (echo_core.scene_library) come in `RunInputs.saved_scenes`: checked against the model and the grid
before anything runs, pre-loaded into the scene pool; a finished run's scenes come out of `Run.saved_scenes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, Union

import torch
from torch import nn

from echo_core.cache.base import CachePolicy
from echo_core.config import BaselineConfig, EchoConfig, HierarchicalMemoryConfig, RoutingConfig
from echo_core.errors import SpecError, quote
from echo_core.model.adapter import ModuleModel, wan_config_of
from echo_core.routing import RecallRouter
from echo_core.sampler import (
    CausalModel,
    ChunkResult,
    LayerHook,
    NoiseSource,
    SamplerConfig,
    ScenePlan,
    StepHook,
    X0Hook,
    generate,
)
from echo_core.timeline import Timeline, TransitionMode

if TYPE_CHECKING:
    from echo_core.scene_library import SavedScene
    from echo_core.steer_control import Steering, TimelineUpdate

POLICY_NAMES = ("echo", "rolling", "full", "flush")
ROLLING_SINK_FRAMES = 1  # Self-Forcing's rolling window as the official code configures it (sink_size 1, §2.7)
ROLLING_WINDOW_FRAMES = 21

# Features for similarity routing: one embedding per scene, or a function from prompts to embeddings.
RoutingFeatures = Union[Sequence[torch.Tensor], Callable[[Sequence[str]], Sequence[torch.Tensor]], None]


@dataclass(frozen=True)
class PolicyContext:
    """What a policy factory may use to build the cache for one run."""

    num_layers: int
    timeline: Timeline
    frames_per_chunk: int
    routing_features: RoutingFeatures = None
    saved_scenes: tuple["SavedScene", ...] = ()  # pre-loaded into the pool: their prompts join the router's

    def router(self, routing: RoutingConfig) -> RecallRouter | None:
        return build_router(self.timeline, routing, self.routing_features, self.saved_scenes)


PolicyFactory = Callable[[PolicyContext], CachePolicy]
PolicyLike = Union[str, EchoConfig, BaselineConfig, CachePolicy, PolicyFactory]


@dataclass(frozen=True, eq=False)
class RunInputs:
    """Everything a run reads besides the model and the policy. `timeline` is already scheduled in chunks for
    the model's frames per chunk (one parse and one schedule per run)."""

    timeline: Timeline
    contexts: tuple[torch.Tensor, ...]  # one text embedding per scene, [L, D] or [1, L, D]
    latent_shape: tuple[int, int, int]  # (C, H, W) of one latent frame
    seed: int = 0
    sampler: SamplerConfig = SamplerConfig()
    patch: tuple[int, int] = (2, 2)
    routing_features: RoutingFeatures = None
    start_latents: torch.Tensor | None = None  # [B, C, F0, H, W] written into the cache first
    device: torch.device | str = "cpu"
    spatial_compression: int = 8  # pixels per latent cell (for the messages of the memory check)
    max_chunks: int | None = None  # None: preflight.max_chunks() ($ECHO_FORCING_MAX_CHUNKS or 20,000)
    saved_scenes: tuple["SavedScene", ...] = ()  # scene library scenes for `@name` and routing (scene_library)
    steering: "Steering | None" = None  # edits to the future timeline between chunks (echo_core.steer_control)

    def __post_init__(self) -> None:
        from echo_core.preflight import finite

        c, h, w = self.latent_shape
        if h < 1 or w < 1 or c < 1:
            wpx, hpx = w * self.spatial_compression, h * self.spatial_compression
            raise SpecError("width" if w < 1 else "height", f"the video is {wpx}x{hpx} pixels; width and height "
                                                            "must be positive")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise SpecError("seed", f"must be a whole number from 0 to 2**64 - 1, got {quote(self.seed)}")
        for i, ctx in enumerate(self.contexts):
            if not finite(ctx):
                raise SpecError("timeline", f"the text embedding of scene {i + 1} holds NaN or infinite values; "
                                            "re-encode the prompt (a broken text encoder or embeddings file)")
        if self.start_latents is not None and not finite(self.start_latents):
            raise SpecError("start_latent", "the start latent holds NaN or infinite values; encode the frames again")
        if len(self.contexts) != len(self.timeline.scenes):
            raise SpecError("timeline", f"{len(self.contexts)} text embeddings for {len(self.timeline.scenes)} "
                                        "scenes; encode every scene's prompt")
        if self.sampler.frames_per_chunk != self.timeline.frames_per_chunk:
            raise SpecError("frames_per_chunk", f"the sampler makes {self.sampler.frames_per_chunk} frames per chunk "
                                                f"but the timeline was scheduled for {self.timeline.frames_per_chunk}")
        names = [s.name for s in self.saved_scenes]
        if len(set(names)) != len(names):
            raise SpecError("scene_library", f"saved scene names must differ, got {names}")
        if self.timeline.opening is not None and self.start_latents is not None:
            raise SpecError("start_latents", "the timeline opens with a recall of a saved scene ([@name]); it cannot "
                                             "also continue start latents")


def build_router(timeline: Timeline, routing: RoutingConfig, features: RoutingFeatures = None,
                 saved: Sequence["SavedScene"] = ()) -> RecallRouter | None:
    """The recall router of a run (spec §7). Similarity routing needs `features`: the scenes' embeddings (pooled
    per scene) or a function that encodes prompts (the official route re-encodes them without common words).
    Returns None when similarity routing has no features and no transition recalls.

    Saved scenes' prompts follow the timeline's (router index = timeline scenes + position): with a function or
    IDF, they are filtered / weighted together with the timeline's prompts, exactly as if they were scenes of this
    video; with precomputed embeddings, each saved scene brings the feature stored in its file."""
    recalls = timeline.opening is not None or any(t.mode is TransitionMode.RECALL for t in timeline.transitions)
    if routing.method == "similarity" and features is None:
        if recalls:
            raise SpecError("routing", "similarity routing needs the prompts' embeddings (connect the text encoder "
                                       "that made the timeline) or choose idf routing")
        return None
    if routing.method == "similarity" and not callable(features):
        embeddings = [c[0] if c.ndim == 3 else c for c in features]  # type: ignore[union-attr]
        if len(embeddings) != len(timeline.scenes):
            if recalls:
                raise SpecError("routing", f"{len(embeddings)} routing embeddings for {len(timeline.scenes)} scenes")
            return None
        for scene in saved:
            feature = scene.routing_feature
            if feature is None or feature.shape[-1] != embeddings[0].shape[-1]:
                what = "no routing embedding" if feature is None else \
                    f"a {feature.shape[-1]}-wide routing embedding, this run's are {embeddings[0].shape[-1]}-wide"
                raise SpecError("routing", f"saved scene {scene.name!r} has {what}; choose idf routing or give the "
                                           "run a text encoder function")
            embeddings.append(feature[None])

        def encode(texts: Sequence[str]) -> list[torch.Tensor]:  # this timeline's scenes, in order
            return embeddings

        features = encode
    prompts = [s.prompt for s in timeline.scenes] + [s.prompt for s in saved]
    return RecallRouter(prompts, method=routing.method, encode=features, threshold=routing.threshold)


def echo_config_for(frames_per_chunk: int, routing: RoutingConfig | None = None) -> EchoConfig:
    """Official Echo-Forcing settings for a model with `frames_per_chunk` frames per chunk."""
    memory = HierarchicalMemoryConfig.for_frames_per_chunk(frames_per_chunk)
    return EchoConfig(memory=memory, routing=routing or RoutingConfig())


def make_policy(policy: PolicyLike, ctx: PolicyContext) -> CachePolicy:
    """A cache for one run: by name, from an EchoConfig, an instance as is, or from a factory."""
    if isinstance(policy, CachePolicy):
        return policy
    if isinstance(policy, str):
        if policy == "echo":
            policy = echo_config_for(ctx.frames_per_chunk)
        elif policy in POLICY_NAMES:
            policy = BaselineConfig(policy)
        else:
            raise SpecError("memory", f"unknown memory policy {policy!r}; choose one of {', '.join(POLICY_NAMES)}")
    if isinstance(policy, BaselineConfig):
        return _baseline(policy, ctx.num_layers)
    if isinstance(policy, EchoConfig):
        from echo_core.cache.echo.policy import EchoCache

        if policy.memory.frames_per_chunk != ctx.frames_per_chunk:
            raise SpecError("memory.frames_per_chunk", f"the memory layout is for {policy.memory.frames_per_chunk} "
                                                       f"frames per chunk, the model makes {ctx.frames_per_chunk}")
        check_echo_kv_dtype(policy.kv_dtype)
        return EchoCache(ctx.num_layers, policy, router=ctx.router(policy.routing))
    if callable(policy):
        made = policy(ctx)
        if not isinstance(made, CachePolicy):
            raise TypeError(f"a policy factory must return a CachePolicy, got {type(made).__name__}")
        return made
    raise TypeError(f"policy must be a name, an EchoConfig, a CachePolicy or a factory, got {type(policy).__name__}")


def check_echo_kv_dtype(kv_dtype: str) -> None:
    """The echo cache declares the storage it implements (`EchoCache.kv_dtypes`; "model" when it declares none)."""
    from echo_core.cache.echo.policy import EchoCache

    supported = tuple(getattr(EchoCache, "kv_dtypes", ("model",)))
    if kv_dtype not in supported:
        raise SpecError("kv_dtype", f"the echo cache stores K/V only as {', '.join(supported)} in this version, not "
                                    f"{kv_dtype!r}; set kv_dtype to 'model' or use the rolling policy")


def _baseline(config: BaselineConfig, num_layers: int) -> CachePolicy:
    from echo_core.cache.flush import FlushCache
    from echo_core.cache.rolling import RollingCache, full_cache

    if config.policy == "full":
        return full_cache(num_layers, kv_dtype=config.kv_dtype)
    kind = RollingCache if config.policy == "rolling" else FlushCache
    return kind(num_layers, window_frames=ROLLING_WINDOW_FRAMES, sink_frames=ROLLING_SINK_FRAMES,
                kv_dtype=config.kv_dtype)


def kv_dtype_of_policy(policy: PolicyLike, cache: CachePolicy | None = None) -> str:
    """The run's K/V storage setting ("model" unless a config or the cache says otherwise)."""
    if isinstance(policy, (EchoConfig, BaselineConfig)):
        return policy.kv_dtype
    return str(getattr(cache, "kv_dtype", None) or getattr(getattr(cache, "config", None), "kv_dtype", "model"))


def policy_name(cache: CachePolicy) -> str:
    """The report's name of a policy instance (a factory's or a caller's own cache)."""
    names = {"EchoCache": "echo", "RollingCache": "rolling", "FlushCache": "flush"}
    return names.get(type(cache).__name__, type(cache).__name__)


def as_causal_model(model: Any) -> CausalModel:
    """The sampler's model protocol over our CausalWanModel, any Wan-named module tree or an adapter as is."""
    if hasattr(model, "forward_chunk") and hasattr(model, "encode_text"):
        return model
    if isinstance(model, nn.Module):
        return ModuleModel(model, wan_config_of(model))
    raise TypeError(f"model must be a causal Wan model or a Wan2.1 module tree, got {type(model).__name__}")


def num_layers_of(model: Any) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"{type(model).__name__} has no WanConfig `cfg`; wrap it with as_causal_model")
    return int(cfg.num_layers)


class Run:
    """One generation: iterate for each finished chunk (`ChunkResult`); `report()` summarises the run so far.
    Closing (or finishing) the stream releases the cache; a Run is not restartable."""

    def __init__(self, model: Any, policy: PolicyLike, inputs: RunInputs, *, noise: NoiseSource | None = None,
                 on_step: StepHook | None = None, on_x0: X0Hook | None = None,
                 on_layer: LayerHook | None = None) -> None:
        self.model = as_causal_model(model)
        self.inputs = inputs
        saved = inputs.saved_scenes
        if saved:  # refused before anything is built: a run never starts half-configured
            from echo_core.scene_library import check_saved_scenes

            check_saved_scenes(self.model, saved, frames_per_chunk=inputs.timeline.frames_per_chunk,
                               latent_shape=inputs.latent_shape, patch=inputs.patch)
        ctx = PolicyContext(num_layers_of(self.model), inputs.timeline, inputs.timeline.frames_per_chunk,
                            inputs.routing_features, saved)
        self.cache = make_policy(policy, ctx)
        if saved or inputs.timeline.opening is not None or inputs.timeline.recall_names():
            from echo_core.scene_library import preload_saved_scenes

            preload_saved_scenes(self.cache, saved, inputs.timeline)
        self.policy = policy if isinstance(policy, str) else policy_name(self.cache)  # "echo" for an EchoConfig
        self.kv_dtype = kv_dtype_of_policy(policy, self.cache)
        self.reports: list[dict[str, Any]] = []
        self.need: Any = None  # preflight.MemoryNeed, set by start_run
        self.timeline = inputs.timeline  # as it now stands (steering amends the future)
        self._routing_features = inputs.routing_features
        if inputs.steering is not None:
            inputs.steering.bind(inputs.timeline, inputs.contexts, self._check_amended)
        self._finished_pool: list[Any] | None = None
        self._stream = self._generate(noise, on_step, on_x0, on_layer)

    def _generate(self, noise: NoiseSource | None, on_step: StepHook | None, on_x0: X0Hook | None,
                  on_layer: LayerHook | None) -> Iterator[ChunkResult]:
        i = self.inputs
        contexts = [c.to(i.device) for c in i.contexts]
        plan_at = None if i.steering is None else self._at_boundary
        try:
            with torch.no_grad():
                for result in generate(self.model, self.cache, contexts, ScenePlan.from_timeline(i.timeline),
                                       latent_shape=i.latent_shape, seed=i.seed, config=i.sampler, patch=i.patch,
                                       start_latents=i.start_latents, device=i.device, on_step=on_step,
                                       on_x0=on_x0, noise=noise, on_layer=on_layer, plan_at=plan_at):
                    if not bool(torch.isfinite(result.latents).all()):
                        raise SpecError("model", f"the model produced NaN or infinite values in chunk "
                                                 f"{result.index + 1}; its weights may be corrupted, or the dtype "
                                                 "too narrow for them (try bf16 or fp32)")
                    self.reports.append(result.report)
                    if i.steering is not None:
                        i.steering.chunk_done(result.index)
                    yield result
        finally:
            from echo_core.scene_library import pool_snapshot

            self._finished_pool = pool_snapshot(self.cache)  # the run's scenes outlive the cache (saved_scenes)
            self.cache.release()
            if i.steering is not None:
                i.steering.finish()

    # ------------------------------------------------------------------------------------------ steering
    def _check_amended(self, timeline: Timeline) -> None:
        """Refuse an amended timeline this run cannot follow (called by the steering when an edit arrives)."""
        from echo_core import preflight as pf

        pf.check_chunks(timeline.total_chunks, timeline.frames_per_chunk, self.inputs.max_chunks, fps=timeline.fps)
        config = getattr(self.cache, "config", None)
        if isinstance(config, EchoConfig):
            pf.check_recalls(timeline, config)
            self._router_for(timeline, config)

    def _router_for(self, timeline: Timeline, config: EchoConfig) -> RecallRouter | None:
        steering = self.inputs.steering
        features = (steering.routing_encoder() if steering is not None else None) or self._routing_features
        if features is not None and not callable(features) and len(features) != len(timeline.scenes):
            features = None  # per-scene embeddings of the old scenes: the new ones have none
        return build_router(timeline, config.routing, features, self.inputs.saved_scenes)

    def _at_boundary(self, chunk: int) -> "tuple[ScenePlan, list[torch.Tensor]] | None":
        update: TimelineUpdate | None = self.inputs.steering.at_boundary(chunk)  # type: ignore[union-attr]
        if update is None:
            return None
        self.timeline = update.timeline
        config = getattr(self.cache, "config", None)
        if isinstance(config, EchoConfig) and hasattr(self.cache, "router"):
            self.cache.router = self._router_for(update.timeline, config)  # the pool sees the new prompts
        return ScenePlan.from_timeline(update.timeline), [c.to(self.inputs.device) for c in update.contexts]

    def __iter__(self) -> Iterator[ChunkResult]:
        return self._stream

    def __next__(self) -> ChunkResult:
        return next(self._stream)

    def close(self) -> None:
        self._stream.close()

    def report(self) -> dict[str, Any]:
        report = memory_report(self.reports, self.timeline, self.policy, self.need)
        if self.inputs.steering is not None:
            report.update(self.inputs.steering.report())
        return report

    def finished_pool(self) -> list[Any]:
        """The run's own scenes left in its pool (echo_core.cache.echo.recall.PoolEntry), once the stream ended."""
        if self._finished_pool is None:
            raise RuntimeError("the run is still going: iterate it to the end (or close it) before exporting scenes")
        return self._finished_pool

    def saved_scenes(self, names: dict[int, str] | None = None) -> list["SavedScene"]:
        """The finished scenes as saved scenes (scene_library.save_scene writes them); `names`: 0-based scene
        index -> name, choosing which (default all, named 'scene-N')."""
        from echo_core.scene_library import export_run_scenes

        return export_run_scenes(self, names)

    def collect(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """Run to the end: latents [B, C, F, H, W] on the CPU (start latents included) and the report."""
        start = self.inputs.start_latents
        chunks = [] if start is None else [start.float().cpu()]
        try:
            chunks += [r.latents.cpu() for r in self]
        finally:
            self.close()
        return torch.cat(chunks, dim=2), self.report()


def start_run(model: Any, policy: PolicyLike, inputs: RunInputs, *, noise: NoiseSource | None = None,
              on_step: StepHook | None = None, on_x0: X0Hook | None = None,
              on_layer: LayerHook | None = None, check_memory: bool = True) -> Run:
    """Open a run; nothing is generated until the returned Run is iterated. Before anything is allocated the run
    is checked (echo_core.preflight): its length against the chunk limit and, unless `check_memory` is False,
    its memory need against the device's free memory; both raise SpecError naming the setting to change.
    on_layer(chunk, step, layer) is called before every layer of every model call (interrupts answer there)."""
    run = Run(model, policy, inputs, noise=noise, on_step=on_step, on_x0=on_x0, on_layer=on_layer)
    run.need = preflight(run.model, policy, run.cache, inputs, check_memory=check_memory)
    return run


def preflight(model: Any, policy: PolicyLike, cache: CachePolicy, inputs: RunInputs, *,
              check_memory: bool = True) -> Any:
    """The run's checks before its first chunk (chunk limit, memory); returns the memory need or None."""
    from echo_core import preflight as pf

    tl = inputs.timeline
    pf.check_chunks(tl.total_chunks, tl.frames_per_chunk, inputs.max_chunks, fps=tl.fps)
    pf.check_kv_dtype(kv_dtype_of_policy(policy, cache), inputs.device)
    spec = _budget_policy(policy, cache)
    if isinstance(spec, EchoConfig):
        pf.check_recalls(tl, spec)
    cfg = getattr(model, "cfg", None)
    if not check_memory or spec is None or cfg is None:
        return None
    prefill = 0 if inputs.start_latents is None else int(inputs.start_latents.shape[2])
    need = pf.memory_need(cfg, spec, latent_shape=inputs.latent_shape, frames_per_chunk=tl.frames_per_chunk,
                          total_frames=pf.total_latent_frames(tl.total_chunks, tl.frames_per_chunk, prefill),
                          scenes=len(tl.scenes), device=inputs.device, kv_dtype=pf.kv_dtype_of(model),
                          guidance=inputs.sampler.guidance != 1)
    width, height = pf.pixel_size(inputs.latent_shape, inputs.spatial_compression)
    pf.check_memory(need, width=width, height=height)
    return need


def _budget_policy(policy: PolicyLike, cache: CachePolicy) -> str | EchoConfig | BaselineConfig | None:
    """What the budget formula takes for this run's policy (None for a caller's own policy class)."""
    if isinstance(policy, (str, EchoConfig, BaselineConfig)):
        return policy
    config = getattr(cache, "config", None)
    if isinstance(config, EchoConfig):
        return config
    name = policy_name(cache)
    if name in ("rolling", "flush") and getattr(cache, "window_frames", None) == ROLLING_WINDOW_FRAMES:
        return BaselineConfig(name, kv_dtype_of_policy(policy, cache))
    return None


# ----------------------------------------------------------------------------------------------- report
def memory_report(reports: Sequence[dict[str, Any]], timeline: Timeline, policy: str,
                  need: Any = None) -> dict[str, Any]:
    """JSON-able summary of a run: per scene (transition, recall source, RoPE jump), peaks and timing, plus the
    per-chunk reports. Memory: `peak_gpu_bytes` is the most the policy held on the compute device (the CPU in a
    CPU run; for Echo its device storage, the model's rotated context and the staging buffers), `peak_host_bytes`
    the peak on the host (the scene pool and an offloading policy's host storage); `budget` is what the formula
    predicted (echo_core.budget) and the free memory the run was checked against (`need`: preflight.MemoryNeed)."""
    peak = max((r.get("cache_bytes", 0) for r in reports), default=0)
    pool_peak = max((r.get("pool_bytes", 0) for r in reports), default=0)
    # an offloading policy (Echo on CUDA) reports its bytes by place: device (storage, rotated context, staging)
    gpu_peak = max((r.get("gpu_bytes", r.get("cache_bytes", 0)) for r in reports), default=0)
    host_peak = max((r.get("pool_bytes", 0) + r.get("host_bytes", 0) for r in reports), default=0)
    wall = math.fsum(r.get("wall_s", 0.0) for r in reports)
    scenes = []
    for scene in timeline.scenes:
        entry: dict[str, Any] = {"prompt": scene.prompt, "chunks": scene.num_chunks, "start_chunk": scene.start_chunk}
        opening = next((r for r in reports if r.get("chunk") == scene.start_chunk), None)
        switch = (opening or {}).get("transition")
        t = timeline.transitions[scene.index - 1] if scene.index > 0 else timeline.opening
        if t is not None:
            entry["transition"] = t.mode.value
            if isinstance(switch, dict):
                entry["memory"] = switch.get("memory")
                entry["rope_jump"] = switch.get("rope_jump")
                routing = switch.get("routing")
                if isinstance(routing, dict) and routing.get("name") is not None:
                    entry["recall_saved_scene"] = routing["name"]  # a scene of the library
                elif isinstance(routing, dict) and routing.get("scene") is not None:
                    entry["recall_source"] = int(routing["scene"]) + 1  # 1-based, as users number scenes
        scenes.append(entry)
    return {
        "policy": policy,
        "chunks": len(reports),
        "frames_per_chunk": timeline.frames_per_chunk,
        "latent_frames": len(reports) * timeline.frames_per_chunk,
        "scenes": scenes,
        "peak_cache_mb": round(peak / 2**20, 3),
        "peak_cache_tokens": max((r.get("cache_tokens", 0) for r in reports), default=0),
        "peak_pool_mb": round(pool_peak / 2**20, 3),
        "peak_gpu_bytes": int(gpu_peak),
        "peak_host_bytes": int(host_peak),
        "budget": None if need is None else {**need.budget.to_dict(), **need.to_dict()},
        "wall_s": round(wall, 3),
        "s_per_chunk": round(wall / len(reports), 4) if reports else 0.0,
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
