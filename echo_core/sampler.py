"""Self-Forcing's chunked few-step sampler, as a generator of finished chunks.

Per chunk: start from Gaussian noise, denoise over a few (warped) timesteps predicting x0 from the
flow-matching velocity and re-noising between steps, then run the model once more on the clean chunk (the
commit pass, at timestep `context_noise`) so the cache stores clean K/V for the chunks that follow. Models trained
with prompt dropout can be sampled with classifier-free guidance (`guidance`); distilled ones run at 1 (off).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from echo_core.cache.base import CachePolicy, CallInfo, ChunkInfo
from echo_core.model import attention_backend
from echo_core.model.wan import layer_hook

# Returns one draw of standard normal noise of the given shape (on the CPU; the sampler moves it to the device).
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]
StepHook = Callable[[int, int], None]  # (chunk, step) before every model call; interrupt hooks raise there
LayerHook = Callable[[int, int, int], None]  # (chunk, step, layer) before every layer of a causal Wan forward
X0Hook = Callable[[int, int, torch.Tensor], None]  # (chunk, step, x0) after every denoising step
# Before every chunk (and once after the last): None, or (the plan from now on, one text embedding per scene)
PlanHook = Callable[[int], "tuple[ScenePlan, Sequence[torch.Tensor]] | None"]


@dataclass(frozen=True)
class SamplerConfig:
    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    warp_denoising_step: bool = True
    shift: float = 5.0
    num_train_timesteps: int = 1000
    context_noise: float = 0.0  # timestep of the commit pass; the clean chunk is passed as is (official)
    frames_per_chunk: int = 3
    # Classifier-free guidance on the chunk being denoised: v = v_empty + guidance * (v_prompt - v_empty), the
    # empty prompt seeing the same cache. 1 = off (distilled models such as Self-Forcing); > 1 only for models
    # trained with prompt dropout (the toy model). Costs a second model call per denoising step.
    guidance: float = 1.0
    # Guidance only on steps at timesteps above this one (a guidance interval): guided steps settle the layout at
    # high noise; unguided low-noise steps keep colours from over-saturating.
    guidance_above: float = 0.0
    # Self-attention kernel: "auto" (flash_attn when installed and the inputs fit, else PyTorch SDPA), "sdpa",
    # "sage" or "flash" (errors when that kernel cannot run). See model/attention_backend.py.
    attention: str = "auto"

    def __post_init__(self) -> None:
        if not self.denoising_steps:
            raise ValueError("denoising_steps must list at least one timestep, e.g. 1000,750,500,250")
        for t in self.denoising_steps:
            if not 0 < t <= self.num_train_timesteps:
                raise ValueError(f"denoising_steps entries must lie in (0, {self.num_train_timesteps}], got {t}")
        if list(self.denoising_steps) != sorted(self.denoising_steps, reverse=True):
            raise ValueError(f"denoising_steps must be decreasing, got {list(self.denoising_steps)}")
        if not self.shift > 0:
            raise ValueError(f"shift must be > 0, got {self.shift}")
        if self.frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {self.frames_per_chunk}")
        if not 0 < self.guidance <= 20:
            raise ValueError(f"guidance must lie in (0, 20], got {self.guidance} (1 = off)")
        if not 0 <= self.guidance_above < self.num_train_timesteps:
            raise ValueError(f"guidance_above must lie in [0, {self.num_train_timesteps}), got {self.guidance_above}")
        if not 0 <= self.context_noise < self.num_train_timesteps:
            raise ValueError(f"context_noise must lie in [0, {self.num_train_timesteps}), got {self.context_noise}")
        attention_backend.check_name(self.attention)

    def renoise_target(self, x0: torch.Tensor, v: torch.Tensor, next_t: float,
                       draw: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The noise x0 is re-noised with before the step at `next_t`: Self-Forcing draws fresh noise (distilled
        few-step models). Models sampled otherwise override this (the toy model's ODE steps, toy/sampling.py)."""
        return draw()

    def chunk_start(self, noise: torch.Tensor, previous: torch.Tensor | None,
                    continues: bool) -> tuple[torch.Tensor, list[float]]:
        """A chunk's first input and the timesteps it is denoised over: Self-Forcing starts every chunk from pure
        noise over every step. `previous` is the chunk before it (clean x0, or None at the start of a video);
        `continues` says whether this chunk carries on the picture before it (not a hard cut or a recall). Models
        sampled otherwise override this (the toy model's warm start, toy/sampling.py)."""
        return noise, self.timesteps()

    def timesteps(self) -> list[float]:
        """The timesteps actually used, after Self-Forcing's warp through the shifted 1000-step table."""
        if not self.warp_denoising_step:
            return [float(t) for t in self.denoising_steps]
        n = self.num_train_timesteps
        sigmas = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
        shifted = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        table = torch.cat((shifted * n, torch.zeros(1, dtype=torch.float64)))
        return [float(table[n - int(round(t))]) for t in self.denoising_steps]


class CausalModel(Protocol):
    def encode_text(self, context: torch.Tensor) -> Any: ...

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, text: Any, cache: CachePolicy) -> torch.Tensor: ...


@dataclass(frozen=True)
class ScenePlan:
    """Which scene each chunk belongs to and where transitions happen (a Timeline satisfies this shape)."""

    total_chunks: int
    scene_starts: tuple[int, ...] = (0,)  # first chunk of every scene, increasing, starting at 0
    transitions: tuple[Any, ...] = ()  # one per scene boundary, aligned with scene_starts[1:]

    @classmethod
    def single(cls, total_chunks: int) -> "ScenePlan":
        return cls(total_chunks)

    @classmethod
    def from_timeline(cls, timeline: Any) -> "ScenePlan":
        return cls(timeline.total_chunks, tuple(s.start_chunk for s in timeline.scenes), tuple(timeline.transitions))

    def scene_of(self, chunk: int) -> int:
        return sum(1 for s in self.scene_starts if s <= chunk) - 1


@dataclass
class ChunkResult:
    index: int
    latents: torch.Tensor  # [B, C, f, H, W] clean x0 of this chunk, float32
    info: ChunkInfo
    report: dict[str, Any] = field(default_factory=dict)


def generate(model: CausalModel, cache: CachePolicy, contexts: Sequence[torch.Tensor], plan: ScenePlan, *,
             latent_shape: tuple[int, int, int], seed: int, config: SamplerConfig = SamplerConfig(),
             patch: tuple[int, int] = (2, 2), start_latents: torch.Tensor | None = None,
             device: torch.device | str = "cpu", batch: int = 1, on_step: StepHook | None = None,
             on_x0: X0Hook | None = None, noise: NoiseSource | None = None,
             on_layer: LayerHook | None = None, plan_at: PlanHook | None = None) -> Iterator[ChunkResult]:
    """Yield each finished chunk of a video with `plan.total_chunks` chunks.

    contexts: one text embedding per scene ([L, text_dim] or [1, L, text_dim]). latent_shape: (C, H, W) of a latent
    frame. start_latents [B, C, F0, H, W]: frames written into the cache first (commit passes only); generation
    continues after them. on_step(chunk, step) is called before every model call (interrupt hooks raise there);
    on_x0(chunk, step, x0) after every denoising step; on_layer(chunk, step, layer) before every layer of the model
    (models built on echo_core.model.wan's causal forward), so an interrupt answers within one layer. noise(shape)
    returns each draw of noise in order (default: a CPU generator seeded with `seed`), so a run can be replayed on
    another implementation's noise. plan_at(chunk), called before every chunk and once after the last, may return
    a new plan and text embeddings (steering: only scenes from `chunk` on may differ); the run ends when `chunk`
    reaches the plan's total.
    """
    if len(contexts) != len(plan.scene_starts):
        raise ValueError(f"got {len(contexts)} text embeddings for {len(plan.scene_starts)} scenes")
    c, h, w = latent_shape
    fpc = config.frames_per_chunk
    grid = (h // patch[0], w // patch[1])
    timesteps = config.timesteps()
    if noise is None:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))

        def noise(shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn(shape, generator=gen)
    texts: dict[int, Any] = {}
    live = list(contexts)  # replaced by plan_at when the timeline is amended

    def text_of(scene: int) -> Any:
        if scene not in texts:  # cross-attention K/V are made once per prompt, when the scene starts
            texts.clear()
            context = live[scene].to(device)
            # The empty prompt for guidance: zero rows, as a padded text embedding with no words in it.
            texts[scene] = (model.encode_text(context),
                            model.encode_text(torch.zeros_like(context)) if config.guidance != 1 else None)
        return texts[scene]

    def run(x: torch.Tensor, t: float, call: CallInfo, text: Any, index: int) -> torch.Tensor:
        with attention_backend.use(config.attention):  # entered per call: never leaks past a yield
            return _call(x, t, call, text, index)

    def _call(x: torch.Tensor, t: float, call: CallInfo, text: Any, index: int) -> torch.Tensor:
        cache.begin_call(call)
        tt = torch.full((x.shape[0],), float(t), device=device)
        hook = None if on_layer is None else (lambda layer: on_layer(index, call.step, layer))
        with layer_hook(hook):
            v = model.forward_chunk(x, tt, text[0], cache).float()
            if call.commit or text[1] is None or t <= config.guidance_above:
                return v
            # Denoising calls only rewrite the chunk's own K/V slot, so the unprompted call sees the same cache.
            v_empty = model.forward_chunk(x, tt, text[1], cache).float()
        return v_empty + config.guidance * (v - v_empty)

    frame = 0
    previous: torch.Tensor | None = None  # the last finished chunk (a warm start begins from it)
    if start_latents is not None:
        if start_latents.ndim != 5 or tuple(start_latents.shape[1:2]) + tuple(start_latents.shape[3:]) != (c, h, w):
            raise ValueError(f"start_latents must be [B, {c}, F, {h}, {w}], got {tuple(start_latents.shape)}")
        for i, f0 in enumerate(range(0, start_latents.shape[2], fpc)):
            part = start_latents[:, :, f0:f0 + fpc].to(device)
            info = ChunkInfo(index=-1 - i, start_frame=f0, num_frames=part.shape[2], grid=grid, prefill=True)
            cache.begin_chunk(info)
            run(part, config.context_noise, CallInfo(len(timesteps), True), text_of(0), info.index)
            cache.end_chunk()
        frame = start_latents.shape[2]
        previous = start_latents[:, :, -fpc:].to(device).float()

    chunk = 0
    while True:
        if plan_at is not None:
            update = plan_at(chunk)
            if update is not None:
                plan, live[:] = update[0], list(update[1])
        if chunk >= plan.total_chunks:
            break
        scene = plan.scene_of(chunk)
        starts = plan.scene_starts
        opens = chunk == starts[scene] and scene > 0
        info = ChunkInfo(index=chunk, start_frame=frame, num_frames=fpc, grid=grid, scene_index=scene,
                         scene_start_frame=frame - (chunk - starts[scene]) * fpc,
                         transition=plan.transitions[scene - 1] if opens else None,
                         is_scene_end=chunk + 1 == plan.total_chunks or (scene + 1 < len(starts)
                                                                        and chunk + 1 == starts[scene + 1]))
        t0 = time.perf_counter()
        cache.begin_chunk(info)
        text = text_of(scene)
        shape = (batch, c, fpc, h, w)
        continues = previous is not None and _continues(plan, chunk, opens)
        x, steps = config.chunk_start(_draw(noise, shape, device), previous, continues)
        x0 = x
        for step, t in enumerate(steps):
            if on_step is not None:
                on_step(chunk, step)
            v = run(x, t, CallInfo(step, False), text, chunk)
            sigma = t / config.num_train_timesteps
            x0 = x.float() - sigma * v
            if on_x0 is not None:
                on_x0(chunk, step, x0)
            if step + 1 < len(steps):
                nxt = steps[step + 1] / config.num_train_timesteps
                target = config.renoise_target(x0, v, steps[step + 1],
                                               lambda: _draw(noise, shape, device))  # type: ignore[misc]
                x = (1 - nxt) * x0 + nxt * target
        if on_step is not None:
            on_step(chunk, len(steps))
        run(x0, config.context_noise, CallInfo(len(steps), True), text, chunk)
        previous = x0
        report = cache.end_chunk()
        report.setdefault("context_bytes", cache.context_nbytes())  # the model's rotated context (hot path)
        report.update(chunk=chunk, scene=scene, start_frame=frame, wall_s=time.perf_counter() - t0)
        yield ChunkResult(chunk, x0, info, report)
        frame += fpc
        chunk += 1


def _continues(plan: ScenePlan, chunk: int, opens: bool) -> bool:
    """Whether `chunk` carries on the picture before it: inside a scene, or entering one by a smooth switch
    (not a hard cut or a recall). TransitionMode is a str enum, so it compares equal to its value."""
    if not opens:
        return True
    transition = plan.transitions[plan.scene_of(chunk) - 1]
    return getattr(transition, "mode", transition) == "smooth"


def _draw(noise: NoiseSource, shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    x = noise(shape)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"the noise source returned shape {tuple(x.shape)} for a draw of {tuple(shape)}")
    return x.to(device)


def sample_video(model: CausalModel, cache: CachePolicy, contexts: Sequence[torch.Tensor], plan: ScenePlan,
                 **kwargs) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Run `generate` to the end: latents [B, C, F, H, W] (start latents included) and the per-chunk reports."""
    chunks, reports = [], []
    start = kwargs.get("start_latents")
    if start is not None:
        chunks.append(start.float().cpu())
    for result in generate(model, cache, contexts, plan, **kwargs):
        chunks.append(result.latents.cpu())
        reports.append(result.report)
    return torch.cat(chunks, dim=2), reports
