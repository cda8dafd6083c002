"""Train the bundled toy model on CPU: `python -m echo_core.toy.train --out <dir>`.

Diffusion forcing over 21-frame windows (see data.py for the window kinds): every block of a window gets its
own noise level, 30% of blocks (and every memory frame) are clean context with a little noise left in them
and a timestep of 0, as the sampler's commit pass presents its own imperfect output. Frames attend block-causally;
the loss is flow matching's velocity v = eps - x0 at t = 1000*s on the noisy blocks. Each step also trains 16
context-free scene openings. The default recipe (the shipped weights; MODEL_CARD.md) is plain flow matching,
sampled along the flow ODE, with each scene's landmarks read from its first block's noise at every noise level
(so a new scene's unprompted layout follows its seed noise and the ODE keeps it), object cells and a one-cell
margin around them weighted 8x, objects in clean context faded at random (the model learns to restore them
rather than let them fade in a rollout) and 10% of prompts dropped (classifier-free guidance is available).
`--details noise` is the earlier recipe: every unprompted detail read from the noise, sampled with fresh noise.
Everything is seeded (data per step, noise per step, init), so a run with the same arguments and thread count
gives the same weights. `--device cuda --workers N` trains on a GPU from the same data and noise (each step's data
made from its number in worker processes, train_data.py; noise drawn on the CPU); `--time-budget` fits the run to a
device lease. Session 8's options (`--context clean`, `--channel-weight`, `--details anchored`, `--warm-start`)
are described with their measurements in MODEL_CARD.md.

Writes into --out: toy_dit.safetensors (EMA weights, Wan key names, config in metadata), toy_assets.safetensors
(codec + text encoder), train_log.jsonl (loss curve) and train_state.pt (for --resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from echo_core.model.config import get_preset
from echo_core.model.loading import save_checkpoint
from echo_core.model.wan import CausalWanModel, block_causal_mask
from echo_core.toy.codec import ToyCodec
from echo_core.toy.data import DETAILS, MODE_KINDS, fit_frames
from echo_core.toy.grammar import WORLDS
from echo_core.toy.loader import SAMPLER
from echo_core.toy.sampling import ToySamplerConfig
from echo_core.toy.seqforward import window_forward, window_mask
from echo_core.toy.text import ToyTextEncoder
from echo_core.toy.train_data import OpeningTargets, dilate, step_stream

DIT_FILE = "toy_dit.safetensors"
ASSETS_FILE = "toy_assets.safetensors"
LOG_FILE = "train_log.jsonl"
STATE_FILE = "train_state.pt"
CPU = torch.device("cpu")
CONTEXTS = ("diffusion", "clean")
CHANNEL_WEIGHTS = ("uniform", "std", "pixel")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 5000
    batch: int = 4
    lr: float = 1e-3
    warmup: int = 100
    final_lr_frac: float = 0.05
    decay_frac: float = 0.25
    weight_decay: float = 0.01
    ema: float = 0.998
    p_clean: float = 0.3  # share of blocks given as clean context
    p_seeded: float = 0.0  # share of in-window scene-opening blocks trained at t = 1000 on their seed noise
    p_one: float = 0.1  # share of other blocks trained at t = 1000 (independent noise)
    openings: int = 16  # extra context-free scene-opening blocks per step, at t = 1000 on their seed noise
    context_noise: float = 0.1  # max std of the noise left in clean context
    shift: float = 2.0  # noise levels s = shift*u / (1 + (shift-1)*u), u uniform: more weight on high noise
    seed: int = 0
    codec_frames: int = 512
    size: int = 48  # pixels; 12x12 latents, 6x6 = 36 tokens per frame
    details: str = "landmarks"  # data.new_scene: "landmarks" or "random" (plain flow matching, sampled with the
    # ODE), "noise" (every unprompted detail read from the seed noise, fresh-noise sampler; the first shipped model)
    # Options for the objects (see MODEL_CARD.md, "Experiments"); the defaults give the shipped weights.
    object_weight: float = 8.0  # loss weight of object cells in windows (objects are a few percent of a frame)
    # Weight a margin of this many latent cells (4 px each) around objects too. Weighting the object cells alone
    # biases the model to paint object colour wherever an object might be (a miss costs more than a false
    # paint), and in a rollout the blobs grow chunk by chunk; weighting the surroundings as much removes the bias.
    object_margin: int = 1
    object_noise: float = 0.0  # max std of extra noise on the object cells of clean context (ragged objects)
    p_fade: float = 0.5  # share of clean context frames whose objects are faded towards the background
    max_fade: float = 0.7  # fade amount drawn uniformly in [0, max_fade]: the model learns to restore objects
    p_uncond: float = 0.1  # share of prompts replaced by the empty prompt, so the sampler can use guidance
    guidance: float = 1.0  # classifier-free guidance scale the weights are sampled with (needs p_uncond > 0)
    guidance_above: float = 0.0  # ... on the denoising steps above this timestep only
    warm_start: float = 0.0  # sampler: continuation chunks start from the last frame at this timestep (0 = off)
    # Curriculum: the first steps train only scene openings of one still object on a plain background (twice as
    # many), where the shape word is the one thing left to learn; in the full mixture it stays unread (MODEL_CARD).
    shape_warmup: int = 0
    # The defaults stay the shipped weights' recipe (world v1, Echo's layouts in the data) until weights of world
    # v2 ship; the training-free model is `--world v2 --data-mode self_forcing` (MODEL_CARD.md).
    world: str = "v1"  # grammar.WORLDS: v2's shapes differ at token scale, v1's by a few corner pixels
    data_mode: str = "layouts"  # data.MODE_KINDS: "layouts" (Echo's cache layouts too) or "self_forcing"
    # How a block's past is presented. "diffusion": diffusion forcing, every block at its own noise level (p_clean
    # of them clean), the shipped weights'. "clean": teacher forcing, every block is trained on a clean copy of
    # the blocks before it, as the sampler's cache always presents them (the window runs twice: 2x tokens).
    context: str = "diffusion"
    # Loss weight of the latent channels (channel_weights): "uniform" (the shipped weights'), "std" or "pixel".
    channel_weight: str = "uniform"


def save_assets(path: Path, codec: ToyCodec, text: ToyTextEncoder, cfg: TrainConfig) -> None:
    from safetensors.torch import save_file

    meta = dict(text.metadata())
    meta["toy.resolution"] = json.dumps([cfg.size, cfg.size])
    meta["toy.fps"] = "16"
    save_file({k: v.contiguous() for k, v in {**codec.state_dict(), **text.state_dict()}.items()}, str(path),
              metadata=meta)


def noise_levels(blocks: torch.Tensor, memory: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Per-frame noise level s in [0, 1): one draw per block (0 for clean context), 0 on memory frames."""
    b, f = blocks.shape
    u = torch.rand(b, f, generator=g)
    clean = torch.rand(b, f, generator=g) < (cfg.p_clean if cfg.context == "diffusion" else 0.0)
    s = cfg.shift * u / (1 + (cfg.shift - 1) * u)
    # Every chunk's first sampler step is at t = 1000 exactly: train there too, where the noise means nothing
    # (only a scene-opening block's own seed noise does, see train_step).
    s = torch.where(torch.rand(b, f, generator=g) < cfg.p_one, torch.ones_like(s), s)
    s = torch.where(clean, torch.zeros_like(s), s)
    # Frame index of each frame's block start (argmax gives the first match): frames share their block's draw.
    first = (blocks[:, :, None] == blocks[:, None, :]).int().argmax(-1)
    s = torch.gather(s, 1, first)
    return torch.where(memory, torch.zeros_like(s), s)


def channel_weights(codec: ToyCodec, kind: str) -> torch.Tensor | None:
    """[1, C, 1, 1, 1] loss weights of the latent channels, mean 1 (None for "uniform").

    The codec's channels are principal components scaled to unit variance, so a uniform loss gives each the same
    weight although the first three (a patch's mean colour) carry about 90% of the pixel variance: a small model
    then spends most of its capacity on edge detail while its colours drift. "pixel" weights each channel by its
    pixel-space variance (the loss becomes the decoded pixels' squared error), "std" by its standard deviation,
    between the two."""
    if kind == "uniform":
        return None
    std = codec.latent_std.flatten().float()
    w = std ** 2 if kind == "pixel" else std
    return (w / w.mean()).view(1, -1, 1, 1, 1)


def teacher_forcing_mask(blocks: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """[B, F] block ids -> [B, 1, 2N, 2N] bool for a window laid out twice, clean copy first: a clean token sees
    the clean tokens of its own and earlier blocks; a noisy token sees its own block's noisy tokens and the clean
    tokens of earlier blocks - what a chunk being denoised sees in the sampler's cache."""
    tok = blocks.repeat_interleave(tokens_per_frame, dim=1)
    q, k = tok[:, :, None], tok[:, None, :]
    clean_rows = torch.cat([q >= k, torch.zeros_like(q >= k)], 2)
    noisy_rows = torch.cat([q > k, q == k], 2)
    return torch.cat([clean_rows, noisy_rows], 1)[:, None]


def sampler_for(cfg: TrainConfig) -> ToySamplerConfig:
    """The sampler the weights are made for, stored in their metadata (read by loader.load_toy_model)."""
    if cfg.details == "noise":  # fresh noise between steps; the first step (t = 1000) commits to the seeded layout
        return replace(SAMPLER, guidance=cfg.guidance, guidance_above=cfg.guidance_above, warm_start=cfg.warm_start)
    # Euler steps of the flow ODE: a mean-squared-error model samples multimodal layouts only along the ODE.
    # Below t = 400 fresh noise: it pulls an imperfect model's output back onto clean images (best of 0-600 tried).
    return ToySamplerConfig(denoising_steps=tuple(1000.0 * (12 - i) / 12 for i in range(12)), shift=2.0,
                         renoise="ode", fresh_below=400.0, frames_per_chunk=3, guidance=cfg.guidance,
                         guidance_above=cfg.guidance_above, warm_start=cfg.warm_start)


def drop_prompts(texts: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Replace each prompt (leading dims of texts [..., L, D]) by the empty prompt (zero rows) with probability p:
    the model also learns to continue its context unprompted, the unconditional half of classifier-free guidance."""
    if p <= 0:  # draws no random numbers: runs without dropout keep their noise
        return texts
    keep = torch.rand(texts.shape[:-2], generator=g) >= p
    return texts * keep[..., None, None]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warmup, constant, then a linear cool-down over the last `decay_frac` of the steps. The constant phase does
    not depend on the total, so a run resumed before its cool-down with more --steps equals a longer run."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay_start = int(cfg.steps * (1 - cfg.decay_frac))
    if step < decay_start:
        return cfg.lr
    frac = (step - decay_start) / max(1, cfg.steps - decay_start)
    return cfg.lr * (1 - (1 - cfg.final_lr_frac) * frac)


def train_step(model: CausalWanModel, batch, cfg: TrainConfig, g: torch.Generator, device: torch.device = CPU,
               channels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    x0 = batch.latents
    s = noise_levels(batch.blocks, batch.memory, cfg, g)  # [B, F]
    eps = torch.randn(x0.shape, generator=g)
    # Scene-opening blocks: often at t = 1000 exactly with the noise their details were read from (data.py).
    pick = torch.rand(x0.shape[0], x0.shape[2], generator=g) < cfg.p_seeded
    first = torch.zeros_like(pick)
    first[:, 1:] = batch.blocks[:, 1:] != batch.blocks[:, :-1]
    first[:, 0] = True
    seeded_start = batch.seeded & first & pick
    seeded = torch.zeros_like(pick)
    for i, j in seeded_start.nonzero().tolist():
        seeded[i, j:j + 3] = batch.seeded[i, j:j + 3]
    # t = 1000 on an opening block means "read the seed noise": never pair it with unrelated noise.
    s = torch.where(batch.seeded & ~seeded & (s == 1), torch.full_like(s, 0.97), s)
    s = torch.where(seeded, torch.ones_like(s), s)
    if cfg.details in ("landmarks", "anchored"):  # the coupling of noise and landmarks holds at every noise level
        seeded = batch.seeded
    eps = torch.where(seeded[:, None, :, None, None], batch.seed_noise, eps)
    sv = s[:, None, :, None, None]
    xt = (1 - sv) * x0 + sv * eps
    clean = (s == 0)[:, None, :, None, None]
    jitter = torch.rand(x0.shape[0], 1, x0.shape[2], 1, 1, generator=g) * cfg.context_noise
    # Exposure bias: in a rollout the context is the model's own output, whose objects are softer and fainter
    # than rendered ones. Faded objects in clean context (the codec is linear, so a latent blend towards the
    # object-free frame fades the objects) teach the model to restore them instead of letting them fade further.
    # (Options off draw no random numbers, so the default run's noise stays as it was.)
    context = x0
    if cfg.p_fade > 0:
        fade = torch.rand(x0.shape[0], 1, x0.shape[2], 1, 1, generator=g) * cfg.max_fade
        fade = fade * (torch.rand(fade.shape, generator=g) < cfg.p_fade)
        context = x0 + fade * (batch.background - x0)
    if cfg.object_noise > 0:  # ragged, token-level errors on objects, as the model's own output has them
        rough = torch.rand(jitter.shape, generator=g) * cfg.object_noise * batch.objects[:, None]
        context = context + rough * torch.randn(x0.shape, generator=g)
    tokens = (x0.shape[-1] // 2) * (x0.shape[-2] // 2)
    t, ids, positions = s * 1000.0, batch.text_ids, batch.positions
    if cfg.context == "diffusion":
        xt = torch.where(clean, context + jitter * torch.randn(x0.shape, generator=g), xt)
        mask = window_mask(batch.blocks, tokens)
    else:  # the window twice: its clean context copy, then every block noisy and trained on that clean past
        xt = torch.cat([context + jitter * torch.randn(x0.shape, generator=g), xt], 2)
        mask = teacher_forcing_mask(batch.blocks, tokens)
        t = torch.cat([torch.zeros_like(t), t], 1)
        ids, positions = ids.repeat(1, 2), positions.repeat(1, 2)
    texts = drop_prompts(batch.texts, cfg.p_uncond, g)
    # The draws above are made on the CPU generator, so a run's data and noise do not depend on the device.
    pred = window_forward(model, xt.to(device), t.to(device), texts.to(device), ids.to(device), positions.to(device),
                          mask.to(device))[:, :, -x0.shape[2]:]
    weight = ((s > 0) & batch.valid & ~batch.memory).float().to(device)  # [B, F]
    cell = 1 + (cfg.object_weight - 1) * dilate(batch.objects, cfg.object_margin)[:, None].to(device)  # [B,1,F,h,w]
    sq = (pred - (eps - x0).to(device)).pow(2)
    if channels is not None:
        sq = sq * channels.to(device)
    err = (sq * cell).mean(dim=(1, 3, 4)) / cell.mean(dim=(1, 3, 4))  # [B, F]
    loss = (err * weight).sum() / weight.sum().clamp_min(1)
    per_kind: dict[str, list[float]] = {}
    per_window = ((err.detach() * weight).sum(1) / weight.sum(1).clamp_min(1)).tolist()
    for i, kind in enumerate(batch.kinds):
        if weight[i].sum() > 0:
            per_kind.setdefault(kind, []).append(per_window[i])
    return loss, per_kind


def opening_loss(model: CausalWanModel, openings: OpeningTargets, cfg: TrainConfig, g: torch.Generator,
                 device: torch.device = CPU, channels: torch.Tensor | None = None) -> torch.Tensor:
    """Context-free scene openings. Seeded: the first denoising step of a new scene, from its seed noise alone
    (t = 1000) to the scene it implies. Otherwise plain flow matching at a random noise level.
    Object pixels weigh OBJECT_WEIGHT times more (train_data.py): they are a few percent of the frame."""
    noise, texts, x0 = openings.noise, drop_prompts(openings.texts, cfg.p_uncond, g), openings.x0
    n, frames, tokens = noise.shape[0], noise.shape[2], (noise.shape[-1] // 2) * (noise.shape[-2] // 2)
    if cfg.details == "noise":
        s = torch.ones(n)
    else:
        u = torch.rand(n, generator=g)
        s = cfg.shift * u / (1 + (cfg.shift - 1) * u)
    sv = s[:, None, None, None, None]
    xt = (1 - sv) * x0 + sv * noise
    t = (s * 1000.0)[:, None].expand(n, frames)
    pred = model.forward_sequence(xt.to(device), t.to(device), texts.to(device),
                                  block_causal_mask(frames, tokens, frames).to(device))
    weight = openings.weight.to(device)
    sq = (pred - (noise - x0).to(device)).pow(2)
    if channels is not None:
        sq = sq * channels.to(device)
    return (sq * weight).mean() / weight.mean()


def write_loss_png(log: Path, png: Path, width: int = 480, height: int = 220) -> None:
    """A small PNG of the loss curve (total, and the scene-opening part) from train_log.jsonl."""
    from PIL import Image, ImageDraw

    recs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if len(recs) < 2:
        return
    series = {"loss": [r["loss"] for r in recs],
              "opening": [r["kinds"].get("opening", float("nan")) for r in recs]}
    steps = [r["step"] for r in recs]
    top = max(v for vals in series.values() for v in vals if v == v)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = 40, 10, width - 10, height - 25
    d.rectangle([x0, y0, x1, y1], outline=(160, 160, 160))
    for name, colour in (("loss", (200, 40, 40)), ("opening", (40, 90, 200))):
        pts = [(x0 + (x1 - x0) * (s_ - steps[0]) / (steps[-1] - steps[0]), y1 - (y1 - y0) * v / top)
               for s_, v in zip(steps, series[name]) if v == v]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=1)
    d.text((x0 + 5, y0 + 3), f"total (red), scene openings (blue); max {top:.2f}", fill=(0, 0, 0))
    d.text((x0, y1 + 5), f"step {steps[0]}", fill=(0, 0, 0))
    d.text((x1 - 60, y1 + 5), f"step {steps[-1]}", fill=(0, 0, 0))
    img.save(png)


# Command-line options that set a TrainConfig field of the same name (the rest of main's options set the run).
_RECIPE_OPTIONS: tuple[tuple[str, str | None], ...] = (
    ("--steps", None),
    ("--batch", None),
    ("--lr", None),
    ("--seed", None),
    ("--openings", "context-free scene-opening blocks per step (besides the --batch windows)"),
    ("--p-clean", "share of blocks given as clean context"),
    ("--object-noise", "max std of extra noise on the objects of clean context"),
    ("--object-weight", "loss weight of object cells in windows"),
    ("--object-margin", "latent cells around objects weighted like the objects (removes the over-painting bias)"),
    ("--p-fade", "share of clean context frames whose objects are faded towards the background"),
    ("--p-uncond", "share of prompts dropped to the empty prompt (trains classifier-free guidance)"),
    ("--guidance", "guidance scale written into the weights' sampler settings (needs --p-uncond > 0)"),
    ("--guidance-above", "guide only the denoising steps above this timestep (written into the sampler settings)"),
    ("--shape-warmup", "first steps on scene openings of one still object on a plain background only"),
    ("--warm-start", "sampler: a chunk continuing the picture starts from the last frame, noised to this timestep "
                     "(0: off; written into the weights' sampler settings)"),
)


def _field(flag: str) -> str:
    return flag[2:].replace("-", "_")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m echo_core.toy.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder for weights and the loss log")
    for flag, help_ in _RECIPE_OPTIONS:  # each defaults to its TrainConfig field
        default = getattr(TrainConfig, _field(flag))
        p.add_argument(flag, type=type(default), default=default, help=help_)
    p.add_argument("--details", choices=DETAILS, default=TrainConfig.details,
                   help="landmarks: flow matching, landmarks read from the seed noise (default); anchored: the same, "
                        "objects starting at fixed spots; random: flow matching, every detail at random; noise: every "
                        "detail read from the seed noise")
    p.add_argument("--world", choices=tuple(WORLDS), default=TrainConfig.world,
                   help="toy world the data is drawn from: v1 (the shipped weights', default) or v2 "
                        "(token-scale shapes)")
    p.add_argument("--data-mode", choices=tuple(MODE_KINDS), default=TrainConfig.data_mode,
                   help="layouts: also Echo-Forcing's cache layouts (memory frames, RoPE jumps; the shipped weights', "
                        "default); self_forcing: windows as Self-Forcing trains (no Echo layouts, no position jumps)")
    p.add_argument("--context", choices=CONTEXTS, default=TrainConfig.context,
                   help="diffusion: every block at its own noise level, some clean (the shipped weights', default); "
                        "clean: every block trained on a clean copy of its past, as the sampler presents it")
    p.add_argument("--channel-weight", choices=CHANNEL_WEIGHTS, default=TrainConfig.channel_weight,
                   help="loss weight of the codec's latent channels: uniform (the shipped weights', default), std "
                        "(by each channel's standard deviation) or pixel (its variance: the decoded pixels' error)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch CPU threads (results depend on it slightly: the shipped weights used 2)")
    p.add_argument("--device", default="cpu",
                   help="torch device: cpu (the shipped weights), cuda or cuda:N; data and noise are drawn on the CPU, "
                        "so the run is the same data on any device")
    p.add_argument("--workers", type=int, default=0,
                   help="processes that make the steps' data ahead of the loop (0: inline; a GPU needs several)")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="stop and save after this many seconds of training (0: none); --resume continues")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="seconds the whole run may take: after its first steps the step count is lowered to fit, "
                        "so the learning-rate cool-down still happens (0: none)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.openings < 1:
        sys.exit("error: --steps, --batch and --openings must be >= 1")
    if args.workers < 0 or args.time_limit < 0 or args.time_budget < 0:
        sys.exit("error: --workers, --time-limit and --time-budget must be >= 0")
    device = _device(args.device)
    recipe = {_field(flag): getattr(args, _field(flag)) for flag, _ in _RECIPE_OPTIONS}
    cfg = TrainConfig(details=args.details, world=args.world, data_mode=args.data_mode, context=args.context,
                      channel_weight=args.channel_weight, **recipe)
    if cfg.object_margin < 0:
        sys.exit(f"error: --object-margin must be >= 0 latent cells, got {cfg.object_margin}")
    if cfg.shape_warmup < 0:
        sys.exit(f"error: --shape-warmup must be >= 0 steps, got {cfg.shape_warmup}")
    if not 0 <= cfg.p_uncond < 1:
        sys.exit(f"error: --p-uncond must lie in [0, 1), got {cfg.p_uncond}")
    if cfg.guidance != 1 and cfg.p_uncond == 0:
        sys.exit("error: --guidance other than 1 needs a model trained with prompt dropout: add --p-uncond 0.1")
    try:  # the sampler settings are first written at the first checkpoint: check them before training, not then
        sampler_for(cfg)
    except ValueError as e:
        sys.exit(f"error: sampler settings (--guidance / --guidance-above): {e}")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(args.threads)
    # On CUDA some kernels (attention backward) have no deterministic version: warn, do not stop the run.
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:  # called as a function (tests), leave the caller's torch settings as they were
        with torch.enable_grad():
            return _train(cfg, args, device)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        sys.exit(f"error: --device {name!r} is not a torch device; use cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit(f"error: --device {name}: this torch sees no CUDA device; use --device cpu")
        # cuBLAS is deterministic only with a fixed workspace; it must be set before CUDA starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif device.type != "cpu":
        sys.exit(f"error: --device {name!r}: training runs on cpu or cuda")
    return device


def _train(cfg: TrainConfig, args: argparse.Namespace, device: torch.device) -> int:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    codec = ToyCodec.fit(fit_frames(np.random.default_rng([cfg.seed, 1]), cfg.codec_frames, cfg.size, cfg.world))
    text = ToyTextEncoder.create(seed=cfg.seed)
    save_assets(out / ASSETS_FILE, codec, text, cfg)

    channels = channel_weights(codec, cfg.channel_weight)
    wcfg = get_preset("toy")
    torch.manual_seed(cfg.seed)
    model = CausalWanModel(wcfg)
    torch.nn.init.zeros_(model.head.head.weight)
    torch.nn.init.zeros_(model.head.head.bias)
    model.to(device)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    start, seconds_before = 0, 0.0
    if args.resume and (out / STATE_FILE).exists():
        state = torch.load(out / STATE_FILE, weights_only=True, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        ema = state["ema"]
        start = int(state["step"])
        seconds_before = float(state.get("seconds", 0.0))  # states written before session 8 lack it
        print(f"resumed at step {start}", flush=True)
    elif (out / LOG_FILE).exists():
        (out / LOG_FILE).unlink()

    where = device_name(device, args.threads)
    t_start = time.perf_counter()
    window: list[float] = []
    kinds: dict[str, list[float]] = {}
    step = start
    for data in step_stream(start, cfg.steps, cfg, codec, text, args.workers):
        step = data.step
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        if data.batch is None:  # shape warm-up: scene openings only
            loss = opening_loss(model, data.openings, cfg, g, device, channels)
            per_kind = {"shape": [float(loss.detach())]}
        else:
            loss, per_kind = train_step(model, data.batch, cfg, g, device, channels)
            first = opening_loss(model, data.openings, cfg, g, device, channels)
            per_kind["opening"] = [float(first.detach())]
            loss = loss + first
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        window.append(float(loss.detach()))
        for k, vals in per_kind.items():
            kinds.setdefault(k, []).extend(vals)
        elapsed = time.perf_counter() - t_start
        if args.time_budget > 0 and step + 1 == start + PLAN_AFTER:
            cfg = _fit_steps(cfg, step + 1, elapsed, args.time_budget)
        out_of_time = args.time_limit > 0 and elapsed >= args.time_limit and step + 1 < cfg.steps
        if (step + 1) % args.log_every == 0 or step + 1 == cfg.steps or out_of_time:
            rec = {"step": step + 1, "loss": sum(window) / len(window), "lr": lr_at(step, cfg),
                   "grad_norm": float(gnorm), "elapsed_s": round(elapsed, 1),
                   "kinds": {k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())}}
            with open(out / LOG_FILE, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
            window, kinds = [], {}
        if (step + 1) % args.save_every == 0 or step + 1 == cfg.steps or out_of_time:
            _save(out, model, opt, ema, step + 1, cfg, run_metadata(where, seconds_before + elapsed))
        if out_of_time:
            print(f"stopped at step {step + 1} of {cfg.steps}: --time-limit {args.time_limit:g} s reached "
                  f"(weights saved; --resume continues the same run)", flush=True)
            break
        if step + 1 >= cfg.steps:  # --time-budget may have shortened the run
            break
    elapsed = time.perf_counter() - t_start
    if start >= cfg.steps:  # resumed at the end: rewrites the weights' settings (sampler), the weights stay as they are
        _save(out, model, opt, ema, start, cfg, run_metadata(where, seconds_before))
    else:
        write_loss_png(out / LOG_FILE, out / "loss_curve.png")
    print(f"done: step {step + 1 if start < cfg.steps else start} of {cfg.steps} in {elapsed:.0f} s on {where} "
          f"-> {out / DIT_FILE}", flush=True)
    return 0


PLAN_AFTER = 20  # --time-budget: steps timed before the run's length is planned (still inside the LR warm-up)


def _fit_steps(cfg: TrainConfig, done: int, elapsed: float, budget: float) -> TrainConfig:
    """The run shortened so that its remaining steps, at the speed of the first ones, end within `budget` seconds.
    Planned before the cool-down (inside the warm-up for a run from step 0), so the result is the run that
    `--steps <planned>` gives; its weights record that step count."""
    per_step = elapsed / max(1, done)
    fit = done + int(max(0.0, 0.95 * budget - elapsed) / per_step)  # 5% left for saving and slower steps
    if fit >= cfg.steps:
        return cfg
    print(f"--time-budget {budget:g} s: {per_step:.3f} s per step, so {fit} steps instead of {cfg.steps} "
          f"(the cool-down ends within the budget)", flush=True)
    return replace(cfg, steps=max(fit, done))


def device_name(device: torch.device, threads: int) -> str:
    """The training device as the weights' metadata records it (the model card quotes it)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {threads} threads"


def run_metadata(device: str, seconds: float) -> dict[str, str]:
    return {"toy.train_device": device, "toy.train_seconds": f"{seconds:.0f}"}


def _save(out: Path, model: CausalWanModel, opt: torch.optim.Optimizer, ema: dict, step: int, cfg: TrainConfig,
          run: dict[str, str]) -> None:
    save_checkpoint({k: v.cpu() for k, v in ema.items()}, out / DIT_FILE, config=model.cfg,
                    metadata={"echo_forcing.frames_per_chunk": "3", "toy.train_steps": str(step),
                              "toy.sampler": json.dumps(asdict(sampler_for(cfg))),
                              "toy.world": cfg.world, "toy.data_mode": cfg.data_mode,
                              "toy.train_config": json.dumps(cfg.__dict__), **run})
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "ema": ema, "step": step,
                "seconds": float(run["toy.train_seconds"])}, out / STATE_FILE)


if __name__ == "__main__":
    raise SystemExit(main())
