"""What the ComfyUI nodes (and any other front end) hand over to a run: immutable specs.

The specs are frozen and hold no run state, so a host may cache and share them between runs. A run is started
through `echo_core.run.start_run` (the one entry into a run): `plan_run` schedules the timeline once for the
model and `RunPlan.inputs` gives the run's inputs; `MemorySpec.policy_for` gives the policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from echo_core.cache.kv_quant import check_kv_dtype
from echo_core.config import (
    BaselineConfig,
    DecayConfig,
    EchoConfig,
    HierarchicalMemoryConfig,
    RecallFrameConfig,
    RopeJumpConfig,
    RoutingConfig,
)
from echo_core.errors import EchoError, SpecError, quote
from echo_core.model.adapter import ModuleModel, wan_config_of
from echo_core.model.config import WanConfig
from echo_core.routing import filter_common_tokens
from echo_core.run import RunInputs, check_echo_kv_dtype
from echo_core.sampler import SamplerConfig
from echo_core.timeline import OFFICIAL_TOTAL_LATENT_FRAMES, Timeline, TimelineError, TimelineScript, parse_script

__all__ = ["DecaySpec", "MemorySpec", "ModuleModel", "RunPlan", "SpecError", "TimelineSpec", "encode_timeline",
           "plan_run", "recall_routing", "sampler_config", "wan_config_of", "with_decay"]

TRANSITION_MODES = ("smooth", "hardcut", "recall")
POLICIES = ("echo", "rolling", "full")


# --------------------------------------------------------------------------------------------- timeline
@dataclass(frozen=True, eq=False)
class TimelineSpec:
    """A timeline text with one text embedding per scene. The text is parsed once, here (`script`, durations in
    seconds); a run schedules it in chunks once, for its model's frames per chunk (`schedule`)."""

    text: str
    fps: float = 16.0
    default_mode: str = "smooth"
    contexts: tuple[torch.Tensor, ...] = ()  # per scene, [1, L, text_dim]
    routing_contexts: tuple[torch.Tensor, ...] = ()  # per scene, prompt with common words removed (similarity)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    # Length of a timeline not every scene of which has a duration (official --num_output_frames, latent frames)
    total_latent_frames: int | None = OFFICIAL_TOTAL_LATENT_FRAMES
    script: TimelineScript | None = None  # filled in by __post_init__; kept by dataclasses.replace
    saved_scenes: tuple[Any, ...] = ()  # scene_library.SavedScene for `@name` / routing (Load Scene Memory)
    # The text encoder that made `contexts` (and the routing one): steering encodes new prompts with them.
    encode: Callable[[Sequence[str]], Sequence[torch.Tensor]] | None = None
    encode_routing: Callable[[Sequence[str]], Sequence[torch.Tensor]] | None = None
    node_id: str | None = None  # the Prompt Timeline node that made it (the front end writes steered text there)

    def __post_init__(self) -> None:
        if self.default_mode not in TRANSITION_MODES:
            raise SpecError("default_transition", f"{self.default_mode!r} is not one of {', '.join(TRANSITION_MODES)}")
        if self.script is None:
            try:
                object.__setattr__(self, "script", parse_script(self.text))
            except TimelineError as e:
                raise e.relabel("timeline") from None
        timeline = self.schedule(3)  # fps, durations and manual recalls checked now, not at the first chunk
        from echo_core.preflight import check_chunks

        check_chunks(timeline.total_chunks, 3, fps=self.fps)  # a day-long scene is refused here, at validation

    def schedule(self, frames_per_chunk: int = 3) -> Timeline:
        """The timeline in chunks for a model making `frames_per_chunk` latent frames per chunk."""
        try:
            return self.script.schedule(fps=self.fps, frames_per_chunk=frames_per_chunk,  # type: ignore[union-attr]
                                        default_mode=self.default_mode, total_latent_frames=self.total_latent_frames)
        except TimelineError as e:
            err = e.relabel("fps" if e.field == "fps" else "timeline")
            if "raise total_latent_frames" in err.detail:  # not a node input: say what the user can do instead
                detail = err.detail.replace(
                    "raise total_latent_frames", "give every scene a duration (scenes without one share "
                    f"{self.total_latent_frames} latent frames)")
                EchoError.__init__(err, err.field, detail)
            raise err from None

    parse = schedule  # the name the nodes use

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.script.prompts  # type: ignore[union-attr]

    def with_routing(self, routing: RoutingConfig) -> "TimelineSpec":
        return replace(self, routing=routing)

    def steering(self, **kwargs: Any) -> Any:
        """A Steering for a run of this timeline: new prompts encoded by the encoder that made it."""
        from echo_core.steer_control import Steering

        return Steering(encode=self.encode, encode_routing=self.encode_routing, text=self.text,
                        default_mode=self.default_mode, **kwargs)


def encode_timeline(text: str, fps: float, default_mode: str,
                    encode: Callable[[Sequence[str]], Sequence[torch.Tensor]],
                    encode_routing: Callable[[Sequence[str]], Sequence[torch.Tensor]] | None = None) -> TimelineSpec:
    """Parse `text` once (errors name the scene) and encode each scene's prompt, plus the routing prompts when some
    transition may recall (similarity routing compares prompts without the words most scenes share; those are
    not prompts a strict encoder must accept, hence the separate `encode_routing`)."""
    spec = TimelineSpec(text, float(fps), default_mode)
    prompts = list(spec.prompts)
    contexts = tuple(_as_context(c, i) for i, c in enumerate(encode(prompts)))
    routing: tuple[torch.Tensor, ...] = ()
    timeline = spec.schedule(3)
    if timeline.opening is not None or any(t.mode.value == "recall" for t in timeline.transitions):
        routing = tuple(_as_context(c, i) for i, c in enumerate((encode_routing or encode)(
            filter_common_tokens(prompts))))
    return replace(spec, contexts=contexts, routing_contexts=routing, encode=lambda ps: [
        _as_context(c, i) for i, c in enumerate(encode(list(ps)))], encode_routing=encode_routing or encode)


def _as_context(c: torch.Tensor, i: int) -> torch.Tensor:
    c = c[None] if c.ndim == 2 else c
    if c.ndim != 3 or c.shape[0] != 1:
        raise SpecError("clip", f"scene {i + 1}: the text encoder gave shape {tuple(c.shape)}, expected [1, L, D]")
    return c.detach()


def recall_routing(method: str, scene: int | None, threshold: float, num_scenes: int) -> RoutingConfig:
    """Routing for every recall transition without an inline '@N': `scene` (1-based) by hand, or automatic."""
    if method not in ("similarity", "idf"):
        raise SpecError("routing", f"{quote(method)} is not one of similarity, idf")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise SpecError("threshold", f"must be a number from 0 to 1 (0 = off), got {quote(threshold)}")
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
    kv_dtype: str = "model"  # K/V storage (echo_core.cache.kv_quant): "model" or "float8_e4m3fn"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise SpecError("policy", f"{self.policy!r} is not one of {', '.join(POLICIES)}")
        check_kv_dtype(self.kv_dtype, "kv_dtype")
        if self.policy == "echo":
            check_echo_kv_dtype(self.kv_dtype)
        for mode, _ in self.decay:
            if mode not in TRANSITION_MODES:
                raise SpecError("transition", f"{mode!r} is not one of {', '.join(TRANSITION_MODES)}")

    def policy_for(self, frames_per_chunk: int, routing: RoutingConfig = RoutingConfig()
                   ) -> str | EchoConfig | BaselineConfig:
        """What `echo_core.run.start_run` takes: the EchoConfig of these settings, or a baseline's name (its
        BaselineConfig when K/V are not stored in the model dtype)."""
        if self.policy == "echo":
            return self.echo_config(frames_per_chunk, routing)
        return self.policy if self.kv_dtype == "model" else BaselineConfig(self.policy, self.kv_dtype)

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
        return EchoConfig(memory=memory, recall_frames=recall_frames, routing=routing, kv_dtype=self.kv_dtype,
                          **modes)

    def budget(self, cfg: WanConfig, height: int, width: int, frames_per_chunk: int = 3,
               bytes_per_value: int = 2, kv_dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Bytes this memory will hold for `cfg` at `width` x `height` (echo_core.budget, one formula): on the GPU
        per component, the model's rotated context included (`gpu_mb`, `gpu_components_mb`; `cache_mb` is the
        attention window alone), on the host per component (`host_mb`, `host_components_mb`: Echo offloads its
        raw window keys and side state, as it does on CUDA) and per pooled scene (`host_max_mb`: all of it with
        a full pool). `kv_dtype` (default from `bytes_per_value`: 2 bf16, 4 fp32) is the model's compute
        dtype."""
        dtype = kv_dtype or {4: torch.float32, 2: torch.bfloat16}.get(bytes_per_value, torch.bfloat16)
        tokens_per_frame = cfg.tokens_per_frame(height // 8, width // 8)
        per_frame = 2 * cfg.num_layers * tokens_per_frame * cfg.dim * torch.empty((), dtype=dtype).element_size()
        if self.kv_dtype != "model":  # what the cache holds per frame: fp8 values and their scales
            from echo_core.budget import stored_frame_bytes

            per_frame = 2 * cfg.num_layers * stored_frame_bytes(self.kv_dtype, 1, cfg.num_heads, tokens_per_frame,
                                                                cfg.head_dim, 1)
        out: dict[str, Any] = {"policy": self.policy, "tokens_per_frame": tokens_per_frame,
                               "mb_per_frame": round(per_frame / 2**20, 2), "kv_storage": self.kv_dtype}
        if self.policy == "full":  # grows with the video: per frame only
            out["gpu_mb_per_latent_frame"] = out["mb_per_frame"]
            return out
        from echo_core.budget import policy_budget

        policy = self.echo_config(frames_per_chunk) if self.policy == "echo" else \
            BaselineConfig(self.policy, self.kv_dtype)
        b = policy_budget(cfg, height, width, frames_per_chunk, policy, kv_dtype=dtype)
        mb = 2.0**20
        device = {**b.gpu, "context": b.context_bytes}  # the model's rotated keys sit on the device too
        out.update(window_frames=b.window_frames, cache_tokens=b.window_frames * tokens_per_frame,  # type: ignore
                   cache_mb=round(b.window_bytes / mb, 1), gpu_mb=round(b.device_bytes / mb, 1),
                   gpu_components_mb={k: round(v / mb, 2) for k, v in device.items()},
                   kv_dtype=b.kv_dtype, kv_storage=b.kv_storage, gpu_bytes=b.device_bytes)
        if b.host:  # an offloading Echo cache: raw window keys and side state in host RAM
            out["host_mb"] = round(b.host_storage_bytes / mb, 1)
            out["host_components_mb"] = {k: round(v / mb, 2) for k, v in b.host.items()}
        if self.policy == "echo":  # finished scenes, on the host (CPU RAM), at most pool_max_size of them
            out["pool_mb_per_scene"] = round(b.pool_bytes_per_scene / mb, 2)
            out["pool_max_scenes"] = self.pool_max_size
            out["host_max_mb"] = round(b.host_bytes() / mb, 1)
            out["pool_bytes_per_scene"] = b.pool_bytes_per_scene
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
    """A timeline scheduled once for one model and size."""

    timeline: Timeline
    latent_shape: tuple[int, int, int]
    frames_per_chunk: int
    patch: tuple[int, int] = (2, 2)
    spatial_compression: int = 8

    @property
    def total_chunks(self) -> int:
        return self.timeline.total_chunks

    def inputs(self, spec: TimelineSpec, *, seed: int, sampler: SamplerConfig,
               start_latents: torch.Tensor | None = None, device: torch.device | str = "cpu",
               steering: Any = None) -> RunInputs:
        """The run's inputs for `echo_core.run.start_run` (`steering`: an echo_core.steer_control.Steering)."""
        return RunInputs(self.timeline, tuple(spec.contexts), self.latent_shape, seed=seed, sampler=sampler,
                         patch=self.patch, routing_features=spec.routing_contexts or None,
                         start_latents=start_latents, device=device, spatial_compression=self.spatial_compression,
                         saved_scenes=spec.saved_scenes, steering=steering)


def plan_run(timeline: TimelineSpec, cfg: WanConfig, frames_per_chunk: int, height: int, width: int,
             spatial_compression: int = 8) -> RunPlan:
    step = spatial_compression * cfg.patch_size[1]
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < step:
            raise SpecError(name, f"must be a whole number of pixels >= {step}, got {quote(value)}")
    if height % step or width % step:
        raise SpecError("width" if width % step else "height",
                        f"width and height must be multiples of {step}, got {width}x{height}")
    if len(timeline.contexts) != len(timeline.prompts):
        raise SpecError("timeline", "the timeline has no text embeddings for its scenes; connect a text encoder")
    return RunPlan(timeline.schedule(frames_per_chunk),
                   (cfg.in_dim, height // spatial_compression, width // spatial_compression), frames_per_chunk,
                   (int(cfg.patch_size[1]), int(cfg.patch_size[2])), spatial_compression)
