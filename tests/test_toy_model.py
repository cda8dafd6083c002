"""The bundled toy model: codec, text encoder, training forward and data, shipped weights, demo path, quality."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from echo_core.model.config import get_preset
from echo_core.model.wan import CausalWanModel, block_causal_mask
from echo_core.timeline import parse_timeline
from echo_core.toy.codec import StreamDecoder, ToyCodec, video_frames_for
from echo_core.toy.data import (
    WINDOW,
    Segment,
    _Builder,
    details_from_noise,
    fit_frames,
    new_scene,
    object_mask,
    render_segment,
    sample_window,
)
from echo_core.toy.grammar import describe, parse_prompt, sample_spec
from echo_core.toy.scorer import identify_scene
from echo_core.toy.seqforward import window_forward, window_mask
from echo_core.toy.text import ToyTextEncoder, word_roles
from echo_core.toy.world import render_clip

WEIGHTS = Path(__file__).resolve().parents[1] / "echo_core" / "toy" / "weights"


@pytest.fixture(scope="module")
def bundle():
    from echo_core.toy import load_toy_model

    return load_toy_model()


def _clips(n: int, size: int, seed: int = 7) -> list[tuple]:
    rng = np.random.default_rng(seed)
    return [(spec, render_clip(spec, 500 + i, 17, height=size, width=size)) for i, spec in
            enumerate(sample_spec(rng) for _ in range(n))]


# ------------------------------------------------------------------------------------------------ codec
def test_codec_round_trip_keeps_scenes_recognisable(bundle):
    size = bundle.height
    psnrs = []
    for spec, clip in _clips(6, size):
        keys = clip[::4]
        rec = bundle.codec.decode_images(bundle.codec.encode_images(keys))
        psnrs.append(-10 * math.log10(float((rec - keys).pow(2).mean())))
        assert psnrs[-1] > 17.0, f"codec round trip only {psnrs[-1]:.1f} dB on {describe(spec)}"
        other = sample_spec(np.random.default_rng(1))
        if other.appearance() != spec.appearance():
            idx, _ = identify_scene(rec, [spec, other])
            assert bool((idx == 0).all())
    assert sum(psnrs) / len(psnrs) > 24.0  # fine checks and stripes cost the most; flat scenes reach ~30 dB


def test_codec_latents_are_normalised_and_video_lengths_follow_wan(bundle):
    clip = _clips(1, bundle.height, seed=3)[0][1]
    lat = bundle.codec.encode_video(clip)  # 17 frames -> 5 latent frames
    assert lat.shape == (16, 5, bundle.height // 4, bundle.width // 4)
    frames = torch.cat([render_clip(sample_spec(s), s, 1, height=bundle.height, width=bundle.width)
                        for s in range(24)])
    z = bundle.codec.encode_images(frames)
    assert 0.5 < float(z.std()) < 1.5 and abs(float(z.mean())) < 0.5
    assert bundle.decode(lat[None]).shape[0] == video_frames_for(5) == 17
    with pytest.raises(ValueError, match="4T-3"):
        bundle.codec.encode_video(clip[:16])


def test_stream_decoding_equals_whole_video_decoding(bundle):
    lat = torch.randn(16, 7, bundle.height // 4, bundle.width // 4)
    whole = bundle.codec.decode_video(lat)
    dec = StreamDecoder(bundle.codec)
    parts = [dec.push(lat[:, i:i + 3]) for i in range(0, 7, 3)]
    assert [p.shape[0] for p in parts] == [9, 12, 4]
    assert torch.equal(torch.cat(parts), whole)


def test_codec_fit_is_deterministic():
    frames = torch.cat([c for _, c in _clips(3, 32)])
    a, b = ToyCodec.fit(frames), ToyCodec.fit(frames.clone())
    assert torch.equal(a.basis, b.basis) and torch.equal(a.latent_std, b.latent_std)


# ------------------------------------------------------------------------------------------- text encoder
def test_text_encoder_is_deterministic_and_shaped_like_umt5():
    a, b = ToyTextEncoder.create(seed=0), ToyTextEncoder.create(seed=0)
    prompt = "a red circle moving right and a white square bouncing on a blue striped background"
    ea, eb = a.encode(prompt), b.encode(prompt)
    assert ea.shape == (24, 64) and torch.equal(ea, eb)
    words = len(prompt.split())
    assert bool((ea[:words].abs().sum(1) > 0).all()) and bool((ea[words:] == 0).all())
    assert not torch.equal(ea, a.encode(prompt.replace("red", "green")))
    # colour word on an object vs on the background must not give the same rows
    assert not torch.allclose(a.encode("a red circle on a blue background"),
                              a.encode("a blue circle on a red background"))


def test_text_roles_and_errors():
    words = "a red circle and a blue ring on a green background".split()
    assert word_roles(words) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    enc = ToyTextEncoder.create()
    with pytest.raises(ValueError, match="'dragon'"):
        enc.encode("a red dragon on a blue background")
    assert enc.encode("a red dragon on a blue background", strict=False).abs().sum() > 0


# ---------------------------------------------------------------------------------- training forward, data
def test_window_forward_equals_forward_sequence_for_one_prompt():
    torch.manual_seed(0)
    model = CausalWanModel(get_preset("toy"))
    x = torch.randn(2, 16, 6, 8, 8)
    t = torch.rand(2, 6) * 1000
    ctx = torch.randn(2, 24, 64)
    ref = model.forward_sequence(x, t, ctx, block_causal_mask(6, 16, 3))
    blocks = (torch.arange(6) // 3).expand(2, 6)
    out = window_forward(model, x, t, ctx[:, None], torch.zeros(2, 6, dtype=torch.long),
                         torch.arange(6).expand(2, 6), window_mask(blocks, 16))
    assert torch.allclose(out, ref, atol=1e-4)
    # frames after a prompt switch follow the second prompt, frames before it do not see it
    out2 = window_forward(model, x, t, torch.stack([ctx, torch.randn(2, 24, 64)], 1),
                          torch.tensor([[0, 0, 0, 1, 1, 1]] * 2), torch.arange(6).expand(2, 6), window_mask(blocks, 16))
    assert torch.allclose(out2[:, :, :3], ref[:, :, :3], atol=1e-4)
    assert not torch.allclose(out2[:, :, 3:], ref[:, :, 3:], atol=1e-3)


def test_renderer_matches_world_and_windows_follow_their_layout():
    spec = sample_spec(11)
    assert torch.equal(render_segment(Segment.from_world(spec, 5, 48), torch.arange(4), 48),
                       render_clip(spec, 5, 13, height=48, width=48)[::4])
    rng = np.random.default_rng(0)
    for kind in ("single", "cut", "smooth", "revisit", "memory"):
        w = sample_window(rng, size=48, kind=kind)
        assert len(w.positions) <= WINDOW and w.images.shape[0] == len(w.positions)
        assert w.blocks == sorted(w.blocks)
        assert all(parse_prompt(p) for p in w.prompts)
    revisit = sample_window(np.random.default_rng(3), size=48, kind="revisit")
    ids = revisit.text_ids
    first, back = ids.index(0), len(ids) - 1
    assert ids[back] == 0 and 1 in ids[first:back]  # A, then B, then A again under A's prompt
    # the revisit shows A's details again: away from the objects its pixels equal A's first frame, B's do not
    def same(a: int, b: int) -> float:
        return float(((revisit.images[a] - revisit.images[b]).abs().amax(0) < 1e-6).float().mean())

    assert same(first, back) > 0.4 and same(first, ids.index(1)) < 0.1


def test_noise_seeded_details_follow_the_noise():
    spec = parse_prompt("a red circle bouncing and a white square standing still on a blue dotted background")
    noise = torch.randn(16, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    seg = details_from_noise(spec, noise, 48)
    assert seg == details_from_noise(spec, noise.clone(), 48)  # a function of the noise alone
    shifted = details_from_noise(spec, torch.roll(noise, shifts=(2, 2), dims=(2, 3)), 48)
    # moving the noise by one token (8 px) moves every detail that stays off the border by one token
    moved = {(round(x * 48) + 8, round(y * 48) + 8) for x, y in seg.background.landmarks}
    got = {(round(x * 48), round(y * 48)) for x, y in shifted.background.landmarks}
    inner = {p for p in moved if 8 < p[0] < 40 and 8 < p[1] < 40}
    assert inner and inner <= got
    copies = {(k, (x + 8) % 48, (y + 8) % 48) for k, (x, y) in zip(seg.drawn, seg.starts)}
    assert copies == set(zip(shifted.drawn, *zip(*shifted.starts)))  # objects sit where their noise is high
    assert set(seg.drawn) <= {0, 1}
    windows = [sample_window(np.random.default_rng(k), size=48, kind="cut") for k in range(3)]
    assert all(len(w.seed_noise) == 2 for w in windows)  # both scenes open inside the window


def test_windows_carry_object_free_frames_for_context_fading():
    """The context-fade augmentation blends towards these frames: they must differ from the window's frames exactly
    where objects are drawn."""
    spec = parse_prompt("a red circle bouncing and a white square moving left on a blue striped background")
    seg, noise = new_scene(np.random.default_rng(2), spec, 48, details="random")
    assert noise is None and len(seg.starts) == len(spec.objects) == len(seg.drawn)  # one copy of each object
    b = _Builder(48, 16)
    b.add(seg, [0, 5, 9], position=0, block=None)
    w = b.build("single")
    differs = (w.images - w.backgrounds).abs().amax(1) > 1e-6
    drawn = object_mask(seg, torch.tensor([0, 5, 9]), 48) > 0
    assert differs.any() and bool((differs <= drawn).all())
    assert float((differs == drawn).float().mean()) > 0.97
    plain = sample_window(np.random.default_rng(5), size=48, kind="cut", details="random")
    assert plain.seed_noise == {} and plain.backgrounds.shape == plain.images.shape


def test_landmark_details_follow_the_noise_and_objects_do_not():
    spec = parse_prompt("a red circle bouncing and a white square standing still on a blue dotted background")
    a, noise = new_scene(np.random.default_rng(4), spec, 48, details="landmarks")
    b, noise_b = new_scene(np.random.default_rng(4), spec, 48, details="landmarks")
    assert torch.equal(noise, noise_b) and a == b  # deterministic in the generator
    assert a.background.landmarks == details_from_noise(spec, noise, 48).background.landmarks
    assert len(a.starts) == 2 and a.drawn == (0, 1)  # one copy of each object, not read from the noise
    with pytest.raises(ValueError, match="details"):
        new_scene(np.random.default_rng(0), spec, 48, details="seeded")


@pytest.mark.parametrize("details", ["landmarks", "noise"])
def test_training_script_writes_loadable_weights_with_their_sampler(tmp_path, details):
    from safetensors.torch import load_file

    from echo_core.toy import load_toy_model
    from echo_core.toy.train import main as train

    args = ["--steps", "2", "--batch", "1", "--log-every", "1", "--details", details]
    assert train(["--out", str(tmp_path / "a")] + args) == 0
    assert train(["--out", str(tmp_path / "b")] + args) == 0
    a, b = (load_file(str(tmp_path / d / "toy_dit.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # seeded: same run, same weights
    log = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    assert len(log) == 2
    bundle = load_toy_model(tmp_path / "a")
    flow = details != "noise"
    assert bundle.sampler_config.renoise == ("ode" if flow else "fresh")
    assert len(bundle.sampler_config.denoising_steps) == (12 if flow else 5)


def test_shape_warmup_trains_one_object_openings_first(tmp_path):
    import json

    from echo_core.toy.data import opening_blocks, shape_spec
    from echo_core.toy.grammar import SHAPES
    from echo_core.toy.train import main as train

    rng = np.random.default_rng(0)
    specs = [shape_spec(rng) for _ in range(200)]
    assert all(len(s.objects) == 1 and s.objects[0].motion == "static" and s.pattern == "plain" for s in specs)
    assert {s.objects[0].shape for s in specs} == set(SHAPES)
    text = ToyTextEncoder.create(seed=0)
    openings = opening_blocks(np.random.default_rng(1), 3, text, 48, "landmarks", spec_of=shape_spec)
    assert all(len(seg.spec.objects) == 1 for seg in openings.segments) and openings.texts.shape[0] == 3

    assert train(["--out", str(tmp_path / "w"), "--steps", "3", "--shape-warmup", "2", "--batch", "1",
                  "--log-every", "1"]) == 0
    kinds = [set(json.loads(line)["kinds"]) for line in (tmp_path / "w" / "train_log.jsonl").read_text().splitlines()]
    assert kinds[:2] == [{"shape"}, {"shape"}] and "opening" in kinds[2] and "shape" not in kinds[2]


def test_object_margin_weights_the_cells_around_objects_as_much_as_the_objects():
    from echo_core.toy.train import dilate

    cover = torch.zeros(2, 3, 12, 12)
    cover[0, 1, 5, 5], cover[1, 2, 0, 11] = 0.5, 1.0
    grown = dilate(cover, 1)
    assert torch.equal(grown[0, 1, 4:7, 4:7], torch.full((3, 3), 0.5))  # the 3x3 neighbourhood, same value
    assert grown[0, 1].sum() == 9 * 0.5 and grown[0, 0].sum() == 0  # nothing else, no leak across frames
    assert grown[1, 2, 0:2, 10:12].eq(1).all() and grown[1, 2].sum() == 4  # clipped at the frame edge
    assert dilate(cover, 0) is cover


def test_a_resumed_training_run_gives_the_weights_of_an_uninterrupted_one(tmp_path):
    """The shipped weights were trained in two parts (--resume); that must be the same run as the default command.
    (Within the warmup the learning rate does not depend on --steps, so 2 + 1 steps and 3 steps share it.)"""
    from safetensors.torch import load_file

    from echo_core.toy.train import main as train

    common = ["--batch", "1", "--log-every", "1"]
    assert train(["--out", str(tmp_path / "whole"), "--steps", "3"] + common) == 0
    assert train(["--out", str(tmp_path / "parts"), "--steps", "2"] + common) == 0
    assert train(["--out", str(tmp_path / "parts"), "--steps", "3", "--resume"] + common) == 0
    a, b = (load_file(str(tmp_path / d / "toy_dit.safetensors")) for d in ("whole", "parts"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_worker_processes_and_a_time_limit_leave_the_run_as_it_was(tmp_path):
    """--workers makes the steps' data in other processes (a GPU run needs it) and --time-limit stops a run where
    a device budget ends: both must give the weights of the plain run (data is seeded by the step number)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from echo_core.toy.train import main as train

    common = ["--steps", "3", "--batch", "1", "--openings", "2", "--log-every", "1", "--threads", "1"]
    assert train(["--out", str(tmp_path / "plain")] + common) == 0
    assert train(["--out", str(tmp_path / "workers"), "--workers", "2"] + common) == 0
    assert train(["--out", str(tmp_path / "cut"), "--time-limit", "1e-6"] + common) == 0
    with safe_open(str(tmp_path / "cut" / "toy_dit.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["toy.train_steps"] == "1"  # stopped after its first step, and saved there
    assert meta["toy.train_device"] == "cpu: 1 threads" and float(meta["toy.train_seconds"]) >= 0
    assert train(["--out", str(tmp_path / "cut"), "--resume"] + common) == 0
    plain = load_file(str(tmp_path / "plain" / "toy_dit.safetensors"))
    for other in ("workers", "cut"):
        got = load_file(str(tmp_path / other / "toy_dit.safetensors"))
        assert got.keys() == plain.keys() and all(torch.equal(got[k], plain[k]) for k in plain), other
    logs = [(tmp_path / d / "train_log.jsonl").read_text().splitlines() for d in ("plain", "workers")]
    assert [json.loads(x)["loss"] for x in logs[0]] == [json.loads(x)["loss"] for x in logs[1]]


def test_teacher_forcing_mask_shows_each_noisy_block_its_clean_past_only():
    from echo_core.toy.data import PAD_BLOCK
    from echo_core.toy.train import teacher_forcing_mask

    blocks = torch.tensor([[0, 0, 1, 1, 2, PAD_BLOCK]])
    m = teacher_forcing_mask(blocks, 2)[0, 0]  # 6 frames x 2 tokens, twice: [24, 24]
    n = 12
    frame = torch.arange(n) // 2
    blk = blocks[0][frame]
    for i in range(n):
        clean_sees = m[i, :n].nonzero().flatten()
        assert torch.equal(clean_sees, (blk <= blk[i]).nonzero().flatten()) and not m[i, n:].any()
        noisy_clean = m[n + i, :n].nonzero().flatten()
        noisy_noisy = m[n + i, n:].nonzero().flatten()
        assert torch.equal(noisy_clean, (blk < blk[i]).nonzero().flatten())  # its past, clean
        assert torch.equal(noisy_noisy, (blk == blk[i]).nonzero().flatten())  # and its own block, noisy
    real = blk < PAD_BLOCK
    assert not m[:n][real][:, :n][:, ~real].any() and not m[n:][real][:, n:][:, ~real].any()  # padding unseen


def test_teacher_forcing_trains_and_is_recorded_in_the_weights(tmp_path):
    from safetensors import safe_open

    from echo_core.toy import load_toy_model
    from echo_core.toy.train import main as train

    common = ["--steps", "2", "--batch", "2", "--openings", "1", "--threads", "1", "--log-every", "1"]
    assert train(["--out", str(tmp_path / "tf"), "--context", "clean", "--data-mode", "self_forcing"] + common) == 0
    assert train(["--out", str(tmp_path / "df"), "--data-mode", "self_forcing"] + common) == 0
    with safe_open(str(tmp_path / "tf" / "toy_dit.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["toy.train_config"])["context"] == "clean"
    losses = [[json.loads(x)["loss"] for x in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
              for d in ("tf", "df")]
    assert all(math.isfinite(v) for v in losses[0]) and losses[0] != losses[1]
    assert load_toy_model(tmp_path / "tf").data_mode == "self_forcing"
    with pytest.raises(SystemExit):
        train(["--out", str(tmp_path / "x"), "--context", "noisy"] + common)


def test_channel_weights_follow_the_codec_and_pixel_weights_give_the_decoded_pixels_error():
    from echo_core.toy.train import channel_weights

    codec = ToyCodec.fit(fit_frames(np.random.default_rng(0), 64, 48))
    assert channel_weights(codec, "uniform") is None
    for kind in ("std", "pixel"):
        w = channel_weights(codec, kind).flatten()
        assert w.shape == (16,) and abs(float(w.mean()) - 1) < 1e-5
        assert bool((w[:-1] >= w[1:]).all()) and w[0] > 2  # principal components come in order of variance
    # With pixel weights the latent loss is the decoded pixels' squared error (the codec is orthonormal + scaled).
    a = codec.encode_images(torch.rand(2, 3, 48, 48))
    b = a + 0.3 * torch.randn_like(a)
    w = channel_weights(codec, "pixel").view(1, -1, 1, 1)
    latent = ((a - b).pow(2) * w).sum()

    def pixels(z: torch.Tensor) -> torch.Tensor:  # the decoder without its mean and clamp (a linear map)
        return (z.permute(0, 2, 3, 1) * codec.latent_std) @ codec.basis

    pixel = (pixels(a) - pixels(b)).pow(2).sum()
    assert torch.allclose(latent * (codec.latent_std ** 2).mean(), pixel, rtol=1e-3)


def test_a_time_budget_plans_the_run_length_and_records_it(tmp_path):
    """--time-budget times the first steps and lowers --steps so the cool-down ends in time; a budget nothing fits
    in leaves the timed steps only, and the weights say how many steps they had."""
    from safetensors import safe_open

    from echo_core.toy.train import PLAN_AFTER
    from echo_core.toy.train import main as train

    assert train(["--out", str(tmp_path / "w"), "--steps", str(PLAN_AFTER + 30), "--batch", "1", "--openings", "1",
                  "--threads", "1", "--time-budget", "1e-6"]) == 0
    with safe_open(str(tmp_path / "w" / "toy_dit.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["toy.train_steps"] == str(PLAN_AFTER)
    assert json.loads(meta["toy.train_config"])["steps"] == PLAN_AFTER
    last = json.loads((tmp_path / "w" / "train_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == PLAN_AFTER


def test_training_device_and_worker_options_are_checked(tmp_path):
    from echo_core.toy.train import main as train

    with pytest.raises(SystemExit, match="--device 'tpu0'"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--device", "tpu0"])
    with pytest.raises(SystemExit, match="--workers, --time-limit and --time-budget"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--workers", "-1"])
    with pytest.raises(SystemExit, match="--openings must be >= 1"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--openings", "0"])
    if not torch.cuda.is_available():  # on a CUDA machine this option is valid
        with pytest.raises(SystemExit, match="no CUDA device"):
            train(["--out", str(tmp_path / "x"), "--steps", "1", "--device", "cuda"])
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_prompt_dropout_blanks_whole_prompts_and_guidance_needs_it(tmp_path):
    from echo_core.toy.train import drop_prompts
    from echo_core.toy.train import main as train

    texts = torch.randn(64, 2, 24, 8) + 5
    g = torch.Generator().manual_seed(0)
    dropped = drop_prompts(texts, 0.25, g)
    blank = (dropped == 0).flatten(2).all(2)  # [64, 2]: a prompt is blanked whole or kept as it was
    kept = (dropped == texts).flatten(2).all(2)
    assert bool((blank ^ kept).all()) and 0.1 < blank.float().mean() < 0.4
    assert drop_prompts(texts, 0.0, g) is texts
    with pytest.raises(SystemExit, match="p-uncond"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--p-uncond", "0", "--guidance", "3"])
    with pytest.raises(SystemExit, match="guidance must lie"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--p-uncond", "0.1", "--guidance", "50"])
    with pytest.raises(SystemExit, match="object-margin"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--object-margin", "-1"])
    with pytest.raises(SystemExit, match="shape-warmup"):
        train(["--out", str(tmp_path / "x"), "--steps", "1", "--shape-warmup", "-5"])
    assert train(["--out", str(tmp_path / "cfg"), "--steps", "1", "--batch", "1",
                  "--p-uncond", "0.5", "--guidance", "2.5"]) == 0
    from echo_core.toy import load_toy_model

    assert load_toy_model(tmp_path / "cfg").sampler_config.guidance == 2.5
    # resumed at its last step with other guidance settings: same weights, new sampler settings
    from safetensors.torch import load_file

    before = load_file(str(tmp_path / "cfg" / "toy_dit.safetensors"))
    assert train(["--out", str(tmp_path / "cfg"), "--steps", "1", "--batch", "1",
                  "--p-uncond", "0.5", "--guidance", "1.5", "--guidance-above", "400", "--resume"]) == 0
    after = load_file(str(tmp_path / "cfg" / "toy_dit.safetensors"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    sampler = load_toy_model(tmp_path / "cfg").sampler_config
    assert (sampler.guidance, sampler.guidance_above) == (1.5, 400.0)


# ----------------------------------------------------------------------------------------- shipped model
# Recipe options added after the shipped weights were trained, at the values that reproduce them (session 8:
# diffusion forcing, uniform channel weights, no warm start).
RECIPE_ADDED_SINCE = {"context": "diffusion", "channel_weight": "uniform", "warm_start": 0.0}


def test_shipped_weights_are_small_and_load_as_a_causal_wan_checkpoint(bundle):
    files = list(WEIGHTS.glob("*.safetensors"))
    assert {f.name for f in files} >= {"toy_dit.safetensors", "toy_assets.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    from echo_core.model.loading import load_causal_wan

    model, info = load_causal_wan(WEIGHTS / "toy_dit.safetensors", dtype="fp32")
    assert info.config == get_preset("toy") and info.frames_per_chunk == 3
    n = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= n <= 3_000_000
    assert bundle.latent_shape == (16, bundle.height // 4, bundle.width // 4)


def test_shipped_weights_come_from_the_default_training_command(bundle):
    """README and the model card say `python -m echo_core.toy.train` gives the shipped weights: its defaults must be
    the recipe recorded in them, and the sampler they ship with the one that recipe implies."""
    import dataclasses
    import json

    from safetensors import safe_open

    from echo_core.toy.train import TrainConfig, sampler_for

    with safe_open(str(WEIGHTS / "toy_dit.safetensors"), "pt") as f:
        meta = f.metadata()
    # weights from before world v2 record no world / data mode: the loader reads them as v1 / layouts
    recorded = {"world": "v1", "data_mode": "layouts", **RECIPE_ADDED_SINCE, **json.loads(meta["toy.train_config"])}
    assert recorded == dataclasses.asdict(TrainConfig())
    assert (bundle.world, bundle.data_mode) == (recorded["world"], recorded["data_mode"])
    assert int(meta["toy.train_steps"]) == TrainConfig().steps
    assert bundle.sampler_config == sampler_for(TrainConfig())


def test_training_free_weights_differ_from_the_demo_model_only_in_their_data():
    """The benchmark's main subject: `train --data-mode self_forcing`, everything else the demo model's recipe, so
    a difference between the two row sets is the training data's (Echo's cache layouts shown or not)."""
    import dataclasses
    import json

    from safetensors import safe_open

    from echo_core.toy import load_toy_model
    from echo_core.toy.loader import BUNDLED_MODELS, TRAINING_FREE_DIR, WEIGHTS_DIR
    from echo_core.toy.train import TrainConfig, sampler_for

    assert list(BUNDLED_MODELS.items()) == [("training-free", TRAINING_FREE_DIR), ("layout-aware", WEIGHTS_DIR)]
    files = list(TRAINING_FREE_DIR.glob("*.safetensors"))
    assert {f.name for f in files} == {"toy_dit.safetensors", "toy_assets.safetensors"}
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    with safe_open(str(TRAINING_FREE_DIR / "toy_dit.safetensors"), "pt") as f:
        meta = f.metadata()
    recipe = dataclasses.replace(TrainConfig(), data_mode="self_forcing")
    recorded = {**RECIPE_ADDED_SINCE, **json.loads(meta["toy.train_config"])}
    assert recorded == dataclasses.asdict(recipe)
    assert int(meta["toy.train_steps"]) == recipe.steps
    free = load_toy_model(TRAINING_FREE_DIR)
    assert (free.world, free.data_mode) == ("v1", "self_forcing")
    assert free.sampler_config == sampler_for(recipe) == load_toy_model().sampler_config
    # same fixed codec and text tables (one vocabulary): only the DiT was trained differently
    with safe_open(str(TRAINING_FREE_DIR / "toy_assets.safetensors"), "pt") as a, \
            safe_open(str(WEIGHTS_DIR / "toy_assets.safetensors"), "pt") as b:
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys() if k.startswith("codec."))


def test_demo_runs_end_to_end(tmp_path):
    import imageio.v2 as imageio

    from echo_core.cli import main

    out = tmp_path / "demo.mp4"
    timeline = ("a red circle moving right on a blue striped background [1s] | a red circle bouncing on a blue "
                "striped background [1s#] | a yellow triangle moving up on a green background [1s@] | a red circle "
                "moving right on a blue striped background [1s]")
    assert main(["demo", "--out", str(out), "--timeline", timeline, "--steps", "4", "--scale", "2"]) == 0
    frames = imageio.mimread(str(out))
    parsed = parse_timeline(timeline)
    assert len(frames) == parsed.video_frames == 4 * 3 * parsed.total_chunks - 3  # Wan's 4T-3 frames
    assert frames[0].shape[:2] == (96, 96)
    assert (tmp_path / "demo.png").stat().st_size > 1000
    assert main(["demo", "--out", str(tmp_path / "bad.mp4"), "--timeline", "a red dragon on a blue background"]) == 2


@pytest.mark.slow
def test_trained_model_draws_the_prompted_background_and_object_colours(bundle):
    """What the shipped model does reliably: the prompted background (colour and pattern) with its seed's landmarks,
    and every object as a patch of its colour of about its size that stays (the first shipped weights lost two of
    these four objects within a chunk). It does NOT draw the objects' shapes (object presence, which needs the
    shape, is printed, not asserted): issue 5's 90% scene bar is not met by these weights."""
    import dataclasses

    from echo_core.toy.grammar import COLOURS, PATTERNS
    from echo_core.toy.run import render_timeline
    from echo_core.toy.scorer import identify_scene, object_colour_area, object_presence

    for i, prompt in enumerate(["a green square moving left on a purple dotted background",
                                "an orange ring bouncing and a cyan cross standing still on a white plain background",
                                "a red circle moving right on a blue striped background"]):
        spec = parse_prompt(prompt)
        frames, _ = render_timeline(bundle, f"{prompt} [5s]", seed=i)
        used = {o.colour for o in spec.objects}
        candidates = [spec] + [dataclasses.replace(spec, background=c) for c in COLOURS
                               if c != spec.background and c not in used]
        candidates += [dataclasses.replace(spec, pattern=p) for p in PATTERNS if p != spec.pattern]
        idx, _ = identify_scene(frames, candidates)
        acc = float((idx == 0).float().mean())
        print(f"{prompt}: background accuracy {acc:.2f}, object presence "
              f"{object_presence(frames, spec).float().mean(0).tolist()}")
        assert acc >= 0.9, f"background identification fell to {acc:.2f} on {prompt!r}"
        area = object_colour_area(frames, spec)
        drawn = ((area >= 0.3) & (area <= 3)).float().mean(0)  # per object: share of frames at 0.3-3x its size
        assert bool((drawn >= 0.7).all()), f"objects of {prompt!r} drawn on {drawn.tolist()} of frames (need 0.7)"


def test_evaluate_json_prints_one_object_naming_the_world(capsys):
    import json

    from echo_core.toy.evaluate import main as evaluate_main

    evaluate_main(["--json", "--prompts", "1", "--long-runs", "0", "--seconds", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # progress goes to stderr
    summary = json.loads(out[0])
    assert 0.0 <= summary["scene_accuracy"] <= 1.0 and summary["scene_accuracy"] == summary["single_scene_accuracy"]
    assert summary["world"] == "v1" and summary["data_mode"] == "layouts"  # the shipped weights predate world v2
    assert summary["sampler_overrides"] == {}
    assert 0.0 <= summary["motion_accuracy"] <= 1.0
    with pytest.raises(SystemExit):
        evaluate_main(["--json", "--prompts", "0"])
    evaluate_main(["--json", "--prompts", "1", "--long-runs", "0", "--seconds", "1", "--warm-start", "700",
                   "--guidance", "3", "--guidance-above", "700"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert summary["sampler_overrides"] == {"warm_start": 700.0, "guidance": 3.0, "guidance_above": 700.0}
    with pytest.raises(SystemExit):  # a warm start below every denoising step is refused, naming the setting
        evaluate_main(["--json", "--prompts", "1", "--warm-start", "50"])
    assert "warm_start" in capsys.readouterr().err


def test_self_forcing_data_has_no_echo_layouts_and_no_position_jumps():
    """The training-free model's data: contiguous positions, no memory frames, no revisits, prompt switches kept."""
    from echo_core.toy.data import MODE_KINDS
    from echo_core.toy.grammar import SHAPES_V2

    rng = np.random.default_rng(7)
    seen = set()
    for _ in range(24):
        w = sample_window(rng, size=48, world="v2", mode="self_forcing")
        seen.add(w.kind)
        assert w.positions == list(range(len(w.positions))), w.kind  # no RoPE jump anywhere
        assert not any(w.memory) and w.blocks == sorted(w.blocks)
        assert all(o.shape in SHAPES_V2 for p in w.prompts for o in parse_prompt(p).objects)
        assert len(w.prompts) <= 2 and (w.kind != "single" or len(w.prompts) == 1)
    assert seen == set(MODE_KINDS["self_forcing"]) == {"single", "cut", "smooth"}
    layouts = [sample_window(np.random.default_rng(k), size=48, kind="memory") for k in range(4)]
    assert all(any(w.memory) for w in layouts)  # the layout-aware mode does show Echo's cache layouts
    with pytest.raises(ValueError, match="not part of data mode 'self_forcing'"):
        sample_window(rng, size=48, kind="memory", mode="self_forcing")
    with pytest.raises(ValueError, match="data mode 'echo' is not known"):
        sample_window(rng, size=48, mode="echo")
