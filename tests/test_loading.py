"""Checkpoint loading: every file layout round-trips to identical weights; bad files fail with clear errors."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import save_file

from echo_core.model.checkpoint_io import CheckpointError, UnsafeCheckpointError
from echo_core.model.config import NotAWanCheckpointError, get_preset, infer_config, preset_with
from echo_core.model.loading import load_causal_wan, read_checkpoint, save_checkpoint
from echo_core.model.wan import CausalWanModel

FP8 = torch.float8_e4m3fn


def random_sd(preset: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """Wan-named weights with every tensor random (default inits leave norms at exactly 1)."""
    g = torch.Generator().manual_seed(seed)
    model = CausalWanModel(get_preset(preset))
    return {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return random_sd("tiny", 0)


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k].float(), want[k].float()), k


# --------------------------------------------------------------------------------------------- layouts
def test_plain_wan_safetensors(tmp_path, sd):
    path = tmp_path / "wan.safetensors"
    save_file(sd, str(path))
    ck = read_checkpoint(path)
    assert ck.layout == "wan" and ck.frames_per_chunk is None
    assert ck.config == get_preset("tiny")
    assert_same(ck.state_dict, sd)


def test_self_forcing_pt_picks_ema_or_generator_and_strips_prefixes(tmp_path, sd):
    ema = random_sd("tiny", 1)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in sd.items()},
                "generator_ema": {f"model._fsdp_wrapped_module.{k}": v for k, v in ema.items()},
                "step": 600}, path)
    ck = read_checkpoint(path)
    assert ck.layout == "self_forcing" and ck.frames_per_chunk == 3
    assert ck.metadata["picked"] == "generator_ema" and ck.metadata["step"] == 600
    assert_same(ck.state_dict, ema)
    assert_same(read_checkpoint(path, prefer_ema=False).state_dict, sd)


def test_framewise_name_gives_one_frame_per_chunk(tmp_path, sd):
    path = tmp_path / "framewise"
    path.mkdir()
    torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}}, path / "causal_forcing.pt")
    assert read_checkpoint(path / "causal_forcing.pt").frames_per_chunk == 1


def test_comfyui_prefixed_safetensors(tmp_path, sd):
    path = tmp_path / "wan2.1_t2v_tiny_fp16.safetensors"
    save_file({f"model.diffusion_model.{k}": v.half() for k, v in sd.items()}, str(path))
    ck = read_checkpoint(path)
    assert ck.layout == "comfyui"
    assert_same(ck.state_dict, {k: v.half() for k, v in sd.items()})
    model, _ = load_causal_wan(path, dtype="auto")
    assert model.blocks[0].self_attn.q.weight.dtype == torch.float16  # "auto" keeps the file's dtype


def _scaled_fp8(sd):
    """ComfyUI scaled-fp8 layout: 2-D Linear weights as e4m3 with a per-tensor scale; the rest in bf16."""
    out, qs = {"scaled_fp8": torch.tensor([], dtype=FP8)}, {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2:
            scale = v.abs().max() / 448.0
            q = (v / scale).to(FP8)
            base = k[: -len(".weight")]
            out[k], out[f"{base}.scale_weight"] = q, scale.reshape(()).float()
            out[f"{base}.scale_input"] = torch.tensor(1.0)
            qs[k] = (q, scale)
        else:
            out[k] = v.to(torch.bfloat16)
    return out, qs


def test_comfyui_scaled_fp8_dequantises(tmp_path, sd):
    stored, qs = _scaled_fp8(sd)
    path = tmp_path / "wan_tiny_fp8_e4m3fn_scaled.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in stored.items()}, str(path))
    ck = read_checkpoint(path)
    assert ck.layout == "comfyui_fp8"
    assert not any(k.endswith(("scale_weight", "scale_input")) or k == "scaled_fp8" for k in ck.state_dict)
    assert set(ck.state_dict) == set(sd)
    for k, (q, scale) in qs.items():
        got = ck.state_dict[k]
        assert torch.equal(got, q.float() * scale.float()), k  # exactly weight.float() * scale_weight
        # e4m3 keeps 3 mantissa bits: relative error <= 2^-4, plus the subnormal step near zero
        assert ((got - sd[k]).abs() <= sd[k].abs() * 2**-4 + scale * 2**-9).all(), k
    model, info = load_causal_wan(path, dtype="auto")
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16 and info.layout == "comfyui_fp8"


def test_comfyui_per_layer_quantisation_metadata(tmp_path, sd):
    key = "blocks.0.self_attn.q.weight"
    scale = sd[key].abs().max() / 448.0
    stored = dict(sd)
    stored[key] = (sd[key] / scale).to(FP8)
    stored["blocks.0.self_attn.q.weight_scale"] = scale.reshape(()).float()
    meta = {"_quantization_metadata": json.dumps(
        {"format_version": "1.0", "layers": {"blocks.0.self_attn.q": {"format": "float8_e4m3fn"}}})}
    path = tmp_path / "mixed.safetensors"
    save_file(stored, str(path), metadata=meta)
    ck = read_checkpoint(path)
    assert torch.equal(ck.state_dict[key], stored[key].float() * scale)
    assert torch.equal(ck.state_dict["blocks.1.ffn.0.weight"], sd["blocks.1.ffn.0.weight"])


def test_comfy_causal_forcing_metadata_is_framewise(tmp_path, sd):
    path = tmp_path / "causal_forcing-repack.safetensors"  # name without "framewise": metadata decides
    save_file(sd, str(path), metadata={"config": json.dumps({"transformer": {"causal_ar": True}})})
    ck = read_checkpoint(path)
    assert ck.layout == "causal_forcing_comfy" and ck.frames_per_chunk == 1
    assert_same(ck.state_dict, sd)


def _peft_lora(sd, rank, seed):
    """LongLive's lora.pt: PEFT keys on every Linear of every attention block (q/k/v/o of both attentions,
    ffn.0, ffn.2), prefixed base_model.model. and wrapped in generator_lora."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for k, w in sd.items():
        if k.startswith("blocks.") and w.ndim == 2 and (".ffn." in k or "_attn." in k):
            base = k[: -len(".weight")]
            lora[f"base_model.model.{base}.lora_A.weight"] = torch.randn(rank, w.shape[1], generator=g)
            lora[f"base_model.model.{base}.lora_B.weight"] = torch.randn(w.shape[0], rank, generator=g)
    return lora


def test_longlive_base_plus_peft_lora_merges(tmp_path, sd):
    ema = random_sd("tiny", 7)
    base = tmp_path / "longlive_base.pt"
    torch.save({"generator": {f"model.{k}": v for k, v in sd.items()},
                "generator_ema": {f"model.{k}": v for k, v in ema.items()}}, base)
    lora = _peft_lora(sd, rank=4, seed=3)
    lora_path = tmp_path / "lora.pt"
    torch.save({"generator_lora": lora, "critic_lora": {}, "step": 1}, lora_path)
    assert read_checkpoint(base).layout == "longlive"
    model, info = load_causal_wan(base, dtype=torch.float32, lora_path=lora_path, lora_strength=0.5)
    assert info.layout == "longlive" and info.frames_per_chunk == 3
    got = model.state_dict()
    for name in ("blocks.0.self_attn.q", "blocks.1.cross_attn.o", "blocks.1.ffn.2"):
        a = lora[f"base_model.model.{name}.lora_A.weight"]
        b = lora[f"base_model.model.{name}.lora_B.weight"]
        want = sd[f"{name}.weight"] + 0.5 * (b @ a)  # alpha = rank by default: scale 1
        torch.testing.assert_close(got[f"{name}.weight"], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got["head.head.weight"], sd["head.head.weight"])  # not a LoRA target
    assert torch.equal(got["blocks.0.self_attn.q.bias"], sd["blocks.0.self_attn.q.bias"])  # base, not EMA


def test_comfyui_lora_with_alpha_kohya_names_and_diff_b(tmp_path, sd):
    g = torch.Generator().manual_seed(5)
    up, down = torch.randn(64, 4, generator=g), torch.randn(4, 64, generator=g)
    up2, down2 = torch.randn(128, 8, generator=g), torch.randn(8, 64, generator=g)
    diff_b = torch.randn(64, generator=g)
    lora = {"diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
            "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0),
            "lora_unet_blocks_1_ffn_0.lora_up.weight": up2,
            "lora_unet_blocks_1_ffn_0.lora_down.weight": down2,
            "diffusion_model.blocks.0.cross_attn.o.diff_b": diff_b}
    save_file(sd, str(tmp_path / "base.safetensors"))
    save_file(lora, str(tmp_path / "wan_lora.safetensors"))
    model, _ = load_causal_wan(tmp_path / "base.safetensors", dtype="fp32",
                               lora_path=tmp_path / "wan_lora.safetensors", lora_strength=0.8)
    got = model.state_dict()
    torch.testing.assert_close(got["blocks.0.self_attn.q.weight"],
                               sd["blocks.0.self_attn.q.weight"] + 0.8 * (2.0 / 4) * (up @ down))
    torch.testing.assert_close(got["blocks.1.ffn.0.weight"], sd["blocks.1.ffn.0.weight"] + 0.8 * (up2 @ down2))
    torch.testing.assert_close(got["blocks.0.cross_attn.o.bias"], sd["blocks.0.cross_attn.o.bias"] + 0.8 * diff_b)


def test_lora_for_another_architecture_is_named(tmp_path, sd):
    save_file(sd, str(tmp_path / "base.safetensors"))
    save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_up.weight": torch.zeros(8, 2),
               "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight": torch.zeros(2, 8)},
              str(tmp_path / "flux_lora.safetensors"))
    with pytest.raises(CheckpointError, match="double_blocks.0.img_attn.qkv"):
        load_causal_wan(tmp_path / "base.safetensors", lora_path=tmp_path / "flux_lora.safetensors")


def test_loaded_model_computes_like_the_original(tmp_path):
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    original = CausalWanModel(cfg).eval()
    path = save_checkpoint(original, tmp_path / "tiny.safetensors")
    loaded, _ = load_causal_wan(path, dtype="fp32")
    x, t = torch.randn(1, cfg.in_dim, 2, 4, 4), torch.tensor([500.0])
    ctx = torch.randn(1, 5, cfg.text_dim)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, ctx), original(x, t, ctx))
    half, _ = load_causal_wan(path)  # default dtype bf16
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


# --------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("preset", ["tiny", "tiny-comfy"])
def test_infer_config_round_trip_with_metadata(tmp_path, preset):
    cfg = get_preset(preset)
    path = save_checkpoint(CausalWanModel(cfg), tmp_path / f"{preset}.safetensors")
    assert read_checkpoint(path).config == cfg


def test_metadata_keeps_a_head_count_shapes_cannot_show(tmp_path):
    cfg = preset_with("tiny", num_heads=4, text_len=20)  # head_dim 16: no preset or guess would give this
    path = save_checkpoint(CausalWanModel(cfg), tmp_path / "h4.safetensors")
    model, ck = load_causal_wan(path)
    assert ck.config == cfg and model.cfg.num_heads == 4 and model.cfg.text_len == 20
    model2, _ = load_causal_wan(path, num_heads=2)  # explicit override wins
    assert model2.cfg.num_heads == 2


def test_infer_config_without_metadata(sd):
    comfy = random_sd("tiny-comfy", 2)
    assert infer_config(comfy) == get_preset("tiny-comfy")  # 128-dim heads: 2 heads for dim 256
    assert infer_config(sd) == get_preset("tiny")
    wider = {k: v for k, v in comfy.items()}
    wider["patch_embedding.weight"] = torch.zeros(384, 16, 1, 2, 2)  # no preset has dim 384
    assert infer_config(wider).num_heads == 3


def test_metadata_that_contradicts_shapes_is_an_error(sd):
    meta = {"echo_forcing.config": json.dumps(get_preset("tiny-comfy").to_dict())}
    with pytest.raises(NotAWanCheckpointError, match="dim: stated 256, tensors say 64"):
        infer_config(sd, meta)


# --------------------------------------------------------------------------------------------- errors
def test_vae_file_is_named(tmp_path):
    vae = {"decoder.middle.0.residual.0.gamma": torch.ones(8, 1, 1, 1), "decoder.head.0.gamma": torch.ones(8),
           "encoder.conv1.weight": torch.zeros(8, 3, 3, 3, 3), "conv1.weight": torch.zeros(32, 32, 1, 1, 1)}
    save_file(vae, str(tmp_path / "wan_2.1_vae.safetensors"))
    with pytest.raises(NotAWanCheckpointError, match="VAE") as e:
        read_checkpoint(tmp_path / "wan_2.1_vae.safetensors")
    assert "wan_2.1_vae.safetensors" in str(e.value) and "decoder.middle.0.residual.0.gamma" in str(e.value)
    assert "blocks.0.self_attn.q.weight" in str(e.value)


def test_text_encoder_file_is_named(tmp_path):
    te = {"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4), "shared.weight": torch.zeros(10, 4)}
    save_file(te, str(tmp_path / "umt5.safetensors"))
    with pytest.raises(NotAWanCheckpointError, match="text/image encoder"):
        read_checkpoint(tmp_path / "umt5.safetensors")


def test_image_to_video_wan_is_named(tmp_path, sd):
    i2v = dict(sd)
    i2v["img_emb.proj.0.weight"] = torch.zeros(1280)
    i2v["blocks.0.cross_attn.k_img.weight"] = torch.zeros(64, 64)
    save_file(i2v, str(tmp_path / "i2v.safetensors"))
    with pytest.raises(NotAWanCheckpointError, match="image-to-video"):
        read_checkpoint(tmp_path / "i2v.safetensors")


def test_other_model_names_its_first_keys(tmp_path):
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(4, 4)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(NotAWanCheckpointError, match=r"double_blocks\.0\.img_attn\.qkv\.weight.*blocks\.0\.self_attn"):
        read_checkpoint(tmp_path / "flux.safetensors")


def test_missing_and_unexpected_keys_are_listed(tmp_path, sd):
    broken = dict(sd)
    for k in ("blocks.1.ffn.2.bias", "blocks.1.self_attn.o.weight", "head.modulation"):
        del broken[k]
    broken["blocks.0.adapter.weight"] = torch.zeros(2)
    broken["blocks.1.extra.bias"] = torch.zeros(2)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(NotAWanCheckpointError) as e:
        load_causal_wan(tmp_path / "broken.safetensors")
    msg = str(e.value)
    assert "3 missing" in msg and "blocks.1.ffn.2.bias" in msg and "head.modulation" in msg
    assert "2 unexpected" in msg and "blocks.0.adapter.weight" in msg
    assert "expected a Wan2.1 T2V DiT (keys like blocks.0.self_attn.q.weight)" in msg


def test_truncated_safetensors_names_the_file(tmp_path, sd):
    path = tmp_path / "cut.safetensors"
    save_file(sd, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors.*(truncated|corrupted)"):
        read_checkpoint(path)


@pytest.mark.parametrize("name", ["noise.safetensors", "noise.pt", "noise.bin"])
def test_random_bytes_name_the_file(tmp_path, name):
    # many fixed byte patterns: garbage makes the unpickler fail in many different ways, all must be named
    for seed in range(60):
        path = tmp_path / name
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            read_checkpoint(path)


class _WouldWriteAFile:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):  # executed on unpickling by an unsafe loader: creates the marker file
        return (open, (self.target, "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": {"blocks.0.self_attn.q.weight": _WouldWriteAFile(str(marker))}}, path)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_checkpoint(path)
    assert "contains code" in str(e.value) and "refused" in str(e.value) and "self_forcing_dmd.pt" in str(e.value)
    assert not marker.exists()


def test_fp8_resident_weights_halve_memory_and_stay_close(tmp_path, sd):
    from echo_core.cache.rolling import full_cache
    from echo_core.model.fp8_linear import FP8Linear

    save_file(sd, str(tmp_path / "w.safetensors"))
    ref, _ = load_causal_wan(tmp_path / "w.safetensors", dtype="bf16")
    q8, _ = load_causal_wan(tmp_path / "w.safetensors", dtype="fp8")
    linears = [m for m in q8.blocks.modules() if isinstance(m, FP8Linear)]
    assert len(linears) == 10 * len(q8.blocks) and all(m.weight.dtype == torch.float8_e4m3fn for m in linears)
    # dequantised weights are the originals up to e4m3 rounding (3 mantissa bits: <= 1/16 relative per element)
    w = ref.blocks[0].self_attn.q.weight.float()
    back = q8.blocks[0].self_attn.q.dequantized().float()
    assert (back - w).abs().max().item() <= w.abs().max().item() / 16
    def bytes_of(m):
        return sum(p.numel() * p.element_size() for p in m.blocks.parameters())
    assert bytes_of(q8) < 0.6 * bytes_of(ref)
    torch.manual_seed(0)
    from echo_core.cache.base import CallInfo, ChunkInfo

    x, ctx = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 5, ref.cfg.text_dim)
    outs = []
    for m in (ref, q8):
        cache = full_cache(len(m.blocks))
        cache.begin_chunk(ChunkInfo(0, 0, 3, (2, 2)))
        cache.begin_call(CallInfo(0, False))
        with torch.no_grad():
            outs.append(m.forward_chunk(x, torch.tensor([500.0]), m.encode_text(ctx), cache))
    assert torch.isfinite(outs[1]).all()
    assert (outs[1] - outs[0]).abs().max().item() < 0.1 * outs[0].abs().max().item()




class _Calls:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("name, make", [
    ("posix.system", lambda m: _Calls(__import__("os").system, (f"touch {m}",))),
    ("subprocess.call", lambda m: _Calls(__import__("subprocess").call, (["touch", m],))),
    ("builtins.exec", lambda m: _Calls(exec, (f"open({m!r}, 'w')",))),
    ("io.open", lambda m: _Calls(open, (m, "w"))),
])
def test_hostile_pickles_are_named_as_code(tmp_path, name, make, legacy):
    marker = tmp_path / "pwned"
    for suffix in (".pt", ".safetensors"):
        path = tmp_path / f"weights{suffix}"
        torch.save({"generator": {"blocks.0.self_attn.q.weight": make(str(marker))}}, path,
                   _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeCheckpointError) as e:
            read_checkpoint(path)
        msg = str(e.value)
        assert f"contains code (a pickle with `{name}`)" in msg and "not loaded" in msg
        assert "weights_only" not in msg and "will likely succeed" not in msg
        assert ("PyTorch pickle under a .safetensors name" in msg) == (suffix == ".safetensors")
    assert not marker.exists()


def test_plain_pickle_under_a_safetensors_name_loads_and_broken_one_is_named(tmp_path, sd):
    path = tmp_path / "renamed.safetensors"
    torch.save(sd, path)
    assert set(read_checkpoint(path).state_dict) == set(sd)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="PyTorch pickle under a .safetensors name"):
        read_checkpoint(path)
