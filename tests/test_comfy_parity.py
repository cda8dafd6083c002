"""Our CausalWanModel against ComfyUI 0.3.75's own WanModel: same weights, same inputs, same output.

Everything runs in float32 on the CPU. The weights are random but not tiny, so a wrong modulation order,
RoPE band split or timestep embedding would move the output far beyond the tolerance.
"""

from __future__ import annotations

import pytest
import torch

from echo_core.model.config import PRESETS, WanConfig, get_preset
from echo_core.model.wan import CausalWanModel

pytestmark = pytest.mark.host

ATOL = 1e-4


def _ours(cfg: WanConfig, seed: int = 0) -> CausalWanModel:
    torch.manual_seed(seed)
    model = CausalWanModel(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # biases and norm weights away from their 0/1 defaults, so every parameter counts
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _comfy_wan(comfy, cfg: WanConfig):
    return comfy.wan.WanModel(
        model_type="t2v", patch_size=cfg.patch_size, text_len=cfg.text_len, in_dim=cfg.in_dim, dim=cfg.dim,
        ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
        num_heads=cfg.num_heads, num_layers=cfg.num_layers, qk_norm=cfg.qk_norm,
        cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps, device="cpu", dtype=torch.float32,
        operations=comfy.ops.disable_weight_init).eval()


def _inputs(cfg: WanConfig, frames: int = 3, h: int = 4, w: int = 6, seed: int = 7):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, frames, h, w, generator=gen)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen)
    return x, ctx


def _loaded_pair(comfy, cfg: WanConfig):
    ours = _ours(cfg)
    theirs = _comfy_wan(comfy, cfg)
    # strict: every parameter name and shape of ours must be one of ComfyUI's and vice versa.
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("preset", ["tiny", "tiny-comfy"])
@pytest.mark.parametrize("timestep", [[999.0], [500.0], [0.0], [[900.0, 500.0, 100.0]]], ids=str)
def test_full_attention_matches_comfy(comfy_inprocess, preset, timestep):
    cfg = get_preset(preset)
    ours, theirs = _loaded_pair(comfy_inprocess, cfg)
    x, ctx = _inputs(cfg)
    t = torch.tensor(timestep)  # [B] or one timestep per latent frame [B, F]
    with torch.no_grad():
        a = ours.forward_sequence(x, t, ctx)
        b = theirs(x, t, ctx)
    assert a.shape == b.shape == x.shape
    assert b.abs().mean() > 0.05  # a real signal, not a near-zero output that would match anything
    diff = (a.float() - b.float()).abs().max().item()
    assert diff < ATOL, f"{preset} t={timestep}: max abs diff {diff:.3g}"


def test_parity_catches_a_changed_weight(comfy_inprocess):
    cfg = get_preset("tiny")
    ours, theirs = _loaded_pair(comfy_inprocess, cfg)
    with torch.no_grad():
        theirs.blocks[1].self_attn.norm_k.weight.mul_(1.01)
    x, ctx = _inputs(cfg)
    t = torch.tensor([500.0])
    with torch.no_grad():
        diff = (ours.forward_sequence(x, t, ctx) - theirs(x, t, ctx)).abs().max().item()
    assert diff > 10 * ATOL


def test_short_context_is_zero_padded_like_comfys_text_encoder(comfy_inprocess):
    # ComfyUI's WanModel takes the context as given; its umT5 encoder pads to 512 tokens with zeros
    # (min_length=512, zero_out_masked). Ours pads short contexts itself: both must agree.
    cfg = get_preset("tiny")
    ours, theirs = _loaded_pair(comfy_inprocess, cfg)
    x, ctx = _inputs(cfg)
    short = ctx[:, :5]
    padded = torch.nn.functional.pad(short, (0, 0, 0, cfg.text_len - 5))
    t = torch.tensor([700.0])
    with torch.no_grad():
        diff = (ours.forward_sequence(x, t, short) - theirs(x, t, padded)).abs().max().item()
    assert diff < ATOL


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_shapes_comfy_detects(comfy_inprocess, name):
    """ComfyUI's model detection reads a Wan T2V file's geometry from a few shapes and fixes the rest
    (128-dim heads, freq_dim 256, text_dim 4096, patch 1x2x2). A preset must survive that round trip
    for its files to load through the stock UNETLoader."""
    cfg = get_preset(name)
    shapes = _state_dict_shapes(cfg)
    detected = comfy_inprocess.model_detection.detect_unet_config(shapes, "")
    assert detected is not None and detected["model_type"] == "t2v"
    want = {"dim": cfg.dim, "num_heads": cfg.num_heads, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
            "in_dim": cfg.in_dim, "out_dim": cfg.out_dim, "freq_dim": cfg.freq_dim,
            "patch_size": tuple(cfg.patch_size), "text_dim": cfg.text_dim}
    got = {k: detected.get(k, 4096 if k == "text_dim" else None) for k in want}  # text_dim: WanModel default
    if name in ("tiny", "toy"):
        # CPU-only presets (small heads, text and freq dims) are for echo_core alone; ComfyUI cannot load them.
        assert got != want
        return
    assert got == want, f"preset {name!r}: ComfyUI would build {got}, the preset says {want}"


def test_tiny_comfy_preset_loads_through_comfy_loader(comfy_inprocess):
    """The stock loading path (comfy.sd.load_diffusion_model_state_dict, what UNETLoader calls)."""
    comfy = comfy_inprocess
    cfg = get_preset("tiny-comfy")
    ours = _ours(cfg)
    sd = {"model.diffusion_model." + k: v.clone() for k, v in ours.state_dict().items()}
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.float32})
    assert patcher is not None
    theirs = patcher.model.diffusion_model
    assert type(theirs).__name__ == "WanModel" and theirs.num_heads == cfg.num_heads
    x, ctx = _inputs(cfg)
    t = torch.tensor([400.0])
    with torch.no_grad():
        diff = (ours.forward_sequence(x, t, ctx) - theirs(x, t, ctx)).abs().max().item()
    assert diff < ATOL


def _state_dict_shapes(cfg: WanConfig) -> dict[str, torch.Tensor]:
    # Meta tensors: detection reads shapes only, and the 14B preset would not fit in memory otherwise.
    with torch.device("meta"):
        return dict(CausalWanModel(cfg).state_dict())
